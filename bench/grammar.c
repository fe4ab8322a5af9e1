/* `dsr1-bench grammar`: the grammar engine over a directory of JSON Schemas with test
 * instances, in the MaskBench format of guidance-ai/jsonschemabench (one file per schema:
 * {"schema": ..., "tests": [{"valid": bool, "data": ..., "description": ...}]}).
 *
 * Each schema is compiled on R1's vocabulary (dsr1_grammar_compile_json_schema); each test
 * instance is serialised compactly in the schema's property order (as the grammar writes
 * JSON), tokenized with the checkpoint's tokenizer and walked token by token through a
 * matcher, timing dsr1_matcher_mask before every token and before the end-of-sequence
 * token, on one thread (wall clock; the thread's CPU time apart, which a busy machine does
 * not inflate). A valid instance must be accepted; an invalid one should be rejected (a
 * forbidden token, or no end of sequence where it ends). Reported: the share of schemas
 * compiled, compile and per-token mask time percentiles, the trie nodes each mask's walks
 * visited (dsr1_matcher_mask_work: a deterministic measure of the work, unlike time; the
 * environment variable DSR1_GRAMMAR_NO_SPLIT turns the safe-text split off, for an A/B),
 * valid accepted, invalid rejected, and the compile errors by kind. --dump writes the token ids of
 * every instance (JSON lines), so the peers' drivers (bench/grammar/peer_*.mjs) walk the same
 * tokens. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "grammar.h"
#include "json_schema_instance.h"
#include "tokenizer.h"

#define EOS_TOKEN     "<｜end▁of▁sentence｜>"
#define MAX_FILE      ((size_t)256 << 20)
#define MAX_KINDS     512
#define MAX_REJECTED  200
#define DEFAULT_MODEL "../shared/golden/tokenizer"

typedef struct {
    const char *schemas, *model, *dump;
    long limit;
    double budget_s; /* mask time per schema before it is skipped */
    bool json, verbose;
} gopts;

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: dsr1-bench grammar --schemas DIR [--model DIR] [--limit N] [--budget S]\n"
        "                          [--json] [--dump FILE] [--verbose]\n\n"
        "Compiles every DIR/*.json (MaskBench format: {\"schema\": ..., \"tests\": [{\"valid\":\n"
        "bool, \"data\": ...}]}) on the tokenizer's vocabulary and walks each test instance\n"
        "token by token, timing the token mask before each token (one thread).\n\n"
        "  --schemas DIR  the schema files (sorted by name)\n"
        "  --model DIR    checkpoint or tokenizer directory (default %s,\n"
        "                 relative to the repository root)\n"
        "  --limit N      only the first N files\n"
        "  --budget S     seconds of mask time per schema before its remaining instances\n"
        "                 are skipped and the schema counted as timed out (default 2)\n"
        "  --json         print one JSON object instead of the table\n"
        "  --dump FILE    write each instance's token ids (JSON lines) for the peers\n"
        "  --verbose      each compile error and rejected valid instance on stderr\n"
        "  -h, --help     this text\n",
        DEFAULT_MODEL);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* This thread's CPU time: what a mask costs without the time the thread spends preempted
 * on a shared machine (the wall-clock figures are the ones compared with the peers). The
 * clock is a system call (about 1 us here), so cpu_overhead_s() measures what a timed
 * empty interval reads, to subtract. */
static double cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b);

static double cpu_overhead_s(void)
{
    enum { N = 2001 };
    static double d[N];
    for (int i = 0; i < N; i++) {
        double c0 = cpu_s();
        (void)now_s(); /* as around a mask */
        (void)now_s();
        d[i] = cpu_s() - c0;
    }
    qsort(d, N, sizeof d[0], cmp_double);
    return d[N / 2];
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && (size_t)n <= MAX_FILE && fseek(f, 0, SEEK_SET) == 0 &&
            (buf = malloc((size_t)n + 1))) {
            *len = fread(buf, 1, (size_t)n, f);
            buf[*len] = '\0';
        }
    }
    fclose(f);
    return buf;
}

