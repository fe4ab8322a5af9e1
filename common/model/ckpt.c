/* Checkpoint directory: index, shards, and slice mapping (see ckpt.h).
 *
 * Mapping strategy: per shard, the selected tensors (sorted by offset) are grouped into
 * runs, a new run starting wherever the gap to the previous selected tensor exceeds
 * RUN_GAP. Each run is one mmap. A worker that owns a quarter of the experts thus maps
 * about a quarter of the expert bytes, in a few hundred mappings rather than one per
 * tensor (R1 has ~90k tensors; vm.max_map_count is 65530 by default). */
#include "ckpt.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "progress.h"

#define RUN_GAP (64u << 10)

struct dsr1_ckpt {
    char *dir;
    dsr1_model_config cfg;
    int nshards;
    dsr1_st_file **shards;
    size_t ntensors;
    size_t *first; /* first[s]: global index of shard s's first tensor; first[nshards] = n */
};

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* A shard name from the index must be a plain file name inside the directory. */
static int shard_name_ok(const char *name)
{
    return name[0] && strchr(name, '/') == NULL && strcmp(name, ".") && strcmp(name, "..");
}

static dsr1_status open_shard(dsr1_ckpt *ck, const char *name)
{
    char *path = path_join(ck->dir, name);
    if (!path) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    dsr1_st_file *f;
    dsr1_status st = dsr1_st_open(path, &f);
    free(path);
    if (st != DSR1_OK) return st;
    dsr1_st_file **grown = realloc(ck->shards, (size_t)(ck->nshards + 1) * sizeof(*grown));
    if (!grown) {
        dsr1_st_close(f);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    ck->shards = grown;
    ck->shards[ck->nshards++] = f;
    return DSR1_OK;
}

static int shard_index(const dsr1_ckpt *ck, const char *name)
{
    for (int s = 0; s < ck->nshards; s++) {
        const char *p = dsr1_st_path(ck->shards[s]);
        const char *base = strrchr(p, '/');
        if (strcmp(base ? base + 1 : p, name) == 0) return s;
    }
    return -1;
}

/* Read the index, open each shard it names once, check every entry. */
static dsr1_status read_index(dsr1_ckpt *ck, const char *index_path)
{
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return dsr1_error(DSR1_ERR_FORMAT, "%s: line %d: %s", index_path, jerr.line, jerr.text);
    dsr1_status st = DSR1_OK;
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map) || json_object_size(map) == 0) {
        st = dsr1_error(DSR1_ERR_FORMAT, "%s: 'weight_map' missing or empty", index_path);
        goto out;
    }
    const char *tname;
    json_t *v;
    json_object_foreach(map, tname, v)
    {
        const char *file = json_string_value(v);
        if (!file || !shard_name_ok(file)) {
            st = dsr1_error(DSR1_ERR_FORMAT,
                            "%s: tensor '%s': shard must be a file name in the "
                            "checkpoint directory",
                            index_path, tname);
            goto out;
        }
        int s = shard_index(ck, file);
        if (s < 0) {
            st = open_shard(ck, file);
            if (st != DSR1_OK) goto out;
            s = ck->nshards - 1;
        }
        if (!dsr1_st_find(ck->shards[s], tname)) {
            st = dsr1_error(DSR1_ERR_NOT_FOUND,
                            "%s: tensor '%s' is listed for %s but that shard "
                            "does not contain it",
                            index_path, tname, file);
            goto out;
        }
    }
    /* the other direction: a shard tensor the index does not list is unreachable */
    size_t listed = json_object_size(map), present = 0;
    for (int s = 0; s < ck->nshards; s++) present += dsr1_st_count(ck->shards[s]);
    if (present != listed)
        DSR1_WARN("%s lists %zu tensors but its shards hold %zu; the extra ones are ignored",
                  index_path, listed, present);
out:
    json_decref(root);
    return st;
}

