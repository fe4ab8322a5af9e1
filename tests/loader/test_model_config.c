/* Tests of config.json parsing: the tiny-a golden config and a DeepSeek-R1 config parse to
 * the expected struct; then the R1 config is mutated one way per case (a patch merged in,
 * keys deleted) and each mutation must fail with its status and a message naming the key,
 * every problem listed when there are several, and no follow-on noise from a bad value. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>

#include "loader_test_util.h"
#include "model_config.h"

/* DeepSeek-R1's config.json as published (all keys, including ones we ignore). */
static const char r1_json[] =
    "{\"architectures\":[\"DeepseekV3ForCausalLM\"],\"attention_bias\":false,"
    "\"attention_dropout\":0.0,\"auto_map\":{\"AutoConfig\":\"configuration_deepseek."
    "DeepseekV3Config\"},\"aux_loss_alpha\":0.001,\"bos_token_id\":0,\"eos_token_id\":1,"
    "\"ep_size\":1,\"first_k_dense_replace\":3,\"hidden_act\":\"silu\",\"hidden_size\":7168,"
    "\"initializer_range\":0.02,\"intermediate_size\":18432,\"kv_lora_rank\":512,"
    "\"max_position_embeddings\":163840,\"model_type\":\"deepseek_v3\","
    "\"moe_intermediate_size\":2048,\"moe_layer_freq\":1,\"n_group\":8,"
    "\"n_routed_experts\":256,\"n_shared_experts\":1,\"norm_topk_prob\":true,"
    "\"num_attention_heads\":128,\"num_experts_per_tok\":8,\"num_hidden_layers\":61,"
    "\"num_key_value_heads\":128,\"num_nextn_predict_layers\":1,\"pretraining_tp\":1,"
    "\"q_lora_rank\":1536,\"qk_nope_head_dim\":128,\"qk_rope_head_dim\":64,"
    "\"quantization_config\":{\"activation_scheme\":\"dynamic\",\"fmt\":\"e4m3\","
    "\"quant_method\":\"fp8\",\"weight_block_size\":[128,128]},\"rms_norm_eps\":1e-06,"
    "\"rope_scaling\":{\"beta_fast\":32,\"beta_slow\":1,\"factor\":40,\"mscale\":1.0,"
    "\"mscale_all_dim\":1.0,\"original_max_position_embeddings\":4096,\"type\":\"yarn\"},"
    "\"rope_theta\":10000,\"routed_scaling_factor\":2.5,\"scoring_func\":\"sigmoid\","
    "\"seq_aux\":true,\"tie_word_embeddings\":false,\"topk_group\":4,"
    "\"topk_method\":\"noaux_tc\",\"torch_dtype\":\"bfloat16\","
    "\"transformers_version\":\"4.46.3\",\"use_cache\":true,\"v_head_dim\":128,"
    "\"vocab_size\":129280}";

/* Delete "key" or "outer.key" from o. */
static void delete_path(json_t *o, const char *path)
{
    const char *dot = strchr(path, '.');
    if (!dot) {
        assert_int_equal(json_object_del(o, path), 0);
        return;
    }
    char outer[64];
    snprintf(outer, sizeof(outer), "%.*s", (int)(dot - path), path);
    json_t *in = json_object_get(o, outer);
    assert_non_null(in);
    assert_int_equal(json_object_del(in, dot + 1), 0);
}

/* R1 with `patch` merged in (recursively) and the comma-separated `del` keys removed. */
static dsr1_status parse_r1_variant(const char *patch, const char *del, dsr1_model_config *out)
{
    json_t *o = json_loads(r1_json, 0, NULL);
    assert_non_null(o);
    if (patch) {
        json_error_t e;
        json_t *p = json_loads(patch, 0, &e);
        if (!p) fail_msg("bad test patch %s: %s", patch, e.text);
        assert_int_equal(json_object_update_recursive(o, p), 0);
        json_decref(p);
    }
    char keys[256];
    snprintf(keys, sizeof(keys), "%s", del ? del : "");
    for (char *save = NULL, *k = strtok_r(keys, ",", &save); k; k = strtok_r(NULL, ",", &save))
        delete_path(o, k);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    assert_non_null(text);
    dsr1_status s = dsr1_model_config_parse(text, strlen(text), out);
    free(text);
    return s;
}

