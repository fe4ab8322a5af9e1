#!/usr/bin/env python3
"""The OpenAI-compatible HTTP API of `dsr1 serve` end to end, on the tiny checkpoint, with
Python's standard library only: every endpoint, the API key, response shapes (chat.completion,
chat.completion.chunk, text_completion, usage, errors), seeded reproduction (n choices equal
single requests with seed + i), streams against non-streamed results, logprobs, stop strings,
reasoning controls, every error status (400 naming the field, 401, 404, 413, 429), /metrics
(promtool when installed), a client that disconnects (its request aborted, no cache block
held after), a reader too slow for its stream (aborted with a clear error) and shutdown.

usage: test_http_api.py BUILD_ROOT      (exit 77: the tiny model cannot be made)
"""
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "serve"))
import openai_spec  # noqa: E402
import serve_util  # noqa: E402

KEY = "http-test-key"
MAX_BODY = 65536
STREAM_BYTES = 8192


SCHEMAS = {  # (path, streamed) -> OpenAI's schema of a successful answer
    ("/v1/chat/completions", False): "CreateChatCompletionResponse",
    ("/v1/chat/completions", True): "CreateChatCompletionStreamResponse",
    ("/v1/completions", False): "CreateCompletionResponse",
    ("/v1/completions", True): "CreateCompletionResponse",
    ("/v1/models", False): "ListModelsResponse",
}


