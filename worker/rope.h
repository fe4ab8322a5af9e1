/* Rotary position embedding with DeepSeek's YaRN extension, and the attention softmax
 * scale that goes with it (MODEL.md, "Rotary embedding with YaRN").
 *
 * Frequencies and angles are computed in float32 the way DeepSeek's reference computes
 * them (the golden logits come from it); only cos/sin are evaluated in double and
 * rounded, which is at least as accurate as torch's float32 kernels. */
#ifndef DSR1_ROPE_H
#define DSR1_ROPE_H

#include "model_config.h"
#include "status.h"

typedef struct {
    int dim;         /* qk_rope_head_dim */
    float *inv_freq; /* [dim / 2] */
    float mscale;    /* cos/sin multiplier (1 unless mscale != mscale_all_dim) */
    float softmax_scale;
} dsr1_rope;

dsr1_status dsr1_rope_init(dsr1_rope *r, const dsr1_model_config *cfg);
void dsr1_rope_free(dsr1_rope *r);
/* Rotate the interleaved pairs (x[2i], x[2i+1]) of x[dim] in place for position pos. */
void dsr1_rope_apply(const dsr1_rope *r, float *x, int pos);

#endif
