/* The fast mode's MLA attention against the bf16 cache (fast_attn.h): the task driver, the
 * staging of cache chunks, the online softmax with its own exp, and the tile backend (AMX
 * or its emulation, through tile.h). Plain C, compiled with -ffp-contract=off. */
#include <math.h>
#include <pthread.h>
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

/* The chunk of positions q0 .. q0 + nv into x->krow (and x->k) and x->c. */
static void stage(const fa_job *j, int q0, dsr1__fa_task *x, const uint16_t *zero)
{
    const int w = j->kvl + j->rope;
    if (j->be->direct_k && w == x->wpad) {
        for (int r = 0; r < DSR1__FA_CHUNK; r++) {
            const int pos = q0 + r;
            x->krow[r] = r < x->nv ? j->kv_blocks[pos / j->block_tokens] +
                                         (size_t)(pos % j->block_tokens) * j->ld_kv
                                   : zero;
        }
        goto layout;
    }
    for (int r = 0; r < DSR1__FA_CHUNK; r++) {
        x->krow[r] = x->k + (size_t)r * x->wpad;
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
layout:
    if (j->be->stage_c)
        j->be->stage_c(x);
    else
        dsr1__fa_stage_c(x);
}

void dsr1__fa_stage_c(dsr1__fa_task *x)
{
    for (int q = 0; q < DSR1__FA_CHUNK / 2; q++) {
        const uint16_t *k0 = x->krow[2 * q], *k1 = x->krow[2 * q + 1];
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

/* Per-thread buffers kept between calls (a fresh large allocation each call would be
 * mapped and page-faulted each time): slot 0 a task's scratch, slot 1 a call's partial
 * results. They grow to the largest size asked and are freed when the thread ends
 * (bounded: a few hundred KB, and 64 MB of partial results at most). NULL when out of
 * memory. */
typedef struct {
    void *buf[2];
    size_t cap[2];
} thread_bufs;

static pthread_key_t bufs_key;
static pthread_once_t bufs_once = PTHREAD_ONCE_INIT;

static void bufs_free(void *p)
{
    thread_bufs *tb = p;
    free(tb->buf[0]);
    free(tb->buf[1]);
    free(tb);
}

static void bufs_init(void)
{
    if (pthread_key_create(&bufs_key, bufs_free) != 0) abort();
}

static void *thread_buf(int slot, size_t bytes)
{
    pthread_once(&bufs_once, bufs_init);
    thread_bufs *tb = pthread_getspecific(bufs_key);
    if (!tb) {
        tb = calloc(1, sizeof(*tb));
        if (!tb || pthread_setspecific(bufs_key, tb) != 0) {
            free(tb);
            return NULL;
        }
    }
    if (bytes > tb->cap[slot]) {
        free(tb->buf[slot]);
        tb->cap[slot] = 0;
        tb->buf[slot] = aligned_alloc(64, align64(bytes));
        if (!tb->buf[slot]) return NULL;
        tb->cap[slot] = align64(bytes);
    }
    return tb->buf[slot];
}

size_t dsr1__fa_wave_bytes = (size_t)64 << 20;

/* Splits of token i's positions 0 .. P: [s * SPLIT, (s + 1) * SPLIT) clipped to P. */
static int n_splits(const fa_job *j, int i)
{
    return (j->pos0 + i) / DSR1__FA_SPLIT + 1;
}

/* A wave: tokens i0 .. i1, task k of token i is split k - first[i - i0]; its partial
 * results (per head m, l and the unnormalised O) go to slot first[i - i0] + k. */
typedef struct {
    const fa_job *j;
    int i0, i1;
    const int *first; /* [i1 - i0 + 1] */
    float *pm, *pl;   /* [slot][heads] */
    float *po;        /* [slot][heads][kvlp] */
    int kvlp;
} fa_wave;

static void fa_tasks(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const fa_wave *wv = arg;
    const fa_job *j = wv->j;
    const int groups = (j->heads + DSR1__FA_HG - 1) / DSR1__FA_HG;
    dsr1__fa_task x = {.wpad = (j->kvl + j->rope + 31) / 32 * 32,
                       .kvlp = (j->kvl + 15) / 16 * 16,
                       .kvl = j->kvl,
                       .scale = j->scale};
    const size_t qsz = sizeof(uint16_t) * (size_t)x.wpad * DSR1__FA_HG;
    const size_t sz[] = {qsz * (size_t)groups,
                         sizeof(uint16_t) * DSR1__FA_CHUNK * (size_t)x.wpad,
                         sizeof(uint16_t) * DSR1__FA_CHUNK * (size_t)x.kvlp,
                         sizeof(float) * DSR1__FA_CHUNK * DSR1__FA_HG * (size_t)groups,
                         sizeof(uint16_t) * DSR1__FA_HG * DSR1__FA_CHUNK,
                         sizeof(float) * 3 * DSR1__FA_HG * (size_t)groups,
                         sizeof(float) * DSR1__FA_HG * 16,
                         sizeof(uint16_t) * (size_t)x.wpad};
    enum { NB = sizeof sz / sizeof sz[0] };
    size_t total = 0;
    for (int q = 0; q < NB; q++) total += align64(sz[q]);
    char *mem = thread_buf(0, total);
    if (!mem) abort(); /* about 200 KB for R1; failing here, the process is lost */
    char *bufs[NB], *at = mem;
    for (int q = 0; q < NB; q++) {
        bufs[q] = at;
        at += align64(sz[q]);
    }
    uint16_t *qall = (uint16_t *)bufs[0];
    x.k = (uint16_t *)bufs[1];
    x.c = (uint16_t *)bufs[2];
    x.s = (float *)bufs[3];
    x.p = (uint16_t *)bufs[4];
    float *mla = (float *)bufs[5];
    x.tmp = (float *)bufs[6];
    const uint16_t *zero = (const uint16_t *)bufs[7];
    memset(x.p, 0, sz[4]);
    memset(bufs[7], 0, sz[7]);
    int i = wv->i0;
    for (int task = begin; task < end; task++) {
        while (task >= wv->first[i + 1 - wv->i0]) i++;
        const int sp = task - wv->first[i - wv->i0], P = j->pos0 + i;
        const int s0 = sp * DSR1__FA_SPLIT,
                  s1 = P + 1 < s0 + DSR1__FA_SPLIT ? P + 1 : s0 + DSR1__FA_SPLIT;
        float *O = wv->po + (size_t)task * j->heads * x.kvlp;
        for (int g = 0; g < groups; g++) {
            x.hn =
                j->heads - g * DSR1__FA_HG < DSR1__FA_HG ? j->heads - g * DSR1__FA_HG : DSR1__FA_HG;
            x.q = (uint16_t *)((char *)qall + qsz * (size_t)g);
            prep_q(j, i, g * DSR1__FA_HG, &x);
            for (int h = 0; h < DSR1__FA_HG; h++) {
                mla[g * 48 + h] = -INFINITY;
                mla[g * 48 + 16 + h] = 0.0f;
            }
        }
        memset(O, 0, sizeof(float) * (size_t)j->heads * x.kvlp);
        int begun_hn = 0;
        for (int q0 = s0; q0 < s1; q0 += DSR1__FA_CHUNK) {
            x.nv = s1 - q0 < DSR1__FA_CHUNK ? s1 - q0 : DSR1__FA_CHUNK;
            stage(j, q0, &x, zero);
            float *const s_all = (float *)bufs[3];
            if (j->be->scores_all)
                j->be->scores_all(j->be, &x, groups, qall, qsz / sizeof(uint16_t), s_all);
            for (int g = 0; g < groups; g++) {
                x.s = s_all + (size_t)g * DSR1__FA_CHUNK * DSR1__FA_HG;
                x.hn = j->heads - g * DSR1__FA_HG < DSR1__FA_HG ? j->heads - g * DSR1__FA_HG
                                                                : DSR1__FA_HG;
                x.q = (uint16_t *)((char *)qall + qsz * (size_t)g);
                x.m = mla + g * 48;
                x.l = x.m + 16;
                x.alpha = x.m + 32;
                x.o = O + (size_t)g * DSR1__FA_HG * x.kvlp;
                if (x.hn != begun_hn && j->be->begin) {
                    if (begun_hn && j->be->end) j->be->end(j->be, &x);
                    j->be->begin(j->be, &x);
                }
                begun_hn = x.hn;
                if (!j->be->scores_all) j->be->scores(j->be, &x);
                if (j->be->softmax)
                    j->be->softmax(&x);
                else
                    dsr1__fa_softmax(&x);
                j->be->pv(j->be, &x);
            }
        }
        if (begun_hn && j->be->end) j->be->end(j->be, &x);
        for (int h = 0; h < j->heads; h++) {
            wv->pm[(size_t)task * j->heads + h] = mla[h / 16 * 48 + h % 16];
            wv->pl[(size_t)task * j->heads + h] = mla[h / 16 * 48 + 16 + h % 16];
        }
    }
}

/* out[i][h] from the splits of token i in increasing order: M = max m_s; w_s = exp(m_s - M);
 * L = fma(l_s, w_s, L), O = fma(O_s, w_s, O) split after split from 0; out = O / L. */
static void fa_combine(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const fa_wave *wv = arg;
    const fa_job *j = wv->j;
    for (int task = begin; task < end; task++) {
        const int i = wv->i0 + task / j->heads, h = task % j->heads;
        const int f0 = wv->first[i - wv->i0], f1 = wv->first[i + 1 - wv->i0];
        float M = -INFINITY, L = 0.0f;
        for (int s = f0; s < f1; s++) {
            const float m = wv->pm[(size_t)s * j->heads + h];
            M = m > M ? m : M;
        }
        float *o = j->out + ((size_t)i * j->heads + h) * j->kvl;
        for (int c = 0; c < j->kvl; c++) o[c] = 0.0f;
        for (int s = f0; s < f1; s++) {
            const float w = dsr1__fa_exp(wv->pm[(size_t)s * j->heads + h] - M);
            const float *os = wv->po + ((size_t)s * j->heads + h) * wv->kvlp;
            L = fmaf(wv->pl[(size_t)s * j->heads + h], w, L);
            for (int c = 0; c < j->kvl; c++) o[c] = fmaf(os[c], w, o[c]);
        }
        for (int c = 0; c < j->kvl; c++) o[c] = o[c] / L;
    }
}

void dsr1__fa_attention(const dsr1__fa_backend *be, dsr1_pool *pool, int t, int heads, int kvl,
                        int rope, const float *q_abs, const float *q_pe,
                        const uint16_t *const *kv_blocks, int block_tokens, int ld_kv, int pos0,
                        float scale, float *out)
{
    if (t <= 0 || heads <= 0) return;
    fa_job j = {be,           t,     heads, kvl,   rope, q_abs, q_pe, kv_blocks,
                block_tokens, ld_kv, pos0,  scale, out};
    const int kvlp = (kvl + 15) / 16 * 16;
    /* tokens in waves whose partial results stay under 64 MB (at least one token) */
    const size_t per_split = sizeof(float) * (size_t)heads * (kvlp + 2);
    const size_t per_token = per_split * (size_t)n_splits(&j, t - 1);
    const size_t fit = dsr1__fa_wave_bytes / per_token;
    const int wave = fit < 1 ? 1 : fit > (size_t)t ? t : (int)fit;
    int *first = malloc(sizeof(int) * ((size_t)wave + 1));
    float *part = thread_buf(1, per_split * (size_t)wave * n_splits(&j, t - 1));
    if (!first || !part) abort(); /* bounded above; failing here, the process is lost */
    for (int i0 = 0; i0 < t; i0 += wave) {
        const int i1 = i0 + wave < t ? i0 + wave : t;
        first[0] = 0;
        for (int i = i0; i < i1; i++) first[i - i0 + 1] = first[i - i0] + n_splits(&j, i);
        const int slots = first[i1 - i0];
        /* O first: 64-byte aligned rows (kvlp is a multiple of 16) */
        float *po = part, *pm = po + (size_t)slots * heads * kvlp, *pl = pm + (size_t)slots * heads;
        fa_wave wv = {&j, i0, i1, first, pm, pl, po, kvlp};
        dsr1_pool_run(pool, slots, 1, fa_tasks, &wv);
        dsr1_pool_run(pool, (i1 - i0) * heads, 8, fa_combine, &wv);
    }
    free(first);
}

/* ---- the tile backend ------------------------------------------------------------------- */

/* One configuration for a group of hn heads: 0, 1: scores (16 positions x hn heads); 2: P.C
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
    *out = (dsr1__fa_backend){
        .begin = tile_begin, .scores = tile_scores, .pv = tile_pv, .end = tile_end, .tiles = t};
}
