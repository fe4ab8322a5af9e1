#!/usr/bin/env python3
"""Compare `dsr1 chat-template` with jinja2, byte for byte.

Three corpora:
  1. conversations (system, user, assistant with <think> reasoning, tool calls, tool
     outputs, multi-turn, unicode, ...) rendered with DeepSeek-R1's chat template, the one
     make_tiny.py writes, with add_generation_prompt on and off;
  2. a few of them with DeepSeek-V3's original template;
  3. small templates exercising each Jinja feature the engine implements (whitespace
     control, loops, scoping, filters, tests, methods, literals, number printing).
jinja2 runs in transformers' environment (ImmutableSandboxedEnvironment, trim_blocks,
lstrip_blocks, loopcontrols, json.dumps-based tojson, raise_exception). Inputs that make
jinja2 raise must make dsr1 fail too; templates outside the subset must be refused.

usage: check_chat_template.py DSR1_BINARY GOLDEN_DIR
Exit 77 (skipped) when jinja2 or the golden tokenizer files are missing.
"""
import ast
import json
import os
import subprocess
import sys
import tempfile

try:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    print("skip: python3-jinja2 is not installed")
    sys.exit(77)


def load_make_tiny_functions(golden):
    """write_tokenizer and R1_TEMPLATE from make_tiny.py, without importing the module
    (its top level needs numpy, these two functions do not)."""
    path = os.path.join(golden, "make_tiny.py")
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    keep = [n for n in tree.body
            if isinstance(n, ast.FunctionDef) and n.name in ("write_tokenizer", "R1_TEMPLATE")]
    ns = {"json": json, "os": os, "HERE": golden}
    exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), ns)
    return ns["write_tokenizer"]


def hf_environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def special_tokens(config):
    out = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        v = config.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            out[key] = v
    return out


def tool_call(name, args, ctype="function"):
    return {"type": ctype, "function": {"name": name, "arguments": args}}


U, A, S, T = "user", "assistant", "system", "tool"


def m(role, content, **kw):
    d = {"role": role, "content": content}
    d.update(kw)
    return d


CONVERSATIONS = [
    [m(U, "Hello")],
    [m(S, "You are a helpful assistant."), m(U, "What is 2+2?")],
    [m(S, "Rule one."), m(S, "Rule two."), m(U, "Go")],
    [m(U, "first"), m(S, "late system prompt"), m(U, "second")],
    [m(U, "Hi"), m(A, "Hello! How can I help?"), m(U, "Tell me a joke.")],
    [m(U, "Why?"), m(A, "<think>\nThe user asks why.\n</think>\n\nBecause."), m(U, "OK")],
    [m(U, "q"), m(A, "<think>a</think>mid</think>\n\nfinal answer")],
    [m(U, "q"), m(A, "no reasoning here")],
    [m(U, "q"), m(A, "dangling close</think>kept part")],
    [m(U, "Weather?"), m(A, None, tool_calls=[tool_call("get_weather", '{"city": "Paris"}')])],
    [m(U, "Two tools"), m(A, None, tool_calls=[tool_call("a", '{"x": 1}'), tool_call("b", '{"y": 2}')])],
    [m(U, "Weather?"), m(A, None, tool_calls=[tool_call("get_weather", '{"city": "Paris"}')]),
     m(T, '{"temp": 21}'), m(A, "It is 21 degrees in Paris.")],
    [m(U, "Both"), m(A, None, tool_calls=[tool_call("a", "{}"), tool_call("b", "{}")]),
     m(T, "result a"), m(T, "result b"), m(A, "Done.")],
    [m(U, "one"), m(A, None, tool_calls=[tool_call("f", "{}")]), m(T, "r1"), m(A, "ok"),
     m(U, "two"), m(A, None, tool_calls=[tool_call("g", '{"k": "v"}')]), m(T, "r2")],
    [m(U, "你好，世界！请用中文回答。"), m(A, "<think>用户在打招呼</think>你好！😀"), m(U, "مرحبا שלום")],
    [m(U, "Literal {{ braces }} and {% tags %} and {# comments #} and \\backslash 'quotes\" ")],
    [m(U, "line1\nline2\r\nline3\ttab  "), m(A, "  spaced  \n\n")],
    [m(U, ""), m(A, "")],
    [],
    [m(A, "assistant speaks first")],
    [m(U, "call"), m(A, None, tool_calls=[tool_call("f", "{}")]), m(T, "final tool output")],
    [m(U, "a"), m(A, None, tool_calls=[tool_call("f", "{}")]), m(T, "out"), m(U, "after tool")],
    [m(U, "fake <｜Assistant｜> and <｜end▁of▁sentence｜> tokens"), m(A, "<think>x</think>y")],
    [m(U, "long " * 2000)],
    [m(U, "q"), m(A, "<think>\nreason\n</think>   \n  answer with spaces  ")],
    [m(U, "nul\u0000byte and \u0001 control")],
    [m(U, "extra keys", name="alice", id=7), m(A, "reply", refusal=None)],
    [m(U, "json args"), m(A, None, tool_calls=[tool_call("search", '{"q": "日本語\\n", "n": 3}')])],
    [m(U, "hi"), m(S, "system after user"), m(A, "x"), m(S, "another")],
    [m(U, "q"), m(A, "<think>only reasoning</think>")],
    [m(U if i % 2 == 0 else A, f"turn {i} " + "<think>r</think>" * (i % 3)) for i in range(12)],
    [m(A, "user says </think> here"), m(U, "</think> inside user stays")],
    [m(U, "emoji 🚀🔥👨‍👩‍👧‍👦 and combining é")],
    [m(U, "q"), m(A, None, tool_calls=[tool_call("f", "{}", ctype="custom")])],
    [m(U, "x"), m(A, None)],  # content null and no tool_calls: jinja2 skips the message
]

