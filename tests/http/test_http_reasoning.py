#!/usr/bin/env python3
"""R1 reasoning through the HTTP API for both kinds of chat template: R1's (the prompt ends
with "<think>\\n": the generation starts inside the reasoning) and R1-0528's shape (the prompt
ends at "<｜Assistant｜>" and the model writes <think> itself). The second checkpoint is the
tiny one with its template's generation prompt cut back to "<｜Assistant｜>", made at test time.
A logit_bias on the <think> token makes every generated token <think>, so the split is
known: with R1's template all of them are reasoning; with R1-0528's the first opens the
reasoning and the rest are reasoning; with reasoning disabled (an empty think block in the
prompt) all of them are content. Non-streamed and streamed, and usage's reasoning_tokens.

usage: test_http_reasoning.py BUILD_ROOT      (exit 77: the tiny model cannot be made)
"""
import json
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "serve"))
import serve_util  # noqa: E402
from test_http_api import KEY, Api  # noqa: E402

R1_GEN = "{{'<｜Assistant｜><think>\\n'}}"
R1_0528_GEN = "{{'<｜Assistant｜>'}}"
THINK = 128798  # "<think>" in R1's vocabulary


def r1_0528_shaped(model, workdir):
    """A copy of the tiny checkpoint (shards linked) whose generation prompt does not open
    <think>."""
    out = os.path.join(workdir, "tiny-0528")
    os.makedirs(out)
    for f in os.listdir(model):
        if f != "tokenizer_config.json" and not f.startswith("."):
            os.symlink(os.path.abspath(os.path.join(model, f)), os.path.join(out, f))
    with open(os.path.join(model, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    tmpl = cfg["chat_template"]
    if R1_GEN not in tmpl:
        serve_util.skip("the tiny model's chat template has no R1 generation prompt")
    cfg["chat_template"] = tmpl.replace(R1_GEN, R1_0528_GEN)
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False)
    return out


def grpc_split(c, srv, label, opened_by_prompt):
    """The same split through the gRPC API of the same server (skipped without grpcio)."""
    global STUBS
    if STUBS is None:
        try:
            STUBS = serve_util.load_stubs(tempfile.mkdtemp(prefix="dsr1-stubs-"))
            import grpc  # noqa: F401
        except SystemExit:
            STUBS = False
    if not STUBS:
        print(f"note: {label}: grpcio missing, gRPC split not checked")
        return
    import grpc
    pb, pb_grpc = STUBS[0], STUBS[1]
    api = pb_grpc.Dsr1Stub(grpc.insecure_channel(srv.target, options=()))
    req = pb.GenerateRequest(
        input=pb.Input(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user",
                                                                     content="Think first.")])),
        sampling=pb.SamplingParams(max_tokens=4, temperature=0, logit_bias={THINK: 100}))
    final = list(api.Generate(req, timeout=60, metadata=(("authorization", f"Bearer {KEY}"),)))[-1].final
    want = "<think>" * (4 if opened_by_prompt else 3)
    c.expect(final.reasoning_content == want and final.content == "",
             f"{label}: gRPC reasoning split", f"{final.reasoning_content!r} {final.content!r}")


STUBS = None


def run(c, dsr1, model, label, opened_by_prompt):
    srv = serve_util.Server([dsr1, "serve", "--model", model, "--host", "127.0.0.1", "--port",
                             "0", "--api-key", KEY, "--kv-tokens", "4096"])
    m = re.search(r"HTTP API on http://(\S+):(\d+)", "".join(srv.log))
    if not c.expect(m is not None, f"{label}: HTTP address printed"):
        srv.stop()
        return
    api = Api(int(m.group(2)), c)
    body = {"messages": [{"role": "user", "content": "Think first."}], "max_tokens": 4,
            "temperature": 0, "logit_bias": {str(THINK): 100}}
    s, r = api.post("/v1/chat/completions", body)
    if c.expect(s == 200, f"{label}: status", f"{s} {r}"):
        msg = r["choices"][0]["message"]
        thought = "<think>" * (4 if opened_by_prompt else 3)
        c.expect(msg.get("reasoning_content") == thought and msg["content"] == "",
                 f"{label}: reasoning split", str(msg))
        c.expect(r["usage"]["completion_tokens_details"]["reasoning_tokens"] == 4,
                 f"{label}: reasoning_tokens", str(r["usage"]))
    s, events = api.stream("/v1/chat/completions", {**body, "stream": True})
    deltas = [e["choices"][0]["delta"] for e in events if e != "[DONE]" and e.get("choices")]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    c.expect(s == 200 and reasoning == "<think>" * (4 if opened_by_prompt else 3) and content == "",
             f"{label}: streamed split", f"{reasoning!r} {content!r}")
    # reasoning disabled: an empty think block closes it in the prompt; all is content
    s, r = api.post("/v1/chat/completions", {**body, "reasoning": {"enabled": False}})
    if c.expect(s == 200, f"{label}: disabled: status", f"{s} {r}"):
        msg = r["choices"][0]["message"]
        c.expect("reasoning_content" not in msg and msg["content"] == "<think>" * 4 and
                 r["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0,
                 f"{label}: disabled: all content", str(r))
    # exclude: the reasoning is dropped but counted
    s, r = api.post("/v1/chat/completions", {**body, "reasoning": {"exclude": True}})
    c.expect(s == 200 and "reasoning_content" not in r["choices"][0]["message"] and
             r["usage"]["completion_tokens_details"]["reasoning_tokens"] == 4,
             f"{label}: exclude", str(r))
    grpc_split(c, srv, label, opened_by_prompt)
    rc = srv.stop()
    c.expect(rc == 0, f"{label}: server exits 0", str(rc))
    if c.failures:
        print(srv.tail())


def main():
    build = sys.argv[1]
    dsr1 = os.path.join(build, "tools", "dsr1")
    model = serve_util.tiny_model(dsr1, build)
    c = serve_util.Checks()
    with tempfile.TemporaryDirectory(prefix="dsr1-http-reasoning-") as work:
        run(c, dsr1, model, "R1 template", True)
        run(c, dsr1, r1_0528_shaped(model, work), "R1-0528 template", False)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
