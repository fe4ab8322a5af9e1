/* Internal to the fast precision mode ("bf16-tiles"): FP8 weights converted to bf16 on the
 * fly, activations rounded to bf16, fp32 accumulation, one accumulation order per output
 * element whatever the number of rows M (batch-invariant).
 *
 * Operands, shared by both backends:
 * - activations: bf16 rows (dsr1_f32_to_bf16: nearest even), row stride dsr1__fast_act_ld(k)
 *   values, zero past column k up to a multiple of 32;
 * - a weight panel: the (up to 16) FP8 rows of a row set converted exactly to bf16
 *   (dsr1__e4m3_bf16: e4m3 has 4 significant bits and bf16's exponent range covers e4m3's,
 *   zero, subnormals and NaN included) and repacked in VNNI order: P[p][j][0..1] = W[j][2p],
 *   W[j][2p+1], 64 bytes per pair index p, zero past column k (up to a multiple of 32) and
 *   past the set's rows. This is the B operand of TDPBF16PS (16 consecutive p = one tile)
 *   and one zmm of VDPBF16PS (lanes = the 16 rows). K = 7168 makes 229 KB: per thread, in
 *   L2, reused by every activation row of the product;
 * - the block scales: the 128x128 scale of row j, block b is NOT folded into the weights
 *   (bf16(e4m3 x scale) would round); each 128-column block's dot product (the block sum,
 *   exact products accumulated in fp32) is multiplied by it in fp32 with one fused
 *   multiply-add into the row's total: tot = fma(blocksum_b, scale_b, tot), b increasing.
 *   The scale thus enters per block, after the block's products, in an order that depends
 *   on K only.
 *
 * Per output element y[i][j], two backends, each with ONE order for every M:
 * - tiles (AMX, or its emulation; tile.h): per block b, C = 0; for each 32-column chunk of
 *   the block (4, fewer in a short last block): C += TDPBF16PS(16 pairs) — i.e. an even and
 *   an odd chain over the chunk's 16 pairs, summed, added to C (tile_emu.c); then tot =
 *   fma(C, scale_b, tot). Activation rows go 16 to a tile; a short tile has fewer rows,
 *   which changes nothing for the rows it has.
 * - vdpbf16ps (AVX512_BF16 without AMX, fast_vd.c): lanes along K, as the exact avx512
 *   variant: per block b, each of 16 lanes from zero takes its column pairs by VDPBF16PS
 *   (odd product, then even, each rounded, DAZ/FTZ), group of 64 columns by group, the
 *   group's "A" pairs then its "B" pairs (fast_vd.c: lane 4L + q holds the pairs 16L + 2q
 *   and 16L + 8 + 2q of the group); then tot_lane = fma(acc_lane, scale_b, tot_lane);
 *   at the end the 16 lanes are added in dsr1__hsum's fixed tree. Decode thus streams
 *   the FP8 rows once and converts them in registers, with no transposition into VNNI
 *   order (which made M = 1 run at a third of the read bandwidth).
 * The two orders differ (per row: two chains per 32 columns vs 16 lanes), so an AMX
 * machine and an AVX512_BF16 machine give different fast-mode results, each
 * batch-invariant and each tested bit for bit against its own scalar model
 * (tests/unit/test_kernels_fast.c). */
#ifndef DSR1_FAST_H
#define DSR1_FAST_H

#include "kernels.h"
#include "rowset.h"
#include "tile.h"

/* Block b's scale of row j of a set, ordinary or transposed (rowset.h). */
static inline float dsr1__rs_scale(const dsr1__rowset *rs, int j, int b)
{
    return rs->scale[j][rs->tld > 0 ? (size_t)b * rs->tsld : (size_t)b];
}

/* e4m3 byte -> bf16 bits, exact; NaN (S.1111.111) -> quiet NaN 0x7fc0 with the sign. */
extern const uint16_t dsr1__e4m3_bf16[256];

/* Row stride (bf16 values) of prepared activations of k columns. */
size_t dsr1__fast_act_ld(int k);
/* Pairs in a panel of k columns (k rounded up to 32, halved). */
int dsr1__fast_pairs(int k);

