/* The portable reference kernels: plain C11, float32 throughout, threaded over the pool.
 *
 * Weights are dequantised row by row exactly as DeepSeek's reference does it
 * (e4m3 value x block scale, both exact in float32), into a small per-thread buffer, and
 * dotted with every activation row while the row is hot in cache. Dot products keep
 * eight partial sums so the compiler can vectorise them without -ffast-math. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "numeric.h"

void dsr1_linear_dequant_row(const dsr1_linear *w, int r, float *out)
{
    const size_t base = (size_t)r * w->cols;
    switch (w->dtype) {
    case DSR1_DT_F8_E4M3: {
        const uint8_t *q = (const uint8_t *)w->data + base;
        const int nb = (w->cols + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
        const float *s = w->scale + (size_t)(r / DSR1_QBLOCK) * nb;
        for (int b = 0; b < nb; b++) {
            const int c0 = b * DSR1_QBLOCK;
            const int c1 = c0 + DSR1_QBLOCK < w->cols ? c0 + DSR1_QBLOCK : w->cols;
            const float sc = s[b];
            for (int c = c0; c < c1; c++) out[c] = dsr1_e4m3_table[q[c]] * sc;
        }
        break;
    }
    case DSR1_DT_BF16: {
        const uint16_t *h = (const uint16_t *)w->data + base;
        for (int c = 0; c < w->cols; c++) out[c] = dsr1_bf16_to_f32(h[c]);
        break;
    }
    default:
        memcpy(out, (const float *)w->data + base, (size_t)w->cols * sizeof(float));
        break;
    }
}

static float dot(const float *a, const float *b, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Rows of W dequantised per task: enough to reuse each activation row from cache. */
#define ROWS_PER_TASK 8

typedef struct {
    const dsr1_linear *w;
    int r0, r1;
    const float *x;
    int ldx, m;
    float *y;
    int ldy;
} linear_job;

static void linear_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const linear_job *j = arg;
    const int k = j->w->cols;
    float *buf = malloc((size_t)ROWS_PER_TASK * k * sizeof(float));
    if (!buf) abort(); /* a few KB; failing here means the process is already lost */
    for (int t = begin; t < end; t++) {
        const int ra = j->r0 + t * ROWS_PER_TASK;
        const int rb = ra + ROWS_PER_TASK < j->r1 ? ra + ROWS_PER_TASK : j->r1;
        for (int r = ra; r < rb; r++) dsr1_linear_dequant_row(j->w, r, buf + (size_t)(r - ra) * k);
        for (int i = 0; i < j->m; i++) {
            const float *xi = j->x + (size_t)i * j->ldx;
            float *yi = j->y + (size_t)i * j->ldy - j->r0;
            for (int r = ra; r < rb; r++) yi[r] = dot(xi, buf + (size_t)(r - ra) * k, k);
        }
    }
    free(buf);
}

static void portable_linear(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x,
                            int ldx, int m, float *y, int ldy)
{
    linear_job j = {w, r0, r1, x, ldx, m, y, ldy};
    const int tasks = (r1 - r0 + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
    /* small products are not worth waking threads for */
    const long work = (long)(r1 - r0) * w->cols * (m + 1);
    dsr1_pool_run(work < 32768 ? NULL : pool, tasks, 1, linear_task, &j);
}

typedef struct {
    const dsr1_linear *w;
    int r0, r1;
    const float *x;
    int ldx, m;
    float *y;
    int ldy;
} linear_t_job;

/* Each task owns a range of output columns, so no two threads write the same element;
 * the sum over r runs in increasing r for every column, whatever the split. */
static void linear_t_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const linear_t_job *j = arg;
    const int k = j->w->cols;
    float *row = malloc((size_t)k * sizeof(float));
    if (!row) abort();
    const int c0 = begin * DSR1_QBLOCK, c1 = end * DSR1_QBLOCK < k ? end * DSR1_QBLOCK : k;
    for (int i = 0; i < j->m; i++)
        for (int c = c0; c < c1; c++) j->y[(size_t)i * j->ldy + c] = 0.0f;
    for (int r = j->r0; r < j->r1; r++) {
        dsr1_linear_dequant_row(j->w, r, row);
        for (int i = 0; i < j->m; i++) {
            const float xv = j->x[(size_t)i * j->ldx + (r - j->r0)];
            float *yi = j->y + (size_t)i * j->ldy;
            for (int c = c0; c < c1; c++) yi[c] += xv * row[c];
        }
    }
    free(row);
}

