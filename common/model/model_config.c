/* config.json -> dsr1_model_config (see model_config.h for the contract).
 *
 * A user who points the engine at the wrong checkpoint should learn everything that is
 * wrong in one go, so parsing never stops at the first problem: every getter records what
 * it found wrong in a `checker` and hands back a sentinel, later consistency checks skip
 * values that already failed (so one bad key does not cascade into noise), and the end
 * result is one message with a line per problem. Malformed input (missing keys, wrong
 * types, impossible values) gives DSR1_ERR_FORMAT; a well-formed config the engine does
 * not implement gives DSR1_ERR_UNSUPPORTED. Unknown keys are ignored: HF configs carry
 * many that do not affect inference. */
#include "model_config.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define BAD_INT          INT_MIN /* a getter's "this key failed" value */
#define MAX_CONFIG_BYTES (16u << 20)

typedef struct {
    const char *label; /* "config.json" or the file's path */
    const char *scope; /* "" or "rope_scaling." while reading a nested object */
    char msg[4096];
    size_t len;
    int nformat, nunsupported;
} checker;

static void problem(checker *c, dsr1_status kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void problem(checker *c, dsr1_status kind, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    if (kind == DSR1_ERR_UNSUPPORTED)
        c->nunsupported++;
    else
        c->nformat++;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    size_t room = sizeof(c->msg) - c->len; /* always >= 1: len stops at sizeof - 1 */
    int n = snprintf(c->msg + c->len, room, "%s%s: %s", c->len ? "\n" : "", c->label, line);
    if (n > 0) c->len += (size_t)n < room ? (size_t)n : room - 1;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "?";
}

/* The value of key, or NULL after recording "missing" when it is required. */
static json_t *get(checker *c, json_t *obj, const char *key, bool required)
{
    json_t *v = json_object_get(obj, key);
    if (!v && required) problem(c, DSR1_ERR_FORMAT, "missing key '%s%s'", c->scope, key);
    return v;
}

static void wrong_type(checker *c, const char *key, const char *want, const json_t *v)
{
    problem(c, DSR1_ERR_FORMAT, "'%s%s' must be %s, got %s", c->scope, key, want, type_name(v));
}

/* An int-range JSON integer >= min; def when absent and optional; BAD_INT on failure. */
static int get_int(checker *c, json_t *obj, const char *key, bool required, int def, int min)
{
    json_t *v = get(c, obj, key, required);
    if (!v) return required ? BAD_INT : def;
    if (!json_is_integer(v)) {
        wrong_type(c, key, "an integer", v);
        return BAD_INT;
    }
    json_int_t x = json_integer_value(v);
    if (x < min || x > INT_MAX) {
        problem(c, DSR1_ERR_FORMAT, "'%s%s' = %lld is out of range (%d to %d)", c->scope, key,
                (long long)x, min, INT_MAX);
        return BAD_INT;
    }
    return (int)x;
}

/* A JSON number (integer or real), > 0 (or >= 0 with allow_zero); NAN on failure. */
static double get_num(checker *c, json_t *obj, const char *key, bool required, double def,
                      bool allow_zero)
{
    json_t *v = get(c, obj, key, required);
    if (!v) return required ? NAN : def;
    if (!json_is_number(v)) {
        wrong_type(c, key, "a number", v);
        return NAN;
    }
    double x = json_number_value(v);
    if (!(x > 0 || (allow_zero && x == 0))) {
        problem(c, DSR1_ERR_FORMAT, "'%s%s' = %g must be %s", c->scope, key, x,
                allow_zero ? ">= 0" : "> 0");
        return NAN;
    }
    return x;
}

/* A float-typed field: also positive and finite after rounding to float. */
static float get_float(checker *c, json_t *obj, const char *key)
{
    double x = get_num(c, obj, key, true, 0, false);
    if (!isnan(x) && !(isfinite((float)x) && (float)x > 0)) {
        problem(c, DSR1_ERR_FORMAT, "'%s' = %g does not fit a positive float", key, x);
        return NAN;
    }
    return (float)x;
}

/* 1/0 for true/false, def when absent, -1 on failure. */
static int get_bool(checker *c, json_t *obj, const char *key, int def)
{
    json_t *v = get(c, obj, key, false);
    if (!v) return def;
    if (!json_is_boolean(v)) {
        wrong_type(c, key, "a boolean", v);
        return -1;
    }
    return json_is_true(v);
}

/* Check that a string key equals the one supported value (def when absent and optional). */
static void expect_str(checker *c, json_t *obj, const char *key, bool required, const char *want)
{
    json_t *v = get(c, obj, key, required);
    if (!v) return;
    if (!json_is_string(v))
        wrong_type(c, key, "a string", v);
    else if (strcmp(json_string_value(v), want) != 0)
        problem(c, DSR1_ERR_UNSUPPORTED, "%s%s '%s' is not supported (expected %s)", c->scope, key,
                json_string_value(v), want);
}

static const struct {
    const char *key;
    size_t off;
    bool required;
    int def, min;
} int_keys[] = {
#define F(name) #name, offsetof(dsr1_model_config, name)
    {F(vocab_size), true, 0, 1},
    {F(hidden_size), true, 0, 1},
    {F(num_hidden_layers), true, 0, 1},
    {F(num_nextn_predict_layers), false, 0, 0},
    {F(first_k_dense_replace), true, 0, 0},
    {F(moe_layer_freq), false, 1, 1},
    {F(num_attention_heads), true, 0, 1},
    {F(kv_lora_rank), true, 0, 1},
    {F(qk_nope_head_dim), true, 0, 1},
    {F(qk_rope_head_dim), true, 0, 1},
    {F(v_head_dim), true, 0, 1},
    {F(intermediate_size), true, 0, 1},
    {F(moe_intermediate_size), true, 0, 1},
    {F(n_routed_experts), true, 0, 1},
    {F(num_experts_per_tok), true, 0, 1},
    {F(n_group), true, 0, 1},
    {F(topk_group), true, 0, 1},
    {F(n_shared_experts), true, 0, 0},
    {F(max_position_embeddings), false, 163840, 1},
    {F(bos_token_id), false, 0, 0},
    {F(eos_token_id), false, 1, 0},
#undef F
};

static void parse_rope_scaling(checker *c, json_t *root, dsr1_model_config *m)
{
    json_t *rs = json_object_get(root, "rope_scaling");
    m->rope_type = DSR1_ROPE_NONE;
    m->rope_factor = 1;
    m->rope_original_max_position_embeddings = m->max_position_embeddings;
    m->rope_beta_fast = 32, m->rope_beta_slow = 1;
    m->rope_mscale = 1, m->rope_mscale_all_dim = 1;
    if (!rs || json_is_null(rs)) return;
    if (!json_is_object(rs)) {
        wrong_type(c, "rope_scaling", "an object or null", rs);
        return;
    }

    c->scope = "rope_scaling.";
    /* HF writes "type"; newer transformers write "rope_type". Any present must say yarn. */
    json_t *t1 = json_object_get(rs, "type"), *t2 = json_object_get(rs, "rope_type");
    if (!t1 && !t2) problem(c, DSR1_ERR_FORMAT, "missing key 'rope_scaling.type'");
    if (t1) expect_str(c, rs, "type", false, "yarn");
    if (t2) expect_str(c, rs, "rope_type", false, "yarn");
    m->rope_type = DSR1_ROPE_YARN;
    m->rope_factor = get_num(c, rs, "factor", true, 1, false);
    m->rope_original_max_position_embeddings =
        get_int(c, rs, "original_max_position_embeddings", true, 0, 1);
    m->rope_beta_fast = get_num(c, rs, "beta_fast", false, 32, false);
    m->rope_beta_slow = get_num(c, rs, "beta_slow", false, 1, false);
    m->rope_mscale = get_num(c, rs, "mscale", false, 1, true);
    m->rope_mscale_all_dim = get_num(c, rs, "mscale_all_dim", false, 1, true);
    c->scope = "";
}

static void parse_quantization(checker *c, json_t *root, dsr1_model_config *m)
{
    json_t *q = json_object_get(root, "quantization_config");
    m->fp8 = false;
    m->weight_block[0] = m->weight_block[1] = 0;
    if (!q || json_is_null(q)) return;
    if (!json_is_object(q)) {
        wrong_type(c, "quantization_config", "an object or null", q);
        return;
    }

    c->scope = "quantization_config.";
    expect_str(c, q, "quant_method", true, "fp8");
    expect_str(c, q, "fmt", true, "e4m3");
    json_t *wb = get(c, q, "weight_block_size", true);
    if (wb && !json_is_array(wb)) {
        wrong_type(c, "weight_block_size", "an array", wb);
    } else if (wb) {
        size_t n = json_array_size(wb);
        bool ints = true;
        for (size_t i = 0; i < n; i++) ints = ints && json_is_integer(json_array_get(wb, i));
        if (!ints)
            problem(c, DSR1_ERR_FORMAT, "'%sweight_block_size' must hold integers", c->scope);
        else if (n != 2 || json_integer_value(json_array_get(wb, 0)) != 128 ||
                 json_integer_value(json_array_get(wb, 1)) != 128)
            problem(c, DSR1_ERR_UNSUPPORTED,
                    "%sweight_block_size is not supported (expected [128, 128])", c->scope);
    }
    m->fp8 = true;
    m->weight_block[0] = m->weight_block[1] = 128;
    c->scope = "";
}

/* Relations between keys; each is checked only when its inputs parsed cleanly. */
static void check_consistency(checker *c, const dsr1_model_config *m, bool noaux_tc)
{
#define OK(x) ((x) != BAD_INT)
    if (OK(m->moe_layer_freq) && m->moe_layer_freq != 1)
        problem(c, DSR1_ERR_UNSUPPORTED, "moe_layer_freq = %d is not supported (expected 1)",
                m->moe_layer_freq);
    if (OK(m->first_k_dense_replace) && OK(m->num_hidden_layers) &&
        m->first_k_dense_replace > m->num_hidden_layers)
        problem(c, DSR1_ERR_FORMAT, "first_k_dense_replace = %d exceeds num_hidden_layers = %d",
                m->first_k_dense_replace, m->num_hidden_layers);
    if (OK(m->qk_rope_head_dim) && m->qk_rope_head_dim % 2)
        problem(c, DSR1_ERR_FORMAT, "qk_rope_head_dim = %d must be even (rotary pairs)",
                m->qk_rope_head_dim);
    if (OK(m->vocab_size) && OK(m->bos_token_id) && m->bos_token_id >= m->vocab_size)
        problem(c, DSR1_ERR_FORMAT, "bos_token_id = %d is not below vocab_size = %d",
                m->bos_token_id, m->vocab_size);
    if (OK(m->vocab_size) && OK(m->eos_token_id) && m->eos_token_id >= m->vocab_size)
        problem(c, DSR1_ERR_FORMAT, "eos_token_id = %d is not below vocab_size = %d",
                m->eos_token_id, m->vocab_size);
    if (!OK(m->n_routed_experts) || !OK(m->n_group)) return;
    if (m->n_routed_experts % m->n_group) {
        problem(c, DSR1_ERR_FORMAT, "n_routed_experts = %d is not divisible by n_group = %d",
                m->n_routed_experts, m->n_group);
        return;
    }
    int per_group = m->n_routed_experts / m->n_group;
    if (noaux_tc && per_group < 2)
        problem(c, DSR1_ERR_UNSUPPORTED,
                "n_routed_experts / n_group = %d expert per group is not supported (noaux_tc "
                "scores each group by its top 2 experts)",
                per_group);
    if (!OK(m->topk_group)) return;
    if (m->topk_group > m->n_group)
        problem(c, DSR1_ERR_FORMAT, "topk_group = %d exceeds n_group = %d", m->topk_group,
                m->n_group);
    else if (OK(m->num_experts_per_tok) &&
             (long long)m->num_experts_per_tok > (long long)m->topk_group * per_group)
        problem(c, DSR1_ERR_FORMAT,
                "num_experts_per_tok = %d exceeds the %lld experts of topk_group = %d groups",
                m->num_experts_per_tok, (long long)m->topk_group * per_group, m->topk_group);
#undef OK
}

static void parse_root(checker *c, json_t *root, dsr1_model_config *m)
{
    for (size_t i = 0; i < sizeof(int_keys) / sizeof(int_keys[0]); i++)
        *(int *)((char *)m + int_keys[i].off) = get_int(
            c, root, int_keys[i].key, int_keys[i].required, int_keys[i].def, int_keys[i].min);
    json_t *q = get(c, root, "q_lora_rank", true); /* null (or 0): plain q_proj */
    if (!q)
        m->q_lora_rank = BAD_INT;
    else if (json_is_null(q))
        m->q_lora_rank = 0;
    else
        m->q_lora_rank = get_int(c, root, "q_lora_rank", true, 0, 0);

    m->routed_scaling_factor = get_float(c, root, "routed_scaling_factor");
    m->rms_norm_eps = get_float(c, root, "rms_norm_eps");
    m->rope_theta = get_num(c, root, "rope_theta", true, 0, false);

    expect_str(c, root, "model_type", true, "deepseek_v3");
    expect_str(c, root, "scoring_func", true, "sigmoid");
    expect_str(c, root, "topk_method", true, "noaux_tc");
    expect_str(c, root, "hidden_act", false, "silu");
    json_t *tm = json_object_get(root, "topk_method");
    bool noaux_tc = json_is_string(tm) && strcmp(json_string_value(tm), "noaux_tc") == 0;

    int norm = get_bool(c, root, "norm_topk_prob", 1);
    int tie = get_bool(c, root, "tie_word_embeddings", 0);
    if (tie == 1)
        problem(c, DSR1_ERR_UNSUPPORTED,
                "tie_word_embeddings = true is not supported (expected false)");
    m->norm_topk_prob = norm == 1;
    m->tie_word_embeddings = false;

    parse_rope_scaling(c, root, m);
    parse_quantization(c, root, m);
    check_consistency(c, m, noaux_tc);
}

static dsr1_status parse_labeled(const char *json, size_t len, const char *label,
                                 dsr1_model_config *out)
{
    checker c = {.label = label, .scope = ""};
    dsr1_model_config m = {0};
    json_error_t e;

    if (!json || !out)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "dsr1_model_config_parse: NULL argument");
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &e);
    if (!root)
        return dsr1_error(DSR1_ERR_FORMAT, "%s: not valid JSON: %s (line %d column %d)", label,
                          e.text, e.line, e.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return dsr1_error(DSR1_ERR_FORMAT, "%s: top level is not a JSON object", label);
    }
    parse_root(&c, root, &m);
    json_decref(root);
    if (c.nformat || c.nunsupported)
        return dsr1_error(c.nformat ? DSR1_ERR_FORMAT : DSR1_ERR_UNSUPPORTED, "%s", c.msg);
    *out = m;
    return DSR1_OK;
}

