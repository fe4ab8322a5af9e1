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
#include "rowset.h"

/* One row of `cols` weights dequantised (FP8: `scale` holds the row's block scales). */
static void dequant(dsr1_dtype dtype, int cols, const void *row, const float *scale, float *out)
{
    switch (dtype) {
    case DSR1_DT_F8_E4M3: {
        const uint8_t *q = row;
        for (int b = 0, c0 = 0; c0 < cols; b++, c0 += DSR1_QBLOCK) {
            const int c1 = c0 + DSR1_QBLOCK < cols ? c0 + DSR1_QBLOCK : cols;
            const float sc = scale[b];
            for (int c = c0; c < c1; c++) out[c] = dsr1_e4m3_table[q[c]] * sc;
        }
        break;
    }
    case DSR1_DT_BF16: {
        const uint16_t *h = row;
        for (int c = 0; c < cols; c++) out[c] = dsr1_bf16_to_f32(h[c]);
        break;
    }
    default:
        memcpy(out, row, (size_t)cols * sizeof(float));
        break;
    }
}

void dsr1_linear_dequant_row(const dsr1_linear *w, int r, float *out)
{
    dsr1__rowset rs = {.n = 0};
    dsr1__rowset_add(&rs, w, r, -1);
    dequant(w->dtype, w->cols, rs.row[0], rs.scale[0], out);
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

/* ---- the row-set backend (kernels/rowset.h), which drives expert_ffn ---------------- */

/* Activations: plain rows of k floats. */
static size_t rs_act_bytes(int m, int k)
{
    return sizeof(float) * (size_t)m * k;
}

static void rs_act_pack(const float *x, int ldx, const int *rows, int m, int k, void *dst)
{
    for (int i = 0; i < m; i++)
        memcpy((float *)dst + (size_t)i * k, x + (size_t)(rows ? rows[i] : i) * ldx,
               sizeof(float) * k);
}

static void rs_act_put(void *dst, int m, int k, int i, int c, const float *v, int n)
{
    (void)m;
    memcpy((float *)dst + (size_t)i * k + c, v, sizeof(float) * n);
}

static size_t rs_scratch_bytes(int m, int k)
{
    (void)m;
    return sizeof(float) * DSR1__RS_MAX * (size_t)k;
}

/* The set's rows dequantised, then dotted with every activation row: portable_linear's
 * products exactly. */
static void rs_rows(const dsr1__rowset *rs, const void *act, int m, float *y, int ldy,
                    void *scratch)
{
    const int k = rs->cols;
    float *buf = scratch;
    for (int j = 0; j < rs->n; j++)
        dequant(rs->dtype, k, rs->row[j], rs->scale[j], buf + (size_t)j * k);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < rs->n; j++)
            y[(size_t)i * ldy + j] =
                dot((const float *)act + (size_t)i * k, buf + (size_t)j * k, k);
}

static const dsr1__rowops portable_rowops = {rs_act_bytes, rs_act_pack, rs_act_put,
                                             rs_scratch_bytes, rs_rows};

static dsr1_status portable_expert_ffn(dsr1_pool *pool, const dsr1_expert *ex, int ne,
                                       const float *x, int ldx, float *y, int ldy)
{
    return dsr1__rowops_expert_ffn(&portable_rowops, pool, ex, ne, x, ldx, y, ldy);
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
    const float *q_abs, *q_pe;
    const float *const *kv_blocks;
    int block_tokens, ld_kv, pos0;
    float scale;
    float *out;
} attn_job;

/* Cache row s of the sequence (see kernels.h: rows live in blocks). */
static const float *kv_row(const attn_job *j, int s)
{
    return j->kv_blocks[s / j->block_tokens] + (size_t)(s % j->block_tokens) * j->ld_kv;
}

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
            const float *row = kv_row(j, s);
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
            const float *row = kv_row(j, s);
            for (int c = 0; c < j->kvl; c++) o[c] += w * row[c];
        }
    }
    free(p);
}

static void portable_mla_attention(dsr1_pool *pool, int t, int heads, int kvl, int rope,
                                   const float *q_abs, const float *q_pe,
                                   const float *const *kv_blocks, int block_tokens, int ld_kv,
                                   int pos0, float scale, float *out)
{
    attn_job j = {t,         heads,        kvl,   rope, q_abs, q_pe,
                  kv_blocks, block_tokens, ld_kv, pos0, scale, out};
    dsr1_pool_run(pool, t * heads, 1, attn_task, &j);
}

static const dsr1_kernels portable = {
    .name = "portable",
    .linear = portable_linear,
    .linear_t = portable_linear_t,
    .rmsnorm = portable_rmsnorm,
    .mla_attention = portable_mla_attention,
    .expert_ffn = portable_expert_ffn,
};

const dsr1_kernels *dsr1_kernels_portable(void)
{
    return &portable;
}