class Api:
    def __init__(self, port, checks):
        self.port, self.c = port, checks
        self.validated = 0

    def spec(self, path, streamed, status, obj):
        """Checks a JSON answer against OpenAI's published schema."""
        if path.startswith("/v1/models/"):
            name = "Model"
        else:
            name = SCHEMAS.get((path, streamed))
        if status != 200 or (isinstance(obj, dict) and "error" in obj):
            name = "ErrorResponse"
        if not name or not openai_spec.available:
            return
        errs = openai_spec.errors(name, obj)
        if path == "/v1/completions" and streamed:
            # the spec gives streamed completions the non-streamed schema, but OpenAI's own
            # chunks (and every client) have finish_reason null until the last
            errs = [e for e in errs if not re.match(r"choices/\d+/finish_reason: None ", e)]
        self.validated += 1
        self.c.expect(not errs, f"OpenAI schema {name} ({path})", f"{errs[:3]} in {str(obj)[:300]}")

    def request(self, method, path, body=None, key=KEY, raw=None, timeout=120):
        """(status, headers dict, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        conn.close()
        if path.startswith("/v1/") and out[1].get("content-type") == "application/json":
            self.spec(path, False, out[0], json.loads(out[2]))
        return out

    def post(self, path, body, **kw):
        status, headers, data = self.request("POST", path, body, **kw)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, {"_raw": data}

    def chat(self, **body):
        body.setdefault("messages", [{"role": "user", "content": "Hello, who are you?"}])
        return self.post("/v1/chat/completions", body)

    def stream(self, path, body, key=KEY):
        """(status, list of decoded events; "[DONE]" as the string)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        r = conn.getresponse()
        if r.status != 200:
            data = r.read()
            conn.close()
            self.spec(path, True, r.status, json.loads(data))
            return r.status, [json.loads(data)]
        self.c.expect(r.getheader("Content-Type", "").startswith("text/event-stream"),
                      "stream: content type", r.getheader("Content-Type"))
        events = []
        for line in r.read().decode().split("\n"):
            if line.startswith("data: "):
                payload = line[6:]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
                if payload != "[DONE]":
                    self.spec(path, True, 200, events[-1])
        conn.close()
        return r.status, events

    def metrics(self):
        status, _, data = self.request("GET", "/metrics", key=None)
        values = {}
        for line in data.decode().splitlines():
            m = re.match(r'^([a-z_:]+)(\{[^}]*\})? (\S+)$', line)
            if m and "_bucket" not in m.group(1):
                values[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        return status, data.decode(), values

    def wait_idle(self, label, timeout=20):
        """Until nothing runs, waits or holds cache blocks; checks that it got there."""
        deadline = time.time() + timeout
        while True:
            _, _, v = self.metrics()
            run = [x for k, x in v.items() if k.startswith("vllm:num_requests_running{")]
            wait = [x for k, x in v.items() if k.startswith("vllm:num_requests_waiting{")]
            kv = [x for k, x in v.items() if k.startswith("vllm:kv_cache_usage_perc{")]
            state = (run[0], wait[0], kv[0]) if run and wait and kv else None
            if state == (0, 0, 0) or time.time() > deadline:
                break
            time.sleep(0.05)
        self.c.expect(state == (0, 0, 0), f"{label}: idle (running, waiting, kv usage)", str(state))
        return time.time() - (deadline - timeout)


def check_error(c, label, status, body, want_status, param=None, code=None):
    c.expect(status == want_status, f"{label}: status", f"{status} {body}, expected {want_status}")
    e = body.get("error") if isinstance(body, dict) else None
    ok = isinstance(e, dict) and set(e) == {"message", "type", "param", "code"} and \
        isinstance(e["message"], str) and e["message"] and isinstance(e["type"], str)
    c.expect(ok, f"{label}: error shape", str(body))
    if ok and param is not None:
        c.expect(e["param"] == param, f"{label}: param", f"{e['param']!r}, expected {param!r}")
    if ok and code is not None:
        c.expect(e["code"] == code, f"{label}: code", f"{e['code']!r}, expected {code!r}")


def check_usage(c, label, u, completion=None):
    ok = isinstance(u, dict) and all(isinstance(u.get(k), int) for k in
                                      ("prompt_tokens", "completion_tokens", "total_tokens"))
    c.expect(ok, f"{label}: usage fields", str(u))
    if not ok:
        return
    c.expect(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"],
             f"{label}: usage total", str(u))
    c.expect(isinstance(u.get("prompt_tokens_details", {}).get("cached_tokens"), int),
             f"{label}: cached_tokens", str(u))
    c.expect(isinstance(u.get("completion_tokens_details", {}).get("reasoning_tokens"), int),
             f"{label}: reasoning_tokens", str(u))
    if completion is not None:
        c.expect(u["completion_tokens"] == completion, f"{label}: completion_tokens",
                 f"{u['completion_tokens']}, expected {completion}")


def test_endpoints(api, c, model):
    s, h, body = api.request("GET", "/health", key=None)
    c.expect(s == 200 and json.loads(body) == {"status": "ok"}, "health without a key", f"{s} {body}")
    s, _, text = api.request("GET", "/metrics", key=None)
    c.expect(s == 200 and "vllm:num_requests_running" in text.decode(), "metrics without a key",
             str(s))
    s, _, body = api.request("GET", "/v1/models", key=None)
    check_error(c, "models without a key", s, json.loads(body), 401, code="invalid_api_key")
    s, _, body = api.request("GET", "/v1/models", key="wrong")
    check_error(c, "models with a wrong key", s, json.loads(body), 401)
    s, _, body = api.request("GET", "/v1/models")
    m = json.loads(body)
    c.expect(s == 200 and m.get("object") == "list" and len(m.get("data", [])) == 1 and
             m["data"][0].get("id") == model and m["data"][0].get("object") == "model" and
             isinstance(m["data"][0].get("created"), int), "models list", str(m))
    s, _, body = api.request("GET", f"/v1/models/{model}")
    c.expect(s == 200 and json.loads(body).get("id") == model, "model by id", f"{s} {body}")
    s, _, body = api.request("GET", "/v1/models/gpt-4")
    check_error(c, "unknown model by id", s, json.loads(body), 404, code="model_not_found")
    s, _, body = api.request("GET", "/v1/nothing")
    check_error(c, "unknown path", s, json.loads(body), 404)
    s, body = api.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]},
                       key=None)
    check_error(c, "chat without a key", s, body, 401)