dsr1_status dsr1_ckpt_open(const char *dir, dsr1_ckpt **out)
{
    dsr1_ckpt *ck = calloc(1, sizeof(*ck));
    if (!ck || !(ck->dir = strdup(dir))) {
        free(ck);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    dsr1_status st = dsr1_model_config_load(dir, &ck->cfg);
    if (st != DSR1_OK) goto err;
    char *index = path_join(dir, "model.safetensors.index.json");
    char *single = path_join(dir, "model.safetensors");
    if (!index || !single)
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    else if (file_exists(index))
        st = read_index(ck, index);
    else if (file_exists(single))
        st = open_shard(ck, "model.safetensors");
    else
        st = dsr1_error(DSR1_ERR_NOT_FOUND,
                        "%s: neither model.safetensors.index.json nor "
                        "model.safetensors found",
                        dir);
    free(index);
    free(single);
    if (st != DSR1_OK) goto err;
    ck->first = malloc((size_t)(ck->nshards + 1) * sizeof(size_t));
    if (!ck->first) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto err;
    }
    ck->first[0] = 0;
    for (int s = 0; s < ck->nshards; s++)
        ck->first[s + 1] = ck->first[s] + dsr1_st_count(ck->shards[s]);
    ck->ntensors = ck->first[ck->nshards];
    *out = ck;
    return DSR1_OK;
err:
    dsr1_ckpt_close(ck);
    return st;
}

void dsr1_ckpt_close(dsr1_ckpt *ck)
{
    if (!ck) return;
    for (int s = 0; s < ck->nshards; s++) dsr1_st_close(ck->shards[s]);
    free(ck->shards);
    free(ck->first);
    free(ck->dir);
    free(ck);
}

const dsr1_model_config *dsr1_ckpt_config(const dsr1_ckpt *ck)
{
    return &ck->cfg;
}

const char *dsr1_ckpt_dir(const dsr1_ckpt *ck)
{
    return ck->dir;
}

int dsr1_ckpt_shard_count(const dsr1_ckpt *ck)
{
    return ck->nshards;
}

const dsr1_st_file *dsr1_ckpt_shard(const dsr1_ckpt *ck, int i)
{
    return i >= 0 && i < ck->nshards ? ck->shards[i] : NULL;
}

size_t dsr1_ckpt_tensor_count(const dsr1_ckpt *ck)
{
    return ck->ntensors;
}

static int shard_of_global(const dsr1_ckpt *ck, size_t i)
{
    int s = 0;
    while (s + 1 < ck->nshards && ck->first[s + 1] <= i) s++;
    return s;
}

const dsr1_st_tensor *dsr1_ckpt_tensor_at(const dsr1_ckpt *ck, size_t i)
{
    if (i >= ck->ntensors) return NULL;
    int s = shard_of_global(ck, i);
    return dsr1_st_at(ck->shards[s], i - ck->first[s]);
}

static const dsr1_st_tensor *find_in(const dsr1_ckpt *ck, const char *name, int *shard)
{
    for (int s = 0; s < ck->nshards; s++) {
        const dsr1_st_tensor *t = dsr1_st_find(ck->shards[s], name);
        if (t) {
            *shard = s;
            return t;
        }
    }
    return NULL;
}

const dsr1_st_tensor *dsr1_ckpt_find(const dsr1_ckpt *ck, const char *name)
{
    int s;
    return find_in(ck, name, &s);
}

/* ---- slice mapping ---- */

typedef struct {
    int shard;
    uint64_t begin, end; /* file offsets */
    const uint8_t *data; /* points at `begin` */
    uint8_t *copy;       /* DSR1_WEIGHTS=copy: the anonymous copy `data` points into */
} map_run;

struct dsr1_ckpt_map {
    const dsr1_ckpt *ck;
    uint8_t *selected; /* per global tensor index */
    map_run *runs;
    size_t nruns;
    uint64_t tensor_bytes, mapped_bytes;
};

