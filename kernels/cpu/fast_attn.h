/* Internal to the fast precision mode: MLA attention against the bf16 cache
 * (mla_attention_bf16 of the bf16-tiles tables, kernels.h), flash-style.
 *
 * For token i at absolute position P = pos0 + i, positions 0 .. P are cut into splits of
 * DSR1__FA_SPLIT = 1024 absolute positions, and work into tasks (token, split), each run
 * alone from start to end on one thread for all the heads, so no result depends on the
 * thread split, and a decode token at 32K positions makes 32 tasks. A task walks its
 * split in chunks of DSR1__FA_CHUNK = 32 absolute positions [q0, q0 + 32) (fixed by P
 * alone: neither block_tokens, t nor the rest of the step change a split or a chunk). Per
 * chunk, once:
 *  1. stage (portable C): the chunk's nv = min(32, split end - q0) rows (positions after P
 *     are never read) as K [32][wpad] (bf16, zero past column kvl + rope and past row nv;
 *     a direct_k backend reads the rows in place through krow when kvl + rope is a multiple
 *     of 32, as R1's 576), and their latents re-laid as C [16 position pairs][kvlp][2] (the
 *     B operand of P.C, VNNI order: C[q][c] = K[2q][c], K[2q + 1][c]; zero past kvl);
 * then for each group of up to 16 heads, with its own Q, running max m, sum l and output O:
 *  2. scores S[j][h] = K[j] . Q[h] (Q = bf16(q_abs) ++ bf16(q_pe), zero-padded to wpad, laid
 *     as VNNI pairs of 16 heads: the B operand): on the backend, fp32 accumulation;
 *  3. online softmax (portable C, fa_softmax, shared by the backends): per head, s_j =
 *     S[j][h] * scale for j < nv; mx = max(m, s_j...); alpha = exp(m - mx); p_j =
 *     bf16(exp(s_j - mx)) (0 for j >= nv); l = fma(l, alpha, sum_j p_j in j order); m = mx.
 *     exp is this file's own (dsr1__fa_exp: range reduction and a polynomial in fmaf), so
 *     every backend computes it the same way on every machine;
 *  4. O[h][c] = fma(O[h][c], alpha[h], (P.C)[h][c]), P.C on the backend, fp32 accumulation.
 * Then (fa_combine) per token and head, over its splits s in increasing order: M = max m_s,
 * w_s = exp(m_s - M), L = fma(l_s, w_s, L), O = fma(O_s, w_s, O) from 0, and out = O / L
 * (one split: exactly O / l). Tokens go in waves whose partial results fit in 64 MB.
 *
 * The backends differ only in steps 2 and 4:
 * - tiles (tile.h: AMX or its emulation, bit for bit): scores as 2 tiles of 16 positions x
 *   hn heads (tiles 0, 1; A = K rows, tile 4; B = Q pairs, tile 6), one TDPBF16PS per 32
 *   columns of wpad in increasing order into the same accumulator; P.C per 16 latent
 *   columns as ONE TDPBF16PS of hn heads x 32 positions (tile 2; A = P, tile 5; B = C,
 *   tile 7) from zero, then the rescale (tileops.rescale_rows). The heads are the rows of P
 *   and of the output tile (R1: 128 heads = 8 groups of 16 rows).
 * - vdpbf16ps (fast_attn_avx512.c): a score is one VDPBF16PS chain over the pairs of wpad in
 *   increasing order (lanes = 16 heads); a P.C element one chain over the chunk's 16
 *   position pairs from zero (lanes = 16 latent columns), then the rescale.
 * Compiled with -ffp-contract=off (kernels/meson.build): no multiply-add is fused unless
 * written as fmaf, so the scalar and the vector forms of each step give the same bits. */
#ifndef DSR1_FAST_ATTN_H
#define DSR1_FAST_ATTN_H

#include <stdint.h>

#include "kernels.h"
#include "tile.h"

#define DSR1__FA_CHUNK 32   /* positions per chunk */
#define DSR1__FA_HG    16   /* heads per tile group */
#define DSR1__FA_SPLIT 1024 /* positions per task (a multiple of the chunk) */

