/* Built-ins of the chat-template engine: the filters, tests, Python methods and global
 * functions chat templates use, each with the semantics of jinja2 3.x plus transformers'
 * additions (tojson as json.dumps with ensure_ascii=False, raise_exception,
 * strftime_now). The environment is transformers' ImmutableSandboxedEnvironment, so
 * methods that would modify a list or dict are errors, as there.
 *
 * Deliberately incomplete: a built-in not listed here is an error naming it, never a
 * guess. lower()/upper()/capitalize() handle ASCII only and refuse other text, rather
 * than lower-casing it differently from Python. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_template_builtins.h"

static const char *const GLOBALS[] = {"namespace", "range",        "raise_exception",
                                      "dict",      "strftime_now", "lipsum",
                                      "cycler",    "joiner",       NULL};

static const char *const STR_METHODS[] = {
    "capitalize",   "casefold",    "center",    "count",      "encode",       "endswith",
    "expandtabs",   "find",        "format",    "format_map", "index",        "isalnum",
    "isalpha",      "isascii",     "isdecimal", "isdigit",    "isidentifier", "islower",
    "isnumeric",    "isprintable", "isspace",   "istitle",    "isupper",      "join",
    "ljust",        "lower",       "lstrip",    "maketrans",  "partition",    "removeprefix",
    "removesuffix", "replace",     "rfind",     "rindex",     "rjust",        "rpartition",
    "rsplit",       "rstrip",      "split",     "splitlines", "startswith",   "strip",
    "swapcase",     "title",       "translate", "upper",      "zfill",        NULL};
static const char *const DICT_METHODS[] = {"clear",      "copy",   "fromkeys", "get",
                                           "items",      "keys",   "pop",      "popitem",
                                           "setdefault", "update", "values",   NULL};
static const char *const LIST_METHODS[] = {"append", "clear",   "copy",   "count",
                                           "extend", "index",   "insert", "pop",
                                           "remove", "reverse", "sort",   NULL};

static bool in_set(const char *const *set, const char *name, size_t n)
{
    for (; *set; set++)
        if (strlen(*set) == n && !memcmp(*set, name, n)) return true;
    return false;
}

bool dsr1__ct_is_global(const char *name)
{
    return in_set(GLOBALS, name, strlen(name));
}

bool dsr1__ct_has_method(const ct_value *obj, const char *name, size_t n)
{
    if (obj->t == CT_STR) return in_set(STR_METHODS, name, n);
    if (obj->t == CT_DICT && obj->d->kind == CT_DICT_PLAIN) return in_set(DICT_METHODS, name, n);
    if (obj->t == CT_LIST) return in_set(LIST_METHODS, name, n);
    return false;
}

/* ---- argument helpers ---- */

typedef struct {
    ct_value *v;
    const char **kw;
    size_t n;
    const char *what; /* "filter 'trim'" for messages */
} args_t;

/* Positional argument pos, else keyword name, else NULL. */
static const ct_value *arg(const args_t *a, size_t pos, const char *name)
{
    size_t p = 0;
    for (size_t i = 0; i < a->n; i++)
        if (!a->kw || !a->kw[i]) {
            if (p++ == pos) return &a->v[i];
        }
    for (size_t i = 0; name && a->kw && i < a->n; i++)
        if (a->kw[i] && !strcmp(a->kw[i], name)) return &a->v[i];
    return NULL;
}

/* At most max_pos positional arguments, keywords only from names (NULL-terminated). */
static void check_args(ct_ctx *c, const args_t *a, size_t max_pos, const char *const *names)
{
    size_t p = 0;
    for (size_t i = 0; i < a->n; i++) {
        if (!a->kw || !a->kw[i]) {
            if (++p > max_pos) CT_FAIL(c, "%s takes at most %zu arguments", a->what, max_pos);
            continue;
        }
        bool ok = false;
        for (const char *const *k = names; k && *k && !ok; k++) ok = !strcmp(*k, a->kw[i]);
        if (!ok) CT_FAIL(c, "%s: unsupported argument '%s'", a->what, a->kw[i]);
    }
}

