/* The tile backend's product (fast.h's tile order), written once and included twice: by
 * fast_tiles.c over the tile layer's emulation and by tile_amx.c over the AMX intrinsics,
 * so that the loop the tests run bit for bit against their model on every machine is the
 * loop AMX machines run, without an indirect call per tile instruction there. The
 * includer defines, with tile numbers as integer constants (tile.h's convention: 0-3
 * accumulators, 4-5 A, 6-7 B):
 *   TR_NAME                          the function's name
 *   TR_CONFIG(cfg) TR_RELEASE() TR_ZERO(t) TR_LOAD(t, base, stride) TR_STORE(t, base, stride)
 *   TR_DP(c, a, b) TR_FMA_ROWS(tot, c, mul, rows)       (as dsr1__tileops' members)
 *
 * TR_NAME(fill, rs, act, m, y, ldy, scratch): y[i][j] = act[i] . row j of rs, i < m,
 * j < rs->n. The set's panel is filled once (fill: dsr1__fast_panel_fill or its AVX-512
 * twin, the same bits); activation rows go 32 at a time, as two A tiles (4, 5) against
 * one B tile (6) of the panel: three tile loads per two TDPBF16PS. Block b's sums go to
 * the accumulator pair (0, 1) or (2, 3) by the parity of b, so that block b's products
 * are issued before block b - 1's pair is stored and scaled into the totals: the AMX unit
 * need not wait for the epilogue. Per output element nothing changes: per block, C from
 * zero takes the block's TDPBF16PS in order, then tot = fma(C, scale_b, tot), blocks in
 * increasing order. scratch: the panel, the multipliers, two stored accumulators and two
 * tiles of totals (tile_scratch_bytes). */

static void TR_NAME(void (*fill)(const dsr1__rowset *, uint16_t *, float *), const dsr1__rowset *rs,
                    const void *act, int m, float *y, int ldy, void *scratch)
{
    const int k = rs->cols, nb = (k + DSR1_QBLOCK - 1) / DSR1_QBLOCK, np = dsr1__fast_pairs(k);
    const size_t ld = dsr1__fast_act_ld(k), lda = ld * sizeof(uint16_t);
    uint16_t *P = scratch;
    float *mul = (float *)((char *)scratch + dsr1__fast_panel_bytes(k));
    float *cb = (float *)((char *)mul + dsr1__fast_mul_bytes(k)), *tot = cb + 512;
    fill(rs, P, mul);
    dsr1__tilecfg cfg;
    int cfg0 = -1, cfg1 = -1;
    for (int i0 = 0; i0 < m; i0 += 32) {
        const int r0 = m - i0 < 16 ? m - i0 : 16;
        const int r1 = m - i0 <= 16 ? 0 : m - i0 - 16 < 16 ? m - i0 - 16 : 16;
        if (r0 != cfg0 || r1 != cfg1) {
            memset(&cfg, 0, sizeof cfg);
            cfg.palette = 1;
            cfg.rows[0] = cfg.rows[2] = cfg.rows[4] = (uint8_t)r0;
            cfg.colsb[0] = cfg.colsb[2] = cfg.colsb[4] = 64;
            if (r1 > 0) { /* a tile with 0 rows is unconfigured: A1 and its pair unused */
                cfg.rows[1] = cfg.rows[3] = cfg.rows[5] = (uint8_t)r1;
                cfg.colsb[1] = cfg.colsb[3] = cfg.colsb[5] = 64;
            }
            cfg.rows[6] = 16;
            cfg.colsb[6] = 64;
            TR_CONFIG(&cfg);
            cfg0 = r0;
            cfg1 = r1;
        }
        memset(tot, 0, sizeof(float) * 512);
        const uint16_t *A0 = (const uint16_t *)act + (size_t)i0 * ld, *A1 = A0 + 16 * ld;
        for (int b = 0; b <= nb; b++) {
            if (b < nb) { /* block b's products */
                const int p1 = (b + 1) * 64 < np ? (b + 1) * 64 : np;
                if (b % 2 == 0) {
                    TR_ZERO(0);
                    if (r1) TR_ZERO(1);
                } else {
                    TR_ZERO(2);
                    if (r1) TR_ZERO(3);
                }
                for (int p = b * 64; p < p1; p += 16) {
                    TR_LOAD(4, A0 + 2 * p, lda);
                    if (r1) TR_LOAD(5, A1 + 2 * p, lda);
                    TR_LOAD(6, P + (size_t)p * 32, 64);
                    if (b % 2 == 0) {
                        TR_DP(0, 4, 6);
                        if (r1) TR_DP(1, 5, 6);
                    } else {
                        TR_DP(2, 4, 6);
                        if (r1) TR_DP(3, 5, 6);
                    }
                }
            }
            if (b > 0) { /* block b - 1's sums, scaled into the totals */
                if ((b - 1) % 2 == 0) {
                    TR_STORE(0, cb, 64);
                    if (r1) TR_STORE(1, cb + 256, 64);
                } else {
                    TR_STORE(2, cb, 64);
                    if (r1) TR_STORE(3, cb + 256, 64);
                }
                TR_FMA_ROWS(tot, cb, mul + (b - 1) * DSR1__RS_MAX, r0);
                if (r1) TR_FMA_ROWS(tot + 256, cb + 256, mul + (b - 1) * DSR1__RS_MAX, r1);
            }
        }
        for (int i = 0; i < r0 + r1; i++)
            for (int j = 0; j < rs->n; j++)
                y[(size_t)(i0 + i) * ldy + j] = tot[(i / 16) * 256 + (i % 16) * 16 + j];
    }
    if (cfg0 >= 0) TR_RELEASE();
}
