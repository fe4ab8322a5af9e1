/* The safetensors reader: parses and validates one file's header (see safetensors.h for the
 * list of checks) and maps tensor data by byte range.
 *
 * Files come from outside, so nothing in the header is trusted until it has been checked:
 * the header is read with pread into a buffer of the declared length (bounded first by the
 * file size and DSR1_ST_MAX_HEADER), checked for UTF-8, parsed by jansson (which rejects
 * duplicate keys and bounds nesting depth), and every entry is checked with overflow-safe
 * arithmetic before the table is built. The table is then sorted by offset so that the
 * "data tiles the region exactly" rule is a single linear pass. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct dsr1_st_file {
    char *path;
    int fd;
    uint64_t file_size;
    size_t count;
    dsr1_st_tensor *tensors; /* sorted by offset; names are strdup'ed */
    size_t *slots;           /* open addressing: tensor index, or SIZE_MAX when empty */
    size_t nslots;           /* power of two, at least 2 * count */
};

static const struct {
    const char *name;
    size_t size;
} dtype_info[DSR1_DT_COUNT] = {
    [DSR1_DT_F8_E4M3] = {"F8_E4M3", 1}, [DSR1_DT_F8_E5M2] = {"F8_E5M2", 1},
    [DSR1_DT_BF16] = {"BF16", 2},       [DSR1_DT_F16] = {"F16", 2},
    [DSR1_DT_F32] = {"F32", 4},         [DSR1_DT_F64] = {"F64", 8},
    [DSR1_DT_I8] = {"I8", 1},           [DSR1_DT_I16] = {"I16", 2},
    [DSR1_DT_I32] = {"I32", 4},         [DSR1_DT_I64] = {"I64", 8},
    [DSR1_DT_U8] = {"U8", 1},           [DSR1_DT_U16] = {"U16", 2},
    [DSR1_DT_U32] = {"U32", 4},         [DSR1_DT_U64] = {"U64", 8},
    [DSR1_DT_BOOL] = {"BOOL", 1},
};

const char *dsr1_dtype_name(dsr1_dtype dt)
{
    return (unsigned)dt < DSR1_DT_COUNT ? dtype_info[dt].name : NULL;
}

size_t dsr1_dtype_size(dsr1_dtype dt)
{
    return (unsigned)dt < DSR1_DT_COUNT ? dtype_info[dt].size : 0;
}

dsr1_status dsr1_dtype_parse(const char *name, dsr1_dtype *out)
{
    for (int i = 0; name && i < DSR1_DT_COUNT; i++) {
        if (strcmp(name, dtype_info[i].name) == 0) {
            *out = (dsr1_dtype)i;
            return DSR1_OK;
        }
    }
    return dsr1_error(DSR1_ERR_UNSUPPORTED, "unknown dtype '%s'", name ? name : "(null)");
}

/* pread exactly len bytes at off; short reads mean the file changed under us. */
static dsr1_status read_exact(int fd, const char *path, void *buf, size_t len, uint64_t off)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return dsr1_error(DSR1_ERR_IO, "%s: read failed: %s", path, strerror(errno));
        if (n == 0) return dsr1_error(DSR1_ERR_IO, "%s: unexpected end of file", path);
        p += n, len -= (size_t)n, off += (uint64_t)n;
    }
    return DSR1_OK;
}

/* Offset of the first byte that breaks strict UTF-8 (overlong forms, surrogates and code
 * points past U+10FFFF included), or len when the buffer is valid. */
static size_t utf8_invalid_at(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned lo = 0x80, hi = 0xbf; /* allowed range of the first continuation byte */
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1;
        else if (c == 0xe0)
            n = 2, lo = 0xa0;
        else if (c == 0xed)
            n = 2, hi = 0x9f;
        else if (c >= 0xe1 && c <= 0xef)
            n = 2;
        else if (c == 0xf0)
            n = 3, lo = 0x90;
        else if (c == 0xf4)
            n = 3, hi = 0x8f;
        else if (c >= 0xf1 && c <= 0xf3)
            n = 3;
        else
            return i;
        if (len - i <= n) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= n; k++)
            if ((s[i + k] & 0xc0) != 0x80) return i;
        i += n + 1;
    }
    return len;
}

