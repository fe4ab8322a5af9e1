/* The sampling parameters: defaults and range checks (sampling.h). */
#include "sampling.h"

dsr1_sampling dsr1_sampling_defaults(void)
{
    return (dsr1_sampling){.temperature = 1, .top_p = 1, .repetition_penalty = 1};
}

static dsr1_status out_of_range(const char *field, double v, const char *range)
{
    return dsr1_error(DSR1_ERR_INVALID_ARG, "sampling: %s = %g is outside %s", field, v, range);
}

dsr1_status dsr1_sampling_validate(const dsr1_sampling *s, int vocab)
{
    if (!s || vocab < 1) return dsr1_error(DSR1_ERR_INVALID_ARG, "sampling: no parameters");
    if (!(s->temperature >= 0 && s->temperature <= 100))
        return out_of_range("temperature", s->temperature, "[0, 100]");
    if (!(s->top_p > 0 && s->top_p <= 1)) return out_of_range("top_p", s->top_p, "(0, 1]");
    if (s->top_k < 0) return out_of_range("top_k", s->top_k, "[0, +inf)");
    if (!(s->min_p >= 0 && s->min_p <= 1)) return out_of_range("min_p", s->min_p, "[0, 1]");
    if (!(s->presence_penalty >= -2 && s->presence_penalty <= 2))
        return out_of_range("presence_penalty", s->presence_penalty, "[-2, 2]");
    if (!(s->frequency_penalty >= -2 && s->frequency_penalty <= 2))
        return out_of_range("frequency_penalty", s->frequency_penalty, "[-2, 2]");
    if (!(s->repetition_penalty > 0 && s->repetition_penalty <= 2))
        return out_of_range("repetition_penalty", s->repetition_penalty, "(0, 2]");
    if (s->top_logprobs < 0 || s->top_logprobs > DSR1_MAX_TOP_LOGPROBS)
        return out_of_range("top_logprobs", s->top_logprobs, "[0, 20]");
    if (s->n_bias < 0 || (s->n_bias > 0 && (!s->bias_ids || !s->bias_values)))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "sampling: logit_bias has %d entries and no arrays",
                          s->n_bias);
    if (s->allowed && s->mask_words != (vocab + 31) / 32)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "sampling: the token mask has %d words; a vocabulary of %d needs %d",
                          s->mask_words, vocab, (vocab + 31) / 32);
    for (int i = 0; i < s->n_bias; i++) {
        if (s->bias_ids[i] < 0 || s->bias_ids[i] >= vocab)
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "sampling: logit_bias token id %d is outside [0, %d)",
                              (int)s->bias_ids[i], vocab);
        if (!(s->bias_values[i] >= -100 && s->bias_values[i] <= 100))
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "sampling: logit_bias value %g of token %d is outside [-100, 100]",
                              s->bias_values[i], (int)s->bias_ids[i]);
    }
    return DSR1_OK;
}

bool dsr1_sampling_uses_history(const dsr1_sampling *s)
{
    return s->repetition_penalty != 1 || s->presence_penalty != 0 || s->frequency_penalty != 0;
}