static void check_r1(const dsr1_model_config *c)
{
    assert_int_equal(c->vocab_size, 129280);
    assert_int_equal(c->hidden_size, 7168);
    assert_int_equal(c->num_hidden_layers, 61);
    assert_int_equal(c->num_nextn_predict_layers, 1);
    assert_int_equal(c->first_k_dense_replace, 3);
    assert_int_equal(c->moe_layer_freq, 1);
    assert_int_equal(c->num_attention_heads, 128);
    assert_int_equal(c->q_lora_rank, 1536);
    assert_int_equal(c->kv_lora_rank, 512);
    assert_int_equal(c->qk_nope_head_dim, 128);
    assert_int_equal(c->qk_rope_head_dim, 64);
    assert_int_equal(c->v_head_dim, 128);
    assert_int_equal(c->intermediate_size, 18432);
    assert_int_equal(c->moe_intermediate_size, 2048);
    assert_int_equal(c->n_routed_experts, 256);
    assert_int_equal(c->num_experts_per_tok, 8);
    assert_int_equal(c->n_group, 8);
    assert_int_equal(c->topk_group, 4);
    assert_int_equal(c->n_shared_experts, 1);
    assert_true(c->norm_topk_prob);
    assert_true(c->routed_scaling_factor == 2.5f);
    assert_true(c->rms_norm_eps == 1e-6f);
    assert_int_equal(c->max_position_embeddings, 163840);
    assert_int_equal(c->bos_token_id, 0);
    assert_int_equal(c->eos_token_id, 1);
    assert_false(c->tie_word_embeddings);
    assert_true(c->rope_theta == 10000.0);
    assert_int_equal(c->rope_type, DSR1_ROPE_YARN);
    assert_true(c->rope_factor == 40.0);
    assert_int_equal(c->rope_original_max_position_embeddings, 4096);
    assert_true(c->rope_beta_fast == 32.0 && c->rope_beta_slow == 1.0);
    assert_true(c->rope_mscale == 1.0 && c->rope_mscale_all_dim == 1.0);
    assert_true(c->fp8);
    assert_int_equal(c->weight_block[0], 128);
    assert_int_equal(c->weight_block[1], 128);
    assert_int_equal(dsr1_cfg_qk_head_dim(c), 192);
    assert_false(dsr1_cfg_is_moe_layer(c, 2));
    assert_true(dsr1_cfg_is_moe_layer(c, 3));
}

static void test_r1(void **state)
{
    (void)state;
    dsr1_model_config c;
    dsr1_status s = parse_r1_variant(NULL, NULL, &c);
    if (s) fail_msg("%s", dsr1_errmsg());
    check_r1(&c);
}

static void test_tiny_a(void **state)
{
    (void)state;
    /* A copy of /work/shared/golden/configs/tiny-a.json, with its '_' generator keys. */
    FILE *fp = fopen(LOADER_TEST_DATA "/tiny-a.json", "rb");
    assert_non_null(fp);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof(buf), fp);
    fclose(fp);
    assert_true(n > 0 && n < sizeof(buf));
    dsr1_model_config c;
    memset(&c, 0x5a, sizeof(c));
    if (dsr1_model_config_parse(buf, n, &c)) fail_msg("%s", dsr1_errmsg());
    assert_int_equal(c.vocab_size, 129280);
    assert_int_equal(c.hidden_size, 256);
    assert_int_equal(c.num_hidden_layers, 4);
    assert_int_equal(c.num_nextn_predict_layers, 1);
    assert_int_equal(c.first_k_dense_replace, 1);
    assert_int_equal(c.num_attention_heads, 4);
    assert_int_equal(c.q_lora_rank, 192);
    assert_int_equal(c.kv_lora_rank, 128);
    assert_int_equal(c.qk_nope_head_dim, 32);
    assert_int_equal(c.qk_rope_head_dim, 16);
    assert_int_equal(c.v_head_dim, 32);
    assert_int_equal(c.intermediate_size, 512);
    assert_int_equal(c.moe_intermediate_size, 128);
    assert_int_equal(c.n_routed_experts, 64);
    assert_int_equal(c.num_experts_per_tok, 8);
    assert_int_equal(c.n_group, 8);
    assert_int_equal(c.topk_group, 4);
    assert_int_equal(c.n_shared_experts, 1);
    assert_true(c.norm_topk_prob);
    assert_true(c.routed_scaling_factor == 2.5f);
    assert_true(c.rms_norm_eps == 1e-6f);
    assert_true(c.rope_theta == 10000.0);
    assert_int_equal(c.rope_type, DSR1_ROPE_YARN);
    assert_true(c.rope_factor == 40.0);
    assert_int_equal(c.rope_original_max_position_embeddings, 4096);
    assert_true(c.fp8);
    assert_int_equal(c.weight_block[0], 128);
}