static ct_str need_str(ct_ctx *c, const args_t *a, const ct_value *v, const char *role)
{
    if (!v || v->t != CT_STR) {
        if (v && v->t == CT_UNDEF) dsr1__ct_fail_undef(c, v);
        CT_FAIL(c, "%s: %s must be a string", a->what, role);
    }
    return v->s;
}

static ct_value list_value(ct_list *l)
{
    ct_value v = {.t = CT_LIST, .l = l};
    return v;
}

/* ---- strings ---- */

static bool in_chars(const ct_str *chars, uint32_t cp)
{
    for (size_t i = 0; i < chars->n;) {
        size_t l;
        if (dsr1__ct_utf8_at(chars->p, chars->n, i, &l) == cp) return true;
        i += l;
    }
    return false;
}

/* str.strip family: which = 1 left, 2 right, 3 both; chars NULL = whitespace. */
static ct_str strip(ct_str s, const ct_str *chars, int which)
{
    size_t a = 0, b = s.n, l;
    while ((which & 1) && a < b) {
        uint32_t cp = dsr1__ct_utf8_at(s.p, s.n, a, &l);
        if (chars ? !in_chars(chars, cp) : !dsr1__ct_is_py_space(cp)) break;
        a += l;
    }
    while ((which & 2) && b > a) {
        size_t p = b - 1;
        while (p > a && ((unsigned char)s.p[p] & 0xC0) == 0x80) p--;
        uint32_t cp = dsr1__ct_utf8_at(s.p, s.n, p, &l);
        if (chars ? !in_chars(chars, cp) : !dsr1__ct_is_py_space(cp)) break;
        b = p;
    }
    return (ct_str){s.p + a, b - a};
}

static const char *find_sub(ct_str s, size_t from, ct_str sub)
{
    if (from > s.n) return NULL;
    return memmem(s.p + from, s.n - from, sub.p, sub.n);
}

static const char *rfind_sub(ct_str s, size_t end, ct_str sub)
{
    if (sub.n > end) return NULL;
    for (size_t i = end - sub.n + 1; i-- > 0;)
        if (!memcmp(s.p + i, sub.p, sub.n)) return s.p + i;
    return NULL;
}

/* str.split / str.rsplit. sep NULL: runs of whitespace, no empty strings. */
static ct_value split(ct_ctx *c, ct_str s, const ct_str *sep, int64_t maxsplit, bool right)
{
    ct_list *l = dsr1__ct_list_new(c, 0);
    if (sep && !sep->n) CT_FAIL(c, "split: empty separator");
    /* collect pieces left to right; for rsplit with a limit, find the cut points from the
     * right first and then emit in order */
    if (sep) {
        size_t cuts[2048], ncut = 0;
        if (right) {
            size_t end = s.n;
            while (maxsplit < 0 || (int64_t)ncut < maxsplit) {
                const char *p = rfind_sub(s, end, *sep);
                if (!p) break;
                if (ncut == 2048) CT_FAIL(c, "rsplit: too many pieces");
                cuts[ncut++] = (size_t)(p - s.p);
                end = (size_t)(p - s.p);
            }
            size_t start = 0;
            for (size_t i = ncut; i-- > 0;) {
                dsr1__ct_list_push(c, l, ct_strv(s.p + start, cuts[i] - start));
                start = cuts[i] + sep->n;
            }
            dsr1__ct_list_push(c, l, ct_strv(s.p + start, s.n - start));
        } else {
            size_t start = 0;
            int64_t done = 0;
            for (;;) {
                const char *p = (maxsplit < 0 || done < maxsplit) ? find_sub(s, start, *sep) : NULL;
                if (!p) break;
                dsr1__ct_list_push(c, l, ct_strv(s.p + start, (size_t)(p - s.p) - start));
                start = (size_t)(p - s.p) + sep->n;
                done++;
            }
            dsr1__ct_list_push(c, l, ct_strv(s.p + start, s.n - start));
        }
        return list_value(l);
    }
    if (right && maxsplit >= 0)
        CT_FAIL(c, "rsplit() with a limit and no separator is not "
                   "supported");
    size_t i = 0, cl;
    int64_t done = 0;
    for (;;) {
        while (i < s.n && dsr1__ct_is_py_space(dsr1__ct_utf8_at(s.p, s.n, i, &cl))) i += cl;
        if (i >= s.n) break;
        if (maxsplit >= 0 && done >= maxsplit) {
            ct_str rest = strip((ct_str){s.p + i, s.n - i}, NULL, 2);
            dsr1__ct_list_push(c, l, ct_strv(rest.p, rest.n));
            break;
        }
        size_t j = i;
        while (j < s.n && !dsr1__ct_is_py_space(dsr1__ct_utf8_at(s.p, s.n, j, &cl))) j += cl;
        dsr1__ct_list_push(c, l, ct_strv(s.p + i, j - i));
        done++;
        i = j;
    }
    return list_value(l);
}