static void portable_linear_t(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x,
                              int ldx, int m, float *y, int ldy)
{
    linear_t_job j = {w, r0, r1, x, ldx, m, y, ldy};
    const int tasks = (w->cols + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    const long work = (long)(r1 - r0) * w->cols * (m + 1);
    dsr1_pool_run(work < 32768 ? NULL : pool, tasks, 1, linear_t_task, &j);
}

static void portable_rmsnorm(dsr1_pool *pool, const float *x, int ldx, const float *g, int n, int m,
                             float eps, float *y, int ldy)
{
    (void)pool; /* memory-bound and tiny next to the matrix products */
    for (int i = 0; i < m; i++) {
        const float *xi = x + (size_t)i * ldx;
        float *yi = y + (size_t)i * ldy;
        double ss = 0;
        for (int c = 0; c < n; c++) ss += (double)xi[c] * xi[c];
        const float inv = (float)(1.0 / sqrt(ss / n + eps));
        for (int c = 0; c < n; c++) yi[c] = xi[c] * inv * g[c];
    }
}

typedef struct {
    int t, heads, kvl, rope;
    const float *q_abs, *q_pe, *kv;
    int ld_kv, pos0;
    float scale;
    float *out;
} attn_job;

/* One task = one (token, head) pair. */
static void attn_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const attn_job *j = arg;
    const int nctx = j->pos0 + j->t;
    float *p = malloc((size_t)nctx * sizeof(float));
    if (!p) abort();
    for (int task = begin; task < end; task++) {
        const int i = task / j->heads, h = task % j->heads;
        const float *qa = j->q_abs + ((size_t)i * j->heads + h) * j->kvl;
        const float *qp = j->q_pe + ((size_t)i * j->heads + h) * j->rope;
        const int n = j->pos0 + i + 1; /* causal: positions 0..pos0+i */
        float mx = -INFINITY;
        for (int s = 0; s < n; s++) {
            const float *row = j->kv + (size_t)s * j->ld_kv;
            p[s] = (dot(qa, row, j->kvl) + dot(qp, row + j->kvl, j->rope)) * j->scale;
            if (p[s] > mx) mx = p[s];
        }
        float sum = 0;
        for (int s = 0; s < n; s++) {
            p[s] = expf(p[s] - mx);
            sum += p[s];
        }
        const float inv = 1.0f / sum;
        float *o = j->out + ((size_t)i * j->heads + h) * j->kvl;
        for (int c = 0; c < j->kvl; c++) o[c] = 0.0f;
        for (int s = 0; s < n; s++) {
            const float w = p[s] * inv;
            const float *row = j->kv + (size_t)s * j->ld_kv;
            for (int c = 0; c < j->kvl; c++) o[c] += w * row[c];
        }
    }
    free(p);
}

static void portable_mla_attention(dsr1_pool *pool, int t, int heads, int kvl, int rope,
                                   const float *q_abs, const float *q_pe, const float *kv,
                                   int ld_kv, int pos0, float scale, float *out)
{
    attn_job j = {t, heads, kvl, rope, q_abs, q_pe, kv, ld_kv, pos0, scale, out};
    dsr1_pool_run(pool, t * heads, 1, attn_task, &j);
}

static const dsr1_kernels portable = {
    .name = "portable",
    .linear = portable_linear,
    .linear_t = portable_linear_t,
    .rmsnorm = portable_rmsnorm,
    .mla_attention = portable_mla_attention,
};

const dsr1_kernels *dsr1_kernels_portable(void)
{
    return &portable;
}