static void test_defaults(void **state)
{
    (void)state;
    dsr1_model_config c;
    dsr1_status s = parse_r1_variant("{\"q_lora_rank\":null,\"rope_scaling\":null}",
                                     "num_nextn_predict_layers,moe_layer_freq,norm_topk_prob,"
                                     "max_position_embeddings,bos_token_id,eos_token_id,"
                                     "tie_word_embeddings,hidden_act,quantization_config",
                                     &c);
    if (s) fail_msg("%s", dsr1_errmsg());
    assert_int_equal(c.q_lora_rank, 0);
    assert_int_equal(c.num_nextn_predict_layers, 0);
    assert_int_equal(c.moe_layer_freq, 1);
    assert_true(c.norm_topk_prob);
    assert_int_equal(c.max_position_embeddings, 163840);
    assert_int_equal(c.bos_token_id, 0);
    assert_int_equal(c.eos_token_id, 1);
    assert_false(c.tie_word_embeddings);
    assert_int_equal(c.rope_type, DSR1_ROPE_NONE);
    assert_false(c.fp8);

    /* yarn's optional parameters, and the newer "rope_type" spelling */
    s = parse_r1_variant("{\"q_lora_rank\":0,\"rope_scaling\":{\"rope_type\":\"yarn\"}}",
                         "rope_scaling.type,rope_scaling.beta_fast,rope_scaling.beta_slow,"
                         "rope_scaling.mscale,rope_scaling.mscale_all_dim",
                         &c);
    if (s) fail_msg("%s", dsr1_errmsg());
    assert_int_equal(c.q_lora_rank, 0);
    assert_int_equal(c.rope_type, DSR1_ROPE_YARN);
    assert_true(c.rope_beta_fast == 32.0 && c.rope_beta_slow == 1.0);
    assert_true(c.rope_mscale == 1.0 && c.rope_mscale_all_dim == 1.0);
}

typedef struct {
    const char *name;
    const char *patch; /* merged into R1 */
    const char *del;   /* keys removed from R1 */
    dsr1_status status;
    const char *expect[3]; /* each must appear in the message */
    int nlines;            /* exact number of problems, 0: not checked */
} bad_case;

