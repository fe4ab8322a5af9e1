/* The tile layer (tile.h) on the real AMX instructions. Built with -mamx-tile -mamx-bf16
 * and the AVX-512 flags (kernels/meson.build, this file only, where the compiler has
 * them); nothing here executes a tile instruction before dsr1__tile_amx() has found
 * AMX-TILE and AMX-BF16 in CPUID and Linux has granted the tile data permission, so a CPU
 * without AMX or a kernel that refuses gets NULL (and the caller falls back), never a
 * SIGILL.
 *
 * Linux (>= 5.16) enables the 8 KB tile data state per process on request:
 * arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked once, before any thread
 * touches a tile (Documentation/arch/x86/xstate.rst). */
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fast.h"
#include "tile.h"

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA  18

static void amx_config(const dsr1__tilecfg *cfg)
{
    _tile_loadconfig(cfg);
}

static void amx_release(void)
{
    _tile_release();
}

/* The tile number is an immediate: one case per tile. */
#define TILE_CASES(OP)                                                                             \
    switch (t) {                                                                                   \
    case 0:                                                                                        \
        OP(0);                                                                                     \
        break;                                                                                     \
    case 1:                                                                                        \
        OP(1);                                                                                     \
        break;                                                                                     \
    case 2:                                                                                        \
        OP(2);                                                                                     \
        break;                                                                                     \
    case 3:                                                                                        \
        OP(3);                                                                                     \
        break;                                                                                     \
    case 4:                                                                                        \
        OP(4);                                                                                     \
        break;                                                                                     \
    case 5:                                                                                        \
        OP(5);                                                                                     \
        break;                                                                                     \
    case 6:                                                                                        \
        OP(6);                                                                                     \
        break;                                                                                     \
    default:                                                                                       \
        OP(7);                                                                                     \
        break;                                                                                     \
    }

static void amx_zero(int t)
{
#define ZERO(T) _tile_zero(T)
    TILE_CASES(ZERO)
#undef ZERO
}

static void amx_load(int t, const void *base, size_t stride)
{
#define LOAD(T) _tile_loadd(T, base, (long)stride)
    TILE_CASES(LOAD)
#undef LOAD
}

static void amx_store(int t, const void *base_out, size_t stride)
{
#define STORE(T) _tile_stored(T, (void *)base_out, (long)stride)
    TILE_CASES(STORE)
#undef STORE
}

/* c in 0..3, a in 4..5, b in 6..7 (tile.h's convention). */
static void amx_dpbf16ps(int c, int a, int b)
{
    const int sel = c * 4 + (a - 4) * 2 + (b - 6);
#define DP(C, A, B)                                                                                \
    case (C)*4 + ((A)-4) * 2 + ((B)-6):                                                            \
        _tile_dpbf16ps(C, A, B);                                                                   \
        break;
#define DP_C(C) DP(C, 4, 6) DP(C, 4, 7) DP(C, 5, 6) DP(C, 5, 7)
    switch (sel) {
        DP_C(0)
        DP_C(1)
        DP_C(2)
        DP_C(3)
    default:
        abort(); /* outside tile.h's register convention */
    }
#undef DP_C
#undef DP
}

static void amx_fma_rows(float *tot, const float *c, const float *mul, int rows)
{
    const __m512 m = _mm512_loadu_ps(mul);
    for (int i = 0; i < rows; i++)
        _mm512_storeu_ps(tot + i * 16, _mm512_fmadd_ps(_mm512_loadu_ps(c + i * 16), m,
                                                       _mm512_loadu_ps(tot + i * 16)));
}

static void amx_rescale_rows(float *o, size_t ldo, const float *alpha, const float *c, int rows)
{
    for (int i = 0; i < rows; i++)
        _mm512_storeu_ps(o + i * ldo,
                         _mm512_fmadd_ps(_mm512_loadu_ps(o + i * ldo), _mm512_set1_ps(alpha[i]),
                                         _mm512_loadu_ps(c + i * 16)));
}

/* The tile backend's product (tile_rows.h) on the intrinsics: no call per tile op. */
#define TR_NAME                        amx_tile_rows
#define TR_CONFIG(cfg)                 _tile_loadconfig(cfg)
#define TR_RELEASE()                   _tile_release()
#define TR_ZERO(t)                     _tile_zero(t)
#define TR_LOAD(t, base, stride)       _tile_loadd(t, base, (long)(stride))
#define TR_STORE(t, base, stride)      _tile_stored(t, (void *)(base), (long)(stride))
#define TR_DP(c, a, b)                 _tile_dpbf16ps(c, a, b)
#define TR_FMA_ROWS(tot, c, mul, rows) amx_fma_rows(tot, c, mul, rows)
#include "tile_rows.h"

void dsr1__tile_amx_rows(dsr1__panel_fill_fn fill, const dsr1__rowset *rs, const void *act, int m,
                         float *y, int ldy, void *scratch)
{
    amx_tile_rows(fill, rs, act, m, y, ldy, scratch);
}

static const dsr1__tileops amx = {"amx",     amx_config,   amx_release,  amx_zero,        amx_load,
                                  amx_store, amx_dpbf16ps, amx_fma_rows, amx_rescale_rows};

static const char *amx_why;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

static void amx_probe(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 22))) {
        amx_why = "this CPU has no AMX-TILE/AMX-BF16";
        return;
    }
    if (!__builtin_cpu_supports("avx512f")) {
        amx_why = "this CPU has AMX but no AVX-512F";
        return;
    }
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) {
        amx_why = "Linux refused the AMX tile data permission (arch_prctl ARCH_REQ_XCOMP_PERM)";
        return;
    }
    amx_why = NULL;
}

const dsr1__tileops *dsr1__tile_amx(const char **why)
{
    pthread_once(&amx_once, amx_probe);
    if (why) *why = amx_why;
    return amx_why ? NULL : &amx;
}
