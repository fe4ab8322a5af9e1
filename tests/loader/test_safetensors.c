/* Tests of the safetensors reader: a valid multi-tensor file read back byte for byte, then
 * one malformed file per rule of safetensors.h, each expected to fail with its own status
 * and a message naming what is wrong (so a rule that stops being checked, or starts being
 * reported as a different one, fails here). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "loader_test_util.h"
#include "safetensors.h"

/* One tensor entry of a header. */
#define T(name, dt, shape, b, e)                                                                   \
    "\"" name "\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

/* File image: u64 LE header length (hlen, or the header's length when hlen < 0), the header,
 * then data_len random bytes. Written to DIR/NAME; the path goes to `path`. */
static void write_st(const scratch *s, const char *name, const char *header, int64_t hlen,
                     size_t data_len, uint64_t *rng, char *path)
{
    size_t n = header ? strlen(header) : 0, off = header ? 8 : 0;
    uint64_t len = hlen < 0 ? n : (uint64_t)hlen;
    unsigned char *buf = malloc(off + n + data_len + 1);
    assert_non_null(buf);
    for (int i = 0; header && i < 8; i++) buf[i] = (unsigned char)(len >> (8 * i));
    memcpy(buf + off, header ? header : "", n);
    fill_random(rng, buf + off + n, data_len);
    assert_int_equal(scratch_write(s, name, buf, off + n + data_len, path), 0);
    free(buf);
}

static int setup_dir(void **state)
{
    scratch *s = malloc(sizeof(*s));
    if (!s || scratch_make(s)) return -1;
    /* Prestate tests keep their case pointer: stash it after the scratch. */
    void **box = malloc(2 * sizeof(void *));
    if (!box) return -1;
    box[0] = s, box[1] = *state;
    *state = box;
    return 0;
}

static int teardown_dir(void **state)
{
    void **box = *state;
    scratch_remove(box[0]);
    free(box[0]);
    free(box);
    return 0;
}

static void test_dtypes(void **state)
{
    (void)state;
    for (int i = 0; i < DSR1_DT_COUNT; i++) {
        dsr1_dtype dt;
        assert_non_null(dsr1_dtype_name((dsr1_dtype)i));
        assert_int_equal(dsr1_dtype_parse(dsr1_dtype_name((dsr1_dtype)i), &dt), DSR1_OK);
        assert_int_equal(dt, i);
    }
    assert_int_equal(dsr1_dtype_size(DSR1_DT_F8_E4M3), 1);
    assert_int_equal(dsr1_dtype_size(DSR1_DT_BF16), 2);
    assert_int_equal(dsr1_dtype_size(DSR1_DT_F32), 4);
    assert_int_equal(dsr1_dtype_size(DSR1_DT_I64), 8);
    assert_null(dsr1_dtype_name(DSR1_DT_COUNT));
    dsr1_dtype dt = DSR1_DT_U8;
    assert_int_equal(dsr1_dtype_parse("f32", &dt), DSR1_ERR_UNSUPPORTED);
    assert_int_equal(dt, DSR1_DT_U8);
}

typedef struct {
    const char *name, *dtype;
    int ndim;
    int64_t shape[3];
    uint64_t begin, nbytes;
} spec;

/* Data order: big, embed, w8, scale, empty (0 bytes), scalar. "big" pushes the others past
 * the first page, so mapping exercises the page rounding. */
static const spec valid_specs[] = {
    {"big", "F32", 1, {1100}, 0, 4400},
    {"model.embed_tokens.weight", "BF16", 2, {7, 5}, 4400, 70},
    {"layers.0.w", "F8_E4M3", 3, {3, 4, 2}, 4470, 24},
    {"x.weight", "F32", 2, {3, 4}, 4494, 48},
    {"empty", "F32", 2, {0, 3}, 4542, 0},
    {"scalar", "I64", 0, {0}, 4542, 8},
};
#define NVALID (sizeof(valid_specs) / sizeof(valid_specs[0]))

