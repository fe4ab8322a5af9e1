/* A thin layer of AMX tile operations (tile config, load, store, zero, TDPBF16PS) with two
 * implementations: the real instructions (tile_amx.c, built with -mamx-tile -mamx-bf16
 * where the compiler has them) and a bit-exact software emulation (tile_emu.c), so that the
 * tile kernels of the fast precision mode (fast.h) run, and are tested, on every machine.
 *
 * Register convention of the layer (the real instructions take tile numbers as immediates,
 * so tile_amx.c spells out only these): tiles 0-3 are fp32 accumulators, 4-5 the bf16 "A"
 * operands (rows of activations), 6-7 the bf16 "B" operands (VNNI pairs of weights);
 * dpbf16ps(c, a, b) takes c in 0..3, a in 4..5, b in 6..7.
 *
 * Threads: tile state is per thread (as the hardware's is); a user configures the tiles
 * (config) before use on its thread and releases them (release) when done. */
#ifndef DSR1_TILE_H
#define DSR1_TILE_H

#include <stddef.h>
#include <stdint.h>

#define DSR1__TILES      8
#define DSR1__TILE_ROWS  16 /* max rows of a tile */
#define DSR1__TILE_COLSB 64 /* max bytes per tile row */

/* The 64-byte memory operand of LDTILECFG, palette 1 (Intel SDM vol. 2, LDTILECFG). */
typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16]; /* bytes per row, tiles 0..7 (8..15 reserved, 0) */
    uint8_t rows[16];   /* rows, tiles 0..7 (8..15 reserved, 0) */
} dsr1__tilecfg;
_Static_assert(sizeof(dsr1__tilecfg) == 64, "LDTILECFG's operand is 64 bytes");

typedef struct dsr1__tileops {
    const char *name;                         /* "amx" or "emulated" */
    void (*config)(const dsr1__tilecfg *cfg); /* LDTILECFG */
    void (*release)(void);                    /* TILERELEASE */
    void (*zero)(int t);                      /* TILEZERO */
    /* TILELOADD / TILESTORED: rows[t] rows of colsb[t] bytes, `stride` bytes apart */
    void (*load)(int t, const void *base, size_t stride);
    void (*store)(int t, const void *base_out, size_t stride);
    void (*dpbf16ps)(int c, int a, int b); /* TDPBF16PS tmm_c, tmm_a, tmm_b */
    /* Not a tile instruction: the epilogue of a 128-column scale block, tot[i*16 + j] =
     * fma(c[i*16 + j], mul[j], tot[i*16 + j]) for i < rows, j < 16, an IEEE fp32 fused
     * multiply-add rounded to nearest even without flushing (the AMX side vectorises it,
     * the emulation calls fmaf: the same bits). */
    void (*fma_rows)(float *tot, const float *c, const float *mul, int rows);
    /* Not a tile instruction either: the rescale of an online softmax's output rows,
     * o[i*ldo + j] = fma(o[i*ldo + j], alpha[i], c[i*16 + j]) for i < rows, j < 16, rounded
     * like fma_rows (fast_attn.h). */
    void (*rescale_rows)(float *o, size_t ldo, const float *alpha, const float *c, int rows);
} dsr1__tileops;

/* The emulation: always available. */
const dsr1__tileops *dsr1__tile_emu(void);

/* The real instructions, or NULL (why: a sentence) when this build has none, the CPU lacks
 * AMX-TILE/AMX-BF16, or Linux refuses the tile data permission (arch_prctl
 * ARCH_REQ_XCOMP_PERM, requested once per process on the first call). */
const dsr1__tileops *dsr1__tile_amx(const char **why);

/* One TDPBF16PS multiply-add step as the emulation does it (exposed for the tests):
 * fma(a, b, c) in fp32, rounded to nearest even, with denormal inputs read as zero and a
 * denormal result flushed to zero (sign kept). */
float dsr1__fma_daz_ftz(float a, float b, float c);

#endif
