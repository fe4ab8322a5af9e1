/* YaRN rotary embedding (see rope.h). */
#include "rope.h"

#include <math.h>
#include <stdlib.h>

/* The rope dimension index at which `rotations` full turns fit in the original context. */
static double correction_dim(double rotations, int dim, double base, int orig_len)
{
    return dim * log(orig_len / (rotations * 2 * M_PI)) / (2 * log(base));
}

dsr1_status dsr1_rope_init(dsr1_rope *r, const dsr1_model_config *cfg)
{
    const int dim = cfg->qk_rope_head_dim;
    if (dim <= 0 || dim % 2)
        return dsr1_error(DSR1_ERR_UNSUPPORTED, "qk_rope_head_dim %d must be even and > 0", dim);
    r->dim = dim;
    r->inv_freq = malloc(sizeof(float) * (size_t)(dim / 2));
    if (!r->inv_freq) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    const float theta = (float)cfg->rope_theta;
    for (int i = 0; i < dim / 2; i++)
        r->inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)dim);
    r->mscale = 1.0f;
    r->softmax_scale = 1.0f / sqrtf((float)(cfg->qk_nope_head_dim + cfg->qk_rope_head_dim));
    if (cfg->rope_type == DSR1_ROPE_YARN) {
        const double s = cfg->rope_factor;
        const int orig = cfg->rope_original_max_position_embeddings;
        double low = floor(correction_dim(cfg->rope_beta_fast, dim, cfg->rope_theta, orig));
        double high = ceil(correction_dim(cfg->rope_beta_slow, dim, cfg->rope_theta, orig));
        if (low < 0) low = 0;
        if (high > dim - 1) high = dim - 1;
        if (low == high) high += 0.001;
        for (int i = 0; i < dim / 2; i++) {
            float ramp = (float)(((float)i - low) / (high - low));
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            const float f = r->inv_freq[i];
            r->inv_freq[i] = f / (float)s * ramp + f * (1 - ramp);
        }
        if (s > 1) {
            const double m_all = 0.1 * cfg->rope_mscale_all_dim * log(s) + 1.0;
            const double m = 0.1 * cfg->rope_mscale * log(s) + 1.0;
            r->softmax_scale = (float)(r->softmax_scale * m_all * m_all);
            r->mscale = (float)(m / m_all);
        }
    }
    return DSR1_OK;
}

void dsr1_rope_free(dsr1_rope *r)
{
    free(r->inv_freq);
    r->inv_freq = NULL;
}

void dsr1_rope_apply(const dsr1_rope *r, float *x, int pos)
{
    for (int i = 0; i < r->dim / 2; i++) {
        const float angle = (float)pos * r->inv_freq[i];
        const float c = (float)cos(angle) * r->mscale, s = (float)sin(angle) * r->mscale;
        const float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}