static void test_valid_file(void **state)
{
    scratch *s = ((void **)*state)[0];
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    char hdr[2048], path[512];
    size_t n = (size_t)snprintf(hdr, sizeof(hdr), "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = NVALID; i-- > 0;) { /* JSON order differs from data order */
        const spec *t = &valid_specs[i];
        n += (size_t)snprintf(hdr + n, sizeof(hdr) - n, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                              t->name, t->dtype);
        for (int d = 0; d < t->ndim; d++)
            n += (size_t)snprintf(hdr + n, sizeof(hdr) - n, "%s%lld", d ? "," : "",
                                  (long long)t->shape[d]);
        n += (size_t)snprintf(hdr + n, sizeof(hdr) - n, "],\"data_offsets\":[%llu,%llu]}",
                              (unsigned long long)t->begin,
                              (unsigned long long)(t->begin + t->nbytes));
    }
    n += (size_t)snprintf(hdr + n, sizeof(hdr) - n, "}");
    while (n % 8) hdr[n++] = ' '; /* writers pad the header with spaces */
    hdr[n] = 0;
    size_t data_len = 4550;
    write_st(s, "model-00001-of-00002.safetensors", hdr, -1, data_len, &rng, path);

    unsigned char *file = malloc(8 + n + data_len);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    assert_int_equal(fread(file, 1, 8 + n + data_len, fp), 8 + n + data_len);
    fclose(fp);

    dsr1_st_file *f = NULL;
    assert_int_equal(dsr1_st_open(path, &f), DSR1_OK);
    assert_string_equal(dsr1_st_path(f), path);
    assert_int_equal(dsr1_st_file_size(f), 8 + n + data_len);
    assert_int_equal(dsr1_st_count(f), NVALID);
    assert_null(dsr1_st_at(f, NVALID));
    assert_null(dsr1_st_find(f, "nope"));
    assert_null(dsr1_st_find(f, "__metadata__"));

    const void *maps[NVALID];
    for (size_t i = 0; i < NVALID; i++) {
        const spec *want = &valid_specs[i];
        const dsr1_st_tensor *t = dsr1_st_find(f, want->name);
        assert_non_null(t);
        assert_ptr_equal(t, dsr1_st_at(f, i)); /* valid_specs is in data order */
        assert_string_equal(t->name, want->name);
        assert_string_equal(dsr1_dtype_name(t->dtype), want->dtype);
        assert_int_equal(t->ndim, want->ndim);
        for (int d = 0; d < want->ndim; d++) assert_int_equal(t->shape[d], want->shape[d]);
        assert_int_equal(t->offset, 8 + n + want->begin);
        assert_int_equal(t->nbytes, want->nbytes);
        assert_int_equal(dsr1_st_map(f, t->offset, t->nbytes, &maps[i]), DSR1_OK);
        assert_non_null(maps[i]);
    }
    dsr1_st_close(f); /* mappings outlive the file object */
    for (size_t i = 0; i < NVALID; i++) {
        const spec *want = &valid_specs[i];
        if (want->nbytes) assert_memory_equal(maps[i], file + 8 + n + want->begin, want->nbytes);
        dsr1_st_unmap(maps[i], want->nbytes);
    }
    free(file);
}

static void test_map_range(void **state)
{
    scratch *s = ((void **)*state)[0];
    uint64_t rng = 7;
    char path[512];
    dsr1_st_file *f = NULL;
    const void *p = (const void *)&rng;
    write_st(s, "r.safetensors", "{" T("a", "U8", "[100]", 0, 100) "}", -1, 100, &rng, path);
    assert_int_equal(dsr1_st_open(path, &f), DSR1_OK);
    uint64_t size = dsr1_st_file_size(f);
    assert_int_equal(dsr1_st_map(f, size - 10, 11, &p), DSR1_ERR_RANGE);
    assert_int_equal(dsr1_st_map(f, UINT64_MAX, 2, &p), DSR1_ERR_RANGE);
    assert_ptr_equal(p, (const void *)&rng);                    /* untouched on failure */
    assert_int_equal(dsr1_st_map(f, 3, size - 3, &p), DSR1_OK); /* unaligned start */
    dsr1_st_unmap(p, size - 3);
    dsr1_st_close(f);
}

