#!/usr/bin/env python3
"""Tool calls enforced by the grammar engine, end to end on `dsr1 serve` with the tiny
(random) checkpoint at temperature 1.5: with tool_choice "required" or a named function every
choice ends with finish_reason "tool_calls", and every call names a declared function (the
named one) with arguments that parse as JSON and validate against that function's parameters
(python3-jsonschema), non-streamed and streamed (the argument fragments joined); with
parallel_tool_calls false exactly one call; with "auto" and a logit_bias that makes the model
draw <｜tool▁calls▁begin｜>, the calls after it are well-formed too; a parameters schema the
engine cannot enforce is a 400 naming `tools`, the function and the keyword's JSON pointer.

usage: test_http_tool_grammar.py BUILD_ROOT      (exit 77: the tiny model cannot be made)
"""
import http.client
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "serve"))
import serve_util  # noqa: E402

try:
    import jsonschema
except ImportError:
    jsonschema = None

CALLS_BEGIN = "<\uff5ctool\u2581calls\u2581begin\uff5c>"

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
SUM = {  # not strict, but closed: a random model must finish within max_tokens
    "type": "object",
    "properties": {"numbers": {"type": "array", "maxItems": 4,
                               "items": {"type": "integer", "minimum": -999, "maximum": 999}},
                   "label": {"type": "string", "maxLength": 8}},
    "required": ["numbers"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather",
                                       "parameters": WEATHER, "strict": True}},
    {"type": "function", "function": {"name": "sum", "description": "Adds numbers",
                                      "parameters": SUM}},
    {"type": "function", "function": {"name": "now", "description": "The time"}},
]
# no parameters: an empty parameter list, the arguments are {}
PARAMS = {"get_weather": WEATHER, "sum": SUM,
          "now": {"type": "object", "additionalProperties": False}}


def compact(text):
    """Whether JSON text has no whitespace outside its strings."""
    in_str = esc = False
    for ch in text:
        if in_str:
            esc, in_str = (False, True) if esc else (ch == "\\", ch != '"')
        elif ch == '"':
            in_str = True
        elif ch in " \t\r\n":
            return False
    return True


