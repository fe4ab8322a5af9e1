/* The oneDNN baseline of `dsr1-bench kernels`: oneDNN's matmul (the library PyTorch and
 * SGLang's CPU backend call for linear layers) on the same product y = x W^T as our FP8
 * kernel, in bf16 (weights and activations bf16, f32 output: the usual CPU serving mode)
 * or f32.
 *
 * As a serving engine would, the weights are converted once: dequantised to f32 by the
 * caller, then reordered by oneDNN into the layout its primitive prefers (format `any`),
 * into as many copies as fill `pool_bytes`, cycled call after call so that they come from
 * DRAM rather than cache, like our kernel's weights and like real experts. The primitive
 * is created once per shape; one call = one execute + stream wait.
 *
 * oneDNN runs on its own OpenMP threads; their number is set to our pool's, so both sides
 * use the same cores. Built when meson finds libdnnl (Debian: libdnnl-dev), 2.x or 3.x
 * (their C APIs differ in how memory and matmul descriptors are made); otherwise
 * dsr1__onednn_create() says why not and the benchmark prints n/a. */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

#if DSR1_BENCH_DNNL

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <omp.h>

#if DNNL_VERSION_MAJOR >= 3
typedef dnnl_memory_desc_t mdesc; /* a handle, destroyed after use */
typedef const_dnnl_memory_desc_t md_ref;
#define MD(d) (d)
#else
typedef dnnl_memory_desc_t mdesc; /* a plain struct */
typedef const dnnl_memory_desc_t *md_ref;
#define MD(d) (&(d))
#endif

struct dsr1__onednn_mm {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    dnnl_primitive_t prim;
    dnnl_memory_t src, dst, *w; /* w: ncopies packed weight copies */
    int ncopies, next;
};

#define TRY(call)                                                                                  \
    do {                                                                                           \
        const dnnl_status_t s_ = (call);                                                           \
        if (s_ != dnnl_success) {                                                                  \
            snprintf(why, why_len, "oneDNN: %s: %s", #call, dnnl_status2str(s_));                  \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

/* A 2-D memory descriptor {d0, d1}. */
static dnnl_status_t md_make(mdesc *md, int64_t d0, int64_t d1, dnnl_data_type_t dt,
                             dnnl_format_tag_t tag)
{
    const dnnl_dims_t dims = {d0, d1};
#if DNNL_VERSION_MAJOR >= 3
    return dnnl_memory_desc_create_with_tag(md, 2, dims, dt, tag);
#else
    return dnnl_memory_desc_init_by_tag(md, 2, dims, dt, tag);
#endif
}

static void md_free(mdesc *md, int n)
{
#if DNNL_VERSION_MAJOR >= 3
    for (int i = 0; i < n; i++)
        if (md[i]) dnnl_memory_desc_destroy(md[i]);
#else
    (void)md;
    (void)n;
#endif
}

static dnnl_status_t matmul_pd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng, md_ref src, md_ref w,
                               md_ref dst)
{
#if DNNL_VERSION_MAJOR >= 3
    return dnnl_matmul_primitive_desc_create(pd, eng, src, w, NULL, dst, NULL);
#else
    dnnl_matmul_desc_t d;
    const dnnl_status_t s = dnnl_matmul_desc_init(&d, src, w, NULL, dst);
    return s != dnnl_success ? s : dnnl_primitive_desc_create(pd, &d, NULL, eng, NULL);
#endif
}

/* Copy `from` (layout from_md, caller's memory) into `to` (layout to_md), converting. */
static dnnl_status_t reorder(dnnl_engine_t eng, dnnl_stream_t stream, md_ref from_md,
                             const void *from, md_ref to_md, dnnl_memory_t to)
{
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t src = NULL;
    dnnl_status_t s = dnnl_reorder_primitive_desc_create(&pd, from_md, eng, to_md, eng, NULL);
    if (s == dnnl_success) s = dnnl_primitive_create(&prim, pd);
    if (s == dnnl_success) s = dnnl_memory_create(&src, from_md, eng, (void *)from);
    if (s == dnnl_success) {
        const dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, to}};
        s = dnnl_primitive_execute(prim, stream, 2, args);
    }
    if (s == dnnl_success) s = dnnl_stream_wait(stream);
    if (src) dnnl_memory_destroy(src);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
    return s;
}