/* ---- a JSON scanner that finds the spans of values in the file's own text ---- */

typedef struct {
    const char *p, *end;
} scan;

static void skip_ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static bool skip_string(scan *s)
{
    for (s->p++; s->p < s->end; s->p++) {
        if (*s->p == '\\')
            s->p++;
        else if (*s->p == '"') {
            s->p++;
            return true;
        }
    }
    return false;
}

/* Skips one value (the file is assumed to be JSON; nesting is only counted). */
static bool skip_value(scan *s)
{
    skip_ws(s);
    if (s->p >= s->end) return false;
    if (*s->p == '"') return skip_string(s);
    if (*s->p != '{' && *s->p != '[') {
        while (s->p < s->end && !strchr(",}] \t\r\n", *s->p)) s->p++;
        return true;
    }
    long depth = 0;
    while (s->p < s->end) {
        char c = *s->p;
        if (c == '"') {
            if (!skip_string(s)) return false;
            continue;
        }
        if (c == '{' || c == '[') depth++;
        if (c == '}' || c == ']') depth--;
        s->p++;
        if (depth == 0) return true;
    }
    return false;
}

/* Iterates an object's members: call with s->p at '{' (first) or after a value. Returns 1
 * with the key (raw, no quotes) and s->p at the value, 0 at the end, -1 on bad text. */
static int next_member(scan *s, bool first, const char **key, size_t *klen)
{
    skip_ws(s);
    if (s->p >= s->end) return -1;
    if (first) {
        if (*s->p != '{') return -1;
        s->p++;
        skip_ws(s);
        if (s->p < s->end && *s->p == '}') return s->p++, 0;
    } else {
        if (*s->p == '}') return s->p++, 0;
        if (*s->p != ',') return -1;
        s->p++;
        skip_ws(s);
    }
    if (s->p >= s->end || *s->p != '"') return -1;
    const char *k = s->p + 1;
    if (!skip_string(s)) return -1;
    *key = k;
    *klen = (size_t)(s->p - 1 - k);
    skip_ws(s);
    if (s->p >= s->end || *s->p != ':') return -1;
    s->p++;
    skip_ws(s);
    return 1;
}

static bool key_is(const char *k, size_t n, const char *want)
{
    return n == strlen(want) && !memcmp(k, want, n);
}

typedef struct {
    bool valid;
    const char *data, *desc; /* spans in the file text */
    size_t data_len, desc_len;
} test_case;

typedef struct {
    const char *schema;
    size_t schema_len;
    test_case *tests;
    size_t ntests;
} schema_file;

static bool parse_file(const char *text, size_t len, schema_file *out)
{
    scan s = {text, text + len};
    memset(out, 0, sizeof *out);
    const char *k;
    size_t kn, cap = 0;
    int r;
    for (bool first = true; (r = next_member(&s, first, &k, &kn)) == 1; first = false) {
        const char *v = s.p;
        if (key_is(k, kn, "tests") && *s.p == '[') {
            s.p++;
            for (;;) {
                skip_ws(&s);
                if (s.p < s.end && *s.p == ']') {
                    s.p++;
                    break;
                }
                if (out->ntests == cap) {
                    cap = cap ? 2 * cap : 8;
                    test_case *t = realloc(out->tests, cap * sizeof *t);
                    if (!t) return false;
                    out->tests = t;
                }
                test_case *t = &out->tests[out->ntests++];
                memset(t, 0, sizeof *t);
                int r2;
                for (bool f2 = true; (r2 = next_member(&s, f2, &k, &kn)) == 1; f2 = false) {
                    const char *tv = s.p;
                    if (!skip_value(&s)) return false;
                    if (key_is(k, kn, "valid"))
                        t->valid = !strncmp(tv, "true", 4);
                    else if (key_is(k, kn, "data"))
                        t->data = tv, t->data_len = (size_t)(s.p - tv);
                    else if (key_is(k, kn, "description") && *tv == '"')
                        t->desc = tv + 1, t->desc_len = (size_t)(s.p - tv - 2);
                }
                if (r2 < 0 || !t->data) return false;
                skip_ws(&s);
                if (s.p < s.end && *s.p == ',') s.p++;
            }
            continue;
        }
        if (!skip_value(&s)) return false;
        if (key_is(k, kn, "schema")) out->schema = v, out->schema_len = (size_t)(s.p - v);
    }
    return r == 0 && out->schema;
}