static dsr1_status add_run(dsr1_ckpt_map *m, int shard, uint64_t begin, uint64_t end)
{
    map_run *grown = realloc(m->runs, (m->nruns + 1) * sizeof(*grown));
    if (!grown) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    m->runs = grown;
    map_run *r = &m->runs[m->nruns];
    r->shard = shard;
    r->begin = begin;
    r->end = end;
    const void *p;
    dsr1_status st = dsr1_st_map(m->ck->shards[shard], begin, end - begin, &p);
    if (st != DSR1_OK) return st;
    r->data = p;
    r->copy = NULL;
    m->nruns++;
    m->mapped_bytes += end - begin;
    return DSR1_OK;
}

/* Touch one byte per page of each selected tensor so that loading, not the first step,
 * reads the disk; madvise(WILLNEED) first lets the kernel read ahead in large requests. */
static void prefault(const dsr1_ckpt_map *m, dsr1_progress *prog)
{
    const long page = sysconf(_SC_PAGESIZE);
    volatile uint8_t sink = 0;
    /* runs were made shard by shard in offset order, as the shard's tensors are sorted */
    size_t first = 0;
    for (int s = 0; s < m->ck->nshards; s++) {
        size_t last = first;
        for (; last < m->nruns && m->runs[last].shard == s; last++) {
            const map_run *r = &m->runs[last];
            uintptr_t a = (uintptr_t)r->data & ~(uintptr_t)(page - 1);
            madvise((void *)a, (size_t)((uintptr_t)r->data + (r->end - r->begin) - a),
                    MADV_WILLNEED);
        }
        const dsr1_st_file *f = m->ck->shards[s];
        size_t ri = first;
        for (size_t k = 0; k < dsr1_st_count(f); k++) {
            const dsr1_st_tensor *t = dsr1_st_at(f, k);
            if (!m->selected[m->ck->first[s] + k] || t->nbytes == 0) continue;
            while (m->runs[ri].end <= t->offset) ri++; /* the run holding t */
            const uint8_t *p = m->runs[ri].data + (t->offset - m->runs[ri].begin);
            for (uint64_t o = 0; o < t->nbytes; o += (uint64_t)page) sink ^= p[o];
            sink ^= p[t->nbytes - 1];
            dsr1_progress_add(prog, t->nbytes, 0);
        }
        first = last;
        dsr1_progress_add(prog, 0, 1);
    }
    (void)sink;
}

/* DSR1_WEIGHTS: "map" (default, or unset): the weights are the checkpoint's pages, mapped;
 * "copy": each mapped run is copied into anonymous memory (2 MB aligned, huge pages asked
 * for) and the file unmapped. On the VM of docs/benchmarks.md ("weights on ext4") decode
 * read mapped file pages far slower than its own memory; the copy costs a second pass at
 * load and the page cache no longer backs the weights (they count as the process's). */
static dsr1_status weights_mode(bool *copy)
{
    const char *v = getenv("DSR1_WEIGHTS");
    *copy = v && !strcmp(v, "copy");
    if (v && *v && !*copy && strcmp(v, "map"))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "DSR1_WEIGHTS: '%s' is not map or copy", v);
    return DSR1_OK;
}

enum { COPY_ALIGN = 2 << 20 };

static dsr1_status copy_runs(dsr1_ckpt_map *m)
{
    dsr1_progress prog;
    dsr1_progress_begin(&prog, "copying", m->mapped_bytes, m->ck->nshards);
    dsr1_status st = DSR1_OK;
    /* runs were made shard by shard in offset order, as prefault reads them */
    size_t i = 0;
    for (int s = 0; s < m->ck->nshards && st == DSR1_OK; s++) {
        for (; i < m->nruns && m->runs[i].shard == s; i++) {
            map_run *r = &m->runs[i];
            const size_t len = (size_t)(r->end - r->begin);
            const size_t cap = (len + COPY_ALIGN - 1) / COPY_ALIGN * COPY_ALIGN;
            uint8_t *c = aligned_alloc(COPY_ALIGN, cap);
            if (!c) {
                st = dsr1_error(DSR1_ERR_NOMEM,
                                "DSR1_WEIGHTS=copy: no memory for a %.1f MB copy of the weights "
                                "(%.1f MB in all; DSR1_WEIGHTS=map maps them instead)",
                                len / 1e6, m->mapped_bytes / 1e6);
                break;
            }
            madvise(c, cap, MADV_HUGEPAGE); /* a hint: 4 KB pages where refused */
            memcpy(c, r->data, len);
            dsr1_st_unmap(r->data, len);
            r->data = r->copy = c;
            dsr1_progress_add(&prog, len, 0);
        }
        dsr1_progress_add(&prog, 0, 1);
    }
    dsr1_progress_end(&prog);
    return st;
}