/* ASCII case mapping; other text is refused (see the top of the file). mode: 'l', 'u',
 * 'c' (capitalize). */
static ct_value change_case(ct_ctx *c, ct_str s, char mode)
{
    char *p = dsr1__ct_alloc(&c->arena, &c->err, s.n + 1);
    for (size_t i = 0; i < s.n; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        if (ch >= 0x80) CT_FAIL(c, "lower/upper/capitalize of non-ASCII text is not supported");
        bool up = mode == 'u' || (mode == 'c' && i == 0);
        p[i] = (char)(up ? (ch >= 'a' && ch <= 'z' ? ch - 32 : ch)
                         : (ch >= 'A' && ch <= 'Z' ? ch + 32 : ch));
    }
    return ct_strv(p, s.n);
}

static ct_value replace(ct_ctx *c, ct_str s, ct_str old, ct_str new, int64_t count)
{
    if (!old.n) CT_FAIL(c, "replace() with an empty pattern is not supported");
    char *buf = NULL;
    size_t k = 0, start = 0, cap = 0;
    int64_t done = 0;
    for (;;) {
        const char *p = (count < 0 || done < count) ? find_sub(s, start, old) : NULL;
        size_t end = p ? (size_t)(p - s.p) : s.n;
        size_t need = k + (end - start) + (p ? new.n : 0) + 1;
        if (need > cap) {
            cap = need * 2;
            char *nb = dsr1__ct_alloc(&c->arena, &c->err, cap);
            if (k) memcpy(nb, buf, k);
            buf = nb;
        }
        memcpy(buf + k, s.p + start, end - start);
        k += end - start;
        if (!p) break;
        memcpy(buf + k, new.p, new.n);
        k += new.n;
        start = end + old.n;
        done++;
    }
    return ct_strv(buf, k);
}

static ct_value join(ct_ctx *c, ct_str sep, const ct_value *items)
{
    if (items->t == CT_UNDEF) return ct_strv("", 0);
    if (items->t != CT_LIST) CT_FAIL(c, "join: expected a list, got %s", dsr1__ct_type_name(items));
    size_t total = 0;
    ct_str *parts = dsr1__ct_alloc(&c->arena, &c->err, (items->l->n + 1) * sizeof(*parts));
    for (size_t i = 0; i < items->l->n; i++) {
        parts[i] = dsr1__ct_to_str(c, &items->l->v[i]);
        total += parts[i].n + (i ? sep.n : 0);
    }
    char *p = dsr1__ct_alloc(&c->arena, &c->err, total + 1);
    size_t k = 0;
    for (size_t i = 0; i < items->l->n; i++) {
        if (i) memcpy(p + k, sep.p, sep.n), k += sep.n;
        memcpy(p + k, parts[i].p, parts[i].n);
        k += parts[i].n;
    }
    return ct_strv(p, k);
}

static bool affix(const ct_str *s, const ct_value *x, bool start)
{
    if (x->t == CT_LIST) {
        for (size_t i = 0; i < x->l->n; i++)
            if (affix(s, &x->l->v[i], start)) return true;
        return false;
    }
    if (x->t != CT_STR || x->s.n > s->n) return false;
    return !memcmp(start ? s->p : s->p + s->n - x->s.n, x->s.p, x->s.n);
}

