/* The drivers of kernels/rowset.h: `linear` and the grouped expert FFN over any backend.
 *
 * expert_ffn runs the experts in waves (consecutive experts up to WAVE_ROWS token rows in
 * all, which bounds the packed activations), each in three steps over the pool:
 *   0. every expert's tokens gathered from x into the backend's layout;
 *   A. units of (expert, UNIT_A rows of gate and the same rows of up), in one row set so
 *      that the unit reads the expert's activations once for both; silu(g) * u goes
 *      straight into the expert's hidden activations (backend layout);
 *   B. units of DSR1__RS_MAX output rows, each running every expert of the wave in order:
 *      its down rows times its hidden activations, times the routing weight, added to y.
 * The units of A span the weight rows of all the wave's experts and every unit of B spans
 * all its experts, so a decode step (a token or two per expert) spreads the rows of all
 * active experts over the threads with three barriers, where running expert after expert
 * takes three per expert. One unit of B owns its output elements across the wave, which
 * fixes the order of the additions into y: expert order, as expert after expert. */
#include "rowset.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LIN_MSUPER 256                /* activation rows packed at once by linear */
#define WAVE_ROWS  512                /* token rows per wave of experts */
#define UNIT_A     (DSR1__RS_MAX / 2) /* gate rows (and as many up rows) per unit of A */
#define SMALL_WORK 32768              /* multiply-adds below which one thread does it all */

static size_t round64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

static size_t max_size(size_t a, size_t b)
{
    return a > b ? a : b;
}

