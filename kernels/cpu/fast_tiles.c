/* The fast precision mode's portable parts (fast.h): the exact e4m3 -> bf16 table, the bf16
 * activation layout, the VNNI weight panel, the tile backend, which drives the tile layer
 * (tile.h) — the real AMX instructions or their emulation — through rowset.h, and the
 * "bf16-tiles" kernel tables.
 *
 * Plain C: the tile backend runs (emulated) and is tested on every machine; the other
 * entries of its table are the best exact variant's (avx512 where the CPU has it, else
 * portable). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fast.h"
#include "fast_attn.h"
#include "log.h"
#include "numeric.h"

/* ---- e4m3 -> bf16, exact ------------------------------------------------------------ */

/* bf16 bits of e4m3 byte B: sign; NaN (S.1111.111) quiet; exponent 0: zero or the
 * subnormal m x 2^-9 normalised (m = 1: 2^-9; 2, 3: (1 + (m-2)/2) 2^-8; 4..7:
 * (1 + (m-4)/4) 2^-7); else 2^(e-7) (1 + m/8): bf16 exponent e + 120, mantissa m << 4. */
#define E4M3_S(B) (((B)&0x80) << 8)
#define E4M3_E(B) (((B) >> 3) & 15)
#define E4M3_M(B) ((B)&7)
#define E4M3_SUB(M)                                                                                \
    ((M) >= 4 ? (120 << 7) | (((M)-4) << 5) : (M) >= 2 ? (119 << 7) | (((M)-2) << 6) : (118 << 7))
#define E4M3_BF16(B)                                                                               \
    (uint16_t)(E4M3_S(B) | ((E4M3_E(B) == 15 && E4M3_M(B) == 7) ? 0x7fc0                           \
                            : E4M3_E(B) == 0 ? (E4M3_M(B) == 0 ? 0 : E4M3_SUB(E4M3_M(B)))          \
                                             : ((E4M3_E(B) + 120) << 7) | (E4M3_M(B) << 4)))
#define E4(B)  E4M3_BF16(B), E4M3_BF16((B) + 1), E4M3_BF16((B) + 2), E4M3_BF16((B) + 3)
#define E16(B) E4(B), E4((B) + 4), E4((B) + 8), E4((B) + 12)
#define E64(B) E16(B), E16((B) + 16), E16((B) + 32), E16((B) + 48)
const uint16_t dsr1__e4m3_bf16[256] = {E64(0), E64(64), E64(128), E64(192)};

/* ---- activations: bf16 rows ----------------------------------------------------------- */

size_t dsr1__fast_act_ld(int k)
{
    return (size_t)(k + 31) / 32 * 32 + 32; /* off multiples of 4 KB */
}

int dsr1__fast_pairs(int k)
{
    return (k + 31) / 32 * 16;
}

size_t dsr1__fast_act_bytes(int m, int k)
{
    return sizeof(uint16_t) * (size_t)m * dsr1__fast_act_ld(k);
}

void dsr1__fast_act_pack(const float *x, int ldx, const int *rows, int m, int k, void *dst)
{
    const size_t ld = dsr1__fast_act_ld(k);
    for (int i = 0; i < m; i++) {
        const float *xs = x + (size_t)(rows ? rows[i] : i) * ldx;
        uint16_t *d = (uint16_t *)dst + (size_t)i * ld;
        for (int c = 0; c < k; c++) d[c] = dsr1_f32_to_bf16(xs[c]);
        memset(d + k, 0, sizeof(uint16_t) * (ld - (size_t)k));
    }
}

void dsr1__fast_act_put(void *dst, int m, int k, int i, int c, const float *v, int n)
{
    (void)m;
    uint16_t *d = (uint16_t *)dst + (size_t)i * dsr1__fast_act_ld(k) + c;
    for (int q = 0; q < n; q++) d[q] = dsr1_f32_to_bf16(v[q]);
}

/* ---- the VNNI weight panel ------------------------------------------------------------ */

size_t dsr1__fast_panel_bytes(int k)
{
    return (size_t)dsr1__fast_pairs(k) * 64;
}