/* One task's geometry and buffers (64-byte aligned). */
typedef struct {
    int hn;         /* heads of the group (1..16) */
    int kvl;        /* latent values per row */
    int wpad, kvlp; /* kvl + rope rounded up to 32; kvl rounded up to 16 */
    int nv;         /* valid rows of the current chunk */
    float scale;    /* softmax scale */
    uint16_t *q;    /* [wpad / 2][16][2]: Q pairs, VNNI (zero past the group's heads) */
    uint16_t *k;    /* [32][wpad]: the chunk's rows, staged */
    /* The chunk's rows as read by stage_c and a direct_k backend: row r of the chunk, wpad
     * values (zero past kvl + rope); rows past nv point at zeros. Into k, or straight into
     * the cache where that holds (direct_k and kvl + rope == wpad: R1's 576). */
    const uint16_t *krow[DSR1__FA_CHUNK];
    uint16_t *c;          /* [16][kvlp][2]: the chunk's latents, position pairs interleaved */
    float *s;             /* [32][16]: scores (unscaled) */
    uint16_t *p;          /* [16][32]: softmax numerators, bf16 */
    float *m, *l, *alpha; /* [16] */
    float *o;             /* [16][kvlp] */
    float *tmp;           /* [16][16] */
} dsr1__fa_task;

/* A backend: steps 2 and 4 above (begin/end: once per task, may be NULL); optionally its
 * own (vectorised) forms of the C layout of step 1 and of step 3, which must give the
 * portable forms' bits (stage_c, softmax: NULL for the portable ones). */
typedef struct dsr1__fa_backend {
    void (*begin)(const struct dsr1__fa_backend *be, const dsr1__fa_task *x);
    void (*scores)(const struct dsr1__fa_backend *be, dsr1__fa_task *x);
    void (*pv)(const struct dsr1__fa_backend *be, dsr1__fa_task *x);
    void (*end)(const struct dsr1__fa_backend *be, const dsr1__fa_task *x);
    const dsr1__tileops *tiles; /* the tile backend's implementation */
    void (*stage_c)(dsr1__fa_task *x);
    int direct_k; /* reads the chunk's rows through krow only (not k) */
    /* Optional: step 2 for every group of the task at once (each K value loaded once for
     * all heads), the same order per score as scores: s_all[g][32][16] from q_all + g *
     * q_stride (uint16_t values) for groups g < groups (x: the chunk, krow, nv, wpad). */
    void (*scores_all)(const struct dsr1__fa_backend *be, const dsr1__fa_task *x, int groups,
                       const uint16_t *q_all, size_t q_stride, float *s_all);
    void (*softmax)(dsr1__fa_task *x);
} dsr1__fa_backend;

/* exp(x) in fp32, the same bits on every machine: 0 below -87, +inf above 88.5. */
float dsr1__fa_exp(float x);
/* The portable forms of step 1's C layout and of step 3 (exposed for the tests). */
void dsr1__fa_stage_c(dsr1__fa_task *x);
void dsr1__fa_softmax(dsr1__fa_task *x);

/* The most bytes of partial results a wave of tokens holds (64 MB; tests lower it to make
 * waves of one token, which must give the same bits). */
extern size_t dsr1__fa_wave_bytes;

/* mla_attention_bf16 (kernels.h) on a backend. */
void dsr1__fa_attention(const dsr1__fa_backend *be, dsr1_pool *pool, int t, int heads, int kvl,
                        int rope, const float *q_abs, const float *q_pe,
                        const uint16_t *const *kv_blocks, int block_tokens, int ld_kv, int pos0,
                        float scale, float *out);

/* The tile backend over t (dsr1__tile_emu() or the AMX one). */
void dsr1__fa_tile_backend(const dsr1__tileops *t, dsr1__fa_backend *out);
/* The vdpbf16ps backend (built where the compiler takes -mavx512bf16; call only on a CPU
 * with AVX-512 and AVX512_BF16). */
const dsr1__fa_backend *dsr1__fa_vd_backend(void);
/* Its stage_c and softmax (exposed for the tests: the portable forms' bits). */
void dsr1__fa_vd_stage_c(dsr1__fa_task *x);
void dsr1__fa_vd_softmax(dsr1__fa_task *x);

#endif