static const bad_case bad_cases[] = {
    {"model_type",
     "{\"model_type\":\"llama\"}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"config.json: model_type 'llama' is not supported (expected deepseek_v3)"},
     1},
    {"scoring_func",
     "{\"scoring_func\":\"softmax\"}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"scoring_func 'softmax' is not supported (expected sigmoid)"},
     1},
    {"topk_method",
     "{\"topk_method\":\"greedy\"}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"topk_method 'greedy' is not supported (expected noaux_tc)"},
     1},
    {"hidden_act",
     "{\"hidden_act\":\"gelu\"}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"hidden_act 'gelu' is not supported (expected silu)"},
     1},
    {"rope_linear",
     "{\"rope_scaling\":{\"type\":\"linear\"}}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"rope_scaling.type 'linear' is not supported (expected yarn)"},
     1},
    {"rope_type_dynamic",
     "{\"rope_scaling\":{\"rope_type\":\"dynamic\"}}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"rope_scaling.rope_type 'dynamic' is not supported"},
     1},
    {"quant_method",
     "{\"quantization_config\":{\"quant_method\":\"bitsandbytes\"}}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"quantization_config.quant_method 'bitsandbytes' is not supported"},
     1},
    {"quant_fmt",
     "{\"quantization_config\":{\"fmt\":\"e5m2\"}}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"quantization_config.fmt 'e5m2' is not supported (expected e4m3)"},
     1},
    {"quant_block",
     "{\"quantization_config\":{\"weight_block_size\":[64,64]}}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"quantization_config.weight_block_size is not supported (expected [128, 128])"},
     1},
    {"quant_block_arity",
     "{\"quantization_config\":{\"weight_block_size\":[128]}}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"weight_block_size is not supported"},
     1},
    {"tie_embeddings",
     "{\"tie_word_embeddings\":true}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"tie_word_embeddings = true is not supported"},
     1},
    {"moe_layer_freq",
     "{\"moe_layer_freq\":2}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"moe_layer_freq = 2 is not supported (expected 1)"},
     1},
    {"one_expert_per_group",
     "{\"n_group\":256,\"topk_group\":8}",
     NULL,
     DSR1_ERR_UNSUPPORTED,
     {"n_routed_experts / n_group = 1 expert per group is not supported"},
     1},
    {"missing_key",
     NULL,
     "kv_lora_rank",
     DSR1_ERR_FORMAT,
     {"config.json: missing key 'kv_lora_rank'"},
     1},
    {"missing_q_lora_rank", NULL, "q_lora_rank", DSR1_ERR_FORMAT, {"missing key 'q_lora_rank'"}, 1},
    {"several_problems",
     "{\"model_type\":\"llama\"}",
     "vocab_size,n_group",
     DSR1_ERR_FORMAT,
     {"config.json: missing key 'vocab_size'\n", "config.json: missing key 'n_group'",
      "config.json: model_type 'llama' is not supported"},
     3},
    {"int_as_string",
     "{\"hidden_size\":\"7168\"}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'hidden_size' must be an integer, got a string"},
     1},
    {"int_as_real",
     "{\"hidden_size\":7168.0}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'hidden_size' must be an integer, got a real number"},
     1},
    {"int_overflow",
     "{\"hidden_size\":3000000000}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'hidden_size' = 3000000000 is out of range (1 to 2147483647)"},
     1},
    {"int_zero",
     "{\"num_attention_heads\":0}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'num_attention_heads' = 0 is out of range"},
     1},
    {"q_lora_negative",
     "{\"q_lora_rank\":-1}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'q_lora_rank' = -1 is out of range (0 to"},
     1},
    {"bool_as_string",
     "{\"norm_topk_prob\":\"yes\"}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'norm_topk_prob' must be a boolean, got a string"},
     1},
    {"string_as_int",
     "{\"model_type\":5}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'model_type' must be a string, got an integer"},
     1},
    {"num_as_string",
     "{\"rms_norm_eps\":\"1e-6\"}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'rms_norm_eps' must be a number, got a string"},
     1},
    {"num_zero",
     "{\"rms_norm_eps\":0}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'rms_norm_eps' = 0 must be > 0"},
     1},
    {"float_overflow",
     "{\"routed_scaling_factor\":1e300}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'routed_scaling_factor' = 1e+300 does not fit a positive float"},
     1},
    {"rope_not_object",
     "{\"rope_scaling\":5}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'rope_scaling' must be an object or null, got an integer"},
     1},
    {"rope_missing_factor",
     NULL,
     "rope_scaling.factor",
     DSR1_ERR_FORMAT,
     {"missing key 'rope_scaling.factor'"},
     1},
    {"rope_missing_type",
     NULL,
     "rope_scaling.type",
     DSR1_ERR_FORMAT,
     {"missing key 'rope_scaling.type'"},
     1},
    {"rope_bad_beta",
     "{\"rope_scaling\":{\"beta_fast\":\"32\"}}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'rope_scaling.beta_fast' must be a number, got a string"},
     1},
    {"quant_missing_fmt",
     NULL,
     "quantization_config.fmt",
     DSR1_ERR_FORMAT,
     {"missing key 'quantization_config.fmt'"},
     1},
    {"quant_block_strings",
     "{\"quantization_config\":{\"weight_block_size\":[\"128\",128]}}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'quantization_config.weight_block_size' must hold integers"},
     1},
    {"quant_not_object",
     "{\"quantization_config\":\"fp8\"}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'quantization_config' must be an object or null, got a string"},
     1},
    {"groups_not_divisible",
     "{\"n_group\":7}",
     NULL,
     DSR1_ERR_FORMAT,
     {"n_routed_experts = 256 is not divisible by n_group = 7"},
     1},
    {"topk_group_too_big",
     "{\"topk_group\":9}",
     NULL,
     DSR1_ERR_FORMAT,
     {"topk_group = 9 exceeds n_group = 8"},
     1},
    {"experts_per_tok_too_big",
     "{\"num_experts_per_tok\":129}",
     NULL,
     DSR1_ERR_FORMAT,
     {"num_experts_per_tok = 129 exceeds the 128 experts of topk_group = 4 groups"},
     1},
    {"dense_layers_too_many",
     "{\"first_k_dense_replace\":62}",
     NULL,
     DSR1_ERR_FORMAT,
     {"first_k_dense_replace = 62 exceeds num_hidden_layers = 61"},
     1},
    {"rope_dim_odd",
     "{\"qk_rope_head_dim\":63}",
     NULL,
     DSR1_ERR_FORMAT,
     {"qk_rope_head_dim = 63 must be even"},
     1},
    {"eos_out_of_vocab",
     "{\"eos_token_id\":129280}",
     NULL,
     DSR1_ERR_FORMAT,
     {"eos_token_id = 129280 is not below vocab_size = 129280"},
     1},
    /* A bad value must not also trip the checks that use it. */
    {"no_cascade",
     "{\"n_group\":\"8\",\"n_routed_experts\":null}",
     NULL,
     DSR1_ERR_FORMAT,
     {"'n_group' must be an integer", "'n_routed_experts' must be an integer, got null"},
     2},
};
#define NBAD (sizeof(bad_cases) / sizeof(bad_cases[0]))