dsr1__onednn_mm *dsr1__onednn_create(bool bf16, const float *w, int n, int k, const float *x, int m,
                                     size_t pool_bytes, int threads, dsr1__onednn_desc *desc,
                                     char *why, size_t why_len)
{
    enum { X_F32, SRC, W_F32, W_ANY, DST, NMD };
    mdesc md[NMD] = {0};
    dnnl_primitive_desc_t pd = NULL;
    const dnnl_data_type_t dt = bf16 ? dnnl_bf16 : dnnl_f32;
    dsr1__onednn_mm *mm = calloc(1, sizeof(*mm));
    if (!mm) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    omp_set_num_threads(threads);
    TRY(dnnl_engine_create(&mm->eng, dnnl_cpu, 0));
    TRY(dnnl_stream_create(&mm->stream, mm->eng, dnnl_stream_default_flags));
    /* src M x K, weights K x N (ours is N x K row-major: tag ba), dst M x N */
    TRY(md_make(&md[X_F32], m, k, dnnl_f32, dnnl_ab));
    TRY(md_make(&md[SRC], m, k, dt, dnnl_ab));
    TRY(md_make(&md[W_F32], k, n, dnnl_f32, dnnl_ba));
    TRY(md_make(&md[W_ANY], k, n, dt, dnnl_format_tag_any));
    TRY(md_make(&md[DST], m, n, dnnl_f32, dnnl_ab));
    TRY(matmul_pd(&pd, mm->eng, MD(md[SRC]), MD(md[W_ANY]), MD(md[DST])));
    const char *impl = NULL;
    TRY(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    snprintf(desc->impl, sizeof(desc->impl), "%s", impl ? impl : "?");
    const md_ref wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    TRY(dnnl_primitive_create(&mm->prim, pd));
    TRY(dnnl_memory_create(&mm->src, MD(md[SRC]), mm->eng, DNNL_MEMORY_ALLOCATE));
    TRY(dnnl_memory_create(&mm->dst, MD(md[DST]), mm->eng, DNNL_MEMORY_ALLOCATE));
    TRY(reorder(mm->eng, mm->stream, MD(md[X_F32]), x, MD(md[SRC]), mm->src));
    void *y = NULL;
    TRY(dnnl_memory_get_data_handle(mm->dst, &y));
    desc->y = y;
    const size_t wb = dnnl_memory_desc_get_size(wmd);
    desc->weight_bytes = (double)wb;
    mm->ncopies = (int)((pool_bytes + wb - 1) / wb);
    if (mm->ncopies < 2) mm->ncopies = 2;
    if (!(mm->w = calloc((size_t)mm->ncopies, sizeof(*mm->w)))) {
        snprintf(why, why_len, "out of memory");
        goto fail;
    }
    for (int c = 0; c < mm->ncopies; c++) {
        TRY(dnnl_memory_create(&mm->w[c], wmd, mm->eng, DNNL_MEMORY_ALLOCATE));
        TRY(reorder(mm->eng, mm->stream, MD(md[W_F32]), w, wmd, mm->w[c]));
    }
    dnnl_primitive_desc_destroy(pd);
    md_free(md, NMD);
    return mm;
fail:
    if (pd) dnnl_primitive_desc_destroy(pd);
    md_free(md, NMD);
    dsr1__onednn_destroy(mm);
    return NULL;
}

void dsr1__onednn_destroy(dsr1__onednn_mm *mm)
{
    if (!mm) return;
    for (int c = 0; mm->w && c < mm->ncopies; c++)
        if (mm->w[c]) dnnl_memory_destroy(mm->w[c]);
    free(mm->w);
    if (mm->src) dnnl_memory_destroy(mm->src);
    if (mm->dst) dnnl_memory_destroy(mm->dst);
    if (mm->prim) dnnl_primitive_destroy(mm->prim);
    if (mm->stream) dnnl_stream_destroy(mm->stream);
    if (mm->eng) dnnl_engine_destroy(mm->eng);
    free(mm);
}

void dsr1__onednn_run(dsr1__onednn_mm *mm)
{
    const dnnl_exec_arg_t args[] = {
        {DNNL_ARG_SRC, mm->src}, {DNNL_ARG_WEIGHTS, mm->w[mm->next]}, {DNNL_ARG_DST, mm->dst}};
    /* arguments and shapes were checked when the primitive was made */
    dnnl_primitive_execute(mm->prim, mm->stream, 3, args);
    dnnl_stream_wait(mm->stream);
    mm->next = (mm->next + 1) % mm->ncopies;
}

const char *dsr1__onednn_version(char *buf, size_t len)
{
    const dnnl_version_t *v = dnnl_version();
    snprintf(buf, len, "oneDNN %d.%d.%d, %d OpenMP threads", v->major, v->minor, v->patch,
             omp_get_max_threads());
    return buf;
}

#else /* no oneDNN: creating says so, and nothing else is ever called */

dsr1__onednn_mm *dsr1__onednn_create(bool bf16, const float *w, int n, int k, const float *x, int m,
                                     size_t pool_bytes, int threads, dsr1__onednn_desc *desc,
                                     char *why, size_t why_len)
{
    (void)bf16, (void)w, (void)n, (void)k, (void)x, (void)m, (void)pool_bytes, (void)threads;
    (void)desc;
    snprintf(why, why_len, "not built with oneDNN (install libdnnl-dev, then meson setup again)");
    return NULL;
}

void dsr1__onednn_run(dsr1__onednn_mm *mm)
{
    (void)mm;
}

void dsr1__onednn_destroy(dsr1__onednn_mm *mm)
{
    (void)mm;
}

const char *dsr1__onednn_version(char *buf, size_t len)
{
    snprintf(buf, len, "not built with oneDNN");
    return buf;
}

#endif
