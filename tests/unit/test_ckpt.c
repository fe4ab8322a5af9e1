/* Checkpoint directories: the index and the shards must agree, shard names must stay inside
 * the directory, a single model.safetensors works without an index, and a tensor whose
 * shape disagrees with config.json is refused by name when the weights are resolved, and
 * DSR1_WEIGHTS=copy holds the same bytes in anonymous memory.
 * Each case edits a fresh copy of a small checkpoint written by the mkmodel library. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"

#include "ckpt.h"
#include "mkmodel.h"
#include "weights.h"

static char base[256];

static dsr1_model_config small(void)
{
    dsr1_model_config c = test_config();
    c.hidden_size = 128;
    c.num_hidden_layers = 2;
    c.num_nextn_predict_layers = 1; /* an MTP layer, which loading must skip */
    c.num_attention_heads = 2;
    c.q_lora_rank = 64;
    c.kv_lora_rank = 64;
    c.v_head_dim = 16;
    c.intermediate_size = 160;
    c.moe_intermediate_size = 32;
    c.n_routed_experts = 8;
    c.num_experts_per_tok = 2;
    c.n_group = 2;
    c.topk_group = 1;
    c.rope_type = DSR1_ROPE_NONE;
    return c;
}

static void sh(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    assert_int_equal(system(cmd), 0);
}

static int setup(void **state)
{
    (void)state;
    snprintf(base, sizeof(base), "/tmp/dsr1-ckpt-XXXXXX");
    if (!mkdtemp(base)) return -1;
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/orig", base);
    mkdir(dir, 0755);
    dsr1_model_config c = small();
    dsr1_mkmodel_params p = {.cfg = &c, .out_dir = dir, .seed = 9, .shards = 2, .threads = 1};
    dsr1_mkmodel_result r;
    return dsr1_mkmodel_write(&p, &r) == DSR1_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
    return system(cmd);
}

/* a fresh copy of the checkpoint; returns its path */
static const char *copy(const char *name)
{
    static char dir[300];
    snprintf(dir, sizeof(dir), "%s/%s", base, name);
    sh("rm -rf '%s' && cp -r '%s/orig' '%s'", dir, base, dir);
    return dir;
}

static dsr1_status open_status(const char *dir)
{
    dsr1_ckpt *ck = NULL;
    dsr1_status st = dsr1_ckpt_open(dir, &ck);
    if (st == DSR1_OK) dsr1_ckpt_close(ck);
    return st;
}

static void test_valid(void **state)
{
    (void)state;
    const char *d = copy("valid");
    dsr1_ckpt *ck;
    assert_int_equal(dsr1_ckpt_open(d, &ck), DSR1_OK);
    assert_int_equal(dsr1_ckpt_shard_count(ck), 2);
    assert_non_null(dsr1_ckpt_find(ck, "lm_head.weight"));
    assert_non_null(dsr1_ckpt_find(ck, "model.layers.2.eh_proj.weight")); /* MTP, present */
    assert_null(dsr1_ckpt_find(ck, "model.layers.9.input_layernorm.weight"));
    dsr1_ckpt_close(ck);
}

static void test_index_names_missing_tensor(void **state)
{
    (void)state;
    const char *d = copy("moved");
    /* claim lm_head lives in the shard that does not hold it */
    sh("cd '%s' && python3 -c \"import json; p='model.safetensors.index.json'; "
       "j=json.load(open(p)); "
       "m=j['weight_map']; f=sorted(set(m.values())); m['lm_head.weight']=[x for x in f if "
       "x!=m['lm_head.weight']][0]; "
       "json.dump(j, open(p,'w'))\"",
       d);
    assert_int_equal(open_status(d), DSR1_ERR_NOT_FOUND);
    assert_non_null(strstr(dsr1_errmsg(), "'lm_head.weight'"));
    assert_non_null(strstr(dsr1_errmsg(), "does not contain it"));
}

static void test_missing_shard(void **state)
{
    (void)state;
    const char *d = copy("noshard");
    sh("rm '%s/model-00002-of-00002.safetensors'", d);
    assert_int_not_equal(open_status(d), DSR1_OK);
    assert_non_null(strstr(dsr1_errmsg(), "model-00002-of-00002.safetensors"));
}

static void test_shard_outside_dir(void **state)
{
    (void)state;
    const char *d = copy("escape");
    sh("cd '%s' && sed -i "
       "'s#\"model-00001-of-00002.safetensors\"#\"../orig/model-00001-of-00002.safetensors\"#' "
       "model.safetensors.index.json",
       d);
    assert_int_equal(open_status(d), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), "file name in the checkpoint directory"));
}

static void test_bad_index_json(void **state)
{
    (void)state;
    const char *d = copy("badjson");
    sh("echo '{\"weight_map\": {' > '%s/model.safetensors.index.json'", d);
    assert_int_equal(open_status(d), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), "model.safetensors.index.json"));
    sh("echo '{\"metadata\": {}}' > '%s/model.safetensors.index.json'", d);
    assert_int_equal(open_status(d), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), "weight_map"));
}