/* jansson reports a duplicate key only by position (just past the key's closing quote);
 * recover the key text so the error can name the tensor. NULL when it cannot. */
static char *duplicate_key_at(const char *hdr, size_t len, size_t pos)
{
    size_t end = pos < len ? pos : len;
    while (end > 0 && (hdr[end - 1] == ' ' || hdr[end - 1] == '\t' || hdr[end - 1] == '\r' ||
                       hdr[end - 1] == '\n'))
        end--;
    if (end < 2 || hdr[end - 1] != '"') return NULL;
    for (size_t q = end - 1; q-- > 0;) {
        size_t bs = 0;
        if (hdr[q] != '"') continue;
        while (bs < q && hdr[q - 1 - bs] == '\\') bs++;
        if (bs % 2) continue; /* an escaped quote inside the key */
        json_t *s = json_loadb(hdr + q, end - q, JSON_DECODE_ANY, NULL);
        char *key = json_is_string(s) ? strdup(json_string_value(s)) : NULL;
        json_decref(s);
        return key;
    }
    return NULL;
}

static dsr1_status parse_json(const char *path, const char *hdr, size_t len, json_t **out)
{
    json_error_t e;
    size_t bad = utf8_invalid_at((const unsigned char *)hdr, len);
    if (bad < len)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "%s: header is not valid UTF-8 (byte 0x%02x at header offset %zu)", path,
                          (unsigned char)hdr[bad], bad);
    json_t *root = json_loadb(hdr, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &e);
    if (!root && json_error_code(&e) == json_error_duplicate_key) {
        char *key = duplicate_key_at(hdr, len, e.position > 0 ? (size_t)e.position : 0);
        dsr1_status s = dsr1_error(DSR1_ERR_FORMAT,
                                   "%s: duplicate key '%s' in header (tensor names and entry "
                                   "keys must be unique)",
                                   path, key ? key : "?");
        free(key);
        return s;
    }
    if (!root)
        return dsr1_error(DSR1_ERR_FORMAT, "%s: header is not valid JSON: %s (line %d column %d)",
                          path, e.text, e.line, e.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return dsr1_error(DSR1_ERR_FORMAT, "%s: header is not a JSON object", path);
    }
    *out = root;
    return DSR1_OK;
}

static dsr1_status check_metadata(const char *path, json_t *meta)
{
    const char *k;
    json_t *v;
    if (!json_is_object(meta))
        return dsr1_error(DSR1_ERR_FORMAT, "%s: __metadata__ is not an object", path);
    json_object_foreach(meta, k, v)
    {
        if (!json_is_string(v))
            return dsr1_error(DSR1_ERR_FORMAT, "%s: __metadata__ value of '%s' is not a string",
                              path, k);
    }
    return DSR1_OK;
}

/* One non-negative JSON integer; `what` names it in the error ("shape[1]"). */
static dsr1_status get_uint(const char *path, const char *name, const char *what, json_t *v,
                            uint64_t *out)
{
    if (!json_is_integer(v))
        return dsr1_error(DSR1_ERR_FORMAT, "%s: tensor '%s': %s is not an integer", path, name,
                          what);
    json_int_t x = json_integer_value(v);
    if (x < 0)
        return dsr1_error(DSR1_ERR_FORMAT, "%s: tensor '%s': %s = %lld is negative", path, name,
                          what, (long long)x);
    *out = (uint64_t)x;
    return DSR1_OK;
}

/* Check one entry and fill t (except name). data_size is the size of the data region.
 * begin is returned separately: t->offset is absolute. */
