/* A checkpoint directory in the Hugging Face layout DeepSeek publishes:
 *   config.json, model.safetensors.index.json + N shards (or a single model.safetensors),
 *   tokenizer.json, tokenizer_config.json, generation_config.json.
 *
 * dsr1_ckpt_open() parses config.json (model_config.h), the index, and the header of every
 * shard (each validated by safetensors.h), and checks that every tensor the index names
 * exists in the shard it names. No tensor data is mapped yet.
 *
 * dsr1_ckpt_map() then maps only the tensors a caller selects (a worker's layers and
 * routed experts), merging neighbours in a shard into one mapping, and pre-faults them
 * with progress reporting, so the first forward step does not pay page faults and a slice
 * of the model keeps only its own bytes resident. */
#ifndef DSR1_CKPT_H
#define DSR1_CKPT_H

#include <stdbool.h>
#include <stdint.h>

#include "model_config.h"
#include "safetensors.h"
#include "status.h"

typedef struct dsr1_ckpt dsr1_ckpt;

dsr1_status dsr1_ckpt_open(const char *dir, dsr1_ckpt **out);
void dsr1_ckpt_close(dsr1_ckpt *ck);

const dsr1_model_config *dsr1_ckpt_config(const dsr1_ckpt *ck);
const char *dsr1_ckpt_dir(const dsr1_ckpt *ck);
int dsr1_ckpt_shard_count(const dsr1_ckpt *ck);
const dsr1_st_file *dsr1_ckpt_shard(const dsr1_ckpt *ck, int i);
/* Every tensor of the checkpoint, in index order; 0 <= i < count. */
size_t dsr1_ckpt_tensor_count(const dsr1_ckpt *ck);
const dsr1_st_tensor *dsr1_ckpt_tensor_at(const dsr1_ckpt *ck, size_t i);
/* NULL when absent. */
const dsr1_st_tensor *dsr1_ckpt_find(const dsr1_ckpt *ck, const char *name);

/* Selects the tensors to map: return true to take `name`. */
typedef bool (*dsr1_ckpt_select_fn)(const char *name, void *arg);

typedef struct dsr1_ckpt_map dsr1_ckpt_map;

/* Map (and pre-fault, reporting progress) the tensors `select` takes. The checkpoint must
 * outlive the mapping; data pointers stay valid until dsr1_ckpt_map_release(). */
dsr1_status dsr1_ckpt_map_tensors(const dsr1_ckpt *ck, dsr1_ckpt_select_fn select, void *arg,
                                  dsr1_ckpt_map **out);
void dsr1_ckpt_map_release(dsr1_ckpt_map *m);
/* Data of a mapped tensor and its description; NULL when `name` was not selected. */
const void *dsr1_ckpt_map_data(const dsr1_ckpt_map *m, const char *name, const dsr1_st_tensor **t);
/* Bytes of tensor data selected, and bytes actually mapped (page rounding, small gaps). */
uint64_t dsr1_ckpt_map_tensor_bytes(const dsr1_ckpt_map *m);
uint64_t dsr1_ckpt_map_mapped_bytes(const dsr1_ckpt_map *m);

#endif
