/* Chat-template API tests: loading from a checkpoint directory (tokenizer_config.json,
 * named templates, chat_template.jinja), the R1 prompt format, errors with line numbers
 * for templates and for conversations, limits, and concurrent renders. Byte-for-byte
 * agreement with jinja2 over a corpus is check_chat_template.py's job.
 *
 * usage: test_chat_template GOLDEN_DIR   (exit 77 when GOLDEN_DIR has no tokenizer) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_template.h"
#include "tok_test_util.h"

static char model_dir[256];

static const char CONV[] =
    "[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"U1\"},"
    "{\"role\":\"assistant\",\"content\":\"<think>r</think>A1\"},"
    "{\"role\":\"user\",\"content\":\"U2\"}]";
static const char WANT_GEN[] =
    "<｜begin▁of▁sentence｜>S<｜User｜>U1<｜Assistant｜>A1<｜end▁of▁sentence｜><｜User｜>U2"
    "<｜Assistant｜><think>\n";

static char *render_ok(const dsr1_chat_template *t, const char *msgs, bool gen)
{
    char *out;
    size_t len;
    if (dsr1_chat_template_render(t, msgs, gen, &out, &len)) fail_msg("render: %s", dsr1_errmsg());
    assert_int_equal(strlen(out), len);
    return out;
}

static void test_r1_format(void **state)
{
    (void)state;
    dsr1_chat_template *t;
    assert_int_equal(dsr1_chat_template_load(model_dir, &t), DSR1_OK);
    char *out = render_ok(t, CONV, true);
    assert_string_equal(out, WANT_GEN);
    free(out);
    out = render_ok(t, CONV, false);
    assert_int_equal(strlen(out), strlen(WANT_GEN) - strlen("<｜Assistant｜><think>\n"));
    assert_memory_equal(out, WANT_GEN, strlen(out));
    free(out);
    out = render_ok(t, "[]", true);
    assert_string_equal(out, "<｜begin▁of▁sentence｜><｜Assistant｜><think>\n");
    free(out);
    /* the general form: extra variables, add_generation_prompt defaults to false */
    char *ctx = NULL;
    size_t len;
    assert_int_equal(dsr1_chat_template_render_context(
                         t, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &ctx, &len),
                     DSR1_OK);
    assert_string_equal(ctx, "<｜begin▁of▁sentence｜><｜User｜>x");
    free(ctx);
    assert_non_null(strstr(dsr1_chat_template_source(t), "namespace("));
    dsr1_chat_template_free(t);
}

static void test_bad_conversations(void **state)
{
    (void)state;
    dsr1_chat_template *t;
    assert_int_equal(dsr1_chat_template_load(model_dir, &t), DSR1_OK);
    char *out = (char *)0x1;
    assert_int_equal(dsr1_chat_template_render(t, "[{\"role\":", true, &out, NULL),
                     DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_chat_template_render(t, "{\"a\":1}", true, &out, NULL),
                     DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_chat_template_render(t, "[{\"role\":\"user\"}]", true, &out, NULL),
                     DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), "no attribute 'content'"));
    assert_non_null(strstr(dsr1_errmsg(), "chat template: line 3: "));
    assert_int_equal(
        dsr1_chat_template_render(t, "[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]",
                                  true, &out, NULL),
        DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), "'str' and 'list'"));
    assert_int_equal(dsr1_chat_template_render_context(t, "[1]", &out, NULL), DSR1_ERR_INVALID_ARG);
    assert_ptr_equal(out, (char *)0x1);
    dsr1_chat_template_free(t);
}

static void expect_compile_error(const char *src, dsr1_status want, const char *msg)
{
    dsr1_chat_template *t = (dsr1_chat_template *)0x1;
    dsr1_status st = dsr1_chat_template_compile(src, strlen(src), NULL, NULL, &t);
    if (st != want || !strstr(dsr1_errmsg(), msg))
        fail_msg("'%s': status %d, message '%s'", src, st, dsr1_errmsg());
    assert_ptr_equal(t, (dsr1_chat_template *)0x1);
}

static void test_template_errors(void **state)
{
    (void)state;
    expect_compile_error("{% macro f() %}{% endmacro %}", DSR1_ERR_UNSUPPORTED, "macro");
    expect_compile_error("a\nb\n{% if x %}", DSR1_ERR_FORMAT, "line 3");
    expect_compile_error("{{ x ", DSR1_ERR_FORMAT, "unexpected end");
    expect_compile_error("{{ 'abc }}", DSR1_ERR_FORMAT, "unterminated");
    expect_compile_error("{% endfor %}", DSR1_ERR_FORMAT, "unexpected {% endfor %}");
    expect_compile_error("{{ (1 }}", DSR1_ERR_FORMAT, "unexpected '}'");
    expect_compile_error("{{ (1 ]", DSR1_ERR_FORMAT, "unexpected ']'");
    expect_compile_error("{{ f(1 2) }}", DSR1_ERR_FORMAT, "expected ','");
    expect_compile_error("{{ a ? b }}", DSR1_ERR_FORMAT, "unexpected character '?'");
    expect_compile_error("{% raw %}x{% endraw %}", DSR1_ERR_UNSUPPORTED, "raw");
    expect_compile_error("{# never closed", DSR1_ERR_FORMAT, "comment");
    expect_compile_error("{{ '\\N{BULLET}' }}", DSR1_ERR_UNSUPPORTED, "\\N");
    /* nesting deeper than the parser allows: an error, not a stack overflow */
    size_t depth = 5000;
    char *deep = malloc(depth * 2 + 16);
    size_t k = 0;
    k += (size_t)sprintf(deep, "{{ ");
    for (size_t i = 0; i < depth; i++) deep[k++] = '[';
    for (size_t i = 0; i < depth; i++) deep[k++] = ']';
    strcpy(deep + k, " }}");
    expect_compile_error(deep, DSR1_ERR_UNSUPPORTED, "nested too deep");
    free(deep);
}