void dsr1__fast_panel_fill(const dsr1__rowset *rs, uint16_t *P, float *mul)
{
    const int k = rs->cols, np = dsr1__fast_pairs(k), nb = (k + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    for (int j = 0; j < DSR1__RS_MAX; j++) {
        uint16_t *pj = P + 2 * j;
        for (int b = 0; b < nb; b++)
            mul[b * DSR1__RS_MAX + j] = j < rs->n ? dsr1__rs_scale(rs, j, b) : 0;
        if (j >= rs->n) {
            for (int p = 0; p < np; p++) pj[p * 32] = pj[p * 32 + 1] = 0;
            continue;
        }
        if (rs->tld > 0) { /* a transposed set: column v of row j is tld bytes after v - 1 */
            const uint8_t *w = rs->row[j];
            for (int v = 0; v < 2 * np; v++)
                pj[v / 2 * 32 + v % 2] =
                    v < rs->tk0 || v >= k ? 0 : dsr1__e4m3_bf16[w[(size_t)(v - rs->tk0) * rs->tld]];
            continue;
        }
        const uint8_t *w = rs->row[j];
        int p = 0;
        for (; 2 * p + 1 < k; p++) {
            pj[p * 32] = dsr1__e4m3_bf16[w[2 * p]];
            pj[p * 32 + 1] = dsr1__e4m3_bf16[w[2 * p + 1]];
        }
        if (2 * p < k) {
            pj[p * 32] = dsr1__e4m3_bf16[w[2 * p]];
            pj[p * 32 + 1] = 0;
            p++;
        }
        for (; p < np; p++) pj[p * 32] = pj[p * 32 + 1] = 0;
    }
}

/* ---- the tile backend ------------------------------------------------------------------ */

size_t dsr1__fast_mul_bytes(int k)
{
    const size_t nb = (size_t)(k + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    return (nb * DSR1__RS_MAX * sizeof(float) + 63) & ~(size_t)63;
}

/* panel, multipliers, two stored accumulator tiles, the totals of two 16-row tiles */
static size_t tile_scratch_bytes(int m, int k)
{
    (void)m;
    return dsr1__fast_panel_bytes(k) + dsr1__fast_mul_bytes(k) + 4 * 16 * 16 * sizeof(float);
}

/* The product on the emulated tiles (tile_rows.h, the loop AMX runs). */
#define TR_NAME                        emu_tile_rows
#define TR_CONFIG(cfg)                 dsr1__tile_emu()->config(cfg)
#define TR_RELEASE()                   dsr1__tile_emu()->release()
#define TR_ZERO(t)                     dsr1__tile_emu()->zero(t)
#define TR_LOAD(t, base, stride)       dsr1__tile_emu()->load(t, base, stride)
#define TR_STORE(t, base, stride)      dsr1__tile_emu()->store(t, base, stride)
#define TR_DP(c, a, b)                 dsr1__tile_emu()->dpbf16ps(c, a, b)
#define TR_FMA_ROWS(tot, c, mul, rows) dsr1__tile_emu()->fma_rows(tot, c, mul, rows)
#include "tile_rows.h"

/* the AMX path's panel fill: in registers where the CPU has AVX-512 BW (every AMX CPU; set
 * by tables_init), else the portable one, the same bits (tests/unit/test_kernels_fast.c) */
static dsr1__panel_fill_fn amx_fill = dsr1__fast_panel_fill;

static void emu_rows(const dsr1__rowset *rs, const void *act, int m, float *y, int ldy,
                     void *scratch)
{
    emu_tile_rows(dsr1__fast_panel_fill, rs, act, m, y, ldy, scratch);
}

static void amx_rows(const dsr1__rowset *rs, const void *act, int m, float *y, int ldy,
                     void *scratch)
{
    dsr1__tile_amx_rows(amx_fill, rs, act, m, y, ldy, scratch);
}

static const dsr1__rowops emu_rowops = {dsr1__fast_act_bytes, dsr1__fast_act_pack,
                                        dsr1__fast_act_put, tile_scratch_bytes, emu_rows};
static const dsr1__rowops amx_rowops = {dsr1__fast_act_bytes, dsr1__fast_act_pack,
                                        dsr1__fast_act_put, tile_scratch_bytes, amx_rows};

const dsr1__rowops *dsr1__fast_tile_rowops(const dsr1__tileops *t)
{
    if (t == dsr1__tile_emu()) return &emu_rowops;
    if (t != NULL && t == dsr1__tile_amx(NULL)) return &amx_rowops;
    return NULL;
}

/* ---- the kernel tables ------------------------------------------------------------------ */

#if DSR1_HAVE_AVX512_KERNELS
const dsr1_kernels *dsr1__kernels_avx512(void); /* avx512.c */
#endif

static int cpu_has_avx512(void)
{
#if DSR1_HAVE_AVX512_KERNELS
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static int cpu_has_bf16(void)
{
#if DSR1_HAVE_AVX512BF16_KERNELS
    return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16") &&
           __builtin_cpu_supports("avx512vbmi");
#else
    return 0;
#endif
}

static const dsr1_kernels *exact;       /* the entries the fast mode leaves exact */
static const dsr1__rowops *path_ops[4]; /* by dsr1__fast_path; NULL: not available */
static const dsr1__rowops *path_t[4];   /* the same paths' backends of transposed sets */
static dsr1_kernels tables[4];
static const char *amx_why;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void fast_linear(const dsr1__rowops *ops, dsr1_pool *pool, const dsr1_linear *w, int r0,
                        int r1, const float *x, int ldx, int m, float *y, int ldy)
{
    if (w->dtype == DSR1_DT_F8_E4M3)
        dsr1__rowops_linear(ops, pool, w, r0, r1, x, ldx, m, y, ldy);
    else
        exact->linear(pool, w, r0, r1, x, ldx, m, y, ldy);
}

static void fast_linear_t(const dsr1__rowops *ops, dsr1_pool *pool, const dsr1_linear *w, int r0,
                          int r1, const float *x, int ldx, int m, float *y, int ldy)
{
    if (w->dtype == DSR1_DT_F8_E4M3)
        dsr1__rowops_linear_t(ops, pool, w, r0, r1, x, ldx, m, y, ldy);
    else
        exact->linear_t(pool, w, r0, r1, x, ldx, m, y, ldy);
}

/* Experts whose weights are not all FP8 (never so in DeepSeek's checkpoints) run in the
 * exact mode, the whole call. */
static dsr1_status fast_expert_ffn(const dsr1__rowops *ops, dsr1_pool *pool, const dsr1_expert *ex,
                                   int ne, const float *x, int ldx, float *y, int ldy)
{
    for (int e = 0; e < ne; e++)
        if (ex[e].n > 0 && ex[e].gate && ex[e].up && ex[e].down &&
            (ex[e].gate->dtype != DSR1_DT_F8_E4M3 || ex[e].up->dtype != DSR1_DT_F8_E4M3 ||
             ex[e].down->dtype != DSR1_DT_F8_E4M3))
            return (exact->expert_ffn ? exact : dsr1_kernels_portable())
                ->expert_ffn(pool, ex, ne, x, ldx, y, ldy);
    return dsr1__rowops_expert_ffn(ops, pool, ex, ne, x, ldx, y, ldy);
}

#define PATH_ENTRIES(P)                                                                            \
    static void linear_##P(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x,  \
                           int ldx, int m, float *y, int ldy)                                      \
    {                                                                                              \
        fast_linear(path_ops[P], pool, w, r0, r1, x, ldx, m, y, ldy);                              \
    }                                                                                              \
    static void linear_t_##P(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1,                \
                             const float *x, int ldx, int m, float *y, int ldy)                    \
    {                                                                                              \
        fast_linear_t(path_t[P], pool, w, r0, r1, x, ldx, m, y, ldy);                              \
    }                                                                                              \
    static dsr1_status expert_ffn_##P(dsr1_pool *pool, const dsr1_expert *ex, int ne,              \
                                      const float *x, int ldx, float *y, int ldy)                  \
    {                                                                                              \
        return fast_expert_ffn(path_ops[P], pool, ex, ne, x, ldx, y, ldy);                         \
    }