/* Many tensors: every name must be found through the hash table. */
static void test_many_tensors(void **state)
{
    scratch *s = ((void **)*state)[0];
    enum { N = 500 };
    uint64_t rng = 99;
    char *hdr = malloc(N * 80 + 8), path[512], name[32];
    size_t n = 0, off = 0;
    n += (size_t)sprintf(hdr, "{");
    for (int i = 0; i < N; i++) {
        int len = 1 + i % 7;
        n += (size_t)sprintf(hdr + n,
                             "%s\"layer.%d.w\":{\"dtype\":\"U8\",\"shape\":[%d],"
                             "\"data_offsets\":[%zu,%zu]}",
                             i ? "," : "", i, len, off, off + (size_t)len);
        off += (size_t)len;
    }
    sprintf(hdr + n, "}");
    write_st(s, "many.safetensors", hdr, -1, off, &rng, path);
    free(hdr);
    dsr1_st_file *f = NULL;
    assert_int_equal(dsr1_st_open(path, &f), DSR1_OK);
    assert_int_equal(dsr1_st_count(f), N);
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "layer.%d.w", i);
        const dsr1_st_tensor *t = dsr1_st_find(f, name);
        assert_non_null(t);
        assert_string_equal(t->name, name);
        assert_int_equal(t->nbytes, 1 + i % 7);
    }
    snprintf(name, sizeof(name), "layer.%d.w", N);
    assert_null(dsr1_st_find(f, name));
    dsr1_st_close(f);
}

static void test_empty_and_missing(void **state)
{
    scratch *s = ((void **)*state)[0];
    uint64_t rng = 3;
    char path[512];
    dsr1_st_file *f = NULL;
    write_st(s, "empty.safetensors", "{}", -1, 0, &rng, path);
    assert_int_equal(dsr1_st_open(path, &f), DSR1_OK);
    assert_int_equal(dsr1_st_count(f), 0);
    assert_null(dsr1_st_find(f, "a"));
    dsr1_st_close(f);

    f = NULL;
    snprintf(path, sizeof(path), "%s/absent.safetensors", s->dir);
    assert_int_equal(dsr1_st_open(path, &f), DSR1_ERR_NOT_FOUND);
    assert_non_null(strstr(dsr1_errmsg(), "absent.safetensors: cannot open"));
    assert_int_equal(dsr1_st_open(s->dir, &f), DSR1_ERR_IO);
    assert_non_null(strstr(dsr1_errmsg(), "not a readable regular file"));
    assert_null(f);
}

typedef struct {
    const char *name;
    const char *header; /* NULL: the file is only data_len random bytes */
    int64_t hlen;       /* -1: the header's real length */
    size_t data_len;
    dsr1_status status;
    const char *expect; /* must appear in the message */
} bad_case;

