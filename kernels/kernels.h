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

/* One routed expert of a grouped FFN call (expert_ffn): its weights and the tokens routed
 * to it. */
typedef struct {
    const dsr1_linear *gate, *up, *down; /* gate, up: [inter][in]; down: [out][inter] */
    int n;                               /* tokens routed to the expert (0 is allowed) */
    const int *rows;                     /* [n] their rows in x and y */
    const float *weight;                 /* [n] their routing weights */
} dsr1_expert;

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
     * values), causal. The cache is paged and read in place: row j is row j % block_tokens
     * of block j / block_tokens, i.e. kv[j] = kv_blocks[j / block_tokens] +
     * (j % block_tokens) * ld_kv (kv_blocks: the first row of each of the sequence's
     * blocks, ceil((pos0 + t) / block_tokens) of them). For token i, head h:
     *   s(j) = scale * (q_abs[i][h] . kv[j][:kvl] + q_pe[i][h] . kv[j][kvl:]),  j <= pos0+i
     *   out[i][h] = sum_j softmax(s)(j) kv[j][:kvl]
     * q_abs: [t][heads][kvl], q_pe: [t][heads][rope], out: [t][heads][kvl]. The result does
     * not depend on how the rows are split into blocks. */
    void (*mla_attention)(dsr1_pool *pool, int t, int heads, int kvl, int rope, const float *q_abs,
                          const float *q_pe, const float *const *kv_blocks, int block_tokens,
                          int ld_kv, int pos0, float scale, float *out);
    /* The routed experts of one MoE layer in one call: for e = 0 .. ne-1 in that order, and
     * each token t routed to ex[e],
     *   y[t] += weight * down(silu(gate x[t]) * up x[t]),   silu(g) = g / (1 + e^-g),
     * with every product computed as this variant's `linear` computes it, so that the result
     * is bit-identical to running the experts one after another. All experts share the
     * widths of x (gate/up cols) and y (down rows); x has row stride ldx, y ldy.
     * DSR1_ERR_INVALID_ARG for mismatched shapes, DSR1_ERR_NOMEM; y is unchanged then. */
    dsr1_status (*expert_ffn)(dsr1_pool *pool, const dsr1_expert *ex, int ne, const float *x,
                              int ldx, float *y, int ldy);
    /* Non-zero: this variant keeps the MLA cache in bf16 (each value rounded to nearest even
     * from the float32 the engine computes: half the memory) and its attention is
     * mla_attention_bf16, which reads that cache; the engine then never calls mla_attention.
     * Zero (the exact variants): a float32 cache and mla_attention. */
    int kv_bf16;
    /* mla_attention against a bf16 cache: the same shapes, paging and result, with kv_blocks
     * pointing at bf16 rows (ld_kv in bf16 values). The fast mode computes it in bf16 x bf16
     * products with fp32 accumulation and an online (flash-style) softmax over fixed
     * 32-position chunks of absolute positions, so a token's result depends neither on t,
     * on the other tokens of the step nor on block_tokens (docs/kernels.md). */
    void (*mla_attention_bf16)(dsr1_pool *pool, int t, int heads, int kvl, int rope,
                               const float *q_abs, const float *q_pe,
                               const uint16_t *const *kv_blocks, int block_tokens, int ld_kv,
                               int pos0, float scale, float *out);
} dsr1_kernels;

const dsr1_kernels *dsr1_kernels_portable(void);
/* The best variant for this machine (name tells which); `force` may name one ("portable"),
 * NULL picks automatically. Returns NULL for an unknown name. */
const dsr1_kernels *dsr1_kernels_select(const char *force);

/* Whether the variant `name` (as given to dsr1_kernels_select, or a table's `name`) is the
 * fast precision mode (docs/kernels.md): "bf16-tiles", "bf16-tiles-emulated" and the retired
 * alias "avx512-bf16". False for the exact ones ("portable", "avx512"), for "auto" and NULL
 * (the automatic choice is always exact) and for names it does not know. The one place that
 * says so, because the coordinator and every worker must agree on the mode (it is part of
 * the hello and of WELCOME) and the command-line checks of --precision against --kernels. */
bool dsr1_kernels_name_is_fast(const char *name);

/* Dequantise row r of W into out[cols] (reference helper, also used by tests). */
void dsr1_linear_dequant_row(const dsr1_linear *w, int r, float *out);

#endif