static dsr1_status parse_entry(const char *path, const char *name, json_t *e, uint64_t data_size,
                               dsr1_st_tensor *t, uint64_t *begin)
{
    static const char *const keys[] = {"dtype", "shape", "data_offsets"};
    const char *k;
    json_t *v;
    dsr1_status s;
    char what[32];

    if (!json_is_object(e))
        return dsr1_error(DSR1_ERR_FORMAT, "%s: tensor '%s': entry is not an object", path, name);
    for (int i = 0; i < 3; i++)
        if (!json_object_get(e, keys[i]))
            return dsr1_error(DSR1_ERR_FORMAT, "%s: tensor '%s': missing '%s'", path, name,
                              keys[i]);
    json_object_foreach(e, k, v)
    {
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return dsr1_error(DSR1_ERR_FORMAT, "%s: tensor '%s': unexpected key '%s'", path, name,
                              k);
    }

    json_t *dt = json_object_get(e, "dtype");
    if (!json_is_string(dt))
        return dsr1_error(DSR1_ERR_FORMAT, "%s: tensor '%s': dtype is not a string", path, name);
    if (dsr1_dtype_parse(json_string_value(dt), &t->dtype) != DSR1_OK)
        return dsr1_error(DSR1_ERR_UNSUPPORTED, "%s: tensor '%s': unknown dtype '%s'", path, name,
                          json_string_value(dt));

    json_t *shape = json_object_get(e, "shape");
    if (!json_is_array(shape))
        return dsr1_error(DSR1_ERR_FORMAT, "%s: tensor '%s': shape is not an array", path, name);
    if (json_array_size(shape) > DSR1_ST_MAX_DIMS)
        return dsr1_error(DSR1_ERR_UNSUPPORTED, "%s: tensor '%s': %zu dimensions (at most %d)",
                          path, name, json_array_size(shape), DSR1_ST_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    uint64_t nbytes = dsr1_dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++) {
        uint64_t dim = 0;
        snprintf(what, sizeof(what), "shape[%d]", d);
        if ((s = get_uint(path, name, what, json_array_get(shape, (size_t)d), &dim))) return s;
        if (__builtin_mul_overflow(nbytes, dim, &nbytes))
            return dsr1_error(DSR1_ERR_FORMAT, "%s: tensor '%s': shape x %s size overflows 64 bits",
                              path, name, dsr1_dtype_name(t->dtype));
        t->shape[d] = (int64_t)dim; /* dim <= json_int_t max, so this is exact */
    }

    json_t *offs = json_object_get(e, "data_offsets");
    uint64_t b = 0, end = 0;
    if (!json_is_array(offs) || json_array_size(offs) != 2)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets is not an array [begin, end]", path, name);
    if ((s = get_uint(path, name, "data_offsets[0]", json_array_get(offs, 0), &b))) return s;
    if ((s = get_uint(path, name, "data_offsets[1]", json_array_get(offs, 1), &end))) return s;
    if (b > end)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets begin %llu is after end %llu", path, name,
                          (unsigned long long)b, (unsigned long long)end);
    if (nbytes != end - b) {
        char dims[DSR1_ST_MAX_DIMS * 21 + 2] = "";
        size_t n = 0;
        for (int d = 0; d < t->ndim; d++)
            n += (size_t)snprintf(dims + n, sizeof(dims) - n, "%s%lld", d ? "," : "",
                                  (long long)t->shape[d]);
        return dsr1_error(DSR1_ERR_FORMAT,
                          "%s: tensor '%s': shape [%s] x %s = %llu bytes but data_offsets span "
                          "%llu",
                          path, name, dims, dsr1_dtype_name(t->dtype), (unsigned long long)nbytes,
                          (unsigned long long)(end - b));
    }
    if (end > data_size)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets end %llu is past the end of the file "
                          "(data region is %llu bytes)",
                          path, name, (unsigned long long)end, (unsigned long long)data_size);
    t->nbytes = nbytes;
    *begin = b;
    return DSR1_OK;
}

