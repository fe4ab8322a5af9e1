/* libFuzzer target for the config.json parser: any bytes must give either an error or a
 * config that satisfies the consistency rules the parser promises to enforce (a violation
 * traps). Built by run_loader_fuzz.sh. */
#include <stdint.h>
#include <stddef.h>

#include "model_config.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dsr1_model_config c;
    if (dsr1_model_config_parse((const char *)data, size, &c) != DSR1_OK) return 0;
    CHECK(c.hidden_size > 0 && c.num_hidden_layers > 0 && c.vocab_size > 0);
    CHECK(c.n_group > 0 && c.n_routed_experts % c.n_group == 0);
    CHECK(c.topk_group <= c.n_group);
    CHECK((long long)c.num_experts_per_tok <=
          (long long)c.topk_group * (c.n_routed_experts / c.n_group));
    CHECK(c.first_k_dense_replace <= c.num_hidden_layers);
    CHECK(c.moe_layer_freq == 1 && !c.tie_word_embeddings);
    CHECK(c.rms_norm_eps > 0 && c.routed_scaling_factor > 0 && c.rope_theta > 0);
    CHECK(!c.fp8 || (c.weight_block[0] == 128 && c.weight_block[1] == 128));
    return 0;
}