def post(port, body, stream=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read().decode()
    conn.close()
    if not stream or r.status != 200:
        return r.status, json.loads(data)
    return r.status, [json.loads(line[6:]) for line in data.split("\n")
                      if line.startswith("data: ") and line[6:] != "[DONE]"]


def valid_call(name, args, only=None):
    """None when well-formed, else what is wrong."""
    if name not in PARAMS or (only and name != only):
        return f"function {name!r}"
    try:
        value = json.loads(args)
    except ValueError as e:
        return f"arguments {args!r}: {e}"
    if not compact(args):
        return f"arguments {args!r} are not compact JSON"
    if jsonschema:
        try:
            jsonschema.validate(value, PARAMS[name])
        except jsonschema.ValidationError as e:
            return f"arguments {args!r}: {e.message}"
    return None


def check_calls(c, label, calls, only=None, one=False):
    c.expect(calls and (not one or len(calls) == 1), f"{label}: {'one call' if one else 'calls'}",
             str(calls))
    for k, call in enumerate(calls or []):
        fn = call.get("function", {})
        bad = valid_call(fn.get("name"), fn.get("arguments", ""), only)
        c.expect(bad is None and call.get("type") == "function" and call.get("id"),
                 f"{label}: call {k} well-formed", bad or str(call))


def streamed_calls(chunks):
    calls, finish = {}, None
    for ch in chunks:
        for choice in ch.get("choices", []):
            finish = choice.get("finish_reason") or finish
            for d in choice.get("delta", {}).get("tool_calls") or []:
                e = calls.setdefault(d["index"], {"type": "function", "function":
                                                  {"name": None, "arguments": ""}})
                e["id"] = d.get("id") or e.get("id")
                fn = d.get("function", {})
                if fn.get("name"):
                    e["function"]["name"] = fn["name"]
                e["function"]["arguments"] += fn.get("arguments") or ""
    return [calls[k] for k in sorted(calls)], finish


def test_required_and_named(port, c):
    base = {"messages": [{"role": "user", "content": "Weather in Paris, and 2+2?"}],
            "tools": TOOLS, "temperature": 1.5, "max_tokens": 400,
            "reasoning": {"enabled": False}}
    cases = [("required", "required", None, False),
             ("required, parallel false", "required", None, True),
             ("named get_weather", {"type": "function", "function": {"name": "get_weather"}},
              "get_weather", True),
             ("named sum", {"type": "function", "function": {"name": "sum"}}, "sum", True)]
    for label, choice, only, one in cases:
        body = {**base, "tool_choice": choice, "n": 3, "seed": 11}
        if one and only is None:
            body["parallel_tool_calls"] = False
        s, r = post(port, body)
        if not c.expect(s == 200 and len(r.get("choices", [])) == 3, f"{label}: 200, 3 choices",
                        f"{s} {str(r)[:300]}"):
            continue
        for ch in r["choices"]:
            msg = ch["message"]
            c.expect(ch["finish_reason"] == "tool_calls", f"{label} #{ch['index']}: finish",
                     f"{ch['finish_reason']} {str(msg)[:300]}")
            check_calls(c, f"{label} #{ch['index']}", msg.get("tool_calls"), only, one)
        s, chunks = post(port, {**body, "n": 1, "stream": True}, stream=True)
        calls, finish = streamed_calls(chunks if s == 200 else [])
        c.expect(s == 200 and finish == "tool_calls", f"{label} streamed: finish", str(finish))
        check_calls(c, f"{label} streamed", calls, only, one)
        first = r["choices"][0]["message"].get("tool_calls") or []
        c.expect([x["function"] for x in calls] == [x["function"] for x in first],
                 f"{label}: the stream gives the same calls (seed)", f"{calls} vs {first}")
    # with reasoning on, the grammar applies after </think>
    s, r = post(port, {**base, "tool_choice": "required", "seed": 3, "max_tokens": 300,
                       "reasoning": {"max_tokens": 20}})
    ok = s == 200 and r["choices"][0]["finish_reason"] == "tool_calls"
    c.expect(ok, "required after reasoning: finish tool_calls", str(r)[:300])
    if ok:
        check_calls(c, "required after reasoning", r["choices"][0]["message"]["tool_calls"])


def test_auto(port, c, calls_begin_id):
    """A strong bias on <｜tool▁calls▁begin｜> makes the random model open calls: what
    follows is well-formed whatever the model would have drawn."""
    base = {"messages": [{"role": "user", "content": "Weather?"}], "tools": TOOLS,
            "tool_choice": "auto", "temperature": 1.5, "max_tokens": 400,
            "reasoning": {"enabled": False}, "logit_bias": {str(calls_begin_id): 100}}
    for seed in range(3):
        s, r = post(port, {**base, "seed": seed})
        if not c.expect(s == 200, f"auto seed {seed}: 200", str(r)[:300]):
            continue
        ch = r["choices"][0]
        c.expect(ch["finish_reason"] == "tool_calls", f"auto seed {seed}: finish tool_calls",
                 f"{ch['finish_reason']} {str(ch['message'])[:300]}")
        check_calls(c, f"auto seed {seed}", ch["message"].get("tool_calls"))
    s, chunks = post(port, {**base, "seed": 1, "stream": True}, stream=True)
    calls, finish = streamed_calls(chunks if s == 200 else [])
    c.expect(finish == "tool_calls", "auto streamed: finish", str(finish))
    check_calls(c, "auto streamed", calls)


def test_errors(port, c):
    bad = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}]
    for choice in ("required", "auto"):
        s, e = post(port, {"messages": [{"role": "user", "content": "x"}], "tools": bad,
                           "tool_choice": choice})
        err = e.get("error", {}) if isinstance(e, dict) else {}
        c.expect(s == 400 and err.get("param") == "tools", f"unsupported keyword ({choice}): 400 "
                 "tools", f"{s} {e}")
        msg = err.get("message", "")
        c.expect("'f'" in msg and "/properties/a" in msg and "not" in msg,
                 f"unsupported keyword ({choice}): names the function and the pointer", msg)
    # none: no grammar, the schema is not even looked at
    s, r = post(port, {"messages": [{"role": "user", "content": "x"}], "tools": bad,
                       "tool_choice": "none", "max_tokens": 5})
    c.expect(s == 200, "tool_choice none: no grammar", f"{s} {str(r)[:200]}")


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    dsr1 = os.path.join(build, "tools", "dsr1")
    model = serve_util.tiny_model(dsr1, build)
    if not jsonschema:
        print("note: python3-jsonschema missing: arguments only parsed, not validated")
    srv = serve_util.Server([dsr1, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
                             "--kv-tokens", "16384", "--max-running", "8"])
    c = serve_util.Checks()
    m = re.search(r"HTTP API on http://(\S+):(\d+)", "".join(srv.log))
    if not c.expect(m is not None, "the HTTP API's address is printed", srv.tail()):
        return srv.finish(c)
    port = int(m.group(2))
    tok = json.load(open(os.path.join(model, "tokenizer.json"), encoding="utf-8"))
    ids = [a["id"] for a in tok.get("added_tokens", []) if a["content"] == CALLS_BEGIN]
    if not c.expect(ids, "the tokenizer has <｜tool▁calls▁begin｜>"):
        return srv.finish(c)
    test_required_and_named(port, c)
    test_auto(port, c, ids[0])
    test_errors(port, c)
    return srv.finish(c)


if __name__ == "__main__":
    sys.exit(main())