PATH_ENTRIES(DSR1__FAST_VDPBF16)
PATH_ENTRIES(DSR1__FAST_TILE_EMU)
PATH_ENTRIES(DSR1__FAST_TILE_AMX)

/* The vdpbf16ps path's linear_t: decode-sized products by columns of 64 (the same bits). */
static void vd_linear_t(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x,
                        int ldx, int m, float *y, int ldy)
{
#if DSR1_HAVE_AVX512BF16_KERNELS
    if (dsr1__fast_vd_linear_t_small(pool, w, r0, r1, x, ldx, m, y, ldy)) return;
#endif
    linear_t_DSR1__FAST_VDPBF16(pool, w, r0, r1, x, ldx, m, y, ldy);
}

/* Attention against the bf16 cache (fast_attn.h), by path. */
static dsr1__fa_backend attn_be[4];

#define ATTN_ENTRY(P)                                                                              \
    static void attn_##P(dsr1_pool *pool, int t, int heads, int kvl, int rope, const float *q_abs, \
                         const float *q_pe, const uint16_t *const *kv_blocks, int block_tokens,    \
                         int ld_kv, int pos0, float scale, float *out)                             \
    {                                                                                              \
        dsr1__fa_attention(&attn_be[P], pool, t, heads, kvl, rope, q_abs, q_pe, kv_blocks,         \
                           block_tokens, ld_kv, pos0, scale, out);                                 \
    }
