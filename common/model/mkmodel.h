/* Writing a random DeepSeek-V3/R1 checkpoint directory in the Hugging Face layout.
 *
 * The library behind `dsr1 mkmodel` (and its test): from a model config it writes
 *   config.json, generation_config.json,
 *   model-0000K-of-0000N.safetensors (the tensor plan, tensor_plan.h, filled by randw.h),
 *   model.safetensors.index.json (metadata.total_size = tensor bytes, weight_map),
 * and optionally the tokenizer files, made R1's from DeepSeek-V3's (see
 * dsr1_mkmodel_tokenizer()).
 *
 * Tensors are split into shards greedily in plan order at ceil(total / shards) bytes, as the
 * golden generator does. Generation runs on `threads` threads, each filling pieces of
 * tensors (block rows of FP8 linears, chunks of BF16/F32 tensors) into a ring of buffers
 * that the calling thread writes out in order, so memory stays bounded (a few MB per
 * thread) whatever the model size, and the bytes do not depend on the thread count. */
#ifndef DSR1_MKMODEL_H
#define DSR1_MKMODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "model_config.h"
#include "status.h"

typedef struct {
    const dsr1_model_config *cfg;
    /* config.json text to write as is; NULL: generated from cfg (dsr1_mkmodel_config_json) */
    const char *config_json;
    const char *out_dir; /* must exist */
    uint64_t seed;
    int shards;  /* >= 1 */
    int threads; /* <= 0: DSR1_THREADS from the environment, else the online CPUs */
    /* directory holding DeepSeek-V3's tokenizer.json and tokenizer_config.json; NULL: none */
    const char *tokenizer_dir;
    bool progress; /* report progress (progress.h) */
} dsr1_mkmodel_params;

typedef struct {
    size_t tensors;
    int shards; /* can be fewer than asked when tensors are larger than a shard */
    uint64_t tensor_bytes, file_bytes;
    double seconds;
} dsr1_mkmodel_result;

/* Write the checkpoint. Files are created or replaced; nothing else in out_dir is touched.
 * FP8 only: cfg must have fp8 with 128x128 blocks (DSR1_ERR_UNSUPPORTED otherwise). */
dsr1_status dsr1_mkmodel_write(const dsr1_mkmodel_params *p, dsr1_mkmodel_result *out);

/* config.json text for cfg with every key DeepSeek-R1's config.json has, in its order;
 * *out is malloc'ed, free() it. */
dsr1_status dsr1_mkmodel_config_json(const dsr1_model_config *cfg, char **out);

/* Read src_dir/tokenizer.json and src_dir/tokenizer_config.json (DeepSeek-V3's) and write
 * R1's versions to out_dir: added tokens 128798/128799 become "<think>"/"</think>" with
 * special=false, and the chat template becomes R1's (dsr1_r1_chat_template()). */
dsr1_status dsr1_mkmodel_tokenizer(const char *src_dir, const char *out_dir);

/* DeepSeek-R1's chat template from DeepSeek-V3's: reasoning (text up to "</think>") is
 * stripped from assistant turns of the history, and the generation prompt opens a <think>
 * block ("<｜Assistant｜><think>\n"). DSR1_ERR_FORMAT when v3 is not the expected V3
 * template. *out is malloc'ed. */
dsr1_status dsr1_r1_chat_template(const char *v3, char **out);

#endif