void dsr1__rowset_add(dsr1__rowset *rs, const dsr1_linear *w, int r, int pf)
{
    const size_t rowbytes = (size_t)w->cols * dsr1_dtype_size(w->dtype);
    const int nb = (w->cols + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    rs->dtype = w->dtype;
    rs->cols = w->cols;
    rs->row[rs->n] = (const char *)w->data + (size_t)r * rowbytes;
    rs->scale[rs->n] =
        w->dtype == DSR1_DT_F8_E4M3 ? w->scale + (size_t)(r / DSR1_QBLOCK) * nb : NULL;
    rs->pf[rs->n] = pf >= 0 && pf < w->rows ? (const char *)w->data + (size_t)pf * rowbytes : NULL;
    rs->n++;
}

/* ---- linear ------------------------------------------------------------------------ */

typedef struct {
    const dsr1__rowops *ops;
    const dsr1_linear *w;
    int r0, r1, m;
    const void *act;
    float *y;
    int ldy;
    char *scratch; /* per thread: stride bytes */
    size_t stride;
} lin_job;

static void lin_task(void *arg, int begin, int end, int tid)
{
    const lin_job *j = arg;
    for (int t = begin; t < end; t++) {
        const int ra = j->r0 + t * DSR1__RS_MAX;
        const int n = j->r1 - ra < DSR1__RS_MAX ? j->r1 - ra : DSR1__RS_MAX;
        dsr1__rowset rs = {.n = 0};
        for (int q = 0; q < n; q++) dsr1__rowset_add(&rs, j->w, ra + q, ra + q + DSR1__RS_GROUP);
        j->ops->rows(&rs, j->act, j->m, j->y + (ra - j->r0), j->ldy,
                     j->scratch + (size_t)tid * j->stride);
    }
}

void dsr1__rowops_linear(const dsr1__rowops *ops, dsr1_pool *pool, const dsr1_linear *w, int r0,
                         int r1, const float *x, int ldx, int m, float *y, int ldy)
{
    if (m <= 0 || r1 <= r0) return;
    const int k = w->cols, ms = m < LIN_MSUPER ? m : LIN_MSUPER, mt = m % LIN_MSUPER;
    /* small products are not worth waking threads for */
    dsr1_pool *p = (long)(r1 - r0) * k * (m + 1) < SMALL_WORK ? NULL : pool;
    /* activation rows in superblocks, packed once each and read by every row set */
    size_t ab = ops->act_bytes(ms, k), sb = ops->scratch_bytes(ms, k);
    if (mt) {
        ab = max_size(ab, ops->act_bytes(mt, k));
        sb = max_size(sb, ops->scratch_bytes(mt, k));
    }
    const size_t stride = round64(sb);
    void *act = aligned_alloc(64, round64(ab));
    char *scratch = aligned_alloc(64, stride * dsr1_pool_size(p) + 64);
    if (!act || !scratch) abort(); /* a few MB; failing here, the process is lost */
    for (int i0 = 0; i0 < m; i0 += LIN_MSUPER) {
        const int mm = m - i0 < LIN_MSUPER ? m - i0 : LIN_MSUPER;
        ops->act_pack(x + (size_t)i0 * ldx, ldx, NULL, mm, k, act);
        lin_job j = {ops, w, r0, r1, mm, act, y + (size_t)i0 * ldy, ldy, scratch, stride};
        dsr1_pool_run(p, (r1 - r0 + DSR1__RS_MAX - 1) / DSR1__RS_MAX, 1, lin_task, &j);
    }
    free(scratch);
    free(act);
}

/* ---- linear_t ---------------------------------------------------------------------- */

typedef struct {
    const dsr1__rowops *ops;
    const dsr1_linear *w;
    int r0, tk0, k, m; /* k = tk0 + r1 - r0 */
    const void *act;
    float *y;
    int ldy;
    char *scratch;
    size_t stride;
} lt_job;

static void lt_task(void *arg, int begin, int end, int tid)
{
    const lt_job *j = arg;
    const dsr1_linear *w = j->w;
    const int nbc = (w->cols + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    const float *srow = w->scale + (size_t)((j->r0 - j->tk0) / DSR1_QBLOCK) * nbc;
    for (int t = begin; t < end; t++) {
        const int c0 = t * DSR1__RS_MAX;
        dsr1__rowset rs = {
            .dtype = w->dtype, .cols = j->k, .tld = w->cols, .tk0 = j->tk0, .tsld = nbc};
        rs.n = w->cols - c0 < DSR1__RS_MAX ? w->cols - c0 : DSR1__RS_MAX;
        for (int q = 0; q < rs.n; q++) {
            rs.row[q] = (const uint8_t *)w->data + (size_t)j->r0 * w->cols + c0 + q;
            rs.scale[q] = srow + (c0 + q) / DSR1_QBLOCK;
            rs.pf[q] = NULL;
        }
        j->ops->rows(&rs, j->act, j->m, j->y + c0, j->ldy, j->scratch + (size_t)tid * j->stride);
    }
}

void dsr1__rowops_linear_t(const dsr1__rowops *ops, dsr1_pool *pool, const dsr1_linear *w, int r0,
                           int r1, const float *x, int ldx, int m, float *y, int ldy)
{
    if (m <= 0 || r1 <= r0) return;
    const int tk0 = r0 % DSR1_QBLOCK, k = tk0 + r1 - r0;
    const int ms = m < LIN_MSUPER ? m : LIN_MSUPER,
              sets = (w->cols + DSR1__RS_MAX - 1) / DSR1__RS_MAX;
    dsr1_pool *p = (long)(r1 - r0) * w->cols * (m + 1) < SMALL_WORK ? NULL : pool;
    const size_t stride = round64(ops->scratch_bytes(ms, k));
    /* the activations behind tk0 zero columns, then packed once per superblock */
    float *xs = malloc(sizeof(float) * (size_t)ms * k);
    void *act = aligned_alloc(64, round64(ops->act_bytes(ms, k)));
    char *scratch = aligned_alloc(64, stride * dsr1_pool_size(p) + 64);
    if (!xs || !act || !scratch) abort(); /* small; failing here, the process is lost */
    for (int i0 = 0; i0 < m; i0 += LIN_MSUPER) {
        const int mm = m - i0 < LIN_MSUPER ? m - i0 : LIN_MSUPER;
        for (int i = 0; i < mm; i++) {
            memset(xs + (size_t)i * k, 0, sizeof(float) * tk0);
            memcpy(xs + (size_t)i * k + tk0, x + (size_t)(i0 + i) * ldx, sizeof(float) * (r1 - r0));
        }
        /* a short last superblock packs and reads fewer rows of the same buffers */
        ops->act_pack(xs, k, NULL, mm, k, act);
        lt_job j = {ops, w, r0, tk0, k, mm, act, y + (size_t)i0 * ldy, ldy, scratch, stride};
        dsr1_pool_run(p, sets, 1, lt_task, &j);
    }
    free(scratch);
    free(act);
    free(xs);
}

/* ---- expert_ffn -------------------------------------------------------------------- */

typedef struct {
    const dsr1__rowops *ops;
    const dsr1_expert *ex; /* the wave's experts */
    int ne;
    const float *x;
    int ldx;
    float *y;
    int ldy, k, d;
    char *xa, *ha;             /* gathered inputs, hidden activations (backend layout) */
    const size_t *xoff, *hoff; /* [ne] each expert's offsets in xa, ha */
    const int *ustart;         /* [ne + 1] each expert's first unit of step A */
    char *scratch;             /* per thread: backend scratch, then out rows at out_off */
    size_t stride, out_off;
} ffn_job;

static float silu_mul(float g, float u)
{
    const float s = g / (1.0f + expf(-g));
    return s * u;
}

static void pack_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const ffn_job *j = arg;
    for (int e = begin; e < end; e++)
        if (j->ex[e].n > 0)
            j->ops->act_pack(j->x, j->ldx, j->ex[e].rows, j->ex[e].n, j->k, j->xa + j->xoff[e]);
}

static void gate_up_task(void *arg, int begin, int end, int tid)
{
    const ffn_job *j = arg;
    char *sc = j->scratch + (size_t)tid * j->stride;
    float *out = (float *)(sc + j->out_off);
    int e = 0;
    for (int u = begin; u < end; u++) {
        while (j->ustart[e + 1] <= u) e++;
        const dsr1_expert *x = &j->ex[e];
        const int inter = x->gate->rows, ra = (u - j->ustart[e]) * UNIT_A;
        const int n = inter - ra < UNIT_A ? inter - ra : UNIT_A, half = DSR1__RS_GROUP / 2;
        /* gate and up rows by halves of a group, so that every group holds both */
        dsr1__rowset rs = {.n = 0};
        int gpos[UNIT_A], upos[UNIT_A];
        for (int h0 = 0; h0 < n; h0 += half) {
            const int h1 = n - h0 < half ? n : h0 + half;
            for (int q = h0; q < h1; q++) {
                gpos[q] = rs.n;
                dsr1__rowset_add(&rs, x->gate, ra + q, ra + q + half);
            }
            for (int q = h0; q < h1; q++) {
                upos[q] = rs.n;
                dsr1__rowset_add(&rs, x->up, ra + q, ra + q + half);
            }
        }
        j->ops->rows(&rs, j->xa + j->xoff[e], x->n, out, DSR1__RS_MAX, sc);
        for (int i = 0; i < x->n; i++) {
            const float *o = out + (size_t)i * DSR1__RS_MAX;
            float h[UNIT_A];
            for (int q = 0; q < n; q++) h[q] = silu_mul(o[gpos[q]], o[upos[q]]);
            j->ops->act_put(j->ha + j->hoff[e], x->n, inter, i, ra, h, n);
        }
    }
}

static void down_task(void *arg, int begin, int end, int tid)
{
    const ffn_job *j = arg;
    char *sc = j->scratch + (size_t)tid * j->stride;
    float *out = (float *)(sc + j->out_off);
    for (int u = begin; u < end; u++) {
        const int ra = u * DSR1__RS_MAX, n = j->d - ra < DSR1__RS_MAX ? j->d - ra : DSR1__RS_MAX;
        for (int e = 0; e < j->ne; e++) {
            const dsr1_expert *x = &j->ex[e];
            if (x->n == 0) continue;
            dsr1__rowset rs = {.n = 0};
            for (int q = 0; q < n; q++)
                dsr1__rowset_add(&rs, x->down, ra + q, ra + q + DSR1__RS_GROUP);
            j->ops->rows(&rs, j->ha + j->hoff[e], x->n, out, DSR1__RS_MAX, sc);
            for (int i = 0; i < x->n; i++) {
                float *yt = j->y + (size_t)x->rows[i] * j->ldy + ra;
                const float *o = out + (size_t)i * DSR1__RS_MAX, w = x->weight[i];
                for (int q = 0; q < n; q++) yt[q] += o[q] * w;
            }
        }
    }
}

/* Shapes that agree with each other: gate and up [inter][k] of one dtype, down [d][inter],
 * the same k and d for every expert with tokens (k = -1: no expert has any). */
static dsr1_status check_experts(const dsr1_expert *ex, int ne, int *k, int *d)
{
    *k = *d = -1;
    for (int e = 0; e < ne; e++) {
        const dsr1_expert *x = &ex[e];
        if (x->n < 0 || (x->n > 0 && (!x->gate || !x->up || !x->down || !x->rows || !x->weight)))
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "expert_ffn: expert %d: %d tokens, or weights or token list "
                              "missing",
                              e, x->n);
        if (x->n == 0) continue;
        if (*k < 0) {
            *k = x->gate->cols;
            *d = x->down->rows;
        }
        const int inter = x->gate->rows;
        if (x->up->rows != inter || x->down->cols != inter || x->gate->cols != *k ||
            x->up->cols != *k || x->down->rows != *d || x->up->dtype != x->gate->dtype)
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "expert_ffn: expert %d: gate [%d, %d] %s, up [%d, %d] %s, down "
                              "[%d, %d] do not fit together or with %d inputs and %d outputs",
                              e, x->gate->rows, x->gate->cols, dsr1_dtype_name(x->gate->dtype),
                              x->up->rows, x->up->cols, dsr1_dtype_name(x->up->dtype),
                              x->down->rows, x->down->cols, *k, *d);
    }
    return DSR1_OK;
}

