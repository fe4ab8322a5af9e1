/* The vocabulary as a token trie: every matchable token's bytes, sorted, laid out as a
 * preorder array of trie nodes that each know their depth and where their subtree ends.
 * A mask walks it front to back; a rejected prefix skips its whole subtree in one jump,
 * and the tokens under a node are one contiguous run of the sorted id list. */
#include <stdlib.h>
#include <string.h>

#include "grammar_internal.h"

dsr1_status dsr1__trie_build(uint32_t n, const uint8_t *const *s, const uint32_t *len,
                             const uint32_t *ids, uint32_t none, dsr1__tnode **nodes_out,
                             uint32_t *nnodes_out, uint32_t *tok_lo, uint32_t *node_of)
{
    size_t total = 0, maxlen = 0;
    for (uint32_t i = 0; i < n; i++) {
        total += len[i];
        if (len[i] > maxlen) maxlen = len[i];
    }
    if (maxlen > UINT16_MAX) return dsr1_error(DSR1_ERR_RANGE, "grammar vocab: token too long");
    dsr1__tnode *nodes = malloc((total + 1) * sizeof(*nodes));
    uint32_t *open = malloc((maxlen + 1) * sizeof(uint32_t));
    if (!nodes || !open) {
        free(nodes);
        free(open);
        return dsr1_error(DSR1_ERR_NOMEM, "grammar vocab: out of memory");
    }
    uint32_t nn = 0, depth = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t lcp = 0;
        if (i > 0) {
            uint32_t m = len[i] < len[i - 1] ? len[i] : len[i - 1];
            while (lcp < m && s[i][lcp] == s[i - 1][lcp]) lcp++;
        }
        if (lcp > depth) lcp = depth;
        for (uint32_t d = depth; d > lcp; d--) nodes[open[d]].end = nn;
        for (uint32_t d = lcp + 1; d <= len[i]; d++) {
            nodes[nn] = (dsr1__tnode){
                .end = 0, .tok = UINT32_MAX, .depth = (uint16_t)d, .byte = s[i][d - 1]};
            if (tok_lo) tok_lo[nn] = i;
            open[d] = nn++;
        }
        if (len[i]) {
            dsr1__tnode *e = &nodes[open[len[i]]];
            if (e->ntok++ == 0) e->tok = ids ? ids[i] : i;
            if (!e->ntok) e->ntok = 255;
        }
        depth = len[i];
        if (node_of) node_of[i] = len[i] ? open[len[i]] : UINT32_MAX;
    }
    for (uint32_t d = depth; d > 0; d--) nodes[open[d]].end = nn;
    for (uint32_t k = 0; k < nn; k++)
        if (!nodes[k].ntok) nodes[k].tok = none;
    if (tok_lo) tok_lo[nn] = n;
    free(open);
    *nodes_out = nodes;
    *nnodes_out = nn;
    return DSR1_OK;
}

int dsr1__safe_utf8_next(int ds, uint8_t b)
{
    switch (ds) {
    case 0:
        if (b < 0x80) return b >= 0x20 && b != '"' && b != '\\' ? 0 : -1;
        if (b >= 0xc2 && b <= 0xdf) return 1;
        if (b == 0xe0) return 4;
        if (b == 0xed) return 5;
        if (b >= 0xe1 && b <= 0xef) return 2;
        if (b == 0xf0) return 6;
        if (b >= 0xf1 && b <= 0xf3) return 3;
        if (b == 0xf4) return 7;
        return -1;
    case 1:
        return b >= 0x80 && b <= 0xbf ? 0 : -1;
    case 2:
        return b >= 0x80 && b <= 0xbf ? 1 : -1;
    case 3:
        return b >= 0x80 && b <= 0xbf ? 2 : -1;
    case 4:
        return b >= 0xa0 && b <= 0xbf ? 1 : -1;
    case 5:
        return b >= 0x80 && b <= 0x9f ? 1 : -1;
    case 6:
        return b >= 0x90 && b <= 0xbf ? 2 : -1;
    default:
        return b >= 0x80 && b <= 0x8f ? 2 : -1;
    }
}

typedef struct {
    const uint8_t *p;
    uint32_t len, id;
} tokref;