/* ---- statistics ---- */

typedef struct {
    double *v;
    size_t n, cap;
} series;

static bool push(series *s, double x)
{
    if (s->n == s->cap) {
        size_t c = s->cap ? 2 * s->cap : 1024;
        double *v = realloc(s->v, c * sizeof *v);
        if (!v) return false;
        s->v = v;
        s->cap = c;
    }
    s->v[s->n++] = x;
    return true;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted series (as `dsr1 grammar check`). */
static double pct(const series *s, double p)
{
    if (!s->n) return 0;
    size_t i = (size_t)(p * (double)s->n);
    return s->v[i < s->n ? i : s->n - 1];
}

static double mean(const series *s)
{
    double t = 0;
    for (size_t i = 0; i < s->n; i++) t += s->v[i];
    return s->n ? t / (double)s->n : 0;
}

typedef struct {
    char kind[128];
    long count;
    char example[96]; /* the first file with it */
} err_kind;

typedef struct {
    char file[96];
    size_t test, token, ntokens;
    char desc[64];
} rejected;

typedef struct {
    long files, bad_files, compiled, timed_out, skipped_tests;
    long valid, valid_ok, invalid, invalid_rej, serial_err;
    series compile, mask, mask_cpu, mask_first, mask_later; /* first: each instance's first */
    series mask_nodes; /* trie nodes visited per mask (dsr1_matcher_mask_work) */
    err_kind kinds[MAX_KINDS];
    int nkinds;
    long other_kinds;
    rejected rej[MAX_REJECTED];
    long nrej;
} results;

/* An error message without its JSON pointers and numbers, so that equal causes count
 * together: "unsupported keyword 'patternProperties' at /properties/a" ->
 * "unsupported keyword 'patternProperties'". */
static void error_kind(const char *msg, char *out, size_t cap)
{
    size_t n = 0;
    const char *p = msg;
    if (!strncmp(p, "JSON Schema: ", 13)) p += 13;
    while (*p && n + 4 < cap) {
        if (!strncmp(p, " at the root", 12)) {
            p += 12;
            continue;
        }
        if (!strncmp(p, " at ", 4) && (p[4] == '/' || p[4] == '#' || p[4] == '(' || !p[4])) {
            p += 4;
            while (*p && *p != ' ' && *p != ':' && *p != ',') p++;
            continue;
        }
        if (!strncmp(p, "$ref '", 6) && n + 12 < cap) {
            memcpy(out + n, "$ref '...'", 10);
            n += 10;
            const char *q = strchr(p + 6, '\'');
            p = q ? q + 1 : p + strlen(p);
            continue;
        }
        if (*p >= '0' && *p <= '9') {
            out[n++] = 'N';
            while ((*p >= '0' && *p <= '9') || *p == '.') p++;
            continue;
        }
        out[n++] = *p++;
    }
    out[n] = '\0';
}

static void count_error(results *r, const char *file, const char *msg)
{
    char kind[128];
    error_kind(msg, kind, sizeof kind);
    for (int i = 0; i < r->nkinds; i++)
        if (!strcmp(r->kinds[i].kind, kind)) {
            r->kinds[i].count++;
            return;
        }
    if (r->nkinds == MAX_KINDS) {
        r->other_kinds++;
        return;
    }
    err_kind *k = &r->kinds[r->nkinds++];
    snprintf(k->kind, sizeof k->kind, "%s", kind);
    snprintf(k->example, sizeof k->example, "%s", file);
    k->count = 1;
}

static int cmp_kind(const void *a, const void *b)
{
    const err_kind *x = a, *y = b;
    return x->count != y->count ? (x->count < y->count ? 1 : -1) : strcmp(x->kind, y->kind);
}

/* ---- one schema ---- */

typedef struct {
    const gopts *o;
    dsr1_tokenizer *tok;
    const dsr1_grammar_vocab *v;
    int32_t eos, vsize;
    uint32_t *mask;
    FILE *dump;
    double cpu_overhead; /* cpu_overhead_s() */
} ctx;

static void json_str(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* Walks ids through a fresh matcher; returns true when every token and then the end of
 * sequence were allowed, else false with *at the first rejected position (n: the end).
 * *spent accumulates the mask time. */
static bool walk(ctx *c, const dsr1_grammar *g, const int32_t *ids, size_t n, results *r,
                 size_t *at, double *spent)
{
    dsr1_matcher *m = NULL;
    if (dsr1_matcher_create(g, &m)) {
        *at = 0;
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i <= n; i++) {
        int32_t id = i < n ? ids[i] : c->eos;
        uint64_t w0 = dsr1_matcher_mask_work(m);
        double c0 = cpu_s(), t0 = now_s();
        dsr1_matcher_mask(m, c->mask);
        double dt = now_s() - t0, dc = cpu_s() - c0 - c->cpu_overhead;
        push(&r->mask_nodes, (double)(dsr1_matcher_mask_work(m) - w0));
        push(&r->mask_cpu, dc > 0 ? dc : 0);
        *spent += dt;
        push(&r->mask, dt);
        push(i ? &r->mask_later : &r->mask_first, dt);
        if (id < 0 || id >= c->vsize || !(c->mask[id / 32] >> (id % 32) & 1) ||
            dsr1_matcher_advance(m, id)) {
            ok = false;
            *at = i;
            break;
        }
        if (*spent > c->o->budget_s) {
            ok = false;
            *at = (size_t)-1; /* out of time */
            break;
        }
    }
    dsr1_matcher_free(m);
    return ok;
}

static void run_schema(ctx *c, const char *name, const char *text, size_t len, results *r)
{
    schema_file sf;
    r->files++;
    if (!parse_file(text, len, &sf)) {
        r->bad_files++;
        count_error(r, name, "file: not in the MaskBench format");
        free(sf.tests);
        return;
    }
    dsr1_grammar *g = NULL;
    double t0 = now_s();
    dsr1_status st = dsr1_grammar_compile_json_schema(c->v, sf.schema, sf.schema_len, NULL, &g);
    double dt = now_s() - t0;
    if (st) {
        count_error(r, name, dsr1_errmsg());
        if (c->o->verbose) fprintf(stderr, "%s: compile: %s\n", name, dsr1_errmsg());
    } else {
        r->compiled++;
        push(&r->compile, dt);
    }
    if (c->dump) {
        fprintf(c->dump, "{\"file\":");
        json_str(c->dump, name, strlen(name));
        fprintf(c->dump, ",\"ours\":%s,\"compile_us\":%.1f,\"tests\":[", g ? "true" : "false",
                1e6 * dt);
    }
    double spent = 0;
    bool out_of_time = false;
    for (size_t t = 0; t < sf.ntests; t++) {
        test_case *tc = &sf.tests[t];
        char *inst = NULL;
        size_t ilen = 0;
        int32_t *ids = NULL;
        size_t n = 0;
        if (dsr1_json_schema_serialize_instance(sf.schema, sf.schema_len, tc->data, tc->data_len,
                                                &inst, &ilen) ||
            dsr1_tokenizer_encode(c->tok, inst, ilen, DSR1_ENCODE_SPECIAL_AS_TEXT, &ids, &n)) {
            r->serial_err++;
            if (c->o->verbose)
                fprintf(stderr, "%s: test %zu not serialised: %s\n", name, t, dsr1_errmsg());
            free(inst);
            continue;
        }
        if (c->dump) {
            fprintf(c->dump, "%s{\"valid\":%s,\"ids\":[", t ? "," : "",
                    tc->valid ? "true" : "false");
            for (size_t i = 0; i < n; i++) fprintf(c->dump, "%s%d", i ? "," : "", ids[i]);
            fprintf(c->dump, "]}");
        }
        if (g && !out_of_time) {
            size_t at = 0;
            bool ok = walk(c, g, ids, n, r, &at, &spent);
            if (!ok && at == (size_t)-1) {
                out_of_time = true;
                r->timed_out++;
            } else if (tc->valid) {
                r->valid++;
                r->valid_ok += ok;
                if (!ok && r->nrej < MAX_REJECTED) {
                    rejected *x = &r->rej[r->nrej++];
                    snprintf(x->file, sizeof x->file, "%s", name);
                    snprintf(x->desc, sizeof x->desc, "%.*s", (int)tc->desc_len,
                             tc->desc ? tc->desc : "");
                    x->test = t;
                    x->token = at;
                    x->ntokens = n;
                } else if (!ok) {
                    r->nrej++;
                }
                if (!ok && c->o->verbose) {
                    size_t off = 0;
                    for (size_t i = 0; i < at && i < n; i++) {
                        const uint8_t *b;
                        size_t bl = 0;
                        if (!dsr1_tokenizer_token_bytes(c->tok, ids[i], &b, &bl)) off += bl;
                    }
                    fprintf(stderr,
                            "%s: valid test %zu rejected at token %zu of %zu: %.*s<<HERE>>%s\n",
                            name, t, at, n, (int)off, inst, inst + off);
                }
            } else {
                r->invalid++;
                r->invalid_rej += !ok;
                if (ok && c->o->verbose)
                    fprintf(stderr, "%s: invalid test %zu accepted (%.*s): %s\n", name, t,
                            (int)tc->desc_len, tc->desc ? tc->desc : "", inst);
            }
        } else if (g) {
            r->skipped_tests++;
        }
        free(ids);
        free(inst);
    }
    if (c->dump) fprintf(c->dump, "]}\n");
    dsr1_grammar_free(g);
    free(sf.tests);
}

/* ---- the report ---- */

static double share(long a, long b)
{
    return b ? 100.0 * (double)a / (double)b : 0;
}

static void report_json(const gopts *o, results *r, int32_t vsize, double cpu_overhead)
{
    printf("{\"schemas_dir\":");
    json_str(stdout, o->schemas, strlen(o->schemas));
    printf(",\"vocab\":%d,\"files\":%ld,\"bad_files\":%ld,\"compiled\":%ld,"
           "\"compiled_pct\":%.2f,\"timed_out\":%ld,\"skipped_tests\":%ld,",
           vsize, r->files, r->bad_files, r->compiled, share(r->compiled, r->files), r->timed_out,
           r->skipped_tests);
    printf("\"compile_ms\":{\"n\":%zu,\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f,\"max\":%.4f},",
           r->compile.n, 1e3 * pct(&r->compile, .5), 1e3 * pct(&r->compile, .9),
           1e3 * pct(&r->compile, .99), r->compile.n ? 1e3 * r->compile.v[r->compile.n - 1] : 0);
    printf("\"mask_us\":{\"n\":%zu,\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"max\":%.2f},",
           r->mask.n, 1e6 * pct(&r->mask, .5), 1e6 * pct(&r->mask, .9), 1e6 * pct(&r->mask, .99),
           r->mask.n ? 1e6 * r->mask.v[r->mask.n - 1] : 0);
    printf("\"cpu_clock_overhead_us\":%.3f,", 1e6 * cpu_overhead);
    printf("\"mask_cpu_us\":{\"n\":%zu,\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"max\":%.2f},",
           r->mask_cpu.n, 1e6 * pct(&r->mask_cpu, .5), 1e6 * pct(&r->mask_cpu, .9),
           1e6 * pct(&r->mask_cpu, .99),
           r->mask_cpu.n ? 1e6 * r->mask_cpu.v[r->mask_cpu.n - 1] : 0);
    const series *split[2] = {&r->mask_first, &r->mask_later};
    for (int k = 0; k < 2; k++)
        printf("\"%s\":{\"n\":%zu,\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"max\":%.2f},",
               k ? "mask_later_us" : "mask_first_us", split[k]->n, 1e6 * pct(split[k], .5),
               1e6 * pct(split[k], .9), 1e6 * pct(split[k], .99),
               split[k]->n ? 1e6 * split[k]->v[split[k]->n - 1] : 0);
    printf("\"mask_nodes\":{\"n\":%zu,\"p50\":%.0f,\"p90\":%.0f,\"p99\":%.0f,\"max\":%.0f,"
           "\"mean\":%.1f},",
           r->mask_nodes.n, pct(&r->mask_nodes, .5), pct(&r->mask_nodes, .9),
           pct(&r->mask_nodes, .99), r->mask_nodes.n ? r->mask_nodes.v[r->mask_nodes.n - 1] : 0,
           mean(&r->mask_nodes));
    printf("\"valid\":%ld,\"valid_accepted\":%ld,\"valid_accepted_pct\":%.2f,"
           "\"invalid\":%ld,\"invalid_rejected\":%ld,\"invalid_rejected_pct\":%.2f,"
           "\"serialise_errors\":%ld,",
           r->valid, r->valid_ok, share(r->valid_ok, r->valid), r->invalid, r->invalid_rej,
           share(r->invalid_rej, r->invalid), r->serial_err);
    printf("\"errors\":[");
    for (int i = 0; i < r->nkinds; i++) {
        printf("%s{\"kind\":", i ? "," : "");
        json_str(stdout, r->kinds[i].kind, strlen(r->kinds[i].kind));
        printf(",\"count\":%ld,\"example\":", r->kinds[i].count);
        json_str(stdout, r->kinds[i].example, strlen(r->kinds[i].example));
        printf("}");
    }
    printf("],\"other_error_kinds\":%ld,\"valid_rejected\":[", r->other_kinds);
    for (long i = 0; i < r->nrej && i < MAX_REJECTED; i++) {
        rejected *x = &r->rej[i];
        printf("%s{\"file\":", i ? "," : "");
        json_str(stdout, x->file, strlen(x->file));
        printf(",\"test\":%zu,\"token\":%zu,\"tokens\":%zu,\"description\":", x->test, x->token,
               x->ntokens);
        json_str(stdout, x->desc, strlen(x->desc));
        printf("}");
    }
    printf("]}\n");
}

static void report_table(const gopts *o, results *r, int32_t vsize)
{
    printf("dsr1-bench grammar: %ld schema files in %s, vocabulary %d tokens, one thread\n\n",
           r->files, o->schemas, vsize);
    printf("  schemas compiled        %7ld / %-7ld %6.1f %%\n", r->compiled, r->files,
           share(r->compiled, r->files));
    printf("  schemas timed out       %7ld           (> %.1f s of masks; %ld instances skipped)\n",
           r->timed_out, o->budget_s, r->skipped_tests);
    printf("  valid accepted          %7ld / %-7ld %6.1f %%\n", r->valid_ok, r->valid,
           share(r->valid_ok, r->valid));
    printf("  invalid rejected        %7ld / %-7ld %6.1f %%\n", r->invalid_rej, r->invalid,
           share(r->invalid_rej, r->invalid));
    if (r->serial_err) printf("  instances not serialised %6ld\n", r->serial_err);
    printf("\n  %-22s %10s %10s %10s %10s %10s\n", "", "p50", "p90", "p99", "max", "n");
    printf("  %-22s %10.3f %10.3f %10.3f %10.3f %10zu\n", "compile time (ms)",
           1e3 * pct(&r->compile, .5), 1e3 * pct(&r->compile, .9), 1e3 * pct(&r->compile, .99),
           r->compile.n ? 1e3 * r->compile.v[r->compile.n - 1] : 0, r->compile.n);
    printf("  %-22s %10.1f %10.1f %10.1f %10.1f %10zu\n", "mask time/token (us)",
           1e6 * pct(&r->mask, .5), 1e6 * pct(&r->mask, .9), 1e6 * pct(&r->mask, .99),
           r->mask.n ? 1e6 * r->mask.v[r->mask.n - 1] : 0, r->mask.n);
    printf("  %-22s %10.1f %10.1f %10.1f %10.1f %10zu\n", "  thread CPU time (us)",
           1e6 * pct(&r->mask_cpu, .5), 1e6 * pct(&r->mask_cpu, .9), 1e6 * pct(&r->mask_cpu, .99),
           r->mask_cpu.n ? 1e6 * r->mask_cpu.v[r->mask_cpu.n - 1] : 0, r->mask_cpu.n);
    printf("  %-22s %10.0f %10.0f %10.0f %10.0f %10zu   (mean %.1f)\n", "trie nodes/mask",
           pct(&r->mask_nodes, .5), pct(&r->mask_nodes, .9), pct(&r->mask_nodes, .99),
           r->mask_nodes.n ? r->mask_nodes.v[r->mask_nodes.n - 1] : 0, r->mask_nodes.n,
           mean(&r->mask_nodes));
    if (r->nkinds) {
        printf("\n  compile errors by kind (count, first file):\n");
        for (int i = 0; i < r->nkinds; i++)
            printf("  %7ld  %s  (%s)\n", r->kinds[i].count, r->kinds[i].kind, r->kinds[i].example);
        if (r->other_kinds) printf("  %7ld  (other kinds)\n", r->other_kinds);
    }
    if (r->nrej) {
        printf("\n  valid instances rejected (file, test, rejected token / tokens):\n");
        for (long i = 0; i < r->nrej && i < MAX_REJECTED; i++)
            printf("    %s  test %zu  token %zu / %zu  %s\n", r->rej[i].file, r->rej[i].test,
                   r->rej[i].token, r->rej[i].ntokens, r->rej[i].desc);
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char **list_dir(const char *dir, size_t *n)
{
    DIR *d = opendir(dir);
    if (!d) return NULL;
    size_t cap = 256;
    char **names = malloc(cap * sizeof *names);
    *n = 0;
    struct dirent *e;
    while (names && (e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".json")) continue;
        if (*n == cap) {
            char **nn = realloc(names, (cap *= 2) * sizeof *names);
            if (!nn) break;
            names = nn;
        }
        names[(*n)++] = strdup(e->d_name);
    }
    closedir(d);
    if (names) qsort(names, *n, sizeof *names, cmp_str);
    return names;
}

int dsr1__bench_grammar(int argc, char **argv)
{
    static const struct option lopts[] = {{"schemas", required_argument, 0, 's'},
                                          {"model", required_argument, 0, 'm'},
                                          {"limit", required_argument, 0, 'n'},
                                          {"budget", required_argument, 0, 'b'},
                                          {"json", no_argument, 0, 'j'},
                                          {"dump", required_argument, 0, 'd'},
                                          {"verbose", no_argument, 0, 'v'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
    gopts o = {.model = DEFAULT_MODEL, .budget_s = 2.0};
    int c, end;
    while ((c = dsr1__bench_getopt("grammar", argc, argv, "h", lopts, usage, &end)) != -1) {
        char *e = NULL;
        switch (c) {
        case 's':
            o.schemas = optarg;
            break;
        case 'm':
            o.model = optarg;
            break;
        case 'n':
            o.limit = strtol(optarg, &e, 10);
            if (*e || o.limit <= 0) {
                fprintf(stderr, "grammar: --limit wants a positive count, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'b':
            o.budget_s = strtod(optarg, &e);
            if (*e || !(o.budget_s > 0)) {
                fprintf(stderr, "grammar: --budget wants positive seconds, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'j':
            o.json = true;
            break;
        case 'd':
            o.dump = optarg;
            break;
        case 'v':
            o.verbose = true;
            break;
        }
    }
    if (end) return end == 1 ? 0 : 2;
    if (!o.schemas) {
        fprintf(stderr, "grammar: --schemas DIR is required\n");
        usage(stderr);
        return 2;
    }
    size_t nfiles = 0;
    char **names = list_dir(o.schemas, &nfiles);
    if (!names) {
        fprintf(stderr, "grammar: %s: %s\n", o.schemas, strerror(errno));
        return 1;
    }
    size_t nnames = nfiles;
    if (o.limit && (size_t)o.limit < nfiles) nfiles = (size_t)o.limit;
    ctx cx = {.o = &o};
    dsr1_grammar_vocab *v = NULL;
    results *r = calloc(1, sizeof *r);
    int rc = 1;
    if (!r) goto done;
    if (dsr1_tokenizer_load(o.model, &cx.tok)) {
        fprintf(stderr, "grammar: %s\n", dsr1_errmsg());
        goto done;
    }
    cx.eos = dsr1_tokenizer_token_id(cx.tok, EOS_TOKEN);
    if (cx.eos < 0 || dsr1_grammar_vocab_create(cx.tok, cx.eos, &v)) {
        fprintf(stderr, "grammar: vocabulary: %s\n",
                cx.eos < 0 ? "no end-of-sentence token" : dsr1_errmsg());
        goto done;
    }
    cx.v = v;
    cx.cpu_overhead = cpu_overhead_s();
    cx.vsize = dsr1_grammar_vocab_size(v);
    cx.mask = malloc(dsr1_grammar_mask_words(cx.vsize) * sizeof *cx.mask);
    if (!cx.mask) goto done;
    if (o.dump) {
        if (!(cx.dump = fopen(o.dump, "w"))) {
            fprintf(stderr, "grammar: %s: %s\n", o.dump, strerror(errno));
            goto done;
        }
        fprintf(cx.dump, "{\"vocab\":%d,\"eos\":%d,\"files\":%zu}\n", cx.vsize, cx.eos, nfiles);
    }
    for (size_t i = 0; i < nfiles; i++) {
        size_t plen = strlen(o.schemas) + strlen(names[i]) + 2, len = 0;
        char *path = malloc(plen);
        if (!path) goto done;
        snprintf(path, plen, "%s/%s", o.schemas, names[i]);
        char *text = read_file(path, &len);
        if (!text) {
            r->files++;
            r->bad_files++;
            count_error(r, names[i], "file: unreadable");
        } else {
            run_schema(&cx, names[i], text, len, r);
        }
        free(text);
        free(path);
    }
    qsort(r->compile.v, r->compile.n, sizeof(double), cmp_double);
    qsort(r->mask.v, r->mask.n, sizeof(double), cmp_double);
    qsort(r->mask_cpu.v, r->mask_cpu.n, sizeof(double), cmp_double);
    qsort(r->mask_first.v, r->mask_first.n, sizeof(double), cmp_double);
    qsort(r->mask_later.v, r->mask_later.n, sizeof(double), cmp_double);
    qsort(r->mask_nodes.v, r->mask_nodes.n, sizeof(double), cmp_double);
    qsort(r->kinds, (size_t)r->nkinds, sizeof r->kinds[0], cmp_kind);
    if (o.json)
        report_json(&o, r, cx.vsize, cx.cpu_overhead);
    else
        report_table(&o, r, cx.vsize);
    rc = 0;
done:
    if (cx.dump) fclose(cx.dump);
    free(cx.mask);
    dsr1_grammar_vocab_free(v);
    dsr1_tokenizer_free(cx.tok);
    if (r) {
        free(r->compile.v);
        free(r->mask.v);
        free(r->mask_cpu.v);
        free(r->mask_first.v);
        free(r->mask_later.v);
        free(r->mask_nodes.v);
        free(r);
    }
    for (size_t i = 0; i < nnames; i++) free(names[i]);
    free(names);
    return rc;
}
