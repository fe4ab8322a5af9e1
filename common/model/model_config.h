/* The model's shape and hyper-parameters, parsed from a checkpoint's config.json.
 *
 * Everything the engine does is driven by this struct. Parsing is strict: a missing key, a
 * value of the wrong JSON type, or a value the engine does not support (model_type other
 * than deepseek_v3, scoring_func other than sigmoid, topk_method other than noaux_tc, rope
 * scaling other than none/yarn, non-silu activation, quantization other than fp8 e4m3 with
 * 128x128 blocks, inconsistent group counts...) makes dsr1_model_config_parse() fail with
 * DSR1_ERR_UNSUPPORTED or DSR1_ERR_FORMAT and a message listing *every* problem found,
 * one per line, each naming the key. */
#ifndef DSR1_MODEL_CONFIG_H
#define DSR1_MODEL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

typedef enum { DSR1_ROPE_NONE = 0, DSR1_ROPE_YARN = 1 } dsr1_rope_type;

typedef struct {
    int vocab_size;
    int hidden_size;
    int num_hidden_layers;     /* main layers; the MTP layers follow them */
    int num_nextn_predict_layers;
    int first_k_dense_replace; /* layers [0, k) are dense, the rest MoE */
    int moe_layer_freq;        /* must be 1 */
    int num_attention_heads;
    int q_lora_rank; /* 0: plain q_proj */
    int kv_lora_rank;
    int qk_nope_head_dim;
    int qk_rope_head_dim;
    int v_head_dim;
    int intermediate_size;     /* dense FFN */
    int moe_intermediate_size; /* per routed expert */
    int n_routed_experts;
    int num_experts_per_tok;
    int n_group;
    int topk_group;
    int n_shared_experts;
    bool norm_topk_prob;
    float routed_scaling_factor;
    float rms_norm_eps;
    int max_position_embeddings;
    int bos_token_id;
    int eos_token_id;
    bool tie_word_embeddings; /* must be false */

    double rope_theta;
    dsr1_rope_type rope_type;
    double rope_factor;
    int rope_original_max_position_embeddings;
    double rope_beta_fast, rope_beta_slow;
    double rope_mscale, rope_mscale_all_dim;

    bool fp8;             /* quantization_config present: fp8 e4m3 block weights */
    int weight_block[2];  /* [128, 128] (rows, cols of a scale block) */
} dsr1_model_config;

/* Parse config.json text (len bytes, need not be NUL-terminated). */
dsr1_status dsr1_model_config_parse(const char *json, size_t len, dsr1_model_config *out);
/* Read DIR/config.json, or the config file itself when `dir` names a file, and parse it. */
dsr1_status dsr1_model_config_load(const char *dir, dsr1_model_config *out);

/* Keep only the first `layers` main layers (0, or not fewer than there are: all of them), as
 * `--dummy-weights --layers N` does to benchmark part of a model at its real shapes; the
 * dense layers are those of the kept ones. */
static inline void dsr1_model_config_keep_layers(dsr1_model_config *c, int layers)
{
    if (layers <= 0 || layers >= c->num_hidden_layers) return;
    c->num_hidden_layers = layers;
    if (c->first_k_dense_replace > layers) c->first_k_dense_replace = layers;
}

/* Derived quantities. */
static inline int dsr1_cfg_qk_head_dim(const dsr1_model_config *c)
{
    return c->qk_nope_head_dim + c->qk_rope_head_dim;
}
static inline bool dsr1_cfg_is_moe_layer(const dsr1_model_config *c, int layer)
{
    return layer >= c->first_k_dense_replace;
}

#endif