static int64_t int_arg(ct_ctx *c, const args_t *a, const ct_value *v, int64_t def)
{
    if (!v || v->t == CT_NONE) return def;
    if (v->t == CT_INT) return v->i;
    if (v->t == CT_BOOL) return v->b;
    CT_FAIL(c, "%s: expected an integer argument", a->what);
}

static ct_value str_method(ct_ctx *c, ct_str s, const char *name, const args_t *a)
{
    static const char *const split_kw[] = {"sep", "maxsplit", NULL};
    if (!strcmp(name, "split") || !strcmp(name, "rsplit")) {
        check_args(c, a, 2, split_kw);
        const ct_value *sep = arg(a, 0, "sep");
        ct_str sv = {0};
        if (sep && sep->t != CT_NONE) sv = need_str(c, a, sep, "the separator");
        return split(c, s, sep && sep->t != CT_NONE ? &sv : NULL,
                     int_arg(c, a, arg(a, 1, "maxsplit"), -1), name[0] == 'r');
    }
    if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip")) {
        check_args(c, a, 1, NULL);
        const ct_value *ch = arg(a, 0, NULL);
        ct_str cs = {0};
        if (ch && ch->t != CT_NONE) cs = need_str(c, a, ch, "chars");
        ct_str r = strip(s, ch && ch->t != CT_NONE ? &cs : NULL,
                         name[0] == 'l'   ? 1
                         : name[0] == 'r' ? 2
                                          : 3);
        return ct_strv(r.p, r.n);
    }
    if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
        check_args(c, a, 1, NULL);
        const ct_value *x = arg(a, 0, NULL);
        if (!x || (x->t != CT_STR && x->t != CT_LIST))
            CT_FAIL(c, "%s: expected a string or a tuple of strings", a->what);
        return ct_bool(affix(&s, x, name[0] == 's'));
    }
    if (!strcmp(name, "lower") || !strcmp(name, "upper") || !strcmp(name, "capitalize")) {
        check_args(c, a, 0, NULL);
        return change_case(c, s, name[0] == 'l' ? 'l' : name[0] == 'u' ? 'u' : 'c');
    }
    if (!strcmp(name, "replace")) {
        check_args(c, a, 3, NULL);
        return replace(c, s, need_str(c, a, arg(a, 0, NULL), "old"),
                       need_str(c, a, arg(a, 1, NULL), "new"), int_arg(c, a, arg(a, 2, NULL), -1));
    }
    if (!strcmp(name, "find") || !strcmp(name, "rfind") || !strcmp(name, "count")) {
        check_args(c, a, 1, NULL);
        ct_str sub = need_str(c, a, arg(a, 0, NULL), "the substring");
        if (name[0] == 'c') {
            int64_t n = 0;
            if (!sub.n) return ct_int((int64_t)dsr1__ct_cp_count(&s) + 1);
            for (const char *p = find_sub(s, 0, sub); p;
                 p = find_sub(s, (size_t)(p - s.p) + sub.n, sub))
                n++;
            return ct_int(n);
        }
        const char *p = name[0] == 'f' ? find_sub(s, 0, sub) : rfind_sub(s, s.n, sub);
        if (!p) return ct_int(-1);
        ct_str before = {s.p, (size_t)(p - s.p)};
        return ct_int((int64_t)dsr1__ct_cp_count(&before));
    }
    if (!strcmp(name, "join")) {
        check_args(c, a, 1, NULL);
        const ct_value *items = arg(a, 0, NULL);
        if (!items) CT_FAIL(c, "join() takes exactly one argument");
        return join(c, s, items);
    }
    if (!strcmp(name, "removeprefix") || !strcmp(name, "removesuffix")) {
        check_args(c, a, 1, NULL);
        const ct_value *x = arg(a, 0, NULL);
        ct_str fix = need_str(c, a, x, "the affix");
        if (!affix(&s, x, name[6] == 'p')) return ct_strv(s.p, s.n);
        return name[6] == 'p' ? ct_strv(s.p + fix.n, s.n - fix.n) : ct_strv(s.p, s.n - fix.n);
    }
    CT_FAIL(c, "the string method '%s' is not supported", name);
}

