/* The interface between chat-template evaluation (chat_template_eval.c) and the built-in
 * filters, tests, methods and global functions (chat_template_builtins.c). Internal. */
#ifndef DSR1_CHAT_TEMPLATE_BUILTINS_H
#define DSR1_CHAT_TEMPLATE_BUILTINS_H

#include "chat_template_internal.h"

/* Whether name is one of jinja2's / transformers' global functions. */
bool dsr1__ct_is_global(const char *name);
/* Whether obj.name is a method in Python (str.split, dict.items, list.append, ...). */
bool dsr1__ct_has_method(const ct_value *obj, const char *name, size_t n);

ct_value dsr1__ct_call(ct_ctx *c, const ct_value *callee, ct_value *args, const char **kw,
                       size_t n);
ct_value dsr1__ct_filter(ct_ctx *c, const char *name, const ct_value *v, ct_value *args,
                         const char **kw, size_t n);
bool dsr1__ct_test(ct_ctx *c, const char *name, const ct_value *v, ct_value *args, size_t n);

/* From chat_template_eval.c, used by the builtins. */
ct_value dsr1__ct_getattr(ct_ctx *c, const ct_value *obj, const char *name, size_t n);
ct_value dsr1__ct_getitem(ct_ctx *c, const ct_value *obj, const ct_value *key);
bool dsr1__ct_compare(ct_ctx *c, const char *op, const ct_value *a, const ct_value *b);
_Noreturn void dsr1__ct_fail_undef(ct_ctx *c, const ct_value *v);
/* Number of code points in s. */
size_t dsr1__ct_cp_count(const ct_str *s);

#endif