#define ENT(x) "{" x "}"
static const bad_case bad_cases[] = {
    {"short_file", NULL, -1, 5, DSR1_ERR_FORMAT, "shorter than the 8-byte header length"},
    {"header_len_zero", "", 0, 16, DSR1_ERR_FORMAT, "header length is 0"},
    {"header_len_huge", "{}", 100000001, 16, DSR1_ERR_FORMAT,
     "header length 100000001 exceeds the 100000000-byte limit"},
    {"header_len_past_eof", "{}", 64, 8, DSR1_ERR_FORMAT,
     "header length 64 runs past the end of the file"},
    {"utf8_bad_byte", "{\"a\xff\":1}", -1, 0, DSR1_ERR_FORMAT, "not valid UTF-8 (byte 0xff"},
    {"utf8_overlong", "{\"a\xc0\xaf\":1}", -1, 0, DSR1_ERR_FORMAT, "not valid UTF-8 (byte 0xc0"},
    {"utf8_surrogate", "{\"a\xed\xa0\x80\":1}", -1, 0, DSR1_ERR_FORMAT,
     "not valid UTF-8 (byte 0xed"},
    {"utf8_truncated", "{\"a\":1}\xe2\x82", -1, 0, DSR1_ERR_FORMAT, "not valid UTF-8 (byte 0xe2"},
    {"not_json", "{\"a\": ", -1, 0, DSR1_ERR_FORMAT, "header is not valid JSON"},
    {"nul_in_name", "{\"a\\u0000b\":1}", -1, 0, DSR1_ERR_FORMAT, "header is not valid JSON"},
    {"int_too_big", ENT(T("a", "U8", "[1]", 0, 99999999999999999999)), -1, 1, DSR1_ERR_FORMAT,
     "too big integer"},
    {"not_object", "[1, 2]", -1, 0, DSR1_ERR_FORMAT, "header is not a JSON object"},
    {"entry_not_object", "{\"a\":5}", -1, 0, DSR1_ERR_FORMAT, "tensor 'a': entry is not an object"},
    {"missing_dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", -1, 1, DSR1_ERR_FORMAT,
     "tensor 'a': missing 'dtype'"},
    {"missing_shape", "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", -1, 1, DSR1_ERR_FORMAT,
     "tensor 'a': missing 'shape'"},
    {"missing_offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", -1, 1, DSR1_ERR_FORMAT,
     "tensor 'a': missing 'data_offsets'"},
    {"extra_key", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"foo\":1}}", -1,
     1, DSR1_ERR_FORMAT, "tensor 'a': unexpected key 'foo'"},
    {"dtype_not_string", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,1]}}", -1, 1,
     DSR1_ERR_FORMAT, "tensor 'a': dtype is not a string"},
    {"unknown_dtype", ENT(T("a", "F7", "[1]", 0, 1)), -1, 1, DSR1_ERR_UNSUPPORTED,
     "tensor 'a': unknown dtype 'F7'"},
    {"shape_not_array", ENT(T("a", "U8", "4", 0, 4)), -1, 4, DSR1_ERR_FORMAT,
     "tensor 'a': shape is not an array"},
    {"shape_negative", ENT(T("a", "U8", "[-2,4]", 0, 8)), -1, 8, DSR1_ERR_FORMAT,
     "tensor 'a': shape[0] = -2 is negative"},
    {"shape_not_integer", ENT(T("a", "U8", "[2,2.5]", 0, 5)), -1, 5, DSR1_ERR_FORMAT,
     "tensor 'a': shape[1] is not an integer"},
    {"too_many_dims", ENT(T("a", "U8", "[1,1,1,1,1,1,1,1,1]", 0, 1)), -1, 1, DSR1_ERR_UNSUPPORTED,
     "tensor 'a': 9 dimensions (at most 8)"},
    {"offsets_reversed", ENT(T("a", "U8", "[0]", 8, 0)), -1, 8, DSR1_ERR_FORMAT,
     "tensor 'a': data_offsets begin 8 is after end 0"},
    {"offsets_arity", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4,8]}}", -1, 8,
     DSR1_ERR_FORMAT, "tensor 'a': data_offsets is not an array [begin, end]"},
    {"offsets_not_array", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":4}}", -1, 4,
     DSR1_ERR_FORMAT, "tensor 'a': data_offsets is not an array [begin, end]"},
    {"offsets_negative", ENT(T("a", "U8", "[4]", -4, 0)), -1, 4, DSR1_ERR_FORMAT,
     "tensor 'a': data_offsets[0] = -4 is negative"},
    {"offsets_not_integer", ENT(T("a", "U8", "[4]", 0, 4.0)), -1, 4, DSR1_ERR_FORMAT,
     "tensor 'a': data_offsets[1] is not an integer"},
    {"size_mismatch", ENT(T("x.weight", "F32", "[3,4]", 0, 40)), -1, 40, DSR1_ERR_FORMAT,
     "size_mismatch.safetensors: tensor 'x.weight': shape [3,4] x F32 = 48 bytes but "
     "data_offsets span 40"},
    {"shape_overflow", ENT(T("a", "U8", "[4294967296,4294967296,16]", 0, 0)), -1, 0,
     DSR1_ERR_FORMAT, "tensor 'a': shape x U8 size overflows 64 bits"},
    {"gap", ENT(T("a", "F32", "[1]", 0, 4) "," T("b", "F32", "[1]", 8, 12)), -1, 12,
     DSR1_ERR_FORMAT, "tensor 'b': gap of 4 bytes after tensor 'a'"},
    {"overlap", ENT(T("a", "F32", "[2]", 0, 8) "," T("b", "F32", "[1]", 4, 8)), -1, 8,
     DSR1_ERR_FORMAT, "tensor 'b': overlaps tensor 'a'"},
    {"first_not_zero", ENT(T("a", "F32", "[1]", 4, 8)), -1, 8, DSR1_ERR_FORMAT,
     "tensor 'a': first tensor starts at data offset 4, not 0"},
    {"trailing_bytes", ENT(T("a", "F32", "[1]", 0, 4)), -1, 10, DSR1_ERR_FORMAT,
     "6 trailing bytes after the last tensor"},
    {"trailing_no_tensors", "{}", -1, 3, DSR1_ERR_FORMAT, "3 trailing bytes after the last"},
    {"data_past_eof", ENT(T("a", "F32", "[2]", 0, 8)), -1, 4, DSR1_ERR_FORMAT,
     "tensor 'a': data_offsets end 8 is past the end of the file (data region is 4 bytes)"},
    {"duplicate_name", ENT(T("x.w", "U8", "[1]", 0, 1) "," T("x.w", "U8", "[1]", 1, 2)), -1, 2,
     DSR1_ERR_FORMAT, "duplicate key 'x.w' in header"},
    {"duplicate_long_name",
     ENT(T("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", "U8", "[1]", 0,
           1) ", " T("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", "U8", "[1]", 1, 2)),
     -1, 2, DSR1_ERR_FORMAT,
     "duplicate key 'model.layers.0.self_attn.kv_a_proj_with_mqa.weight' in header"},
    {"duplicate_escaped_name",
     ENT(T("a\\\"b", "U8", "[1]", 0, 1) "," T("a\\\"b", "U8", "[1]", 1, 2)), -1, 2, DSR1_ERR_FORMAT,
     "duplicate key 'a\"b' in header"},
    {"duplicate_utf8_name",
     ENT(T("\xc3\xa9.w", "U8", "[1]", 0, 1) ",\n " T("\xc3\xa9.w", "U8", "[1]", 1, 2)), -1, 2,
     DSR1_ERR_FORMAT, "duplicate key '\xc3\xa9.w' in header"},
    {"metadata_not_object", "{\"__metadata__\":3}", -1, 0, DSR1_ERR_FORMAT,
     "__metadata__ is not an object"},
    {"metadata_value", "{\"__metadata__\":{\"format\":1}}", -1, 0, DSR1_ERR_FORMAT,
     "__metadata__ value of 'format' is not a string"},
};
#define NBAD (sizeof(bad_cases) / sizeof(bad_cases[0]))

