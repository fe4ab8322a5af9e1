/* Chat templates: turning a conversation (OpenAI-style messages) into the prompt text a
 * model was trained on, by rendering the Jinja `chat_template` that ships in the
 * checkpoint's tokenizer_config.json, the way Hugging Face transformers'
 * apply_chat_template does.
 *
 * The renderer is a Jinja2 subset written for chat templates, not a general engine: text,
 * {{ }}, {# #}, if/elif/else, for (with loop.*, else, `if` filter, tuple targets),
 * set (including namespace attributes), break/continue; Python values, operators and
 * truthiness; the usual filters (length, trim, default, join, tojson, items, ...), tests
 * (defined, none, string, ...), str/dict methods (split, strip, startswith, get, items,
 * ...) and globals (namespace, range, raise_exception, strftime_now), in transformers'
 * environment (trim_blocks and lstrip_blocks on, immutable sandbox). Anything outside the
 * subset is refused with DSR1_ERR_UNSUPPORTED naming it, at compile time where possible;
 * a template is never rendered "approximately". Output is compared byte for byte with
 * jinja2 in tests/tokenizer/check_chat_template.py.
 *
 * A compiled template is immutable: render it from any number of threads at once. */
#ifndef DSR1_CHAT_TEMPLATE_H
#define DSR1_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

typedef struct dsr1_chat_template dsr1_chat_template;

/* Compiles template source text. bos_token/eos_token (may be NULL) become the variables
 * of the same name. */
dsr1_status dsr1_chat_template_compile(const char *source, size_t len, const char *bos_token,
                                       const char *eos_token, dsr1_chat_template **out);

/* Loads MODEL_DIR's template: MODEL_DIR/chat_template.jinja if present (newer
 * checkpoints), else tokenizer_config.json's `chat_template` (a string, or a list of
 * {name, template} from which "default" is taken), with its bos/eos/pad/unk tokens. */
dsr1_status dsr1_chat_template_load(const char *model_dir, dsr1_chat_template **out);

void dsr1_chat_template_free(dsr1_chat_template *t);

/* Renders messages_json (a JSON array of message objects, UTF-8) with
 * add_generation_prompt. *out is malloc'd NUL-terminated UTF-8 the caller frees;
 * *out_len (may be NULL) excludes the NUL. Malformed JSON or a message the template
 * cannot handle (missing content, raise_exception) is DSR1_ERR_INVALID_ARG or
 * DSR1_ERR_FORMAT with the template line in the message. */
dsr1_status dsr1_chat_template_render(const dsr1_chat_template *t, const char *messages_json,
                                      bool add_generation_prompt, char **out, size_t *out_len);

/* General form: context_json is an object of template variables, e.g.
 * {"messages": [...], "add_generation_prompt": true, "tools": [...]}. As in transformers,
 * `tools` and `documents` default to none, add_generation_prompt to false, and the
 * special tokens from the checkpoint are defined unless the context sets them. */
dsr1_status dsr1_chat_template_render_context(const dsr1_chat_template *t, const char *context_json,
                                              char **out, size_t *out_len);

/* The template's source text (borrowed). */
const char *dsr1_chat_template_source(const dsr1_chat_template *t);

#endif