static int cmp_tok(const void *a, const void *b)
{
    const tokref *x = a, *y = b;
    uint32_t m = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->p, y->p, m);
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Per node of a trie: the byte categories below it, bit 7 when the text below is safe, and
 * how many bytes its longest descendant adds (see dsr1_grammar_vocab). Children come after
 * their parent, so go backwards, acc[d] gathering the nodes of depth d + 1 seen since their
 * parent, and accv[d], for the children of the node being finished, the UTF-8 decoder
 * states they are valid in. */
static dsr1_status trie_cats(const dsr1__tnode *nodes, uint32_t nn, uint32_t maxlen,
                             uint8_t **subcat_out, uint8_t **below_out)
{
    uint8_t *subcat = malloc((size_t)nn + 1), *below = malloc((size_t)nn + 1);
    uint8_t *acc = calloc((size_t)maxlen + 2, 1), *accv = malloc((size_t)maxlen + 2);
    uint32_t *deep = calloc((size_t)maxlen + 2, sizeof(uint32_t));
    if (!subcat || !below || !acc || !accv || !deep) {
        free(subcat);
        free(below);
        free(acc);
        free(accv);
        free(deep);
        return dsr1_error(DSR1_ERR_NOMEM, "grammar vocab: out of memory");
    }
    memset(accv, 0xff, (size_t)maxlen + 2);
    for (uint32_t i = nn; i-- > 0;) {
        uint32_t d = nodes[i].depth, md = deep[d] > d ? deep[d] : d;
        uint8_t b = nodes[i].byte, ch = accv[d], valid = 0;
        subcat[i] = (uint8_t)(acc[d] | (ch & 1u) << 7);
        below[i] = (uint8_t)(md - d > 255 ? 255 : md - d);
        for (int ds = 0; ds < 8; ds++) {
            int to = dsr1__safe_utf8_next(ds, b);
            if (to >= 0 && (ch >> to & 1)) valid |= (uint8_t)(1u << ds);
        }
        acc[d] = 0;
        deep[d] = 0;
        accv[d] = 0xff;
        acc[d - 1] |= (uint8_t)(1u << dsr1__bytecat(b) | (subcat[i] & 0x7f));
        accv[d - 1] &= valid;
        if (md > deep[d - 1]) deep[d - 1] = md;
    }
    free(acc);
    free(deep);
    free(accv);
    *subcat_out = subcat;
    *below_out = below;
    return DSR1_OK;
}

/* Safe text split (see dsr1_grammar_vocab): safe_le[c] holds the tokens whose bytes are all
 * safe text from a character boundary and begin at most c characters; the exception trie
 * holds every other token of the trie. */
static dsr1_status build_safe(dsr1_grammar_vocab *v)
{
    size_t nw = dsr1_grammar_mask_words(v->n);
    const uint8_t **xp = malloc(((size_t)v->nsorted + 1) * sizeof(*xp));
    uint32_t *xl = malloc(((size_t)v->nsorted + 1) * sizeof(uint32_t));
    v->safe_le = calloc(((size_t)v->maxlen + 1) * nw + 1, sizeof(uint32_t));
    v->xsorted = malloc(((size_t)v->nsorted + 1) * sizeof(uint32_t));
    if (!xp || !xl || !v->safe_le || !v->xsorted) {
        free(xp);
        free(xl);
        return dsr1_error(DSR1_ERR_NOMEM, "grammar vocab: out of memory");
    }
    uint32_t nx = 0;
    for (uint32_t k = 0; k < v->nsorted; k++) { /* sorted order: the exception trie's too */
        uint32_t id = v->sorted[k], n = v->len[id], c = 0;
        const uint8_t *p = v->bytes + v->off[id];
        int ds = 0;
        for (uint32_t j = 0; j < n && ds >= 0; j++) {
            c += (p[j] & 0xc0) != 0x80;
            ds = dsr1__safe_utf8_next(ds, p[j]);
        }
        if (ds >= 0) {
            v->safe_le[(size_t)c * nw + (id >> 5)] |= 1u << (id & 31);
        } else {
            v->xsorted[nx] = id;
            xp[nx] = p;
            xl[nx++] = n;
        }
    }
    for (uint32_t c = 1; c <= v->maxlen; c++)
        for (size_t w = 0; w < nw; w++) v->safe_le[c * nw + w] |= v->safe_le[(c - 1) * nw + w];
    v->nxsorted = nx;
    v->xtok_lo = malloc(((size_t)v->off[v->n] + 2) * sizeof(uint32_t));
    dsr1_status st = v->xtok_lo ? dsr1__trie_build(nx, xp, xl, v->xsorted, (uint32_t)v->n,
                                                   &v->xnodes, &v->nxnodes, v->xtok_lo, NULL)
                                : dsr1_error(DSR1_ERR_NOMEM, "grammar vocab: out of memory");
    if (!st) st = trie_cats(v->xnodes, v->nxnodes, v->maxlen, &v->xsubcat, &v->xbelow);
    free(xp);
    free(xl);
    return st;
}

