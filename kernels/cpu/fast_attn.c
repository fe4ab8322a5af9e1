/* The fast mode's MLA attention against the bf16 cache (fast_attn.h): the task driver, the
 * staging of cache chunks, the online softmax with its own exp, and the tile backend (AMX
 * or its emulation, through tile.h). Plain C, compiled with -ffp-contract=off. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fast_attn.h"
#include "numeric.h"

/* ---- exp ------------------------------------------------------------------------------- */

float dsr1__fa_exp(float x)
{
    if (x < -87.0f) return 0.0f; /* also -inf */
    if (x > 88.5f) return INFINITY;
    const float n = nearbyintf(x * 1.44269502f); /* round to nearest even (the default mode) */
    float r = fmaf(n, -0.693145751953125f, x);   /* ln 2, high part (exact product) */
    r = fmaf(n, -1.42860677e-06f, r);            /* ln 2, low part */
    float p = 1.98412701e-04f;                   /* exp(r) - its Taylor series to r^7 */
    p = fmaf(p, r, 1.38888892e-03f);
    p = fmaf(p, r, 8.33333377e-03f);
    p = fmaf(p, r, 4.16666679e-02f);
    p = fmaf(p, r, 1.66666672e-01f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    const uint32_t e = (uint32_t)((int)n + 127) << 23; /* 2^n, n in [-126, 128) */
    float two_n;
    memcpy(&two_n, &e, 4);
    return p * two_n;
}

/* ---- staging and softmax (shared by the backends) -------------------------------------- */

typedef struct {
    const dsr1__fa_backend *be;
    int t, heads, kvl, rope;
    const float *q_abs, *q_pe;
    const uint16_t *const *kv_blocks;
    int block_tokens, ld_kv, pos0;
    float scale;
    float *out;
} fa_job;

/* Q of token i, heads h0 .. h0 + hn, as VNNI pairs of 16 heads. */
static void prep_q(const fa_job *j, int i, int h0, dsr1__fa_task *x)
{
    const int w = j->kvl + j->rope;
    memset(x->q, 0, sizeof(uint16_t) * (size_t)x->wpad * DSR1__FA_HG);
    for (int h = 0; h < x->hn; h++) {
        const float *qa = j->q_abs + ((size_t)i * j->heads + h0 + h) * j->kvl;
        const float *qp = j->q_pe + ((size_t)i * j->heads + h0 + h) * j->rope;
        for (int c = 0; c < w; c++)
            x->q[(size_t)(c / 2) * 32 + 2 * h + (c & 1)] =
                dsr1_f32_to_bf16(c < j->kvl ? qa[c] : qp[c - j->kvl]);
    }
}

/* The chunk of positions q0 .. q0 + nv into x->k and x->c. */
static void stage(const fa_job *j, int q0, dsr1__fa_task *x)
{
    const int w = j->kvl + j->rope;
    for (int r = 0; r < DSR1__FA_CHUNK; r++) {
        uint16_t *d = x->k + (size_t)r * x->wpad;
        if (r < x->nv) {
            const int pos = q0 + r;
            const uint16_t *src =
                j->kv_blocks[pos / j->block_tokens] + (size_t)(pos % j->block_tokens) * j->ld_kv;
            memcpy(d, src, sizeof(uint16_t) * (size_t)w);
            memset(d + w, 0, sizeof(uint16_t) * (size_t)(x->wpad - w));
        } else {
            memset(d, 0, sizeof(uint16_t) * (size_t)x->wpad);
        }
    }
    if (j->be->stage_c)
        j->be->stage_c(x);
    else
        dsr1__fa_stage_c(x);
}

void dsr1__fa_stage_c(dsr1__fa_task *x)
{
    for (int q = 0; q < DSR1__FA_CHUNK / 2; q++) {
        const uint16_t *k0 = x->k + (size_t)(2 * q) * x->wpad, *k1 = k0 + x->wpad;
        uint16_t *d = x->c + (size_t)q * x->kvlp * 2;
        for (int c = 0; c < x->kvl; c++) {
            d[2 * c] = k0[c];
            d[2 * c + 1] = k1[c];
        }
        memset(d + 2 * x->kvl, 0, sizeof(uint16_t) * 2 * (size_t)(x->kvlp - x->kvl));
    }
}

void dsr1__fa_softmax(dsr1__fa_task *x)
{
    for (int h = 0; h < x->hn; h++) {
        float s[DSR1__FA_CHUNK], mx = x->m[h];
        for (int r = 0; r < x->nv; r++) {
            s[r] = x->s[r * DSR1__FA_HG + h] * x->scale;
            mx = s[r] > mx ? s[r] : mx;
        }
        const float alpha = dsr1__fa_exp(x->m[h] - mx);
        float sum = 0.0f;
        uint16_t *p = x->p + (size_t)h * DSR1__FA_CHUNK;
        for (int r = 0; r < DSR1__FA_CHUNK; r++) {
            p[r] = r < x->nv ? dsr1_f32_to_bf16(dsr1__fa_exp(s[r] - mx)) : 0;
            sum += dsr1_bf16_to_f32(p[r]);
        }
        x->l[h] = fmaf(x->l[h], alpha, sum);
        x->m[h] = mx;
        x->alpha[h] = alpha;
    }
}

/* ---- the driver ------------------------------------------------------------------------ */

static size_t align64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

static void fa_tasks(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const fa_job *j = arg;
    const int groups = (j->heads + DSR1__FA_HG - 1) / DSR1__FA_HG;
    dsr1__fa_task x = {.wpad = (j->kvl + j->rope + 31) / 32 * 32,
                       .kvlp = (j->kvl + 15) / 16 * 16,
                       .kvl = j->kvl,
                       .scale = j->scale};
    const size_t sz[] = {sizeof(uint16_t) * (size_t)x.wpad * DSR1__FA_HG,
                         sizeof(uint16_t) * DSR1__FA_CHUNK * (size_t)x.wpad,
                         sizeof(uint16_t) * DSR1__FA_CHUNK * (size_t)x.kvlp,
                         sizeof(float) * DSR1__FA_CHUNK * DSR1__FA_HG,
                         sizeof(uint16_t) * DSR1__FA_HG * DSR1__FA_CHUNK,
                         sizeof(float) * 4 * DSR1__FA_HG,
                         sizeof(float) * DSR1__FA_HG * (size_t)x.kvlp,
                         sizeof(float) * DSR1__FA_HG * 16};
    size_t total = 0;
    for (size_t q = 0; q < sizeof sz / sizeof sz[0]; q++) total += align64(sz[q]);
    char *mem = aligned_alloc(64, total);
    if (!mem) abort(); /* a few hundred KB at most; failing here, the process is lost */
    char *at = mem;
    void *bufs[8];
    for (size_t q = 0; q < 8; q++) {
        bufs[q] = at;
        at += align64(sz[q]);
    }
    x.q = bufs[0];
    x.k = bufs[1];
    x.c = bufs[2];
    x.s = bufs[3];
    x.p = bufs[4];
    x.m = bufs[5];
    x.l = x.m + DSR1__FA_HG;
    x.alpha = x.l + DSR1__FA_HG;
    x.o = bufs[6];
    x.tmp = bufs[7];
    memset(x.p, 0, sz[4]);
    for (int task = begin; task < end; task++) {
        const int i = task / groups, h0 = task % groups * DSR1__FA_HG;
        const int P = j->pos0 + i;
        x.hn = j->heads - h0 < DSR1__FA_HG ? j->heads - h0 : DSR1__FA_HG;
        prep_q(j, i, h0, &x);
        for (int h = 0; h < DSR1__FA_HG; h++) {
            x.m[h] = -INFINITY;
            x.l[h] = 0.0f;
        }
        memset(x.o, 0, sz[6]);
        if (j->be->begin) j->be->begin(j->be, &x);
        for (int q0 = 0; q0 <= P; q0 += DSR1__FA_CHUNK) {
            x.nv = P + 1 - q0 < DSR1__FA_CHUNK ? P + 1 - q0 : DSR1__FA_CHUNK;
            stage(j, q0, &x);
            j->be->scores(j->be, &x);
            if (j->be->softmax)
                j->be->softmax(&x);
            else
                dsr1__fa_softmax(&x);
            j->be->pv(j->be, &x);
        }
        if (j->be->end) j->be->end(j->be, &x);
        for (int h = 0; h < x.hn; h++) {
            float *o = j->out + ((size_t)i * j->heads + h0 + h) * j->kvl;
            for (int c = 0; c < j->kvl; c++) o[c] = x.o[(size_t)h * x.kvlp + c] / x.l[h];
        }
    }
    free(mem);
}

void dsr1__fa_attention(const dsr1__fa_backend *be, dsr1_pool *pool, int t, int heads, int kvl,
                        int rope, const float *q_abs, const float *q_pe,
                        const uint16_t *const *kv_blocks, int block_tokens, int ld_kv, int pos0,
                        float scale, float *out)
{
    if (t <= 0 || heads <= 0) return;
    fa_job j = {be,           t,     heads, kvl,   rope, q_abs, q_pe, kv_blocks,
                block_tokens, ld_kv, pos0,  scale, out};
    dsr1_pool_run(pool, t * ((heads + DSR1__FA_HG - 1) / DSR1__FA_HG), 1, fa_tasks, &j);
}

/* ---- the tile backend ------------------------------------------------------------------- */

/* One configuration for the whole task: 0, 1: scores (16 positions x hn heads); 2: P.C
 * (hn heads x 16 columns); 4: K (16 positions x 32 columns); 5: P (hn heads x 32
 * positions); 6: Q (16 pairs x hn heads); 7: C (16 position pairs x 16 columns). */
static void tile_begin(const dsr1__fa_backend *be, const dsr1__fa_task *x)
{
    dsr1__tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    const uint8_t hn = (uint8_t)x->hn, hb = (uint8_t)(4 * x->hn);
    cfg.rows[0] = cfg.rows[1] = 16;
    cfg.colsb[0] = cfg.colsb[1] = hb;
    cfg.rows[2] = hn;
    cfg.colsb[2] = 64;
    cfg.rows[4] = 16;
    cfg.colsb[4] = 64;
    cfg.rows[5] = hn;
    cfg.colsb[5] = 64;
    cfg.rows[6] = 16;
    cfg.colsb[6] = hb;
    cfg.rows[7] = 16;
    cfg.colsb[7] = 64;
    be->tiles->config(&cfg);
}

static void tile_end(const dsr1__fa_backend *be, const dsr1__fa_task *x)
{
    (void)x;
    be->tiles->release();
}

static void tile_scores(const dsr1__fa_backend *be, dsr1__fa_task *x)
{
    const dsr1__tileops *T = be->tiles;
    const size_t kld = sizeof(uint16_t) * (size_t)x->wpad;
    T->zero(0);
    T->zero(1);
    for (int cc = 0; cc < x->wpad / 32; cc++) {
        T->load(6, x->q + (size_t)cc * 16 * 32, 64);
        T->load(4, x->k + (size_t)cc * 32, kld);
        T->dpbf16ps(0, 4, 6);
        T->load(4, x->k + (size_t)16 * x->wpad + (size_t)cc * 32, kld);
        T->dpbf16ps(1, 4, 6);
    }
    T->store(0, x->s, 64);
    T->store(1, x->s + 16 * DSR1__FA_HG, 64);
}

static void tile_pv(const dsr1__fa_backend *be, dsr1__fa_task *x)
{
    const dsr1__tileops *T = be->tiles;
    T->load(5, x->p, 64);
    for (int g = 0; g < x->kvlp / 16; g++) {
        T->zero(2);
        T->load(7, x->c + (size_t)g * 32, sizeof(uint16_t) * 2 * (size_t)x->kvlp);
        T->dpbf16ps(2, 5, 7);
        T->store(2, x->tmp, 64);
        T->rescale_rows(x->o + (size_t)g * 16, (size_t)x->kvlp, x->alpha, x->tmp, x->hn);
    }
}

void dsr1__fa_tile_backend(const dsr1__tileops *t, dsr1__fa_backend *out)
{
    *out = (dsr1__fa_backend){tile_begin, tile_scores, tile_pv, tile_end, t, NULL, NULL};
}