def test_chat_shapes(api, c, model):
    s, r = api.chat(max_tokens=12, seed=5)
    c.expect(s == 200, "chat: status", f"{s} {r}")
    if s != 200:
        return
    c.expect(r.get("object") == "chat.completion" and r.get("id", "").startswith("chatcmpl-") and
             isinstance(r.get("created"), int) and r.get("model") == model, "chat: envelope", str(r))
    ch = r["choices"]
    c.expect(len(ch) == 1 and ch[0]["index"] == 0 and ch[0]["message"]["role"] == "assistant" and
             isinstance(ch[0]["message"]["content"], str) and ch[0]["logprobs"] is None and
             ch[0]["finish_reason"] in ("stop", "length"), "chat: choice", str(ch))
    check_usage(c, "chat", r.get("usage"))
    u = r["usage"]
    if ch[0]["finish_reason"] == "length":
        c.expect(u["completion_tokens"] == 12, "chat: length means max_tokens tokens", str(u))
    # R1's template opens <think>: a random model rarely closes it, so reasoning is produced
    msg = ch[0]["message"]
    c.expect("reasoning_content" in msg and u["completion_tokens_details"]["reasoning_tokens"] > 0,
             "chat: reasoning_content and reasoning_tokens", str(r))
    # max_completion_tokens is the same limit; unknown fields are ignored
    s, r2 = api.chat(max_completion_tokens=12, seed=5, some_future_field={"x": 1}, user="u1")
    c.expect(s == 200 and r2["choices"][0]["message"] == msg, "chat: max_completion_tokens, "
             "unknown fields ignored, seeded reproduction", f"{s} {r2}")
    # content as text parts, roles system/assistant/tool
    s, r3 = api.chat(max_tokens=4, seed=3, messages=[
        {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":2,\"b\":2}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    ])
    c.expect(s == 200 and r3["usage"]["completion_tokens"] >= 1, "chat: all roles, text parts",
             f"{s} {r3}")
    # a long prompt sent twice: the second finds its full blocks in the prefix cache
    long_msgs = [{"role": "system", "content": " ".join(f"rule {i}: be kind." for i in range(60))},
                 {"role": "user", "content": "Hi"}]
    s1, a = api.chat(max_tokens=2, messages=long_msgs)
    s2, b = api.chat(max_tokens=2, messages=long_msgs)
    cached = b["usage"]["prompt_tokens_details"]["cached_tokens"] if s2 == 200 else -1
    c.expect(s1 == 200 and a["usage"]["prompt_tokens"] > 64 and cached >= 32,
             "chat: cached_tokens of a repeated long prompt", f"{a.get('usage')} {b.get('usage')}")


def test_seeds_and_n(api, c):
    body = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 10,
            "temperature": 1.0, "seed": 100}
    s, many = api.post("/v1/chat/completions", {**body, "n": 3})
    c.expect(s == 200 and len(many.get("choices", [])) == 3, "n=3: three choices", f"{s} {many}")
    if s != 200:
        return
    total = 0
    for i in range(3):
        s, one = api.post("/v1/chat/completions", {**body, "seed": 100 + i})
        c.expect(s == 200 and one["choices"][0]["message"] == many["choices"][i]["message"],
                 f"n=3: choice {i} equals a single request with seed+{i}",
                 f"{one['choices'][0]['message']} vs {many['choices'][i]['message']}")
        total += one["usage"]["completion_tokens"] if s == 200 else 0
    c.expect(many["choices"][0]["message"] != many["choices"][1]["message"],
             "n=3: different seeds differ", str(many["choices"]))
    c.expect(many["usage"]["completion_tokens"] == total, "n=3: usage counts every choice",
             f"{many['usage']} vs {total}")
    # n choices of a long prompt compute it once: the others find its blocks cached
    prompt = " ".join(f"fact {i}: the sky was blue on day {i}." for i in range(8))
    hits = lambda: sum(x for k, x in api.metrics()[2].items()
                       if k.startswith("vllm:prefix_cache_hits_total{"))
    before = hits()
    s, r = api.post("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}],
                                             "max_tokens": 4, "n": 4, "seed": 1})
    gained = hits() - before
    full = r["usage"]["prompt_tokens"] // 32 * 32 if s == 200 else 0
    c.expect(s == 200 and full >= 64 and gained >= 3 * full,
             "n=4: choices 1-3 reuse the prompt's cached blocks",
             f"{s} prompt {r.get('usage')}, prefix cache hits +{gained}, want >= {3 * full}")


def test_stream(api, c):
    body = {"messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 16,
            "temperature": 0.8, "seed": 42}
    s, full = api.post("/v1/chat/completions", body)
    s2, events = api.stream("/v1/chat/completions",
                            {**body, "stream": True, "stream_options": {"include_usage": True}})
    c.expect(s == 200 and s2 == 200 and events and events[-1] == "[DONE]", "stream: ends with [DONE]",
             str(events[-2:]))
    if s != 200 or s2 != 200 or not events:
        return
    chunks = [e for e in events if e != "[DONE]"]
    c.expect(all(e.get("object") == "chat.completion.chunk" and e.get("id") == chunks[0]["id"]
                 for e in chunks), "stream: chunk envelope and one id", str(chunks[:2]))
    c.expect(chunks[0]["choices"][0]["delta"].get("role") == "assistant", "stream: role first",
             str(chunks[0]))
    reasoning = "".join(e["choices"][0]["delta"].get("reasoning_content", "")
                        for e in chunks if e["choices"])
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in chunks if e["choices"])
    msg = full["choices"][0]["message"]
    c.expect(reasoning == msg.get("reasoning_content", "") and content == msg["content"],
             "stream: deltas add up to the non-streamed message", f"{reasoning!r}/{content!r} vs {msg}")
    fin = [e for e in chunks if e["choices"] and e["choices"][0]["finish_reason"]]
    c.expect(len(fin) == 1 and fin[0]["choices"][0]["finish_reason"] ==
             full["choices"][0]["finish_reason"], "stream: one finish_reason", str(fin))
    last = chunks[-1]
    c.expect(last["choices"] == [] and last["usage"] == full["usage"] and
             all(e.get("usage") is None for e in chunks[:-1]), "stream: include_usage",
             f"{last} vs {full['usage']}")
    # without include_usage, no usage key at all
    s3, ev3 = api.stream("/v1/chat/completions", {**body, "stream": True})
    c.expect(s3 == 200 and all("usage" not in e for e in ev3 if e != "[DONE]"),
             "stream: no usage without include_usage", str(ev3[:1]))
    # completions, streamed vs not
    cb = {"prompt": "Once upon a time", "max_tokens": 12, "seed": 9, "temperature": 0.9}
    s, ct = api.post("/v1/completions", cb)
    s2, cev = api.stream("/v1/completions", {**cb, "stream": True})
    text = "".join(e["choices"][0]["text"] for e in cev if e != "[DONE]" and e["choices"])
    c.expect(s == 200 and ct.get("object") == "text_completion" and
             ct["choices"][0]["text"] == text and ct["id"].startswith("cmpl-"),
             "completions: stream adds up, shape", f"{ct} vs {text!r}")
    check_usage(c, "completions", ct.get("usage"))