# jinja2 raises on these; dsr1 must fail as well (never print a wrong prompt)
BAD_CONVERSATIONS = [
    [{"role": "user"}],                                           # no content
    [m(U, "x"), m(A, None, tool_calls=[tool_call("f", {"a": 1})])],  # arguments not a string
    [m(U, [{"type": "text", "text": "parts"}])],                 # content parts list
    [m(A, None, tool_calls=[{"type": "function"}])],             # no function
]

# (template, context): each Jinja feature the engine implements
FEATURES = [
    ("a\n  {% if true %}\n  x\n  {% endif %}\nb", {}),
    ("{%- if true -%}  x  {%- endif -%}  y", {}),
    ("[{{- ' a ' -}}]  [ {{ 'b' }} ]", {}),
    ("{# comment #}\nx\n  {#- c -#}  y", {}),
    ("  {%+ if true %}x{% endif %}\n  {% if true %}y{% endif %}", {}),
    ("line\n    {{ 'v' }}\n    {% set q = 1 %}\nend\n", {}),
    ("a\r\nb\rc\n{% if 1 %}\r\nd{% endif %}\n\n", {}),
    ("{% for x in items %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
     "{{ loop.length }}{{ loop.revindex }}|{% endfor %}", {"items": ["a", "b", "c"]}),
    ("{% for x in [] %}x{% else %}empty{% endfor %}", {}),
    ("{% for x in [1,2,3,4,5] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}"
     "{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {"d": {"b": 1, "a": "x"}}),
    ("{% for x in xs if x > 1 %}{{ x }}{{ loop.length }}{% endfor %}", {"xs": [1, 2, 3]}),
    ("{% set x = 1 %}{% for i in [1,2] %}{{ x }}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}", {}),
    ("{% set ns = namespace(n=0, s='') %}{% for i in range(5) %}{% set ns.n = ns.n + i %}"
     "{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }}", {}),
    ("{% for a in [[1,2],[3]] %}{% for b in a %}{{ b }}{{ loop.index }}{% endfor %};{% endfor %}", {}),
    ("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 3 / 2 }} {{ 1 + 2 * 3 }}"
     " {{ (1 + 2) * 3 }} {{ 10 - 4 - 3 }} {{ -3 }} {{ True + 1 }}", {}),
    ("{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }} {{ 1.5e3 }} {{ 2.5 * 2 }} {{ 1/3 }}"
     " {{ 123456789012345678.0 }} {{ -0.0 }} {{ x }}", {"x": 3.25}),
    ("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 'a' != 'a' }} {{ [1,2] == [1,2] }}"
     " {{ 1 == True }} {{ none == none }} {{ x == y }}", {}),
    ("{{ 'b' in 'abc' }} {{ 2 in [1,2] }} {{ 'k' in d }} {{ 'z' not in 'abc' }} {{ 'a' in u }}",
     {"d": {"k": 1}}),
    ("{{ '' or 'x' }} {{ 'a' and 'b' }} {{ 0 and 1 }} {{ none or 0 }} {{ not 1 }} {{ not not 'x' }}", {}),
    ("{{ 'yes' if c else 'no' }} {{ 'yes' if not c else 'no' }} [{{ 'x' if false }}]", {"c": True}),
    ("{{ s.split()|join('|') }}", {"s": " a  b\tc\n"}),
    ("{% for p in s.split(',') %}[{{ p }}]{% endfor %}{{ s.split(',', 1)[1] }}|"
     "{{ s.rsplit(',', 1)[0] }}|{{ s.split(',')[-1] }}", {"s": "x,,y,z"}),
    ("[{{ s.strip() }}][{{ s.lstrip() }}][{{ s.rstrip() }}][{{ s.strip(' x') }}]", {"s": "  xhix \n"}),
    ("{{ s.startswith('ab') }}{{ s.endswith('yz') }}{{ s.startswith(('q','a')) }}"
     "{{ s.upper() }}{{ s.lower() }}{{ s.replace('b', 'BB') }}{{ s.find('c') }}{{ s.count('b') }}",
     {"s": "abcbxyz"}),
    ("{{ s[0] }}{{ s[-1] }}{{ s[1:3] }}{{ s[::-1] }}{{ s[:-2] }}{{ xs[1:]|join }}{{ xs[-1] }}"
     "{{ xs[::2]|tojson }}", {"s": "héllo", "xs": [1, 2, 3, 4]}),
    ("{{ xs|length }} {{ s|length }} {{ d|length }} {{ u|length }} {{ xs|first }} {{ xs|last }}"
     " {{ xs|join('-') }} {{ xs|join }} {{ s|list|join(',') }}", {"xs": [3, 1, 2], "s": "日本", "d": {"a": 1}}),
    ("[{{ s|trim }}] [{{ u|default('dflt') }}] [{{ ''|default('e', true) }}] [{{ s|d('z') }}]"
     " [{{ s|replace('a', 'o') }}] [{{ 5|string }}] [{{ s|upper }}]", {"s": "  banana \n"}),
    ("{{ v|tojson }}", {"v": {"a": [1, 2.5, True, None, "é\n\"q\"\\ \u0001"], "b": {}, "c": []}}),
    ("{{ v|tojson(indent=2) }}", {"v": {"a": [1, {"b": "x"}], "c": []}}),
    ("{% for k, v in d|items %}{{ k }}:{{ v }},{% endfor %}{{ d.get('a') }}{{ d.get('z', 9) }}"
     "{{ d.keys()|list|join }}{{ d.values()|list|join }}", {"d": {"a": 1, "b": 2}}),
    ("{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='content')|join(' ') }}|"
     "{{ msgs|rejectattr('role', 'equalto', 'user')|list|length }}",
     {"msgs": [{"role": "user", "content": "a"}, {"role": "x", "content": "b"},
               {"role": "user", "content": "c"}]}),
    ("{{ x is defined }}{{ u is defined }}{{ u is undefined }}{{ n is none }}{{ s is string }}"
     "{{ d is mapping }}{{ 1 is number }}{{ xs is iterable }}{{ s is not string }}{{ 3 is odd }}"
     "{{ 4 is even }}{{ 6 is divisibleby 3 }}{{ x is sameas none }}{{ 1 is integer }}{{ 1.5 is float }}",
     {"x": 1, "n": None, "s": "t", "d": {}, "xs": []}),
    ("{{ '\\n' }}|{{ '\\x41\\u00e9\\101' }}|{{ \"it's\" }}|{{ 'a\\qb' }}|{{ 'tab\\t' }}|{{ 'a' 'b' }}", {}),
    ("{{ true }} {{ True }} {{ none }} {{ None }} {{ 42 }} {{ -5 }} {{ [1,2][0] }} {{ {'a': 1}['a'] }}"
     " {{ {'a': 1}.a }} {{ (1, 2)[1] }} {{ n }}", {"n": None}),
    ("{% if a %}A{% elif b %}B{% elif c %}C{% else %}D{% endif %}", {"a": 0, "b": "", "c": [1]}),
    ("{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
     "{{ add_generation_prompt }}{{ tools }}{{ documents }}", {}),
    ("{{ messages[0]['content'] }}{{ messages[0].content }}{{ messages|length }}",
     {"messages": [{"role": "user", "content": "hi"}]}),
    ("{% set x = 'outer' %}{% if true %}{% set x = 'if' %}{% endif %}{{ x }}", {}),
    ("{{ ns }}", {"ns": "plain"}),
    ("{{ 'abc' ~ 1 ~ none ~ true }}{{ u ~ 'x' }}", {}),
    ("{% for c in 'héé' %}{{ c }}.{% endfor %}{% for k in d %}{{ k }}{% endfor %}", {"d": {"x": 1, "y": 2}}),
    ("{{ 'x' * 3 }}{{ ([0] * 2)|join }}{{ ([1] + [2])|join }}{{ 'a' + 'b' }}", {}),
    ("{%- for m in messages -%}\n  {{- m.role }}: {{ m.content | trim }}\n{% endfor -%}\n",
     {"messages": [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo\n"}]}),
    ("  {% for x in [1,2] %}\n    {{ x }}\n  {% endfor %}\n", {}),
    ("{% if true %}\n\n  a\n{% endif %}\n\n", {}),
    ("a {#- c #} b|x\n{%- if true %} y{% endif %}|\t{% set x = 1 %}\nz", {}),
    ("a\n\u3000\u00a0{% if true %}x{% endif %}|{{ 'a' }}\n{{ 'b' }}\n", {}),
    ("{% if true %}{% endif %}   \n{# a #}\n\nq", {}),
    ("{% for m in messages %}{{ m.content }}{% if not loop.last %}\n{% endif %}{% endfor %}",
     {"messages": [{"content": "a"}, {"content": "b"}, {"content": "c"}]}),
    ("{{ '%s' }}|{{ u|default(none) is none }}|{{ 'a,b'.split(',')|length }}|{{ '  x  '|trim|length }}"
     "|{{ '\\\\' }}|{{ 'é'|length }}|{{ d['k']['z'] is defined }}|{{ d.get('x', 'def') }}", {"d": {"k": {}}}),
    ("{{ 3 in [1,2,3] and 'x' not in ['y'] }}|{{ 10 / 4 }}|{{ 10 / 5 }}|{{ (0.5).__class__ }}|"
     "{{ -2 ** 2 }}|{{ 2 ** -1 }}|{{ 7.5 // 2 }}|{{ -7.5 % 2 }}|{{ 1 ~ 2 }}", {}),
    ("{% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %}|{% for c in {'k': 1} %}{{ c }}{% endfor %}"
     "|{% set t = ('a', 'b') %}{{ t|join }}|{{ t[0] }}", {}),
    ("{% for i in range(3) %}{% for j in range(i) %}{{ loop.index }}{% endfor %}/{{ loop.index }}{% endfor %}"
     "|{{ range(2, 10, 3)|join(',') }}|{{ range(5, 0, -2)|join(',') }}", {}),
    ("{% set ns = namespace(found=false) %}{% for m in msgs %}{% if m.role == 'tool' %}"
     "{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}", {"msgs": [{"role": "tool"}]}),
    ("{{ x if x is defined else 'dflt' }}|{{ 'T' if t else 'F' }}|{{ n if n else 'none!' }}",
     {"t": [], "n": None}),
    ("{{ tools|tojson }}|{{ tools[0].function.name }}|{% for t in tools %}{{ t|tojson(indent=4) }}{% endfor %}",
     {"tools": [{"type": "function", "function": {"name": "get", "parameters": {"type": "object",
      "properties": {"q": {"type": "string", "enum": ["a", "b"]}}, "required": ["q"]}}}]}),
]

# jinja2 raises on these: dsr1 must fail too
BAD_FEATURES = [
    ("{{ u + 'x' }}", {}),
    ("{{ d.missing.deeper }}", {"d": {}}),
    ("{{ raise_exception('nope') }}", {}),
    ("{{ 1 < 'a' }}", {}),
    ("{{ [1].append(2) }}", {}),
    ("{{ 1 // 0 }}", {}),
    ("{% if %}x{% endif %}", {}),
    ("{% for x in y %}", {}),
    ("{{ 'a' + 1 }}", {}),
]

# outside the subset: dsr1 must refuse rather than render something else
UNSUPPORTED = [
    "{% macro f() %}x{% endmacro %}{{ f() }}",
    "{% raw %}{{ x }}{% endraw %}",
    "{% set x %}block{% endset %}{{ x }}",
    "{% include 'other' %}",
    "{{ 'x'|wordwrap(3) }}",
    "{{ 'é'.upper() }}",
    "{{ [1, 'a'] }}",  # Python repr of a list: not reproduced
]


def run_dsr1(dsr1, args):
    return subprocess.run([dsr1, "chat-template"] + args, capture_output=True)


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    dsr1, golden = sys.argv[1], sys.argv[2]
    if not os.path.exists(os.path.join(golden, "tokenizer", "tokenizer.json")):
        print(f"skip: {golden}/tokenizer not found")
        return 77
    write_tokenizer = load_make_tiny_functions(golden)
    env = hf_environment()
    failures, checks = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        r1_dir = os.path.join(tmp, "r1")
        v3_dir = os.path.join(golden, "tokenizer")
        os.makedirs(r1_dir)
        write_tokenizer(r1_dir)
        ctx_path = os.path.join(tmp, "ctx.json")
        tmpl_path = os.path.join(tmp, "t.jinja")

        def check(label, model_dir, template, context, expect_error=False):
            nonlocal checks
            checks += 1
            jctx = {"tools": None, "documents": None, "add_generation_prompt": False}
            args = []
            if model_dir:
                config = json.load(open(os.path.join(model_dir, "tokenizer_config.json"),
                                        encoding="utf-8"))
                jctx.update(special_tokens(config))
                args += ["--model", model_dir]
            context = dict(context)
            context.setdefault("add_generation_prompt", False)
            jctx.update(context)
            try:
                want = env.from_string(template).render(**jctx).encode("utf-8")
                jinja_error = None
            except Exception as e:  # noqa: BLE001 - any jinja2 failure counts
                want, jinja_error = None, f"{type(e).__name__}: {e}"
            with open(ctx_path, "w", encoding="utf-8") as f:
                json.dump(context, f, ensure_ascii=False)
            if model_dir is None or label.startswith("feature"):
                with open(tmpl_path, "w", encoding="utf-8") as f:
                    f.write(template)
                args += ["--template", tmpl_path]
            got = run_dsr1(dsr1, args + ["--messages", ctx_path])
            if expect_error and not jinja_error:
                failures.append(f"{label}: expected jinja2 to raise (test corpus is wrong)")
                return
            if jinja_error:
                if got.returncode == 0:
                    failures.append(f"{label}: jinja2 raised ({jinja_error}) but dsr1 printed "
                                    f"{got.stdout[:200]!r}")
                return
            if got.returncode != 0:
                failures.append(f"{label}: dsr1 failed: {got.stderr.decode(errors='replace')}")
            elif got.stdout != want:
                failures.append(f"{label}: output differs\n  jinja2: {want[:400]!r}\n"
                                f"  dsr1:   {got.stdout[:400]!r}")

        r1_template = json.load(open(os.path.join(r1_dir, "tokenizer_config.json"),
                                     encoding="utf-8"))["chat_template"]
        v3_template = json.load(open(os.path.join(v3_dir, "tokenizer_config.json"),
                                     encoding="utf-8"))["chat_template"]
        for i, conv in enumerate(CONVERSATIONS):
            for gen in (True, False):
                check(f"R1 conversation {i} (gen={gen})", r1_dir, r1_template,
                      {"messages": conv, "add_generation_prompt": gen})
        for i, conv in enumerate(CONVERSATIONS[:12]):
            check(f"V3 conversation {i}", v3_dir, v3_template,
                  {"messages": conv, "add_generation_prompt": True})
        for i, conv in enumerate(BAD_CONVERSATIONS):
            check(f"R1 bad conversation {i}", r1_dir, r1_template,
                  {"messages": conv, "add_generation_prompt": True}, expect_error=True)
        for i, (template, context) in enumerate(FEATURES):
            check(f"feature {i} {template[:40]!r}", None, template, context)
        for i, (template, context) in enumerate(BAD_FEATURES):
            check(f"feature-error {i} {template[:40]!r}", None, template, context,
                  expect_error=True)
        for i, template in enumerate(UNSUPPORTED):
            checks += 1
            with open(tmpl_path, "w", encoding="utf-8") as f:
                f.write(template)
            with open(ctx_path, "w", encoding="utf-8") as f:
                f.write("{}")
            got = run_dsr1(dsr1, ["--template", tmpl_path, "--messages", ctx_path])
            if got.returncode == 0:
                failures.append(f"unsupported {i} {template!r}: dsr1 rendered "
                                f"{got.stdout[:100]!r} instead of refusing")

    for f in failures:
        print("FAIL", f)
    print(f"{checks - len(failures)}/{checks} chat-template checks match jinja2 "
          f"({len(CONVERSATIONS)} conversations x 2 with the R1 template)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