static void test_no_weights(void **state)
{
    (void)state;
    const char *d = copy("empty");
    sh("rm '%s'/model*", d);
    assert_int_equal(open_status(d), DSR1_ERR_NOT_FOUND);
    assert_non_null(strstr(dsr1_errmsg(), "model.safetensors"));
    assert_int_equal(open_status("/nonexistent/dsr1"), DSR1_ERR_NOT_FOUND);
}

static void test_single_file(void **state)
{
    (void)state;
    /* one shard written as model.safetensors, no index */
    char d[300];
    snprintf(d, sizeof(d), "%s/single", base);
    mkdir(d, 0755);
    dsr1_model_config c = small();
    dsr1_mkmodel_params p = {.cfg = &c, .out_dir = d, .seed = 9, .shards = 1, .threads = 1};
    dsr1_mkmodel_result r;
    assert_int_equal(dsr1_mkmodel_write(&p, &r), DSR1_OK);
    sh("cd '%s' && mv model-00001-of-00001.safetensors model.safetensors && rm "
       "model.safetensors.index.json",
       d);
    dsr1_ckpt *ck;
    assert_int_equal(dsr1_ckpt_open(d, &ck), DSR1_OK);
    assert_int_equal(dsr1_ckpt_shard_count(ck), 1);
    dsr1_slice all = dsr1_slice_all(dsr1_ckpt_config(ck));
    dsr1_weights *w;
    assert_int_equal(dsr1_weights_load(ck, &all, &w), DSR1_OK);
    dsr1_weights_destroy(w);
    dsr1_ckpt_close(ck);
}

static void test_shape_disagrees_with_config(void **state)
{
    (void)state;
    const char *d = copy("shape");
    sh("cd '%s' && sed -i 's/\"intermediate_size\": 160/\"intermediate_size\": 192/' config.json",
       d);
    dsr1_ckpt *ck;
    assert_int_equal(dsr1_ckpt_open(d, &ck), DSR1_OK);
    dsr1_slice all = dsr1_slice_all(dsr1_ckpt_config(ck));
    dsr1_weights *w = NULL;
    assert_int_equal(dsr1_weights_load(ck, &all, &w), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), "model.layers.0.mlp.gate_proj.weight"));
    assert_non_null(strstr(dsr1_errmsg(), "config implies [192, 128]"));
    dsr1_ckpt_close(ck);
}

static bool take_all(const char *name, void *arg)
{
    (void)name;
    (void)arg;
    return true;
}

/* DSR1_WEIGHTS=copy: every tensor's bytes equal the mapped file's, held in 2 MB-aligned
 * anonymous copies (the first tensor of each run starts one); a value other than map or
 * copy is refused by name. */
static void test_weights_copy(void **state)
{
    (void)state;
    char d[300];
    snprintf(d, sizeof(d), "%s/orig", base);
    dsr1_ckpt *ck;
    assert_int_equal(dsr1_ckpt_open(d, &ck), DSR1_OK);
    dsr1_ckpt_map *mapped, *copied;
    unsetenv("DSR1_WEIGHTS");
    assert_int_equal(dsr1_ckpt_map_tensors(ck, take_all, NULL, &mapped), DSR1_OK);
    setenv("DSR1_WEIGHTS", "copy", 1);
    assert_int_equal(dsr1_ckpt_map_tensors(ck, take_all, NULL, &copied), DSR1_OK);
    size_t n = dsr1_ckpt_tensor_count(ck), aligned = 0, bytes = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = dsr1_ckpt_tensor_at(ck, i)->name;
        const dsr1_st_tensor *t;
        const uint8_t *a = dsr1_ckpt_map_data(mapped, name, &t),
                      *b = dsr1_ckpt_map_data(copied, name, NULL);
        assert_non_null(a);
        assert_non_null(b);
        assert_ptr_not_equal(a, b);
        assert_memory_equal(a, b, t->nbytes);
        aligned += ((uintptr_t)b & ((2u << 20) - 1)) == 0;
        bytes += t->nbytes;
    }
    assert_true(n > 10 && bytes > 100000);
    assert_true(aligned >= 1 && aligned <= 2 * (size_t)dsr1_ckpt_shard_count(ck));
    dsr1_ckpt_map_release(copied);
    dsr1_ckpt_map_release(mapped);
    setenv("DSR1_WEIGHTS", "anonymous", 1);
    assert_int_equal(dsr1_ckpt_map_tensors(ck, take_all, NULL, &copied), DSR1_ERR_INVALID_ARG);
    assert_non_null(strstr(dsr1_errmsg(), "DSR1_WEIGHTS: 'anonymous' is not map or copy"));
    setenv("DSR1_WEIGHTS", "map", 1);
    assert_int_equal(dsr1_ckpt_map_tensors(ck, take_all, NULL, &mapped), DSR1_OK);
    dsr1_ckpt_map_release(mapped);
    unsetenv("DSR1_WEIGHTS");
    dsr1_ckpt_close(ck);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),          cmocka_unit_test(test_index_names_missing_tensor),
        cmocka_unit_test(test_missing_shard),  cmocka_unit_test(test_shard_outside_dir),
        cmocka_unit_test(test_bad_index_json), cmocka_unit_test(test_no_weights),
        cmocka_unit_test(test_single_file),    cmocka_unit_test(test_shape_disagrees_with_config),
        cmocka_unit_test(test_weights_copy),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