def test_logprobs(api, c):
    s, r = api.chat(max_tokens=6, seed=1, logprobs=True, top_logprobs=3)
    c.expect(s == 200, "logprobs: status", f"{s} {r}")
    if s != 200:
        return
    lp = r["choices"][0]["logprobs"]
    content = lp.get("content") if isinstance(lp, dict) else None
    c.expect(isinstance(content, list) and len(content) == r["usage"]["completion_tokens"],
             "logprobs: one entry per token", str(lp)[:300])
    for e in content or []:
        ok = isinstance(e["token"], str) and e["logprob"] <= 0 and isinstance(e["bytes"], list) \
            and len(e["top_logprobs"]) == 3 and \
            all(e["top_logprobs"][i]["logprob"] >= e["top_logprobs"][i + 1]["logprob"] for i in range(2)) \
            and e["logprob"] <= e["top_logprobs"][0]["logprob"] + 1e-6
        c.expect(ok, "logprobs: entry", str(e))
        if not ok:
            break
    s, r = api.post("/v1/completions", {"prompt": "Hi", "max_tokens": 5, "logprobs": 2, "seed": 2})
    lp = r["choices"][0]["logprobs"] if s == 200 else None
    c.expect(isinstance(lp, dict) and len(lp["tokens"]) == 5 and len(lp["token_logprobs"]) == 5 and
             all(len(t) <= 2 for t in lp["top_logprobs"]) and
             "".join(lp["tokens"]) == r["choices"][0]["text"], "completions: logprobs", str(r)[:300])