static ct_value dict_items(ct_ctx *c, const ct_dict *d, char what)
{
    ct_list *l = dsr1__ct_list_new(c, d->n);
    for (size_t i = 0; i < d->n; i++) {
        ct_value k = ct_strv(d->k[i].p, d->k[i].n);
        if (what == 'k') {
            dsr1__ct_list_push(c, l, k);
        } else if (what == 'v') {
            dsr1__ct_list_push(c, l, d->v[i]);
        } else {
            ct_list *pair = dsr1__ct_list_new(c, 2);
            dsr1__ct_list_push(c, pair, k);
            dsr1__ct_list_push(c, pair, d->v[i]);
            pair->tuple = true;
            dsr1__ct_list_push(c, l, list_value(pair));
        }
    }
    return list_value(l);
}

static ct_value dict_method(ct_ctx *c, const ct_dict *d, const char *name, const args_t *a)
{
    if (!strcmp(name, "items") || !strcmp(name, "keys") || !strcmp(name, "values")) {
        check_args(c, a, 0, NULL);
        return dict_items(c, d, name[0] == 'i' ? 'i' : name[0]);
    }
    if (!strcmp(name, "get")) {
        check_args(c, a, 2, NULL);
        const ct_value *k = arg(a, 0, NULL), *def = arg(a, 1, NULL);
        if (!k) CT_FAIL(c, "get() needs a key");
        ct_value *v = k->t == CT_STR ? dsr1__ct_dict_get(d, k->s.p, k->s.n) : NULL;
        return v ? *v : def ? *def : ct_none();
    }
    if (!strcmp(name, "copy")) return (ct_value){.t = CT_DICT, .d = (ct_dict *)d};
    CT_FAIL(c, "access to dict method '%s' is unsafe (the template may not modify its input)",
            name);
}

/* ---- globals ---- */

static ct_value make_namespace(ct_ctx *c, const args_t *a, int kind)
{
    ct_dict *d = dsr1__ct_dict_new(c, a->n, kind);
    for (size_t i = 0; i < a->n; i++) {
        if (a->kw && a->kw[i]) {
            dsr1__ct_dict_set(c, d, a->kw[i], strlen(a->kw[i]), a->v[i]);
        } else if (a->v[i].t == CT_DICT && a->v[i].d->kind == CT_DICT_PLAIN) {
            for (size_t j = 0; j < a->v[i].d->n; j++)
                dsr1__ct_dict_set(c, d, a->v[i].d->k[j].p, a->v[i].d->k[j].n, a->v[i].d->v[j]);
        } else {
            CT_FAIL(c, "%s: positional arguments must be dicts", a->what);
        }
    }
    return (ct_value){.t = CT_DICT, .d = d};
}

static ct_value call_global(ct_ctx *c, const char *fn, const args_t *a)
{
    if (!strcmp(fn, "namespace")) return make_namespace(c, a, CT_DICT_NAMESPACE);
    if (!strcmp(fn, "dict")) return make_namespace(c, a, CT_DICT_PLAIN);
    if (!strcmp(fn, "raise_exception")) {
        const ct_value *m = arg(a, 0, NULL);
        ct_str s = m ? dsr1__ct_to_str(c, m) : (ct_str){"", 0};
        dsr1__ct_fail(&c->err, DSR1_ERR_INVALID_ARG, c->line,
                      "the template rejected the "
                      "conversation: %.*s",
                      (int)s.n, s.p);
    }
    if (!strcmp(fn, "range")) {
        check_args(c, a, 3, NULL);
        int64_t lo = 0, hi, step = 1;
        if (a->n == 1) {
            hi = int_arg(c, a, arg(a, 0, NULL), 0);
        } else if (a->n >= 2) {
            lo = int_arg(c, a, arg(a, 0, NULL), 0);
            hi = int_arg(c, a, arg(a, 1, NULL), 0);
            step = int_arg(c, a, arg(a, 2, NULL), 1);
        } else {
            CT_FAIL(c, "range() needs arguments");
        }
        if (step == 0) CT_FAIL(c, "range() step must not be zero");
        ct_list *l = dsr1__ct_list_new(c, 0);
        for (int64_t i = lo; step > 0 ? i < hi : i > hi; i += step) {
            if (l->n >= 1000000) CT_FAIL(c, "range() too long");
            dsr1__ct_list_push(c, l, ct_int(i));
        }
        return list_value(l);
    }
    if (!strcmp(fn, "strftime_now")) {
        check_args(c, a, 1, NULL);
        ct_str f = need_str(c, a, arg(a, 0, NULL), "the format");
        char fmt[256], out[512];
        if (f.n >= sizeof(fmt)) CT_FAIL(c, "strftime_now: format too long");
        memcpy(fmt, f.p, f.n);
        fmt[f.n] = '\0';
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = strftime(out, sizeof(out), fmt, &tm);
        return ct_strv(dsr1__ct_strdup(&c->arena, &c->err, out, n), n);
    }
    CT_FAIL(c, "the global function '%s' is not supported", fn);
}

