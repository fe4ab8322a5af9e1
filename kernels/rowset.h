/* Internal to the kernel variants: products of weight row sets with activation rows, and
 * the two drivers built on them — `linear` and the grouped expert FFN (`expert_ffn`).
 *
 * A row set is up to DSR1__RS_MAX weight rows of one dtype and width, possibly taken from
 * several matrices: expert_ffn puts gate and up rows in one set, so that one pass over the
 * activations serves both. A variant's backend (dsr1__rowops) decides how m activation rows
 * are laid out in memory for its products (padded rows, 128-column blocks, bf16...) and
 * computes y[i][j] = act[i] . row j of a set. Backends must compute each product from its
 * two operands alone, in an order fixed by the shapes, so that results do not depend on
 * the row set, the number of activation rows or the thread split.
 *
 * The drivers add only exact float32 steps in a fixed order (gathering tokens, silu·mul,
 * the weighted sums in expert order, each output element written by one thread), so a
 * variant's expert_ffn is bit-identical to its linear applied expert after expert. */
#ifndef DSR1_ROWSET_H
#define DSR1_ROWSET_H

#include <stddef.h>

#include "kernels.h"

#define DSR1__RS_MAX 16 /* rows per set */
/* Backends consume a set in groups of this many rows; pf[j] names the row of the same
 * matrix that the group after reads in row j's place (prefetched while j streams). */
#define DSR1__RS_GROUP 8

typedef struct {
    dsr1_dtype dtype;
    int cols, n;
    const void *row[DSR1__RS_MAX];    /* each row's first weight */
    const float *scale[DSR1__RS_MAX]; /* FP8: the row's block scales; NULL otherwise */
    const void *pf[DSR1__RS_MAX];     /* a row to prefetch; NULL: none */
    /* A transposed set (the fast mode's linear_t, kernels/cpu/fast.h) when tld > 0: its rows
     * are consecutive columns of an FP8 weight W (row[j] = row[0] + j) and its columns run
     * down W's rows, tld bytes apart (W's row length); the first tk0 columns are zero and
     * not in memory (row[j] points at column tk0), and block b's scale is
     * scale[j][b * tsld]. Only backends that say so take transposed sets. */
    int tld, tk0, tsld;
} dsr1__rowset;

typedef struct dsr1__rowops {
    /* bytes of m prepared activation rows of k columns */
    size_t (*act_bytes)(int m, int k);
    /* x rows rows[0 .. m) (rows NULL: 0 .. m) into the layout at dst */
    void (*act_pack)(const float *x, int ldx, const int *rows, int m, int k, void *dst);
    /* v[0 .. n) as row i, columns c .. c+n (inside one 128-column block) of a prepared
     * buffer that was zero-filled first */
    void (*act_put)(void *dst, int m, int k, int i, int c, const float *v, int n);
    /* per-thread scratch bytes for products of m activation rows of k columns */
    size_t (*scratch_bytes)(int m, int k);
    /* y[i][j] = act[i] . row j of rs, i < m, j < rs->n (scratch: 64-byte aligned) */
    void (*rows)(const dsr1__rowset *rs, const void *act, int m, float *y, int ldy, void *scratch);
} dsr1__rowops;

/* Append row r of w (pf: the row to prefetch with it, ignored outside w). */
void dsr1__rowset_add(dsr1__rowset *rs, const dsr1_linear *w, int r, int pf);

/* The kernel table's linear entry, by row sets of DSR1__RS_MAX rows over the pool. */
void dsr1__rowops_linear(const dsr1__rowops *ops, dsr1_pool *pool, const dsr1_linear *w, int r0,
                         int r1, const float *x, int ldx, int m, float *y, int ldy);

/* The kernel table's linear_t entry (kernels.h) by transposed sets of DSR1__RS_MAX columns
 * of an FP8 w, for a backend that takes them: per output column, the sum runs over
 * tk0 = r0 % 128 zero columns, then x[i][0 .. r1 - r0), so that its 128-column blocks are
 * w's scale blocks. */
void dsr1__rowops_linear_t(const dsr1__rowops *ops, dsr1_pool *pool, const dsr1_linear *w, int r0,
                           int r1, const float *x, int ldx, int m, float *y, int ldy);

/* The kernel table's expert_ffn entry (see kernels.h). */
dsr1_status dsr1__rowops_expert_ffn(const dsr1__rowops *ops, dsr1_pool *pool, const dsr1_expert *ex,
                                    int ne, const float *x, int ldx, float *y, int ldy);

#endif