def test_stop_and_reasoning(api, c):
    base = {"messages": [{"role": "user", "content": "Write something."}], "max_tokens": 24,
            "temperature": 0, "reasoning": {"enabled": False}}
    s, r = api.post("/v1/chat/completions", base)
    c.expect(s == 200, "reasoning disabled: status", f"{s} {r}")
    if s != 200:
        return
    msg = r["choices"][0]["message"]
    c.expect("reasoning_content" not in msg and
             r["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0 and msg["content"],
             "reasoning disabled: an answer without reasoning", str(r))
    s, on = api.post("/v1/chat/completions", {**base, "reasoning": {"enabled": True}})
    c.expect(s == 200 and on["usage"]["prompt_tokens"] < r["usage"]["prompt_tokens"],
             "reasoning disabled: the prompt gains an empty think block",
             f"{on['usage']} vs {r['usage']}")
    s, ex = api.post("/v1/chat/completions", {**base, "reasoning": {"exclude": True}})
    c.expect(s == 200 and "reasoning_content" not in ex["choices"][0]["message"] and
             ex["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0,
             "reasoning exclude: dropped from the response, counted in usage", str(ex))
    s, eff = api.post("/v1/chat/completions", {**base, "reasoning": None, "reasoning_effort": "low"})
    c.expect(s == 200, "reasoning_effort accepted", f"{s} {eff}")
    # a thinking budget: the reasoning is closed after 3 tokens, the answer follows
    s, b = api.post("/v1/chat/completions", {**base, "max_tokens": 12, "ignore_eos": True,
                                              "reasoning": {"max_tokens": 3}})
    if c.expect(s == 200, "reasoning.max_tokens: status", f"{s} {b}"):
        details = b["usage"]["completion_tokens_details"]
        c.expect(details["reasoning_tokens"] in (3, 4) and b["usage"]["completion_tokens"] == 12
                 and b["choices"][0]["message"]["content"],
                 "reasoning.max_tokens: 3 reasoning tokens, then the answer", str(b))
    # effort low: 20% of max_tokens
    s, b = api.post("/v1/chat/completions", {**base, "max_tokens": 20, "ignore_eos": True,
                                              "reasoning": {"effort": "low"}})
    c.expect(s == 200 and b["usage"]["completion_tokens_details"]["reasoning_tokens"] in (4, 5),
             "reasoning effort low: a budget of 20% of max_tokens", str(b))
    s, b = api.post("/v1/chat/completions", {**base, "reasoning": {"max_tokens": 0}})
    c.expect(s == 200 and b["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0,
             "reasoning.max_tokens 0: no reasoning", str(b))
    # a stop string from the middle of the greedy answer cuts it there
    text = msg["content"]
    if len(text) >= 6:
        stop = text[len(text) // 2:len(text) // 2 + 3]
        s, st = api.post("/v1/chat/completions", {**base, "stop": [stop, "\u2603never"]})
        want = text[:text.find(stop)]
        c.expect(s == 200 and st["choices"][0]["message"]["content"] == want and
                 st["choices"][0]["finish_reason"] == "stop", "stop string",
                 f"{st['choices'][0]} want {want!r}")


FORMAT_SCHEMA = {"type": "object",
                 "properties": {"city": {"type": "string", "maxLength": 10},
                                "temp": {"type": "integer", "minimum": -50, "maximum": 50},
                                "sunny": {"type": "boolean"}},
                 "required": ["city", "temp", "sunny"]}


def test_response_format(api, c):
    """response_format is enforced by the grammar engine after the reasoning: a random model
    at temperature 1.5 writes valid JSON for the schema, in every choice, streamed or not."""
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    base = {"messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 100,
            "temperature": 1.5, "reasoning": {"enabled": False}}
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "strict": True,
                                                  "schema": FORMAT_SCHEMA}}
    s, r = api.post("/v1/chat/completions", {**base, "n": 3, "seed": 5, "response_format": fmt})
    c.expect(s == 200 and len(r.get("choices", [])) == 3, "json_schema: three choices", f"{s} {r}")
    for ch in r.get("choices", []):
        text = ch["message"]["content"]
        try:
            value = json.loads(text)
            if jsonschema:
                jsonschema.validate(value, FORMAT_SCHEMA)
            ok = sorted(value) == ["city", "sunny", "temp"]  # strict: nothing else
        except Exception:  # noqa: BLE001 - the failure is the finding
            ok = False
        c.expect(ok and ch["finish_reason"] == "stop",
                 f"json_schema choice {ch['index']}: valid for the schema", repr(text))
    _, chunks = api.stream("/v1/chat/completions", {**base, "seed": 5, "stream": True,
                                                    "response_format": fmt})
    streamed = "".join((ch["choices"][0]["delta"].get("content") or "")
                       for ch in chunks if isinstance(ch, dict) and ch.get("choices"))
    first = r["choices"][0]["message"]["content"] if s == 200 else None
    c.expect(streamed == first, "json_schema: the stream gives the same text", f"{streamed!r} vs {first!r}")
    for seed in range(3):
        s, o = api.post("/v1/chat/completions", {**base, "seed": seed, "max_tokens": 60,
                                                  "response_format": {"type": "json_object"}})
        text = o["choices"][0]["message"]["content"] if s == 200 else ""
        try:
            ok = isinstance(json.loads(text), dict)
        except ValueError:
            ok = o["choices"][0]["finish_reason"] == "length" if s == 200 else False
        c.expect(ok, f"json_object seed {seed}: an object (or cut by max_tokens)", repr(text))
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}
    s, e = api.post("/v1/chat/completions", {**base, "response_format": bad})
    check_error(c, "json_schema with an unsupported keyword", s, e, 400, param="response_format")
    c.expect("/properties/a" in json.dumps(e), "the error names the keyword's place", str(e))


def test_errors(api, c):
    P = "/v1/chat/completions"
    msgs = [{"role": "user", "content": "x"}]
    cases = [
        ("temperature not a number", {"messages": msgs, "temperature": "hot"}, "temperature"),
        ("temperature out of range", {"messages": msgs, "temperature": 7}, "temperature"),
        ("messages missing", {}, "messages"),
        ("messages not an array", {"messages": "hi"}, "messages"),
        ("bad role", {"messages": [{"role": "wizard", "content": "x"}]}, "messages.role"),
        ("content not text", {"messages": [{"role": "user", "content": 5}]}, "messages.content"),
        ("image part", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages.content"),
        ("max_tokens 0", {"messages": msgs, "max_tokens": 0}, "max_tokens"),
        ("max_tokens beyond the context", {"messages": msgs, "max_tokens": 10 ** 6}, "max_tokens"),
        ("n too large", {"messages": msgs, "n": 1000}, "n"),
        ("stream not a bool", {"messages": msgs, "stream": "yes"}, "stream"),
        ("stop not a string", {"messages": msgs, "stop": 3}, "stop"),
        ("too many stops", {"messages": msgs, "stop": ["a"] * 20}, "stop"),
        ("logit_bias key", {"messages": msgs, "logit_bias": {"abc": 1}}, "logit_bias"),
        ("logit_bias id beyond the vocabulary", {"messages": msgs, "logit_bias": {"99999999": 1}},
         "logit_bias"),
        ("top_logprobs without logprobs", {"messages": msgs, "top_logprobs": 2}, "top_logprobs"),
        ("seed not an integer", {"messages": msgs, "seed": "x"}, "seed"),
        ("tools not an array", {"messages": msgs, "tools": {}}, "tools"),
        ("tool_choice names an unknown function", {"messages": msgs, "tools": [
            {"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
        ("response_format type", {"messages": msgs, "response_format": {"type": "xml"}},
         "response_format"),
        ("reasoning effort", {"messages": msgs, "reasoning": {"effort": "max"}}, "reasoning.effort"),
    ]
    for label, body, param in cases:
        s, r = api.post(P, body)
        check_error(c, label, s, r, 400, param=param)
    s, _, raw = api.request("POST", P, raw=b"{not json")
    check_error(c, "malformed JSON", s, json.loads(raw), 400)
    s, r = api.post(P, {"messages": msgs, "model": "gpt-4"})
    check_error(c, "unknown model", s, r, 404, param="model", code="model_not_found")
    s, _, raw = api.request("POST", P, raw=json.dumps({"messages": [
        {"role": "user", "content": "x" * (MAX_BODY + 10)}]}).encode())
    check_error(c, "body too large", s, json.loads(raw), 413)
    s, r = api.post("/v1/completions", {"prompt": ""})
    check_error(c, "completions: empty prompt", s, r, 400, param="prompt")
    s, r = api.post("/v1/completions", {"prompt": [5, -1]})
    check_error(c, "completions: negative id", s, r, 400, param="prompt")
    # tools, tool_choice, response_format that validate are accepted
    s, r = api.post(P, {"messages": msgs, "max_tokens": 2, "tools": [
        {"type": "function", "function": {"name": "get_weather", "description": "weather",
                                          "parameters": {"type": "object"}}}],
        "tool_choice": "auto", "response_format": {"type": "json_object"}})
    c.expect(s == 200, "tools and response_format accepted", f"{s} {r}")
    # where the tools are described: our prompt (builtin), or nowhere (none)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                               "parameters": {"type": "object"}}}]
    plain = {"messages": msgs, "max_tokens": 1}
    sizes = {}
    for mode in ("builtin", "none", "auto"):
        s, r = api.post(P, {**plain, "tools": tools, "tool_prompt": mode})
        sizes[mode] = r["usage"]["prompt_tokens"] if s == 200 else -1
    s, r = api.post(P, plain)
    sizes["no tools"] = r["usage"]["prompt_tokens"] if s == 200 else -1
    s, r = api.post(P, {**plain, "tools": tools, "tool_choice": "none"})
    sizes["tool_choice none"] = r["usage"]["prompt_tokens"] if s == 200 else -1
    c.expect(sizes["builtin"] > sizes["no tools"] + 50 and sizes["none"] == sizes["no tools"] and
             sizes["tool_choice none"] == sizes["no tools"] and
             sizes["auto"] == sizes["builtin"],  # R1's template does not use `tools`
             "tool prompt: builtin adds it, none and tool_choice none do not", str(sizes))
    s, r = api.post(P, {**plain, "tools": tools, "tool_prompt": "sometimes"})
    check_error(c, "tool_prompt value", s, r, 400, param="tool_prompt")


def slow_stream(port, body, pause):
    """Sends a streamed request, reads nothing for `pause` seconds, then everything."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Authorization: Bearer " + KEY.encode() +
              b"\r\nContent-Type: application/json\r\nContent-Length: " +
              str(len(data)).encode() + b"\r\n\r\n" + data)
    time.sleep(pause)
    s.settimeout(60)
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
    s.close()
    return out.decode(errors="replace")


def test_disconnect_and_slow(api, c):
    long_body = {"messages": [{"role": "user", "content": "Go on forever."}], "max_tokens": 3000,
                 "ignore_eos": True}
    # a streamed request whose client hangs up after the first bytes
    s = socket.create_connection(("127.0.0.1", api.port))
    data = json.dumps({**long_body, "stream": True}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              KEY.encode() + b"\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    first = s.recv(4096)
    c.expect(b"200 OK" in first, "disconnect: the stream started", first[:100])
    s.close()
    took = api.wait_idle("streamed request of a client that hung up")
    c.expect(took < 5, "disconnect: aborted quickly", f"{took:.2f} s")
    # a non-streamed one (the connection is suspended while it runs)
    s = socket.create_connection(("127.0.0.1", api.port))
    data = json.dumps(long_body).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              KEY.encode() + b"\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    time.sleep(0.3)
    _, _, v = api.metrics()
    running = [x for k, x in v.items() if k.startswith("vllm:num_requests_running{")]
    c.expect(running and running[0] >= 1, "disconnect: the request runs", str(running))
    s.close()
    took = api.wait_idle("non-streamed request of a client that hung up")
    c.expect(took < 5, "disconnect (non-streamed): aborted quickly", f"{took:.2f} s")
    # a reader too slow for its stream: aborted, told why; meanwhile others are served
    got = []
    t = threading.Thread(target=lambda: got.append(slow_stream(
        api.port, {**long_body, "stream": True, "n": 4, "logprobs": True, "top_logprobs": 20}, 3.0)))
    t.start()
    time.sleep(0.3)
    t0 = time.time()
    s2, r2 = api.chat(max_tokens=16)
    took = time.time() - t0
    c.expect(s2 == 200 and r2["usage"]["completion_tokens"] == 16 and took < 2.5,
             "slow reader: other requests are served meanwhile", f"{s2} {took:.2f} s")
    t.join(90)
    out = got[0] if got else ""
    c.expect("too slowly" in out and "[DONE]" in out, "slow reader: aborted with a clear reason",
             out[-300:])
    api.wait_idle("after the slow reader")


def test_queue_full(api, c):
    """More long requests than running + queued slots: some are refused with 429."""
    results = []
    body = {"messages": [{"role": "user", "content": "Long."}], "max_tokens": 400,
            "ignore_eos": True}

    def one():
        results.append(api.post("/v1/chat/completions", body))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = [r for s, r in results if s == 429]
    ok = [r for s, r in results if s == 200]
    c.expect(busy and ok and len(busy) + len(ok) == 10, "queue full: 429s and 200s",
             str([s for s, _ in results]))
    if busy:
        check_error(c, "queue full", 429, busy[0], 429, code="queue_full")
    api.wait_idle("after the queue test")


def test_metrics(api, c):
    s, text, v = api.metrics()
    c.expect(s == 200, "metrics: status", str(s))
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_sum",
                 "vllm:e2e_request_latency_seconds_count", "vllm:request_queue_time_seconds_count",
                 "vllm:num_preemptions_total"):
        c.expect(name in text, f"metrics: {name}")
    gen = [x for k, x in v.items() if k.startswith("vllm:generation_tokens_total{")]
    c.expect(gen and gen[0] > 100, "metrics: generated tokens counted", str(gen))
    hits = [x for k, x in v.items() if k.startswith("vllm:prefix_cache_hits_total{")]
    c.expect(hits and hits[0] > 0, "metrics: prefix cache hits (repeated prompts)", str(hits))
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        # vLLM's names have colons, which promtool's linter reserves for recording rules
        problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                    if ln.strip() and "should not contain ':'" not in ln]
        c.expect(r.returncode in (0, 3) and not problems, "promtool check metrics",
                 "\n".join(problems[:10]))
    else:
        print("note: promtool not installed (Debian package prometheus): format not linted")


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    dsr1 = os.path.join(build, "tools", "dsr1")
    model = serve_util.tiny_model(dsr1, build)
    srv = serve_util.Server([dsr1, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
                             "--api-key", KEY, "--kv-tokens", "16384", "--max-running", "4",
                             "--max-queued", "4", "--http-max-body-bytes", str(MAX_BODY),
                             "--http-stream-bytes", str(STREAM_BYTES)])
    c = serve_util.Checks()
    m = re.search(r"HTTP API on http://(\S+):(\d+)", "".join(srv.log))
    if not c.expect(m is not None, "the HTTP API's address is printed", srv.tail()):
        return srv.finish(c)
    api = Api(int(m.group(2)), c)
    name = os.path.basename(model)
    for t in (test_endpoints, test_chat_shapes):
        t(api, c, name)
    for t in (test_seeds_and_n, test_stream, test_logprobs, test_stop_and_reasoning,
              test_response_format, test_errors,
              test_disconnect_and_slow, test_queue_full, test_metrics):
        t(api, c)
    api.wait_idle("at the end")
    if openai_spec.available:
        c.expect(api.validated > 100, "responses checked against OpenAI's schemas",
                 str(api.validated))
    else:
        print("note: python3-jsonschema missing: responses not checked against OpenAI's schemas")
    # shutdown while a stream runs: it ends with an error event and [DONE], exit status 0
    got = []
    body = {"messages": [{"role": "user", "content": "Long."}], "max_tokens": 3000,
            "ignore_eos": True, "stream": True}
    t = threading.Thread(target=lambda: got.append(slow_stream(api.port, body, 0.0)))
    t.start()
    time.sleep(0.5)
    rc = srv.finish(c)
    t.join(30)
    out = got[0] if got else ""
    c.expect("shutting down" in out and "[DONE]" in out, "shutdown: the stream ends cleanly",
             out[-300:])
    return 1 if c.failures else rc


if __name__ == "__main__":
    sys.exit(main())