/* The end of the wave that starts at expert e0. */
static int wave_end(const dsr1_expert *ex, int ne, int e0)
{
    int rows = 0, e = e0;
    while (e < ne && (rows == 0 || rows + ex[e].n <= WAVE_ROWS)) rows += ex[e++].n;
    return e;
}

/* Offsets of the wave's experts in xa and ha, their first units of step A; bytes of each. */
static void wave_layout(const dsr1__rowops *ops, const dsr1_expert *ex, int ne, int k, size_t *xoff,
                        size_t *hoff, int *ustart, size_t *xbytes, size_t *hbytes)
{
    size_t xb = 0, hb = 0;
    ustart[0] = 0;
    for (int e = 0; e < ne; e++) {
        const int n = ex[e].n, inter = n > 0 ? ex[e].gate->rows : 0;
        xoff[e] = xb;
        hoff[e] = hb;
        if (n > 0) {
            xb += round64(ops->act_bytes(n, k));
            hb += round64(ops->act_bytes(n, inter));
        }
        ustart[e + 1] = ustart[e] + (inter + UNIT_A - 1) / UNIT_A;
    }
    *xbytes = xb;
    *hbytes = hb;
}

dsr1_status dsr1__rowops_expert_ffn(const dsr1__rowops *ops, dsr1_pool *pool, const dsr1_expert *ex,
                                    int ne, const float *x, int ldx, float *y, int ldy)
{
    int k, d;
    dsr1_status st = check_experts(ex, ne, &k, &d);
    if (st != DSR1_OK || k < 0) return st;
    size_t *off = malloc(sizeof(size_t) * 2 * (size_t)ne);
    int *ustart = malloc(sizeof(int) * ((size_t)ne + 1));
    char *xa = NULL, *ha = NULL, *scratch = NULL;
    if (!off || !ustart) goto nomem;
    /* everything sized before y is touched: the largest wave, the largest expert */
    size_t xmax = 0, hmax = 0, smax = 0;
    int nmax = 0;
    long work = 0;
    for (int e0 = 0, e1; e0 < ne; e0 = e1) {
        e1 = wave_end(ex, ne, e0);
        size_t xb, hb;
        wave_layout(ops, ex + e0, e1 - e0, k, off, off + ne, ustart, &xb, &hb);
        xmax = max_size(xmax, xb);
        hmax = max_size(hmax, hb);
        for (int e = e0; e < e1; e++) {
            const int n = ex[e].n, inter = n > 0 ? ex[e].gate->rows : 0;
            if (n == 0) continue;
            smax = max_size(smax, max_size(ops->scratch_bytes(n, k), ops->scratch_bytes(n, inter)));
            nmax = n > nmax ? n : nmax;
            work += (long)(n + 1) * inter * (2L * k + d);
        }
    }
    dsr1_pool *p = work < SMALL_WORK ? NULL : pool;
    const size_t out_off = round64(smax);
    const size_t stride = out_off + round64(sizeof(float) * DSR1__RS_MAX * (size_t)nmax);
    xa = aligned_alloc(64, xmax);
    ha = aligned_alloc(64, hmax);
    scratch = aligned_alloc(64, stride * dsr1_pool_size(p));
    if (!xa || !ha || !scratch) goto nomem;
    for (int e0 = 0, e1; e0 < ne; e0 = e1) {
        e1 = wave_end(ex, ne, e0);
        size_t xb, hb;
        wave_layout(ops, ex + e0, e1 - e0, k, off, off + ne, ustart, &xb, &hb);
        memset(ha, 0, hb);
        ffn_job j = {ops, ex + e0, e1 - e0, x,        ldx,    y,       ldy,    k,      d,
                     xa,  ha,      off,     off + ne, ustart, scratch, stride, out_off};
        dsr1_pool_run(p, e1 - e0, 1, pack_task, &j);
        dsr1_pool_run(p, ustart[e1 - e0], 1, gate_up_task, &j);
        dsr1_pool_run(p, (d + DSR1__RS_MAX - 1) / DSR1__RS_MAX, 1, down_task, &j);
    }
    goto out;
nomem:
    st = dsr1_error(DSR1_ERR_NOMEM, "expert_ffn: out of memory for %d experts", ne);
out:
    free(off);
    free(ustart);
    free(xa);
    free(ha);
    free(scratch);
    return st;
}