static void expect_render(const char *src, const char *ctx, dsr1_status want, const char *msg)
{
    dsr1_chat_template *t;
    assert_int_equal(dsr1_chat_template_compile(src, strlen(src), "<s>", "</s>", &t), DSR1_OK);
    char *out = NULL;
    dsr1_status st = dsr1_chat_template_render_context(t, ctx, &out, NULL);
    if (st != want || (st ? !strstr(dsr1_errmsg(), msg) : strcmp(out, msg)))
        fail_msg("'%s': status %d, output '%s', message '%s'", src, st, out ? out : "",
                 dsr1_errmsg());
    free(out);
    dsr1_chat_template_free(t);
}

static void test_render_errors_and_limits(void **state)
{
    (void)state;
    expect_render("{{ bos_token }}{{ eos_token }}", "{}", DSR1_OK, "<s></s>");
    expect_render("{{ raise_exception('roles must alternate') }}", "{}", DSR1_ERR_INVALID_ARG,
                  "roles must alternate");
    expect_render("a\n{{ x.y }}", "{}", DSR1_ERR_FORMAT, "line 2: 'x' is undefined");
    expect_render("{% break %}", "{}", DSR1_ERR_FORMAT, "outside a loop");
    expect_render("{% set x.y = 1 %}", "{\"x\": {}}", DSR1_ERR_FORMAT, "namespace");
    expect_render("{{ 'x' * 100000000 }}", "{}", DSR1_ERR_FORMAT, "too large");
    expect_render("{% for i in range(100000000) %}{% endfor %}", "{}", DSR1_ERR_FORMAT, "too long");
    expect_render("{{ 9223372036854775807 + 1 }}", "{}", DSR1_ERR_FORMAT, "overflow");
    expect_render("{{ m['a'] }}", "{\"m\": {\"a\": \"x\\u0000y\"}}", DSR1_OK, "x");
    /* a render that grows the arena past its limit fails cleanly */
    expect_render("{% set ns = namespace(s='xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                  "xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
                  "{% endfor %}",
                  "{}", DSR1_ERR_RANGE, "memory limit");
}

static void write_file(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", model_dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_load_variants(void **state)
{
    (void)state;
    char path[512], saved[512];
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", model_dir);
    snprintf(saved, sizeof(saved), "%s/tokenizer_config.json.saved", model_dir);
    assert_int_equal(rename(path, saved), 0);
    dsr1_chat_template *t;
    assert_int_equal(dsr1_chat_template_load(model_dir, &t), DSR1_ERR_IO);
    write_file("tokenizer_config.json", "{\"bos_token\": \"<b>\"}");
    assert_int_equal(dsr1_chat_template_load(model_dir, &t), DSR1_ERR_NOT_FOUND);
    /* named templates: "default" is the one */
    write_file("tokenizer_config.json",
               "{\"bos_token\": {\"content\": \"<b>\", \"__type\": \"AddedToken\"},"
               " \"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"},"
               " {\"name\": \"default\", \"template\": \"{{ bos_token }}D\"}]}");
    assert_int_equal(dsr1_chat_template_load(model_dir, &t), DSR1_OK);
    char *out = render_ok(t, "[]", false);
    assert_string_equal(out, "<b>D");
    free(out);
    dsr1_chat_template_free(t);
    /* chat_template.jinja beside it wins */
    write_file("chat_template.jinja", "J{{ messages|length }}\n");
    assert_int_equal(dsr1_chat_template_load(model_dir, &t), DSR1_OK);
    out = render_ok(t, "[1,2]", false);
    assert_string_equal(out, "J2");
    free(out);
    dsr1_chat_template_free(t);
    write_file("chat_template.jinja", "{% macro m() %}{% endmacro %}");
    assert_int_equal(dsr1_chat_template_load(model_dir, &t), DSR1_ERR_UNSUPPORTED);
    assert_non_null(strstr(dsr1_errmsg(), "chat_template.jinja"));
    snprintf(path, sizeof(path), "%s/chat_template.jinja", model_dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", model_dir);
    assert_int_equal(rename(saved, path), 0);
}

static void *render_many(void *arg)
{
    const dsr1_chat_template *t = arg;
    for (int i = 0; i < 300; i++) {
        char *out;
        if (dsr1_chat_template_render(t, CONV, true, &out, NULL)) return (void *)1;
        int bad = strcmp(out, WANT_GEN) != 0;
        free(out);
        if (bad) return (void *)1;
    }
    return NULL;
}

static void test_concurrent_render(void **state)
{
    (void)state;
    dsr1_chat_template *t;
    assert_int_equal(dsr1_chat_template_load(model_dir, &t), DSR1_OK);
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, render_many, t);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        assert_null(r);
    }
    dsr1_chat_template_free(t);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_r1_format),       cmocka_unit_test(test_bad_conversations),
        cmocka_unit_test(test_template_errors), cmocka_unit_test(test_render_errors_and_limits),
        cmocka_unit_test(test_load_variants),   cmocka_unit_test(test_concurrent_render),
    };
    return tok_test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]), model_dir,
                         sizeof(model_dir), NULL, NULL);
}