ct_value dsr1__ct_call(ct_ctx *c, const ct_value *callee, ct_value *v, const char **kw, size_t n)
{
    char what[80];
    args_t a = {v, kw, n, what};
    if (callee->t == CT_FUNC) {
        snprintf(what, sizeof(what), "%s()", callee->fn);
        return call_global(c, callee->fn, &a);
    }
    if (callee->t == CT_METHOD) {
        const ct_value *r = callee->m.recv;
        snprintf(what, sizeof(what), "%s.%s()", dsr1__ct_type_name(r), callee->m.name);
        if (r->t == CT_STR) return str_method(c, r->s, callee->m.name, &a);
        if (r->t == CT_DICT) return dict_method(c, r->d, callee->m.name, &a);
        CT_FAIL(c, "access to %s method '%s' is unsafe (the template may not modify its input)",
                dsr1__ct_type_name(r), callee->m.name);
    }
    if (callee->t == CT_UNDEF) dsr1__ct_fail_undef(c, callee);
    CT_FAIL(c, "'%s' object is not callable", dsr1__ct_type_name(callee));
}

/* ---- filters ---- */

static ct_value to_list(ct_ctx *c, const ct_value *v)
{
    if (v->t == CT_LIST) return *v;
    if (v->t == CT_DICT && v->d->kind == CT_DICT_PLAIN) return dict_items(c, v->d, 'k');
    ct_list *l = dsr1__ct_list_new(c, 0);
    if (v->t == CT_STR) {
        for (size_t i = 0, cl; i < v->s.n; i += cl) {
            dsr1__ct_utf8_at(v->s.p, v->s.n, i, &cl);
            dsr1__ct_list_push(c, l, ct_strv(v->s.p + i, cl));
        }
    } else if (v->t != CT_UNDEF) {
        CT_FAIL(c, "'%s' object is not iterable", dsr1__ct_type_name(v));
    }
    return list_value(l);
}

/* selectattr / rejectattr / map(attribute=...) */
static ct_value attr_filter(ct_ctx *c, const char *name, const ct_value *v, const args_t *a)
{
    ct_value items = to_list(c, v);
    ct_list *l = dsr1__ct_list_new(c, 0);
    if (!strcmp(name, "map")) {
        static const char *const kw[] = {"attribute", "default", NULL};
        check_args(c, a, 0, kw);
        const ct_value *attr = arg(a, 99, "attribute"), *def = arg(a, 99, "default");
        ct_str an = need_str(c, a, attr, "attribute (only map(attribute=...) is supported)");
        for (size_t i = 0; i < items.l->n; i++) {
            ct_value key = ct_strv(an.p, an.n);
            ct_value r = dsr1__ct_getitem(c, &items.l->v[i], &key);
            dsr1__ct_list_push(c, l, r.t == CT_UNDEF && def ? *def : r);
        }
        return list_value(l);
    }
    check_args(c, a, 3, NULL);
    ct_str an = need_str(c, a, arg(a, 0, NULL), "the attribute");
    const ct_value *test = arg(a, 1, NULL);
    ct_str tn = test ? need_str(c, a, test, "the test name") : (ct_str){"truthy", 6};
    char tname[32];
    snprintf(tname, sizeof(tname), "%.*s", (int)tn.n, tn.p);
    ct_value targ[1];
    size_t nt = 0;
    if (arg(a, 2, NULL)) targ[nt++] = *arg(a, 2, NULL);
    for (size_t i = 0; i < items.l->n; i++) {
        ct_value key = ct_strv(an.p, an.n);
        ct_value r = dsr1__ct_getitem(c, &items.l->v[i], &key);
        bool ok = test ? dsr1__ct_test(c, tname, &r, targ, nt) : dsr1__ct_truthy(&r);
        if (ok == (name[0] == 's')) dsr1__ct_list_push(c, l, items.l->v[i]);
    }
    return list_value(l);
}