/* Records the special tokens (special[i] non-NULL: token i, with that text). */
static dsr1_status add_specials(dsr1_grammar_vocab *v, const char *const *special)
{
    size_t total = 0;
    uint32_t ns = 0;
    for (int32_t i = 0; i < v->n; i++)
        if (special[i]) {
            total += strlen(special[i]);
            ns++;
        }
    v->sp_id = malloc(((size_t)ns + 1) * sizeof(int32_t));
    v->sp_off = malloc(((size_t)ns + 1) * sizeof(size_t));
    v->sp_text = malloc(total + 1);
    if (!v->sp_id || !v->sp_off || !v->sp_text)
        return dsr1_error(DSR1_ERR_NOMEM, "grammar vocab: out of memory");
    size_t o = 0;
    for (int32_t i = 0; i < v->n; i++) {
        if (!special[i]) continue;
        size_t l = strlen(special[i]);
        v->sp_id[v->nspecial] = i;
        v->sp_off[v->nspecial++] = o;
        memcpy(v->sp_text + o, special[i], l);
        o += l;
    }
    v->sp_off[v->nspecial] = o;
    return DSR1_OK;
}

int32_t dsr1__vocab_special(const dsr1_grammar_vocab *v, const char *text, size_t len)
{
    for (uint32_t i = 0; v && i < v->nspecial; i++)
        if (v->sp_off[i + 1] - v->sp_off[i] == len && !memcmp(v->sp_text + v->sp_off[i], text, len))
            return v->sp_id[i];
    return -1;
}

int32_t dsr1_grammar_vocab_special_id(const dsr1_grammar_vocab *v, const char *text, size_t len)
{
    return text ? dsr1__vocab_special(v, text, len) : -1;
}

dsr1_status dsr1_grammar_vocab_create_raw(int32_t n, const uint8_t *const *bytes,
                                          const uint32_t *lens, int32_t eos_id,
                                          dsr1_grammar_vocab **out)
{
    return dsr1_grammar_vocab_create_raw_special(n, bytes, lens, NULL, eos_id, out);
}