ATTN_ENTRY(DSR1__FAST_VDPBF16)
ATTN_ENTRY(DSR1__FAST_TILE_EMU)
ATTN_ENTRY(DSR1__FAST_TILE_AMX)

static void tables_init(void)
{
#if DSR1_HAVE_AVX512_KERNELS
    exact = cpu_has_avx512() ? dsr1__kernels_avx512() : dsr1_kernels_portable();
#else
    exact = dsr1_kernels_portable();
#endif
    for (int p = 0; p < 4; p++) {
        tables[p] = *exact;
        tables[p].name = p == DSR1__FAST_TILE_EMU ? "bf16-tiles-emulated" : "bf16-tiles";
        tables[p].kv_bf16 = 1;
    }
#if DSR1_HAVE_AVX512BF16_KERNELS
    if (cpu_has_bf16()) {
        path_ops[DSR1__FAST_VDPBF16] = dsr1__fast_vd_rowops();
        path_t[DSR1__FAST_VDPBF16] = dsr1__fast_vdp_rowops();
        attn_be[DSR1__FAST_VDPBF16] = *dsr1__fa_vd_backend();
    }
#endif
    tables[DSR1__FAST_VDPBF16].mla_attention_bf16 = attn_DSR1__FAST_VDPBF16;
    dsr1__fa_tile_backend(dsr1__tile_emu(), &attn_be[DSR1__FAST_TILE_EMU]);
    tables[DSR1__FAST_TILE_EMU].mla_attention_bf16 = attn_DSR1__FAST_TILE_EMU;
    tables[DSR1__FAST_TILE_AMX].mla_attention_bf16 = attn_DSR1__FAST_TILE_AMX;
    tables[DSR1__FAST_VDPBF16].linear = linear_DSR1__FAST_VDPBF16;
    tables[DSR1__FAST_VDPBF16].linear_t = vd_linear_t;
    tables[DSR1__FAST_VDPBF16].expert_ffn = expert_ffn_DSR1__FAST_VDPBF16;
    path_ops[DSR1__FAST_TILE_EMU] = dsr1__fast_tile_rowops(dsr1__tile_emu());
    path_t[DSR1__FAST_TILE_EMU] = path_ops[DSR1__FAST_TILE_EMU];
    tables[DSR1__FAST_TILE_EMU].linear = linear_DSR1__FAST_TILE_EMU;
    tables[DSR1__FAST_TILE_EMU].linear_t = linear_t_DSR1__FAST_TILE_EMU;
    tables[DSR1__FAST_TILE_EMU].expert_ffn = expert_ffn_DSR1__FAST_TILE_EMU;
    const dsr1__tileops *amx = dsr1__tile_amx(&amx_why);
    path_ops[DSR1__FAST_TILE_AMX] = amx ? dsr1__fast_tile_rowops(amx) : NULL;
    if (amx) {
        dsr1__fa_tile_backend(amx, &attn_be[DSR1__FAST_TILE_AMX]);
#if DSR1_HAVE_AVX512BF16_KERNELS
        /* AMX CPUs have AVX512_BF16: the vectorised staging and softmax, the portable
         * forms' bits (tests/unit/test_attention_fast.c), so AMX still equals emulation */
        if (cpu_has_bf16()) {
            amx_fill = dsr1__fast_panel_fill_avx512;
            attn_be[DSR1__FAST_TILE_AMX].stage_c = dsr1__fa_vd_stage_c;
            attn_be[DSR1__FAST_TILE_AMX].softmax = dsr1__fa_vd_softmax;
        }
#endif
    }
    path_t[DSR1__FAST_TILE_AMX] = path_ops[DSR1__FAST_TILE_AMX];
    tables[DSR1__FAST_TILE_AMX].linear = linear_DSR1__FAST_TILE_AMX;
    tables[DSR1__FAST_TILE_AMX].linear_t = linear_t_DSR1__FAST_TILE_AMX;
    tables[DSR1__FAST_TILE_AMX].expert_ffn = expert_ffn_DSR1__FAST_TILE_AMX;
}