static void test_bad_case(void **state)
{
    const bad_case *bc = *state;
    dsr1_model_config c, before;
    memset(&c, 0x5a, sizeof(c));
    before = c;
    dsr1_status s = parse_r1_variant(bc->patch, bc->del, &c);
    const char *msg = dsr1_errmsg();
    bool ok = s == bc->status;
    for (int i = 0; i < 3 && bc->expect[i]; i++) ok = ok && strstr(msg, bc->expect[i]);
    int lines = 1;
    for (const char *p = msg; *p; p++) lines += *p == '\n';
    if (bc->nlines) ok = ok && lines == bc->nlines;
    if (!ok) fail_msg("%s: got %s with %d line(s):\n%s", bc->name, dsr1_status_str(s), lines, msg);
    assert_memory_equal(&c, &before, sizeof(c)); /* output untouched on failure */
}

static void test_not_config(void **state)
{
    (void)state;
    dsr1_model_config c;
    assert_int_equal(dsr1_model_config_parse("{\"a\":", 5, &c), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), "config.json: not valid JSON"));
    assert_int_equal(dsr1_model_config_parse("[1]", 3, &c), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), "config.json: top level is not a JSON object"));
    assert_int_equal(dsr1_model_config_parse("{\"a\":1,\"a\":2}", 13, &c), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), "duplicate object key"));
    assert_int_equal(dsr1_model_config_parse(NULL, 0, &c), DSR1_ERR_INVALID_ARG);
    /* Everything missing: one line per required key (the message may be truncated). */
    assert_int_equal(dsr1_model_config_parse("{}", 2, &c), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), "config.json: missing key 'vocab_size'\n"));
    assert_non_null(strstr(dsr1_errmsg(), "config.json: missing key 'hidden_size'\n"));
    /* len is honoured: the text need not be NUL-terminated */
    assert_int_equal(dsr1_model_config_parse(r1_json, sizeof(r1_json) - 2, &c), DSR1_ERR_FORMAT);
}

static void test_load(void **state)
{
    (void)state;
    scratch s;
    char path[512];
    dsr1_model_config c;
    assert_int_equal(scratch_make(&s), 0);
    assert_int_equal(dsr1_model_config_load(s.dir, &c), DSR1_ERR_NOT_FOUND);
    assert_non_null(strstr(dsr1_errmsg(), "/config.json: cannot open"));
    assert_int_equal(scratch_write(&s, "config.json", r1_json, strlen(r1_json), path), 0);
    dsr1_status st = dsr1_model_config_load(s.dir, &c);
    if (st) fail_msg("%s", dsr1_errmsg());
    check_r1(&c);
    assert_int_equal(scratch_write(&s, "config.json", "{\"vocab_size\":1}", 16, path), 0);
    assert_int_equal(dsr1_model_config_load(s.dir, &c), DSR1_ERR_FORMAT);
    char want[600];
    snprintf(want, sizeof(want), "%s: missing key 'hidden_size'", path);
    assert_non_null(strstr(dsr1_errmsg(), want));
    scratch_remove(&s);
}

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_r1),       cmocka_unit_test(test_tiny_a),
        cmocka_unit_test(test_defaults), cmocka_unit_test(test_not_config),
        cmocka_unit_test(test_load),
    };
    enum { NFIXED = sizeof(fixed) / sizeof(fixed[0]) };
    struct CMUnitTest tests[NFIXED + NBAD];
    memcpy(tests, fixed, sizeof(fixed));
    for (size_t i = 0; i < NBAD; i++)
        tests[NFIXED + i] = (struct CMUnitTest){bad_cases[i].name, test_bad_case, NULL, NULL,
                                                (void *)&bad_cases[i]};
    return _cmocka_run_group_tests("model_config", tests, NFIXED + NBAD, NULL, NULL);
}