static void test_bad_case(void **state)
{
    scratch *s = ((void **)*state)[0];
    const bad_case *c = ((void **)*state)[1];
    uint64_t rng = 0x1234567u + strlen(c->name);
    char path[512], file[128];
    snprintf(file, sizeof(file), "%s.safetensors", c->name);
    write_st(s, file, c->header, c->hlen, c->data_len, &rng, path);
    dsr1_st_file *f = NULL;
    dsr1_status st = dsr1_st_open(path, &f);
    if (st != c->status || !strstr(dsr1_errmsg(), c->expect) || !strstr(dsr1_errmsg(), path))
        fail_msg("%s: got %s \"%s\", want %s with \"%s\"", c->name, dsr1_status_str(st),
                 dsr1_errmsg(), dsr1_status_str(c->status), c->expect);
    assert_null(f);
}

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test_setup_teardown(test_valid_file, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_map_range, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_many_tensors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_empty_and_missing, setup_dir, teardown_dir),
    };
    enum { NFIXED = sizeof(fixed) / sizeof(fixed[0]) };
    struct CMUnitTest tests[NFIXED + NBAD];
    memcpy(tests, fixed, sizeof(fixed));
    for (size_t i = 0; i < NBAD; i++)
        tests[NFIXED + i] = (struct CMUnitTest){bad_cases[i].name, test_bad_case, setup_dir,
                                                teardown_dir, (void *)&bad_cases[i]};
    return _cmocka_run_group_tests("safetensors", tests, NFIXED + NBAD, NULL, NULL);
}
