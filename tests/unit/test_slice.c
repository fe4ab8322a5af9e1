/* Slice loading touches only the slice: a worker that owns a quarter of the routed experts
 * maps and keeps resident about the replicated part plus a quarter of the expert bytes,
 * measured two ways — bytes mapped, and the process's resident file pages (RssFile)
 * before and after loading. A pipeline stage without layer 0 holds no embedding, and the
 * weights of a slice are the checkpoint's bytes. The checkpoint is written by the mkmodel
 * library into a temporary directory, with many wide experts so that experts dominate. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"

#include "ckpt.h"
#include "mkmodel.h"
#include "weights.h"

static char dir[256];

static dsr1_model_config slice_config(void)
{
    dsr1_model_config c = test_config(); /* with many wide experts, which dominate */
    c.vocab_size = 512;
    c.hidden_size = 256;
    c.num_nextn_predict_layers = 1;
    c.num_attention_heads = 2;
    c.q_lora_rank = 128;
    c.kv_lora_rank = 128;
    c.qk_nope_head_dim = 32;
    c.qk_rope_head_dim = 16;
    c.v_head_dim = 32;
    c.intermediate_size = 512;
    c.moe_intermediate_size = 512;
    c.n_routed_experts = 32;
    return c;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/dsr1-slice-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    dsr1_model_config c = slice_config();
    dsr1_mkmodel_params p = {.cfg = &c, .out_dir = dir, .seed = 3, .shards = 3, .threads = 2};
    dsr1_mkmodel_result r;
    if (dsr1_mkmodel_write(&p, &r) != DSR1_OK) {
        fprintf(stderr, "mkmodel: %s\n", dsr1_errmsg());
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd);
}

static long rss_file_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "RssFile: %ld kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb;
}

/* bytes of the checkpoint's tensors a slice should hold, from the tensor list */
static uint64_t expected_bytes(const dsr1_ckpt *ck, const dsr1_slice *s, uint64_t *experts)
{
    uint64_t n = 0;
    *experts = 0;
    for (size_t i = 0; i < dsr1_ckpt_tensor_count(ck); i++) {
        const dsr1_st_tensor *t = dsr1_ckpt_tensor_at(ck, i);
        if (strstr(t->name, ".mlp.experts.") && strncmp(t->name, "model.layers.3.", 15))
            *experts += t->nbytes;
        if (dsr1_slice_wants(dsr1_ckpt_config(ck), s, t->name)) n += t->nbytes;
    }
    return n;
}

static void test_quarter_of_experts(void **state)
{
    (void)state;
    dsr1_ckpt *ck;
    assert_int_equal(dsr1_ckpt_open(dir, &ck), DSR1_OK);
    const dsr1_model_config *c = dsr1_ckpt_config(ck);
    int mine[8];
    for (int i = 0; i < 8; i++) mine[i] = 4 * i + 1; /* every 4th: not contiguous */
    dsr1_slice quarter = {0, c->num_hidden_layers, 8, mine};
    dsr1_slice all = dsr1_slice_all(c);
    uint64_t all_experts, e2;
    const uint64_t want_all = expected_bytes(ck, &all, &all_experts);
    const uint64_t want_q = expected_bytes(ck, &quarter, &e2);
    const uint64_t replicated = want_all - all_experts;
    /* the arithmetic of the claim itself */
    assert_true(want_q == replicated + all_experts / 4);
    assert_true(all_experts > 3 * replicated); /* experts dominate this model */

    long before = rss_file_kb();
    dsr1_weights *w;
    assert_int_equal(dsr1_weights_load(ck, &quarter, &w), DSR1_OK);
    long after = rss_file_kb();
    const double rss = (after - before) * 1024.0;
    print_message("quarter slice: expected %.2f MB, rss +%.2f MB, mapped %.2f MB (all: %.2f MB)\n",
                  want_q / 1e6, rss / 1e6, dsr1_ckpt_map_mapped_bytes(w->map) / 1e6,
                  want_all / 1e6);
    assert_true(dsr1_ckpt_map_tensor_bytes(w->map) == want_q);
    assert_true(dsr1_ckpt_map_mapped_bytes(w->map) <= want_q + want_q / 20);
    assert_true(rss >= 0.95 * want_q && rss <= 1.10 * want_q + (1 << 20));
    assert_true(rss < 0.45 * want_all);
    /* owned experts are there, the others are not */
    const dsr1_layer_weights *L = &w->layers[1];
    assert_non_null(L->experts[5].gate.data);
    assert_null(L->experts[4].gate.data);
    assert_int_equal(w->n_owned, 8);
    /* a weight of the slice is the checkpoint's bytes */
    const dsr1_st_tensor *t = dsr1_ckpt_find(ck, "model.layers.2.mlp.experts.9.up_proj.weight");
    assert_non_null(t);
    FILE *f = NULL;
    for (int s = 0; s < dsr1_ckpt_shard_count(ck) && !f; s++)
        if (dsr1_st_find(dsr1_ckpt_shard(ck, s), t->name))
            f = fopen(dsr1_st_path(dsr1_ckpt_shard(ck, s)), "rb");
    assert_non_null(f);
    uint8_t *buf = malloc(t->nbytes);
    assert_int_equal(fseek(f, (long)t->offset, SEEK_SET), 0);
    assert_int_equal(fread(buf, 1, t->nbytes, f), t->nbytes);
    fclose(f);
    assert_memory_equal(buf, w->layers[2].experts[9].up.data, t->nbytes);
    free(buf);
    dsr1_weights_destroy(w);
    dsr1_ckpt_close(ck);
}

static void test_stage_slice(void **state)
{
    (void)state;
    dsr1_ckpt *ck;
    assert_int_equal(dsr1_ckpt_open(dir, &ck), DSR1_OK);
    dsr1_slice stage = {1, 3, -1, NULL}; /* a second pipeline stage */
    dsr1_weights *w;
    assert_int_equal(dsr1_weights_load(ck, &stage, &w), DSR1_OK);
    assert_null(w->embed.data);
    assert_non_null(w->head.data);
    assert_null(w->layers[0].attn_norm);
    assert_non_null(w->layers[1].attn_norm);
    uint64_t e;
    assert_true(dsr1_ckpt_map_tensor_bytes(w->map) == expected_bytes(ck, &stage, &e));
    dsr1_weights_destroy(w);
    dsr1_slice bad = {2, 5, -1, NULL};
    assert_int_equal(dsr1_weights_load(ck, &bad, &w), DSR1_ERR_INVALID_ARG);
    int ghost = 40;
    dsr1_slice bad_expert = {0, 3, 1, &ghost};
    assert_int_equal(dsr1_weights_load(ck, &bad_expert, &w), DSR1_ERR_INVALID_ARG);
    assert_non_null(strstr(dsr1_errmsg(), "expert 40"));
    dsr1_ckpt_close(ck);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quarter_of_experts),
        cmocka_unit_test(test_stage_slice),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