dsr1_status dsr1_grammar_vocab_create_raw_special(int32_t n, const uint8_t *const *bytes,
                                                  const uint32_t *lens, const char *const *special,
                                                  int32_t eos_id, dsr1_grammar_vocab **out)
{
    if (n <= 0 || !bytes || !lens || eos_id < 0 || eos_id >= n)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "grammar vocab: bad size (%d) or eos id (%d)",
                          (int)n, (int)eos_id);
    if (special && n > DSR1__SPECIAL_MAX)
        return dsr1_error(DSR1_ERR_RANGE,
                          "grammar vocab: %d tokens; special tokens need ids below %d", (int)n,
                          DSR1__SPECIAL_MAX);
    dsr1_grammar_vocab *v = calloc(1, sizeof(*v));
    tokref *tr = NULL;
    const uint8_t **sp = NULL;
    uint32_t *sl = NULL;
    if (!v) goto oom;
    v->n = n;
    v->eos = eos_id;
    v->no_split = getenv("DSR1_GRAMMAR_NO_SPLIT") != NULL; /* A/B of the split (benchmarks) */
    pthread_mutex_init(&v->lock, NULL);
    if (special) {
        dsr1_status st = add_specials(v, special);
        if (st) {
            dsr1_grammar_vocab_free(v);
            return st;
        }
    }
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) total += lens[i] + DSR1__SPECIAL_LEN;
    v->bytes = malloc(total + 1);
    v->off = malloc(((size_t)n + 1) * sizeof(uint64_t));
    v->len = malloc((size_t)n * sizeof(uint32_t));
    tr = malloc((size_t)n * sizeof(*tr));
    if (!v->bytes || !v->off || !v->len || !tr) goto oom;
    size_t o = 0;
    uint32_t ns = 0;
    for (int32_t i = 0; i < n; i++) {
        v->off[i] = o;
        if (special && special[i]) { /* a special token: its reserved bytes */
            v->len[i] = i == eos_id ? 0 : DSR1__SPECIAL_LEN;
            if (v->len[i]) dsr1__special_bytes(i, v->bytes + o);
            o += v->len[i];
            if (v->len[i] > v->maxlen) v->maxlen = v->len[i];
            continue;
        }
        v->len[i] = i == eos_id ? 0 : lens[i];
        if (lens[i] && !bytes[i]) {
            dsr1_grammar_vocab_free(v);
            free(tr);
            return dsr1_error(DSR1_ERR_INVALID_ARG, "grammar vocab: token %d has no bytes", i);
        }
        /* FF never occurs in UTF-8 grammar text; it marks special tokens */
        if (v->len[i] && memchr(bytes[i], DSR1__SPECIAL_BYTE, v->len[i])) v->len[i] = 0;
        if (v->len[i]) memcpy(v->bytes + o, bytes[i], v->len[i]);
        o += v->len[i];
        if (v->len[i] > v->maxlen) v->maxlen = v->len[i];
    }
    v->off[n] = o;
    for (int32_t i = 0; i < n; i++)
        if (v->len[i]) tr[ns++] = (tokref){v->bytes + v->off[i], v->len[i], (uint32_t)i};
    qsort(tr, ns, sizeof(*tr), cmp_tok);
    v->nsorted = ns;
    v->sorted = malloc((ns + 1) * sizeof(uint32_t));
    sp = malloc((ns + 1) * sizeof(*sp));
    sl = malloc((ns + 1) * sizeof(*sl));
    v->tok_lo = malloc((total + 2) * sizeof(uint32_t));
    if (!v->sorted || !sp || !sl || !v->tok_lo) goto oom;
    for (uint32_t i = 0; i < ns; i++) {
        v->sorted[i] = tr[i].id;
        sp[i] = tr[i].p;
        sl[i] = tr[i].len;
    }
    dsr1_status st = dsr1__trie_build(ns, sp, sl, v->sorted, (uint32_t)n, &v->nodes, &v->nnodes,
                                      v->tok_lo, NULL);
    free(tr);
    free(sp);
    free(sl);
    if (st) {
        dsr1_grammar_vocab_free(v);
        return st;
    }
    st = trie_cats(v->nodes, v->nnodes, v->maxlen, &v->subcat, &v->below);
    if (!st) st = build_safe(v);
    if (st) {
        dsr1_grammar_vocab_free(v);
        return st;
    }
    *out = v;
    return DSR1_OK;
oom:
    free(tr);
    free(sp);
    free(sl);
    dsr1_grammar_vocab_free(v);
    return dsr1_error(DSR1_ERR_NOMEM, "grammar vocab: out of memory");
}

/* Fills the shared cache with the states of the JSON strings every JSON Schema and JSON
 * object grammar uses, so that no request pays for their first trie walks. Best effort: a
 * failure only leaves the cache colder. */
static void warm(const dsr1_grammar_vocab *v)
{
    char *text = NULL;
    size_t len = 0;
    dsr1_grammar *g = NULL;
    const char schema[] = "{\"type\":\"object\",\"properties\":{\"s\":{\"type\":\"string\"}}}";
    if (dsr1_json_schema_to_ebnf(schema, sizeof(schema) - 1, NULL, &text, &len) == DSR1_OK &&
        dsr1_grammar_compile_ebnf(v, text, len, NULL, &g) == DSR1_OK) {
        dsr1__grammar_warm(g);
        dsr1_grammar_free(g);
    }
    free(text);
    if (dsr1_grammar_compile_json_object(v, NULL, &g) == DSR1_OK) {
        dsr1__grammar_warm(g);
        dsr1_grammar_free(g);
    }
}