static int cmp_offset(const void *a, const void *b)
{
    const dsr1_st_tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Sorted tensors must cover [0, data_size) of the data region exactly once. */
static dsr1_status check_tiling(const dsr1_st_file *f, uint64_t data_start, uint64_t data_size)
{
    uint64_t pos = 0; /* relative to data_start */
    for (size_t i = 0; i < f->count; i++) {
        const dsr1_st_tensor *t = &f->tensors[i];
        uint64_t b = t->offset - data_start;
        if (b > pos && i == 0)
            return dsr1_error(DSR1_ERR_FORMAT,
                              "%s: tensor '%s': first tensor starts at data offset %llu, not 0",
                              f->path, t->name, (unsigned long long)b);
        if (b > pos)
            return dsr1_error(DSR1_ERR_FORMAT,
                              "%s: tensor '%s': gap of %llu bytes after tensor '%s' (begins at "
                              "%llu, previous ends at %llu)",
                              f->path, t->name, (unsigned long long)(b - pos),
                              f->tensors[i - 1].name, (unsigned long long)b,
                              (unsigned long long)pos);
        if (b < pos)
            return dsr1_error(DSR1_ERR_FORMAT,
                              "%s: tensor '%s': overlaps tensor '%s' (begins at %llu, previous "
                              "ends at %llu)",
                              f->path, t->name, f->tensors[i - 1].name, (unsigned long long)b,
                              (unsigned long long)pos);
        pos = b + t->nbytes;
    }
    if (pos != data_size)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "%s: %llu trailing bytes after the last tensor (tensors end at data "
                          "offset %llu, data region is %llu bytes)",
                          f->path, (unsigned long long)(data_size - pos), (unsigned long long)pos,
                          (unsigned long long)data_size);
    return DSR1_OK;
}

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static dsr1_status build_index(dsr1_st_file *f)
{
    f->nslots = 16;
    while (f->nslots < 2 * f->count) f->nslots *= 2;
    f->slots = malloc(f->nslots * sizeof(*f->slots));
    if (!f->slots) return dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", f->path);
    for (size_t i = 0; i < f->nslots; i++) f->slots[i] = SIZE_MAX;
    for (size_t i = 0; i < f->count; i++) {
        size_t j = hash_name(f->tensors[i].name) & (f->nslots - 1);
        while (f->slots[j] != SIZE_MAX) j = (j + 1) & (f->nslots - 1);
        f->slots[j] = i;
    }
    return DSR1_OK;
}

/* Fill f's table from the parsed header. */
static dsr1_status load_table(dsr1_st_file *f, json_t *root, uint64_t data_start)
{
    uint64_t data_size = f->file_size - data_start;
    const char *k;
    json_t *v;
    dsr1_status s;

    f->tensors = calloc(json_object_size(root) + 1, sizeof(*f->tensors));
    if (!f->tensors) return dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", f->path);
    json_object_foreach(root, k, v)
    {
        if (strcmp(k, "__metadata__") == 0) {
            if ((s = check_metadata(f->path, v))) return s;
            continue;
        }
        dsr1_st_tensor *t = &f->tensors[f->count];
        uint64_t begin = 0;
        if ((s = parse_entry(f->path, k, v, data_size, t, &begin))) return s;
        t->offset = data_start + begin;
        if (!(t->name = strdup(k))) return dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", f->path);
        f->count++;
    }
    qsort(f->tensors, f->count, sizeof(*f->tensors), cmp_offset);
    if ((s = check_tiling(f, data_start, data_size))) return s;
    return build_index(f);
}

dsr1_status dsr1_st_open(const char *path, dsr1_st_file **out)
{
    dsr1_status s;
    struct stat st;
    unsigned char lenbuf[8];
    uint64_t hlen = 0;
    char *hdr = NULL;
    json_t *root = NULL;

    if (!path || !out) return dsr1_error(DSR1_ERR_INVALID_ARG, "dsr1_st_open: NULL argument");
    dsr1_st_file *f = calloc(1, sizeof(*f));
    if (f) f->fd = -1;
    if (!f || !(f->path = strdup(path))) {
        s = dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", path);
        goto err_file;
    }
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        s = dsr1_error(errno == ENOENT ? DSR1_ERR_NOT_FOUND : DSR1_ERR_IO, "%s: cannot open: %s",
                       path, strerror(errno));
        goto err_file;
    }
    if (fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        s = dsr1_error(DSR1_ERR_IO, "%s: not a readable regular file", path);
        goto err_file;
    }
    f->file_size = (uint64_t)st.st_size;
    if (f->file_size < 8) {
        s = dsr1_error(DSR1_ERR_FORMAT,
                       "%s: file is %llu bytes, shorter than the 8-byte header "
                       "length",
                       path, (unsigned long long)f->file_size);
        goto err_file;
    }
    if ((s = read_exact(f->fd, path, lenbuf, 8, 0))) goto err_file;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | lenbuf[i];
    if (hlen == 0) {
        s = dsr1_error(DSR1_ERR_FORMAT, "%s: header length is 0", path);
        goto err_file;
    }
    if (hlen > DSR1_ST_MAX_HEADER) {
        s = dsr1_error(DSR1_ERR_FORMAT, "%s: header length %llu exceeds the %u-byte limit", path,
                       (unsigned long long)hlen, DSR1_ST_MAX_HEADER);
        goto err_file;
    }
    if (hlen > f->file_size - 8) {
        s = dsr1_error(DSR1_ERR_FORMAT,
                       "%s: header length %llu runs past the end of the file (%llu bytes)", path,
                       (unsigned long long)hlen, (unsigned long long)f->file_size);
        goto err_file;
    }
    if (!(hdr = malloc(hlen))) {
        s = dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory for a %llu-byte header", path,
                       (unsigned long long)hlen);
        goto err_file;
    }
    if ((s = read_exact(f->fd, path, hdr, hlen, 8))) goto err_hdr;
    if ((s = parse_json(path, hdr, hlen, &root))) goto err_hdr;
    if ((s = load_table(f, root, 8 + hlen))) goto err_json;
    json_decref(root);
    free(hdr);
    *out = f;
    return DSR1_OK;