/* The activation layout's row-set operations (rowset.h). */
size_t dsr1__fast_act_bytes(int m, int k);
void dsr1__fast_act_pack(const float *x, int ldx, const int *rows, int m, int k, void *dst);
void dsr1__fast_act_put(void *dst, int m, int k, int i, int c, const float *v, int n);

/* Bytes of a panel of k columns (64-byte multiple), and of its multipliers [block][16]. */
size_t dsr1__fast_panel_bytes(int k);
/* The FP8 rows of rs into the VNNI panel P and their block scales into mul[block][16]
 * (0 past the set's rows), portable C. */
void dsr1__fast_panel_fill(const dsr1__rowset *rs, uint16_t *P, float *mul);

/* Bytes of a set's block multipliers [block][16] (64-byte multiple). */
size_t dsr1__fast_mul_bytes(int k);

typedef void (*dsr1__panel_fill_fn)(const dsr1__rowset *rs, uint16_t *P, float *mul);

/* The tile backend's product on AMX (tile_rows.h compiled over the intrinsics, tile_amx.c);
 * call only after dsr1__tile_amx() gave the tile layer. */
void dsr1__tile_amx_rows(dsr1__panel_fill_fn fill, const dsr1__rowset *rs, const void *act, int m,
                         float *y, int ldy, void *scratch);

/* The tile backend over a tile implementation (emulated or AMX): the rowset.h operations.
 * NULL for an ops table that is neither of the two. */
const dsr1__rowops *dsr1__fast_tile_rowops(const dsr1__tileops *t);

/* The vdpbf16ps backend of linear and expert_ffn (fast_vd.c, lanes along K; built where
 * the compiler takes -mavx512bf16 -mavx512vbmi; call only on a CPU with AVX-512,
 * AVX512_BF16 and AVX512_VBMI). */
const dsr1__rowops *dsr1__fast_vd_rowops(void);
/* linear_t on the vdpbf16ps path for up to 4 rows (decode), 64 output columns at a time, the
 * same bits as dsr1__rowops_linear_t over dsr1__fast_vdp_rowops; 0 (nothing done) for
 * shapes it does not take (more rows, non-FP8 weights, over 1024 summed rows). */
int dsr1__fast_vd_linear_t_small(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1,
                                 const float *x, int ldx, int m, float *y, int ldy);

/* vdpbf16ps over the VNNI panel, lanes = the set's 16 rows (fast_avx512.c, same CPU
 * needs): the vdpbf16ps path's backend of linear_t, whose transposed sets (rowset.h) it
 * takes, as the tile backend does; and its in-register panel fill (the portable one's
 * bits, ordinary or transposed sets; exposed for the tests). linear_t's order, per output
 * column c: the tile order (tiles) or one chain per block over its pairs in increasing
 * order, odd product then even, then tot = fma(acc, scale_b, tot) (vdpbf16ps), over
 * tk0 = r0 % 128 zero columns and then x[0 .. r1 - r0) (rowset.h). */
const dsr1__rowops *dsr1__fast_vdp_rowops(void);
void dsr1__fast_panel_fill_avx512(const dsr1__rowset *rs, uint16_t *P, float *mul);

/* Which arithmetic the bf16-tiles variant runs. */
typedef enum {
    DSR1__FAST_AUTO,     /* AMX where usable, else vdpbf16ps */
    DSR1__FAST_VDPBF16,  /* vdpbf16ps (AVX512_BF16) */
    DSR1__FAST_TILE_EMU, /* tiles, emulated (tests: slow) */
    DSR1__FAST_TILE_AMX, /* tiles, AMX */
} dsr1__fast_path;

/* The bf16-tiles kernel table on `path`, or NULL (why set) when this build or CPU cannot
 * run it (the emulated tiles run everywhere). linear, linear_t (transposed sets) and
 * expert_ffn are the fast mode's, mla_attention_bf16 is fast_attn.h's, the other entries
 * the best exact variant's (avx512, else portable); weights other than FP8 run in the
 * exact mode. */
const dsr1_kernels *dsr1__kernels_bf16_tiles(dsr1__fast_path path, const char **why);

#endif