static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static void log_fallback(void)
{
    DSR1_INFO("bf16-tiles: no AMX (%s); running on vdpbf16ps (AVX512_BF16), whose summation "
              "order differs from AMX's (docs/kernels.md)",
              amx_why);
}

const dsr1_kernels *dsr1__kernels_bf16_tiles(dsr1__fast_path path, const char **why)
{
    pthread_once(&once, tables_init);
    switch (path) {
    case DSR1__FAST_AUTO:
        if (path_ops[DSR1__FAST_TILE_AMX]) return &tables[DSR1__FAST_TILE_AMX];
        *why = "this CPU (or build) has neither AMX-BF16 nor AVX512_BF16 with AVX512_VBMI "
               "(vdpbf16ps)";
        if (!path_ops[DSR1__FAST_VDPBF16]) return NULL;
        pthread_once(&log_once, log_fallback);
        return &tables[DSR1__FAST_VDPBF16];
    case DSR1__FAST_VDPBF16:
        *why = "this CPU (or build) has no AVX512_BF16 with AVX512_VBMI (vdpbf16ps)";
        return path_ops[DSR1__FAST_VDPBF16] ? &tables[DSR1__FAST_VDPBF16] : NULL;
    case DSR1__FAST_TILE_EMU:
        return &tables[DSR1__FAST_TILE_EMU];
    default:
        *why = amx_why;
        return path_ops[DSR1__FAST_TILE_AMX] ? &tables[DSR1__FAST_TILE_AMX] : NULL;
    }
}

#if !DSR1_HAVE_AVX512BF16_KERNELS
void dsr1__fast_panel_fill_avx512(const dsr1__rowset *rs, uint16_t *P, float *mul)
{
    dsr1__fast_panel_fill(rs, P, mul); /* never called: no vdpbf16ps backend in this build */
}
#endif

#if !DSR1_HAVE_AMX_KERNELS
const dsr1__tileops *dsr1__tile_amx(const char **why)
{
    if (why) *why = "this build has no AMX kernels (the compiler lacks -mamx-tile -mamx-bf16)";
    return NULL;
}

void dsr1__tile_amx_rows(dsr1__panel_fill_fn fill, const dsr1__rowset *rs, const void *act, int m,
                         float *y, int ldy, void *scratch)
{
    (void)fill, (void)rs, (void)act, (void)m, (void)y, (void)ldy, (void)scratch;
    abort(); /* never called: dsr1__tile_amx gave no tile layer */
}
#endif