dsr1_status dsr1_model_config_parse(const char *json, size_t len, dsr1_model_config *out)
{
    return parse_labeled(json, len, "config.json", out);
}

dsr1_status dsr1_model_config_load(const char *dir, dsr1_model_config *out)
{
    dsr1_status s;
    struct stat st;
    char *buf = NULL, *path = NULL;

    if (!dir || !out) return dsr1_error(DSR1_ERR_INVALID_ARG, "dsr1_model_config_load: NULL");
    /* a checkpoint directory, or a config file named directly */
    const int is_dir = stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
    size_t plen = strlen(dir) + sizeof("/config.json");
    if (!(path = malloc(plen))) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    snprintf(path, plen, is_dir ? "%s/config.json" : "%s", dir);
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        s = dsr1_error(errno == ENOENT ? DSR1_ERR_NOT_FOUND : DSR1_ERR_IO, "%s: cannot open: %s",
                       path, strerror(errno));
        goto err_path;
    }
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        s = dsr1_error(DSR1_ERR_IO, "%s: not a readable regular file", path);
        goto err_file;
    }
    if ((uint64_t)st.st_size > MAX_CONFIG_BYTES) {
        s = dsr1_error(DSR1_ERR_FORMAT, "%s: %lld bytes is larger than the %u-byte limit", path,
                       (long long)st.st_size, MAX_CONFIG_BYTES);
        goto err_file;
    }
    size_t len = (size_t)st.st_size;
    if (!(buf = malloc(len + 1))) {
        s = dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", path);
        goto err_file;
    }
    if (fread(buf, 1, len, fp) != len) {
        s = dsr1_error(DSR1_ERR_IO, "%s: read failed", path);
        goto err_buf;
    }
    s = parse_labeled(buf, len, path, out);
err_buf:
    free(buf);
err_file:
    fclose(fp);
err_path:
    free(path);
    return s;
}