dsr1_status dsr1_grammar_vocab_create(const dsr1_tokenizer *tok, int32_t eos_id,
                                      dsr1_grammar_vocab **out)
{
    if (!tok) return dsr1_error(DSR1_ERR_INVALID_ARG, "grammar vocab: no tokenizer");
    int32_t n = dsr1_tokenizer_vocab_size(tok);
    if (n <= 0 || eos_id < 0 || eos_id >= n)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "grammar vocab: eos id %d outside [0, %d)",
                          (int)eos_id, (int)n);
    const uint8_t **b = calloc((size_t)n, sizeof(*b));
    uint32_t *l = calloc((size_t)n, sizeof(*l));
    char **sp = calloc((size_t)n, sizeof(*sp));
    dsr1_status st = DSR1_OK;
    if (!b || !l || !sp) {
        st = dsr1_error(DSR1_ERR_NOMEM, "grammar vocab: out of memory");
        goto done;
    }
    for (int32_t i = 0; i < n; i++) {
        const uint8_t *p;
        size_t len;
        if (!dsr1_tokenizer_id_valid(tok, i)) continue;
        if (dsr1_tokenizer_token_bytes(tok, i, &p, &len) != DSR1_OK || len > UINT16_MAX) continue;
        if (dsr1_tokenizer_is_added(tok, i)) { /* special or not: a control token */
            /* grammars name special tokens by their text */
            if (n <= DSR1__SPECIAL_MAX && len && !memchr(p, 0, len)) {
                if (!(sp[i] = malloc(len + 1))) {
                    st = dsr1_error(DSR1_ERR_NOMEM, "grammar vocab: out of memory");
                    goto done;
                }
                memcpy(sp[i], p, len);
                sp[i][len] = '\0';
            }
            continue;
        }
        b[i] = p;
        l[i] = (uint32_t)len;
    }
    st = dsr1_grammar_vocab_create_raw_special(
        n, b, l, n <= DSR1__SPECIAL_MAX ? (const char *const *)sp : NULL, eos_id, out);
done:
    for (int32_t i = 0; sp && i < n; i++) free(sp[i]);
    free(sp);
    free(b);
    free(l);
    if (!st) warm(*out);
    return st;
}

int32_t dsr1_grammar_vocab_size(const dsr1_grammar_vocab *v)
{
    return v ? v->n : 0;
}

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h ^ (h >> 32);
}

dsr1__shared_dfa *dsr1__vocab_share_dfa(const dsr1_grammar_vocab *cv, const uint8_t *blob,
                                        size_t len)
{
    dsr1_grammar_vocab *v = (dsr1_grammar_vocab *)cv; /* the cache is internally locked */
    uint64_t h = hash_bytes(blob, len);
    dsr1__shared_dfa *e, *found = NULL;
    pthread_mutex_lock(&v->lock);
    for (e = v->shared[h % DSR1__SHARED_BUCKETS]; e && !found; e = e->next)
        if (e->hash == h && e->len == len && !memcmp(e->blob, blob, len)) found = e;
    if (!found && v->nshared < DSR1__SHARED_MAX_DFAS && dsr1__vocab_reserve(v, len + sizeof(*e))) {
        e = calloc(1, sizeof(*e));
        if (e && !(e->blob = malloc(len ? len : 1))) {
            free(e);
            e = NULL;
        }
        if (e) {
            memcpy(e->blob, blob, len);
            e->len = len;
            e->hash = h;
            e->next = v->shared[h % DSR1__SHARED_BUCKETS];
            v->shared[h % DSR1__SHARED_BUCKETS] = e;
            v->nshared++;
            found = e;
        }
    }
    pthread_mutex_unlock(&v->lock);
    return found;
}

#define DFA_CACHE_MAX_ENTRIES 4096
#define DFA_CACHE_MAX_BYTES   ((size_t)64 << 20)

const dsr1__dfa_entry *dsr1__vocab_dfa_get(const dsr1_grammar_vocab *cv, const uint8_t *key,
                                           size_t len)
{
    dsr1_grammar_vocab *v = (dsr1_grammar_vocab *)cv; /* the cache is internally locked */
    uint64_t h = hash_bytes(key, len);
    const dsr1__dfa_entry *found = NULL;
    pthread_mutex_lock(&v->lock);
    for (dsr1__dfa_entry *e = v->dfas[h % DSR1__SHARED_BUCKETS]; e && !found; e = e->next)
        if (e->hash == h && e->keylen == len && !memcmp(e->key, key, len)) found = e;
    pthread_mutex_unlock(&v->lock);
    return found; /* entries are immutable and live as long as the vocabulary */
}