ct_value dsr1__ct_filter(ct_ctx *c, const char *name, const ct_value *v, ct_value *args,
                         const char **kw, size_t n)
{
    char what[80];
    snprintf(what, sizeof(what), "filter '%s'", name);
    args_t a = {args, kw, n, what};
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        check_args(c, &a, 0, NULL);
        if (v->t == CT_STR) return ct_int((int64_t)dsr1__ct_cp_count(&v->s));
        if (v->t == CT_LIST) return ct_int((int64_t)v->l->n);
        if (v->t == CT_DICT) return ct_int((int64_t)v->d->n);
        if (v->t == CT_UNDEF) return ct_int(0);
        CT_FAIL(c, "object of type '%s' has no len()", dsr1__ct_type_name(v));
    }
    if (!strcmp(name, "trim")) {
        static const char *const kw_trim[] = {"chars", NULL};
        check_args(c, &a, 1, kw_trim);
        const ct_value *ch = arg(&a, 0, "chars");
        ct_str cs = {0};
        if (ch && ch->t != CT_NONE) cs = need_str(c, &a, ch, "chars");
        ct_str r = strip(dsr1__ct_to_str(c, v), ch && ch->t != CT_NONE ? &cs : NULL, 3);
        return ct_strv(r.p, r.n);
    }
    if (!strcmp(name, "string")) {
        ct_str s = dsr1__ct_to_str(c, v);
        return ct_strv(s.p, s.n);
    }
    if (!strcmp(name, "safe")) return *v;
    if (!strcmp(name, "lower") || !strcmp(name, "upper") || !strcmp(name, "capitalize"))
        return change_case(c, dsr1__ct_to_str(c, v),
                           name[0] == 'l'   ? 'l'
                           : name[0] == 'u' ? 'u'
                                            : 'c');
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        static const char *const kw_def[] = {"default_value", "boolean", NULL};
        check_args(c, &a, 2, kw_def);
        const ct_value *def = arg(&a, 0, "default_value"), *boolean = arg(&a, 1, "boolean");
        bool use = v->t == CT_UNDEF || (boolean && dsr1__ct_truthy(boolean) && !dsr1__ct_truthy(v));
        return use ? (def ? *def : ct_strv("", 0)) : *v;
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        ct_value l = to_list(c, v);
        if (!l.l->n) return ct_undef();
        return l.l->v[name[0] == 'f' ? 0 : l.l->n - 1];
    }
    if (!strcmp(name, "join")) {
        static const char *const kw_join[] = {"d", NULL};
        check_args(c, &a, 1, kw_join);
        const ct_value *sep = arg(&a, 0, "d");
        ct_value items = to_list(c, v);
        return join(c, sep ? need_str(c, &a, sep, "the separator") : (ct_str){"", 0}, &items);
    }
    if (!strcmp(name, "tojson")) {
        static const char *const kw_json[] = {"indent", NULL};
        check_args(c, &a, 1, kw_json);
        const ct_value *ind = arg(&a, 0, "indent");
        ct_str s = dsr1__ct_tojson(c, v, (int)int_arg(c, &a, ind, -1));
        return ct_strv(s.p, s.n);
    }
    if (!strcmp(name, "items")) {
        if (v->t == CT_UNDEF) return list_value(dsr1__ct_list_new(c, 0));
        if (v->t != CT_DICT)
            CT_FAIL(c, "filter 'items' needs a dict, got %s", dsr1__ct_type_name(v));
        return dict_items(c, v->d, 'i');
    }
    if (!strcmp(name, "list")) return to_list(c, v);
    if (!strcmp(name, "replace")) {
        check_args(c, &a, 3, NULL);
        return replace(c, dsr1__ct_to_str(c, v), need_str(c, &a, arg(&a, 0, NULL), "old"),
                       need_str(c, &a, arg(&a, 1, NULL), "new"),
                       int_arg(c, &a, arg(&a, 2, NULL), -1));
    }
    if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr") || !strcmp(name, "map"))
        return attr_filter(c, name, v, &a);
    CT_FAIL(c, "the filter '%s' is not supported", name);
}

