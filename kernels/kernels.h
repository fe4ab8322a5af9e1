/* The kernel table: every numeric operation of the forward pass, as a small ops table.
 *
 * `dsr1_kernels_portable()` is the reference: plain C, exact float32 arithmetic on weights
 * dequantised on the fly (FP8 e4m3 x 128x128 block scale, or bf16), threaded over the pool.
 * Faster variants (AVX-512/AMX, CUDA) fill the same table, are chosen at run time by
 * dsr1_kernels_select(), and are tested against the portable one on random data.
 * An entry left NULL in a variant falls back to the portable entry.
 *
 * Conventions: activations are float32 row-major [m][k]; a linear weight is [rows = out]
 * [cols = in] as stored in the checkpoint; y = x W^T. */
#ifndef DSR1_KERNELS_H
#define DSR1_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include "safetensors.h"
#include "threadpool.h"

#define DSR1_QBLOCK 128 /* FP8 scale block edge */

/* A linear layer's weight as it lies in memory (usually mapped from the checkpoint). */
typedef struct {
    dsr1_dtype dtype;   /* DSR1_DT_F8_E4M3, DSR1_DT_BF16 or DSR1_DT_F32 */
    int rows, cols;     /* out_features, in_features */
    const void *data;   /* rows * cols elements, row-major */
    const float *scale; /* F8 only: [ceil(rows/128)][ceil(cols/128)] (weight_scale_inv) */
} dsr1_linear;

typedef struct dsr1_kernels {
    const char *name;
    /* y[i][ldy-strided: r - r0] = sum_k x[i][k] W[r][k], for i < m, r in [r0, r1).
     * x has row stride ldx (>= W.cols), y has row stride ldy. */
    void (*linear)(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x, int ldx,
                   int m, float *y, int ldy);
    /* y[i][c] = sum_{r in [r0, r1)} x[i][r - r0] W[r][c], for all columns c of W: the
     * transposed product used to absorb kv_b into the query (q' = Wk^T q_nope). */
    void (*linear_t)(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x, int ldx,
                     int m, float *y, int ldy);
    /* y[i] = x[i] / sqrt(mean(x[i]^2) + eps) * g, for m rows of n; y may alias x. */
    void (*rmsnorm)(dsr1_pool *pool, const float *x, int ldx, const float *g, int n, int m,
                    float eps, float *y, int ldy);
    /* Absorbed MLA attention of one sequence's t new tokens, at positions pos0..pos0+t-1,
     * against its compressed cache rows kv[0 .. pos0+t) (each: kvl latent values, then rope
     * values; row stride ld_kv), causal. For token i, head h:
     *   s(j) = scale * (q_abs[i][h] . kv[j][:kvl] + q_pe[i][h] . kv[j][kvl:]),  j <= pos0+i
     *   out[i][h] = sum_j softmax(s)(j) kv[j][:kvl]
     * q_abs: [t][heads][kvl], q_pe: [t][heads][rope], out: [t][heads][kvl]. */
    void (*mla_attention)(dsr1_pool *pool, int t, int heads, int kvl, int rope, const float *q_abs,
                          const float *q_pe, const float *kv, int ld_kv, int pos0, float scale,
                          float *out);
} dsr1_kernels;

const dsr1_kernels *dsr1_kernels_portable(void);
/* The best variant for this machine (name tells which); `force` may name one ("portable"),
 * NULL picks automatically. Returns NULL for an unknown name. */
const dsr1_kernels *dsr1_kernels_select(const char *force);

/* Dequantise row r of W into out[cols] (reference helper, also used by tests). */
void dsr1_linear_dequant_row(const dsr1_linear *w, int r, float *out);

#endif
