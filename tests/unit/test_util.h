/* Shared by the engine's unit tests: a small DeepSeek-V3-shaped config with the R1 router
 * and YaRN settings, which each test then reshapes (sizes that leave partial 128-blocks,
 * more or fewer experts, an MTP layer...). */
#ifndef DSR1_TEST_UTIL_H
#define DSR1_TEST_UTIL_H

#include "model_config.h"

static inline dsr1_model_config test_config(void)
{
    dsr1_model_config c = {0};
    c.vocab_size = 300;
    c.hidden_size = 160; /* 1.25 blocks */
    c.num_hidden_layers = 3;
    c.first_k_dense_replace = 1;
    c.moe_layer_freq = 1;
    c.num_attention_heads = 3;
    c.q_lora_rank = 96;
    c.kv_lora_rank = 136;
    c.qk_nope_head_dim = 16;
    c.qk_rope_head_dim = 8;
    c.v_head_dim = 24;
    c.intermediate_size = 200;
    c.moe_intermediate_size = 48;
    c.n_routed_experts = 16;
    c.num_experts_per_tok = 4;
    c.n_group = 4;
    c.topk_group = 2;
    c.n_shared_experts = 1;
    c.norm_topk_prob = true;
    c.routed_scaling_factor = 2.5f;
    c.rms_norm_eps = 1e-6f;
    c.max_position_embeddings = 4096;
    c.eos_token_id = 1;
    c.rope_theta = 10000;
    c.rope_type = DSR1_ROPE_YARN;
    c.rope_factor = 40;
    c.rope_original_max_position_embeddings = 4096;
    c.rope_beta_fast = 32;
    c.rope_beta_slow = 1;
    c.rope_mscale = 1;
    c.rope_mscale_all_dim = 1;
    c.fp8 = true;
    c.weight_block[0] = c.weight_block[1] = 128;
    return c;
}

#endif