err_json:
    json_decref(root);
err_hdr:
    free(hdr);
err_file:
    dsr1_st_close(f);
    return s;
}

void dsr1_st_close(dsr1_st_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->count; i++) free((char *)f->tensors[i].name);
    free(f->tensors);
    free(f->slots);
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    free(f);
}

const char *dsr1_st_path(const dsr1_st_file *f)
{
    return f->path;
}

uint64_t dsr1_st_file_size(const dsr1_st_file *f)
{
    return f->file_size;
}

size_t dsr1_st_count(const dsr1_st_file *f)
{
    return f->count;
}

const dsr1_st_tensor *dsr1_st_at(const dsr1_st_file *f, size_t i)
{
    return i < f->count ? &f->tensors[i] : NULL;
}

size_t dsr1_st_index(const dsr1_st_file *f, const dsr1_st_tensor *t)
{
    return (size_t)(t - f->tensors);
}

const dsr1_st_tensor *dsr1_st_find(const dsr1_st_file *f, const char *name)
{
    if (!f || !name || !f->slots) return NULL;
    size_t j = hash_name(name) & (f->nslots - 1);
    for (; f->slots[j] != SIZE_MAX; j = (j + 1) & (f->nslots - 1))
        if (strcmp(f->tensors[f->slots[j]].name, name) == 0) return &f->tensors[f->slots[j]];
    return NULL;
}

/* A zero-length range has no pages to map; it gets this stand-in address. */
static const unsigned char empty_range[1];

dsr1_status dsr1_st_map(const dsr1_st_file *f, uint64_t offset, uint64_t len, const void **data)
{
    uint64_t end, page = (uint64_t)sysconf(_SC_PAGESIZE);
    if (!f || !data) return dsr1_error(DSR1_ERR_INVALID_ARG, "dsr1_st_map: NULL argument");
    if (__builtin_add_overflow(offset, len, &end) || end > f->file_size)
        return dsr1_error(DSR1_ERR_RANGE, "%s: range [%llu, +%llu) is outside the %llu-byte file",
                          f->path, (unsigned long long)offset, (unsigned long long)len,
                          (unsigned long long)f->file_size);
    if (len == 0) {
        *data = empty_range;
        return DSR1_OK;
    }
    uint64_t base = offset & ~(page - 1), span = end - base;
    if (span > SIZE_MAX) return dsr1_error(DSR1_ERR_RANGE, "%s: range too large to map", f->path);
    void *p = mmap(NULL, (size_t)span, PROT_READ, MAP_SHARED, f->fd, (off_t)base);
    if (p == MAP_FAILED)
        return dsr1_error(DSR1_ERR_IO, "%s: mmap of %llu bytes at %llu failed: %s", f->path,
                          (unsigned long long)span, (unsigned long long)base, strerror(errno));
    *data = (const unsigned char *)p + (offset - base);
    return DSR1_OK;
}

void dsr1_st_unmap(const void *data, uint64_t len)
{
    if (!data || len == 0) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), addr = (uintptr_t)data;
    uintptr_t base = addr & ~(page - 1);
    munmap((void *)base, (size_t)(len + (addr - base)));
}