dsr1_status dsr1_ckpt_map_tensors(const dsr1_ckpt *ck, dsr1_ckpt_select_fn select, void *arg,
                                  dsr1_ckpt_map **out)
{
    bool copy;
    dsr1_status mst = weights_mode(&copy);
    if (mst != DSR1_OK) return mst;
    dsr1_ckpt_map *m = calloc(1, sizeof(*m));
    if (!m) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    m->ck = ck;
    m->selected = calloc(ck->ntensors ? ck->ntensors : 1, 1);
    dsr1_status st = DSR1_OK;
    if (!m->selected) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto err;
    }
    for (int s = 0; s < ck->nshards; s++) {
        const dsr1_st_file *f = ck->shards[s];
        uint64_t rb = 0, re = 0;
        int open_run = 0;
        for (size_t k = 0; k < dsr1_st_count(f); k++) {
            const dsr1_st_tensor *t = dsr1_st_at(f, k);
            if (!select(t->name, arg)) continue;
            m->selected[ck->first[s] + k] = 1;
            m->tensor_bytes += t->nbytes;
            if (t->nbytes == 0) continue;
            if (open_run && t->offset - re <= RUN_GAP) {
                re = t->offset + t->nbytes;
                continue;
            }
            if (open_run && (st = add_run(m, s, rb, re)) != DSR1_OK) goto err;
            rb = t->offset;
            re = t->offset + t->nbytes;
            open_run = 1;
        }
        if (open_run && (st = add_run(m, s, rb, re)) != DSR1_OK) goto err;
    }
    dsr1_progress prog;
    dsr1_progress_begin(&prog, "loading", m->tensor_bytes, ck->nshards);
    prefault(m, &prog);
    dsr1_progress_end(&prog);
    if (copy && (st = copy_runs(m)) != DSR1_OK) goto err;
    *out = m;
    return DSR1_OK;
err:
    dsr1_ckpt_map_release(m);
    return st;
}

void dsr1_ckpt_map_release(dsr1_ckpt_map *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->nruns; i++) {
        if (m->runs[i].copy)
            free(m->runs[i].copy);
        else
            dsr1_st_unmap(m->runs[i].data, m->runs[i].end - m->runs[i].begin);
    }
    free(m->runs);
    free(m->selected);
    free(m);
}

const void *dsr1_ckpt_map_data(const dsr1_ckpt_map *m, const char *name, const dsr1_st_tensor **t)
{
    int s;
    const dsr1_st_tensor *ten = find_in(m->ck, name, &s);
    if (!ten) return NULL;
    size_t k = dsr1_st_index(m->ck->shards[s], ten);
    if (!m->selected[m->ck->first[s] + k]) return NULL;
    for (size_t i = 0; i < m->nruns; i++) {
        const map_run *r = &m->runs[i];
        if (r->shard == s && ten->offset >= r->begin && ten->offset + ten->nbytes <= r->end) {
            if (t) *t = ten;
            return r->data + (ten->offset - r->begin);
        }
    }
    if (ten->nbytes == 0) {
        if (t) *t = ten;
        static const uint8_t empty[1];
        return empty;
    }
    return NULL;
}

uint64_t dsr1_ckpt_map_tensor_bytes(const dsr1_ckpt_map *m)
{
    return m->tensor_bytes;
}

uint64_t dsr1_ckpt_map_mapped_bytes(const dsr1_ckpt_map *m)
{
    return m->mapped_bytes;
}
