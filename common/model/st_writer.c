/* Streaming safetensors writer (see st_writer.h). The header is built with jansson, which
 * keeps keys in insertion order, so the JSON lists tensors in data order. */
#include "st_writer.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct dsr1_st_writer {
    char *path, *tmp;
    int fd;
    json_t *hdr;
    uint64_t data_bytes, written, header_bytes;
    int begun;
};

dsr1_status dsr1_st_writer_open(const char *path, dsr1_st_writer **out)
{
    dsr1_status st;
    dsr1_st_writer *w = calloc(1, sizeof(*w));
    if (!w) return dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", path);
    w->fd = -1;
    w->path = strdup(path);
    w->tmp = malloc(strlen(path) + 5);
    w->hdr = json_object();
    json_t *meta = json_object();
    if (!w->path || !w->tmp || !w->hdr || !meta ||
        json_object_set_new(meta, "format", json_string("pt")) ||
        json_object_set_new(w->hdr, "__metadata__", meta)) {
        st = dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", path);
        goto err;
    }
    sprintf(w->tmp, "%s.tmp", path);
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        st = dsr1_error(DSR1_ERR_IO, "%s: cannot create: %s", w->tmp, strerror(errno));
        goto err;
    }
    *out = w;
    return DSR1_OK;
err:
    dsr1_st_writer_abort(w);
    return st;
}

dsr1_status dsr1_st_writer_add(dsr1_st_writer *w, const char *name, dsr1_dtype dtype, int ndim,
                               const int64_t *shape)
{
    if (w->begun)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: tensor '%s' added after the header", w->path,
                          name);
    if (!dsr1_dtype_name(dtype) || ndim < 0 || ndim > DSR1_ST_MAX_DIMS ||
        !strcmp(name, "__metadata__"))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: tensor '%s': bad dtype, rank or name", w->path,
                          name);
    if (json_object_get(w->hdr, name))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: tensor '%s' declared twice", w->path, name);
    uint64_t n = dsr1_dtype_size(dtype);
    json_t *t = json_object(), *sh = json_array(), *off = json_array();
    int bad = !t || !sh || !off;
    for (int i = 0; i < ndim && !bad; i++) {
        if (shape[i] < 0)
            bad = 2;
        else {
            n *= (uint64_t)shape[i];
            bad = json_array_append_new(sh, json_integer(shape[i]));
        }
    }
    if (!bad)
        bad = json_array_append_new(off, json_integer((json_int_t)w->data_bytes)) ||
              json_array_append_new(off, json_integer((json_int_t)(w->data_bytes + n))) ||
              json_object_set_new(t, "dtype", json_string(dsr1_dtype_name(dtype))) ||
              json_object_set(t, "shape", sh) || json_object_set(t, "data_offsets", off) ||
              json_object_set(w->hdr, name, t);
    json_decref(sh);
    json_decref(off);
    json_decref(t);
    if (bad == 2)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: tensor '%s': negative dimension", w->path,
                          name);
    if (bad) return dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", w->path);
    w->data_bytes += n;
    return DSR1_OK;
}

static dsr1_status write_all(dsr1_st_writer *w, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t k = write(w->fd, p, len);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0)
            return dsr1_error(DSR1_ERR_IO, "%s: write failed: %s", w->tmp,
                              k < 0 ? strerror(errno) : "no progress");
        p += k;
        len -= (size_t)k;
    }
    return DSR1_OK;
}

dsr1_status dsr1_st_writer_begin(dsr1_st_writer *w)
{
    if (w->begun) return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: header written twice", w->path);
    char *js = json_dumps(w->hdr, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
    if (!js) return dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", w->path);
    size_t n = strlen(js), padded = (n + 7) & ~(size_t)7;
    char *buf = malloc(8 + padded);
    if (!buf) {
        free(js);
        return dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", w->path);
    }
    uint64_t le = padded;
    for (int i = 0; i < 8; i++) buf[i] = (char)(le >> (8 * i));
    memcpy(buf + 8, js, n);
    memset(buf + 8 + n, ' ', padded - n);
    free(js);
    dsr1_status st = write_all(w, buf, 8 + padded);
    free(buf);
    if (st != DSR1_OK) return st;
    w->header_bytes = 8 + padded;
    w->begun = 1;
    return DSR1_OK;
}

dsr1_status dsr1_st_writer_write(dsr1_st_writer *w, const void *data, size_t len)
{
    if (!w->begun)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: data written before the header", w->path);
    if (len > w->data_bytes - w->written)
        return dsr1_error(DSR1_ERR_RANGE, "%s: %zu bytes more than the %llu declared", w->path,
                          len - (size_t)(w->data_bytes - w->written),
                          (unsigned long long)w->data_bytes);
    dsr1_status st = write_all(w, data, len);
    if (st == DSR1_OK) w->written += len;
    return st;
}

dsr1_status dsr1_st_writer_finish(dsr1_st_writer *w)
{
    dsr1_status st = DSR1_OK;
    if (!w->begun) st = dsr1_st_writer_begin(w);
    if (st == DSR1_OK && w->written != w->data_bytes)
        st = dsr1_error(DSR1_ERR_INTERNAL, "%s: %llu of %llu data bytes written", w->path,
                        (unsigned long long)w->written, (unsigned long long)w->data_bytes);
    if (st == DSR1_OK) {
        int rc = close(w->fd);
        w->fd = -1;
        if (rc != 0)
            st = dsr1_error(DSR1_ERR_IO, "%s: close failed: %s", w->tmp, strerror(errno));
        else if (rename(w->tmp, w->path) != 0)
            st = dsr1_error(DSR1_ERR_IO, "%s: cannot rename to %s: %s", w->tmp, w->path,
                            strerror(errno));
    }
    if (st != DSR1_OK) {
        dsr1_st_writer_abort(w);
        return st;
    }
    json_decref(w->hdr);
    free(w->path);
    free(w->tmp);
    free(w);
    return DSR1_OK;
}

void dsr1_st_writer_abort(dsr1_st_writer *w)
{
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->tmp && (w->fd >= 0 || w->begun)) unlink(w->tmp);
    json_decref(w->hdr);
    free(w->path);
    free(w->tmp);
    free(w);
}

uint64_t dsr1_st_writer_data_bytes(const dsr1_st_writer *w)
{
    return w->data_bytes;
}

uint64_t dsr1_st_writer_header_bytes(const dsr1_st_writer *w)
{
    return w->header_bytes;
}