void dsr1__vocab_dfa_put(const dsr1_grammar_vocab *cv, const uint8_t *key, size_t len, uint32_t ns,
                         uint32_t ncls, const uint8_t *cmap, const int32_t *trans,
                         const uint8_t *final)
{
    dsr1_grammar_vocab *v = (dsr1_grammar_vocab *)cv;
    size_t bytes = sizeof(dsr1__dfa_entry) + len + (size_t)ns * ncls * 4 + ns;
    uint64_t h = hash_bytes(key, len);
    dsr1__dfa_entry *e = calloc(1, sizeof(*e));
    if (!e) return;
    e->key = malloc(len ? len : 1);
    e->trans = malloc((size_t)ns * ncls * sizeof(int32_t) + 4);
    e->final = malloc(ns ? ns : 1);
    if (!e->key || !e->trans || !e->final) goto drop;
    memcpy(e->key, key, len);
    memcpy(e->trans, trans, (size_t)ns * ncls * sizeof(int32_t));
    memcpy(e->final, final, ns);
    memcpy(e->cmap, cmap, 256);
    e->keylen = len;
    e->hash = h;
    e->ns = ns;
    e->ncls = ncls;
    pthread_mutex_lock(&v->lock);
    bool there = false;
    for (dsr1__dfa_entry *x = v->dfas[h % DSR1__SHARED_BUCKETS]; x && !there; x = x->next)
        there = x->hash == h && x->keylen == len && !memcmp(x->key, key, len);
    if (!there && v->ndfas < DFA_CACHE_MAX_ENTRIES && v->dfa_bytes + bytes <= DFA_CACHE_MAX_BYTES) {
        e->next = v->dfas[h % DSR1__SHARED_BUCKETS];
        v->dfas[h % DSR1__SHARED_BUCKETS] = e;
        v->ndfas++;
        v->dfa_bytes += bytes;
        e = NULL;
    }
    pthread_mutex_unlock(&v->lock);
drop:
    if (e) {
        free(e->key);
        free(e->trans);
        free(e->final);
        free(e);
    }
}

bool dsr1__vocab_reserve(const dsr1_grammar_vocab *cv, size_t bytes)
{
    dsr1_grammar_vocab *v = (dsr1_grammar_vocab *)cv;
    size_t old = atomic_fetch_add(&v->shared_bytes, bytes);
    if (old + bytes <= DSR1__SHARED_MAX_BYTES) return true;
    atomic_fetch_sub(&v->shared_bytes, bytes);
    return false;
}

void dsr1__vocab_unreserve(const dsr1_grammar_vocab *cv, size_t bytes)
{
    dsr1_grammar_vocab *v = (dsr1_grammar_vocab *)cv;
    atomic_fetch_sub(&v->shared_bytes, bytes);
}

void dsr1_grammar_vocab_free(dsr1_grammar_vocab *v)
{
    if (!v) return;
    for (int b = 0; b < DSR1__SHARED_BUCKETS; b++) {
        for (dsr1__shared_dfa *e = v->shared[b], *n; e; e = n) {
            n = e->next;
            dsr1__ci_free(atomic_load(&e->ci));
            free(e->blob);
            free(e);
        }
    }
    for (int b = 0; b < DSR1__SHARED_BUCKETS; b++) {
        for (dsr1__dfa_entry *e = v->dfas[b], *n; e; e = n) {
            n = e->next;
            free(e->key);
            free(e->trans);
            free(e->final);
            free(e);
        }
    }
    pthread_mutex_destroy(&v->lock);
    free(v->bytes);
    free(v->off);
    free(v->len);
    free(v->sorted);
    free(v->nodes);
    free(v->tok_lo);
    free(v->subcat);
    free(v->below);
    free(v->safe_le);
    free(v->xsorted);
    free(v->xnodes);
    free(v->xtok_lo);
    free(v->xsubcat);
    free(v->xbelow);
    free(v->sp_id);
    free(v->sp_off);
    free(v->sp_text);
    free(v);
}