/* ---- tests ---- */

bool dsr1__ct_test(ct_ctx *c, const char *name, const ct_value *v, ct_value *args, size_t n)
{
    const ct_value *x = n ? &args[0] : NULL;
    if (!strcmp(name, "defined")) return v->t != CT_UNDEF;
    if (!strcmp(name, "undefined")) return v->t == CT_UNDEF;
    if (!strcmp(name, "none")) return v->t == CT_NONE;
    if (!strcmp(name, "boolean")) return v->t == CT_BOOL;
    if (!strcmp(name, "true")) return v->t == CT_BOOL && v->b;
    if (!strcmp(name, "false")) return v->t == CT_BOOL && !v->b;
    if (!strcmp(name, "integer")) return v->t == CT_INT;
    if (!strcmp(name, "float")) return v->t == CT_FLOAT;
    if (!strcmp(name, "number")) return v->t == CT_INT || v->t == CT_FLOAT || v->t == CT_BOOL;
    if (!strcmp(name, "string")) return v->t == CT_STR;
    if (!strcmp(name, "mapping")) return v->t == CT_DICT && v->d->kind == CT_DICT_PLAIN;
    if (!strcmp(name, "iterable") || !strcmp(name, "sequence"))
        return v->t == CT_STR || v->t == CT_LIST || v->t == CT_UNDEF ||
               (v->t == CT_DICT && v->d->kind == CT_DICT_PLAIN);
    if (!strcmp(name, "callable")) return v->t == CT_METHOD || v->t == CT_FUNC;
    if (!strcmp(name, "truthy")) return dsr1__ct_truthy(v);
    if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (v->t != CT_INT) CT_FAIL(c, "test '%s' needs an integer", name);
        return (v->i % 2 != 0) == (name[0] == 'o');
    }
    if (!strcmp(name, "divisibleby")) {
        if (v->t != CT_INT || !x || x->t != CT_INT || x->i == 0)
            CT_FAIL(c, "test 'divisibleby' needs integers");
        return v->i % x->i == 0;
    }
    static const char *const cmp[][2] = {
        {"eq", "=="}, {"equalto", "=="}, {"==", "=="},      {"ne", "!="},
        {"!=", "!="}, {"lt", "<"},       {"lessthan", "<"}, {"<", "<"},
        {"le", "<="}, {"<=", "<="},      {"gt", ">"},       {"greaterthan", ">"},
        {">", ">"},   {"ge", ">="},      {">=", ">="},      {"in", "in"}};
    for (size_t i = 0; i < sizeof(cmp) / sizeof(cmp[0]); i++)
        if (!strcmp(name, cmp[i][0])) {
            if (!x) CT_FAIL(c, "test '%s' needs an argument", name);
            return dsr1__ct_compare(c, cmp[i][1], v, x);
        }
    if (!strcmp(name, "sameas")) {
        if (!x) CT_FAIL(c, "test 'sameas' needs an argument");
        if (v->t != x->t) return false;
        if (v->t == CT_NONE || v->t == CT_UNDEF) return true;
        if (v->t == CT_BOOL) return v->b == x->b;
        return dsr1__ct_equal(v, x) && (v->t != CT_LIST || v->l == x->l) &&
               (v->t != CT_DICT || v->d == x->d);
    }
    CT_FAIL(c, "the test '%s' is not supported", name);
}
