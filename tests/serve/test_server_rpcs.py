#!/usr/bin/env python3
"""Every RPC of `dsr1 serve` end to end, on the tiny checkpoint, through grpcio stubs made
from proto/*.proto at test time: health (Check, Watch until shutdown), the API key, model
and server info, Generate (streamed deltas against the final message, greedy and seeded
determinism, chat rendering and special-token text in contents, logprobs, stop ids, abort,
client cancel, deadline, queue full), every documented error code, batches (idempotent
submit, streaming results, progress, batch vs Generate equality, cancel, abort of a
pending item, list order; UploadBatch, from_seq, paging, completion_window; priority and
max_running round trips) and the graceful shutdown (running requests get a final ABORT,
exit status 0).

usage: test_server_rpcs.py BUILD_ROOT     (exit 77: grpcio, protoc or the model missing)
Run with /usr/bin/python3 (Debian's python3-grpcio).
"""
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

KEY = "rpc-test-key"
CONTEXT = 1024
MAX_ITEMS = 8
MAX_MSG = 65536


class T:
    def __init__(self, target, dsr1, model):
        import grpc
        self.grpc = grpc
        self.pb, pb_grpc, self.hpb, hpb_grpc = serve_util.load_stubs(WORK.name)
        self.chan = grpc.insecure_channel(target)
        self.api = pb_grpc.Dsr1Stub(self.chan)
        self.health = hpb_grpc.HealthStub(self.chan)
        self.md = (("authorization", f"Bearer {KEY}"),)
        self.dsr1, self.model, self.target = dsr1, model, target
        self.c = serve_util.Checks()

    def call(self, name, req, **kw):
        return getattr(self.api, name)(req, metadata=self.md, **kw)

    def error(self, name, req, **kw):
        """(code name, details) of a call expected to fail; ("OK", "") when it did not."""
        try:
            r = self.call(name, req, **kw)
            if name in ("Generate", "StreamBatchResults"):
                list(r)
            return "OK", ""
        except self.grpc.RpcError as e:
            return e.code().name, e.details()

    def expect_error(self, label, code, name, req, words=(), **kw):
        got, details = self.error(name, req, **kw)
        self.c.expect(got == code, f"{label}: status", f"{got} ({details}), expected {code}")
        for w in words:
            self.c.expect(w in details, f"{label}: message names '{w}'", details)

    def sampling(self, **kw):
        return self.pb.SamplingParams(**kw)

    def gen(self, text=None, ids=None, chat=None, rid="", **samp):
        pb = self.pb
        if text is not None:
            inp = pb.Input(text=text)
        elif ids is not None:
            inp = pb.Input(token_ids=pb.TokenIds(ids=ids))
        else:
            inp = pb.Input(chat=pb.ChatMessages(
                messages=[pb.ChatMessage(role=r, content=t) for r, t in chat]))
        return pb.GenerateRequest(request_id=rid, input=inp, sampling=self.sampling(**samp))

    def run(self, req, **kw):
        """(deltas, final) of a Generate stream."""
        deltas, final = [], None
        for r in self.call("Generate", req, **kw):
            if r.HasField("delta"):
                deltas.append(r.delta)
            else:
                final = r.final
        return deltas, final

    def server_info(self):
        return self.call("GetServerInfo", self.pb.GetServerInfoRequest())

    def wait_idle(self, label, secs=5):
        t = time.time() + secs
        while time.time() < t:
            info = self.server_info()
            if info.running == 0 and info.queued == 0:
                return self.c.expect(True, label)
            time.sleep(0.05)
        info = self.server_info()
        self.c.expect(False, label, f"running {info.running}, queued {info.queued}")


def check_health_and_auth(t):
    hpb = t.hpb
    r = t.health.Check(hpb.HealthCheckRequest())  # no key: health is exempt
    t.c.expect(r.status == hpb.HealthCheckResponse.SERVING, "health: SERVING", str(r))
    r = t.health.Check(hpb.HealthCheckRequest(service="dsr1.v1.Dsr1"))
    t.c.expect(r.status == hpb.HealthCheckResponse.SERVING, "health dsr1.v1.Dsr1: SERVING")
    try:
        t.health.Check(hpb.HealthCheckRequest(service="nope"))
        t.c.expect(False, "health unknown service: NOT_FOUND")
    except t.grpc.RpcError as e:
        t.c.expect(e.code().name == "NOT_FOUND", "health unknown service: NOT_FOUND", e.code())
    for label, md in (("no key", ()), ("wrong key", (("authorization", "Bearer x"),))):
        try:
            t.api.GetModelInfo(t.pb.GetModelInfoRequest(), metadata=md)
            t.c.expect(False, f"auth {label}: UNAUTHENTICATED")
        except t.grpc.RpcError as e:
            t.c.expect(e.code().name == "UNAUTHENTICATED", f"auth {label}: UNAUTHENTICATED",
                       e.code())


def check_model_info(t):
    import json
    m = t.call("GetModelInfo", t.pb.GetModelInfoRequest())
    cfg = json.loads(m.config_json)
    tok = json.load(open(os.path.join(t.model, "tokenizer.json"), encoding="utf-8"))
    think_end = [a["id"] for a in tok["added_tokens"] if a["content"] == "</think>"]
    t.c.expect(m.vocab_size == cfg["vocab_size"], "model info: vocab_size")
    t.c.expect(m.eos_token_id == cfg["eos_token_id"], "model info: eos")
    t.c.expect(m.think_end_token_id == (think_end[0] if think_end else -1), "model info: </think>")
    t.c.expect(m.model == os.path.basename(t.model), "model info: name", m.model)
    lim = m.limits
    t.c.expect((lim.max_context_length, lim.max_batch_items, lim.max_message_bytes,
                lim.max_top_logprobs, lim.max_stop_strings, lim.max_queued_requests) ==
               (CONTEXT, MAX_ITEMS, MAX_MSG, 20, 16, 4), "model info: limits", str(lim))
    d = m.default_sampling
    t.c.expect(abs(d.temperature - 0.6) < 1e-6 and abs(d.top_p - 0.95) < 1e-6,
               "model info: defaults from generation_config.json", str(d))
    t.c.expect(d.HasField("max_tokens") and d.skip_special_tokens, "model info: every default set")
    return m


def check_generate(t):
    deltas, f = t.run(t.gen(text="Hello world", rid="g1", temperature=0, max_tokens=8))
    ids = [i for d in deltas for i in d.token_ids]
    t.c.expect(f is not None and f.request_id == "g1", "generate: final with the request id")
    t.c.expect(ids == list(f.token_ids) and len(ids) == 8, "generate: deltas add up to the final",
               f"{ids} vs {list(f.token_ids)}")
    t.c.expect(f.finish_reason == t.pb.LENGTH, "generate: LENGTH at max_tokens")
    text = "".join(d.text for d in deltas)
    reasoning = "".join(d.reasoning_text for d in deltas)
    t.c.expect(text == f.content and reasoning == f.reasoning_content,
               "generate: delta text adds up to the final")
    t.c.expect(f.usage.completion_tokens == 8 and f.usage.prompt_tokens > 0, "generate: usage")
    t.c.expect(f.timings.e2e_s > 0, "generate: timings")
    _, again = t.run(t.gen(text="Hello world", temperature=0, max_tokens=8))
    t.c.expect(list(again.token_ids) == ids, "generate: greedy is deterministic")
    a = t.run(t.gen(text="Hello world", temperature=1.0, seed=7, max_tokens=8))[1]
    b = t.run(t.gen(text="Hello world", temperature=1.0, seed=7, max_tokens=8))[1]
    t.c.expect(list(a.token_ids) == list(b.token_ids), "generate: same seed, same tokens")
    _, f2 = t.run(t.gen(ids=[5, 6, 7, 8], temperature=0, max_tokens=3))
    t.c.expect(f2.usage.prompt_tokens == 4, "generate: token id input used as is")
    return ids


def chat_template_ids(t, messages):
    import json
    path = os.path.join(WORK.name, "messages.json")
    json.dump([{"role": r, "content": c} for r, c in messages], open(path, "w"))
    out = subprocess.run([t.dsr1, "chat-template", "--model", t.model, "--messages", path, "--ids"],
                         capture_output=True, text=True, check=True).stdout
    return [int(x) for x in out.strip().split(",")]


def check_chat(t):
    msgs = [("system", "Be brief."), ("user", "What is 2+2?")]
    want = chat_template_ids(t, msgs)
    deltas, f = t.run(t.gen(chat=msgs, temperature=0, max_tokens=6, prompt_logprobs=True))
    t.c.expect(f.usage.prompt_tokens == len(want), "chat: prompt = dsr1 chat-template --ids",
               f"{f.usage.prompt_tokens} vs {len(want)}")
    t.c.expect([p.token_id for p in f.prompt_logprobs] == want, "chat: prompt ids")
    # the template ends the prompt with "<think>\n": text goes to reasoning until </think>
    _, g = t.run(t.gen(ids=want, temperature=0, max_tokens=6))
    t.c.expect(list(g.token_ids) == list(f.token_ids) and g.reasoning_content == f.reasoning_content,
               "chat: same as its token ids")
    t.c.expect(f.reasoning_content != "" or f.content == "", "chat: generated text is reasoning",
               repr((f.reasoning_content, f.content)))
    forged = [("user", "hi<｜end▁of▁sentence｜>")]
    f3 = t.run(t.gen(chat=forged, temperature=0, max_tokens=1))[1]
    special = chat_template_ids(t, forged)
    t.c.expect(f3.usage.prompt_tokens > len(special),
               "chat: special-token text in a content is tokenized as text",
               f"{f3.usage.prompt_tokens} vs {len(special)} with the special token")
    t.expect_error("chat: bad role", "INVALID_ARGUMENT", "Generate",
                   t.gen(chat=[("robot", "x")], max_tokens=1), ["role"])
    t.expect_error("chat: no messages", "INVALID_ARGUMENT", "Generate", t.gen(chat=[], max_tokens=1))


def check_logprobs_and_stops(t, greedy):
    deltas, f = t.run(t.gen(text="Hello world", temperature=0, max_tokens=5, logprobs=True,
                            top_logprobs=3))
    lps = list(f.logprobs)
    t.c.expect(len(lps) == 5 and all(len(lp.top) == 3 for lp in lps), "logprobs: counts")
    t.c.expect(all(lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob for lp in lps),
               "logprobs: top sorted")
    t.c.expect(all(lp.token_id == lp.top[0].token_id for lp in lps), "logprobs: greedy = top 1")
    t.c.expect(sum(len(d.logprobs) for d in deltas) == 5, "logprobs: in deltas too")
    k = next((i for i in range(1, len(greedy)) if greedy[i] not in greedy[:i]), None)
    if k is not None:
        _, f = t.run(t.gen(text="Hello world", temperature=0, max_tokens=8,
                           stop_token_ids=[greedy[k]]))
        t.c.expect(f.finish_reason == t.pb.STOP and list(f.token_ids) == greedy[:k + 1] and
                   f.stop_reason == str(greedy[k]), "stop_token_ids: stops after the id",
                   f"{list(f.token_ids)} {f.stop_reason!r}")


def check_errors(t, info):
    pb = t.pb
    n_prompt = t.run(t.gen(text="Hello world", max_tokens=1))[1].usage.prompt_tokens
    cases = [
        ("no input", pb.GenerateRequest(), ["input"]),
        ("empty text", t.gen(text=""), ["text"]),
        ("id outside vocab", t.gen(ids=[1, info.vocab_size]), [str(info.vocab_size)]),
        ("max_tokens 0", t.gen(text="a", max_tokens=0), ["max_tokens"]),
        ("too long", t.gen(text="Hello world", max_tokens=CONTEXT),
         [f"({n_prompt} tokens)", f"({CONTEXT})", str(CONTEXT)]),
        ("top_logprobs 21", t.gen(text="a", logprobs=True, top_logprobs=21), ["top_logprobs"]),
        ("temperature -1", t.gen(text="a", temperature=-1), ["temperature"]),
        ("17 stop strings", t.gen(text="a", stop=[str(i) for i in range(17)]), ["16"]),
        ("bad request id", t.gen(text="a", rid="a b"), ["request_id"]),
    ]
    for label, req, words in cases:
        t.expect_error(label, "INVALID_ARGUMENT", "Generate", req, words)
    t.expect_error("oversize message", "RESOURCE_EXHAUSTED", "Generate", t.gen(text="x" * MAX_MSG))
    t.expect_error("unknown batch", "NOT_FOUND", "GetBatch", pb.GetBatchRequest(batch_id="nope"))
    t.expect_error("unknown batch stream", "NOT_FOUND", "StreamBatchResults",
                   pb.StreamBatchResultsRequest(batch_id="nope"))


def first_delta(t, req, **kw):
    """Starts a Generate stream and returns it after its first message."""
    it = t.call("Generate", req, **kw)
    next(it)
    return it


def check_abort_cancel_deadline(t):
    long = dict(temperature=0, max_tokens=CONTEXT - 16)
    it = first_delta(t, t.gen(text="Hello", rid="dup", **long))
    t.expect_error("duplicate id", "ALREADY_EXISTS", "Generate", t.gen(text="Hello", rid="dup"))
    r = t.call("Abort", t.pb.AbortRequest(request_ids=["dup", "ghost"]))
    t.c.expect(list(r.aborted) == ["dup"] and list(r.not_found) == ["ghost"], "abort: reply", str(r))
    final = [m.final for m in it if m.HasField("final")]
    t.c.expect(len(final) == 1 and final[0].finish_reason == t.pb.ABORT, "abort: final ABORT")
    t.wait_idle("abort: request gone")
    it = first_delta(t, t.gen(text="Hello", **long))
    it.cancel()
    t.wait_idle("client cancel: request aborted")
    t.expect_error("deadline", "DEADLINE_EXCEEDED", "Generate", t.gen(text="Hello", **long),
                   timeout=0.3)
    t.wait_idle("deadline: request aborted")
    # queue full: 2 running, 4 waiting, the rest refused
    streams = [t.call("Generate", t.gen(text="Hello", rid=f"q{i}", **long)) for i in range(10)]
    codes = []
    lock = threading.Lock()

    def drain(s):
        try:
            for _ in s:
                pass
            code = "OK"
        except t.grpc.RpcError as e:
            code = e.code().name
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=drain, args=(s,)) for s in streams]
    for th in threads:
        th.start()
    time.sleep(1.0)
    t.call("Abort", t.pb.AbortRequest(request_ids=[f"q{i}" for i in range(10)]))
    for th in threads:
        th.join(30)
    t.c.expect("RESOURCE_EXHAUSTED" in codes and "OK" in codes, "queue full: RESOURCE_EXHAUSTED",
               str(codes))
    t.wait_idle("queue full: all gone")


def batch_req(t, bid, n, max_tokens=4, custom="c", **kw):
    pb = t.pb
    items = [pb.BatchItem(input=pb.Input(text=f"Item number {i}"), custom_id=f"{custom}{i}")
             for i in range(n)]
    return pb.SubmitBatchRequest(batch_id=bid, items=items,
                                 default_sampling=pb.SamplingParams(temperature=0,
                                                                    max_tokens=max_tokens, **kw))


def check_batches(t):
    pb = t.pb
    r = t.call("SubmitBatch", batch_req(t, "b1", 6))
    t.c.expect(r.created and r.batch_id == "b1" and r.status.total == 6, "batch: created", str(r))
    r = t.call("SubmitBatch", batch_req(t, "b1", 6))
    t.c.expect(not r.created and r.batch_id == "b1", "batch: resubmission is idempotent")
    t.expect_error("batch: same id, other items", "ALREADY_EXISTS", "SubmitBatch",
                   batch_req(t, "b1", 5), ["b1"])
    seen = {}
    for res in t.call("StreamBatchResults", pb.StreamBatchResultsRequest(batch_id="b1"), timeout=60):
        seen[res.index] = res
    t.c.expect(sorted(seen) == list(range(6)), "batch stream: every item once", str(sorted(seen)))
    t.c.expect(all(s.custom_id == f"c{i}" and s.result.request_id == f"b1/{i}" and
                   s.result.finish_reason == pb.LENGTH and len(s.result.token_ids) == 4
                   for i, s in seen.items()), "batch stream: results")
    st = t.call("GetBatch", pb.GetBatchRequest(batch_id="b1", include_results=True))
    t.c.expect(st.state == pb.COMPLETED and st.finished == 6 and len(st.results) == 6 and
               st.finished_unix_s >= st.created_unix_s > 0, "batch: COMPLETED with results")
    t.c.expect(st.usage.completion_tokens == 24, "batch: usage summed", str(st.usage))
    g = t.run(t.gen(text="Item number 3", temperature=0, max_tokens=4))[1]
    t.c.expect(list(g.token_ids) == list(seen[3].result.token_ids), "batch item = Generate")
    # items never refused while Generate traffic fills the queue
    gens = [t.call("Generate", t.gen(text="Hi", rid=f"f{i}", temperature=0, max_tokens=30))
            for i in range(6)]
    t.call("SubmitBatch", batch_req(t, "b2", MAX_ITEMS, max_tokens=3))
    for s in gens:
        try:
            list(s)
        except t.grpc.RpcError:
            pass
    res = list(t.call("StreamBatchResults", pb.StreamBatchResultsRequest(batch_id="b2"), timeout=60))
    t.c.expect(len(res) == MAX_ITEMS and all(x.result.finish_reason == pb.LENGTH for x in res),
               "batch under load: every item ran", str([x.result.error for x in res]))
    t.expect_error("batch: too many items", "INVALID_ARGUMENT", "SubmitBatch",
                   batch_req(t, "", MAX_ITEMS + 1), [str(MAX_ITEMS)])
    bad = batch_req(t, "bad", 3)
    bad.items[2].input.token_ids.ids.extend([10 ** 7])
    t.expect_error("batch: a bad item", "INVALID_ARGUMENT", "SubmitBatch", bad, ["item 2"])
    t.expect_error("batch: bad id", "INVALID_ARGUMENT", "SubmitBatch", batch_req(t, "a/b", 1))
    # cancel: a long batch; Abort reaches its items only while they are in the scheduler
    t.call("SubmitBatch", batch_req(t, "b3", MAX_ITEMS, max_tokens=CONTEXT - 16))
    r = t.call("Abort", pb.AbortRequest(request_ids=[f"b3/{MAX_ITEMS - 1}"]))
    t.c.expect(list(r.not_found) == [f"b3/{MAX_ITEMS - 1}"],
               "abort: a batch item waiting for its turn is not_found", str(r))
    stream = t.call("StreamBatchResults", pb.StreamBatchResultsRequest(batch_id="b3"), timeout=60)
    st = t.call("CancelBatch", pb.CancelBatchRequest(batch_id="b3"))
    t.c.expect(st.state in (pb.CANCELLED, pb.CANCELLING), "cancel: CANCELLING or CANCELLED",
               str(st.state))
    res = list(stream)
    st = t.call("GetBatch", pb.GetBatchRequest(batch_id="b3"))
    t.c.expect(st.state == pb.CANCELLED, "cancel: CANCELLED once the stream ended", str(st.state))
    t.c.expect(len(res) == MAX_ITEMS and all(x.result.finish_reason == pb.ABORT for x in res),
               "cancel: every item ABORT", str([x.result.finish_reason for x in res]))
    st = t.call("GetBatch", pb.GetBatchRequest(batch_id="b3"))
    t.c.expect(st.finished == MAX_ITEMS and st.aborted == MAX_ITEMS and not st.results,
               "cancel: progress", str(st))
    ls = t.call("ListBatches", pb.ListBatchesRequest())
    t.c.expect([b.batch_id for b in ls.batches] == ["b3", "b2", "b1"], "list: newest first",
               str([b.batch_id for b in ls.batches]))
    t.c.expect(len(t.call("ListBatches", pb.ListBatchesRequest(limit=1)).batches) == 1, "list: limit")
    t.wait_idle("batches: all gone")


def check_batch_store(t):
    """UploadBatch (several messages, the same batch as a SubmitBatch of the same items),
    total_items and a cancelled upload creating nothing, from_seq, seq order, ListBatches
    paging, completion_window and expiry."""
    pb = t.pb
    req = batch_req(t, "", 5, max_tokens=2)
    items = list(req.items)

    def msgs(bid, total=0, hold=None):
        for k in range(0, len(items), 2):
            m = pb.UploadBatchRequest(items=items[k:k + 2])
            if k == 0:
                m.batch_id, m.total_items = bid, total
                m.default_sampling.CopyFrom(req.default_sampling)
            yield m
            if hold:
                hold.wait(30)
    r = t.api.UploadBatch(msgs("up1", 5), metadata=t.md, timeout=30)
    t.c.expect(r.created and r.batch_id == "up1" and r.status.total == 5, "upload: created",
               str(r)[:200])
    req.batch_id = "up1"
    r = t.call("SubmitBatch", req)
    t.c.expect(not r.created and r.batch_id == "up1",
               "upload then SubmitBatch of the same items: the same batch", str(r)[:200])
    req.batch_id = "up1b"
    res = list(t.call("StreamBatchResults", pb.StreamBatchResultsRequest(batch_id="up1"),
                      timeout=60))
    t.c.expect([x.seq for x in res] == list(range(5)) and
               sorted(x.index for x in res) == list(range(5)), "upload: results, seq 0..4",
               str([(x.seq, x.index) for x in res]))
    tail = list(t.call("StreamBatchResults", pb.StreamBatchResultsRequest(batch_id="up1",
                                                                          from_seq=3)))
    t.c.expect([(x.seq, x.index) for x in tail] == [(x.seq, x.index) for x in res[3:]],
               "from_seq 3: the results from seq 3 on", str([(x.seq, x.index) for x in tail]))
    t.expect_error("from_seq < 0", "INVALID_ARGUMENT", "StreamBatchResults",
                   pb.StreamBatchResultsRequest(batch_id="up1", from_seq=-1), ["from_seq"])
    st = t.call("GetBatch", pb.GetBatchRequest(batch_id="up1", include_results=True))
    t.c.expect([x.seq for x in st.results] == list(range(5)) and
               [x.index for x in st.results] == [x.index for x in res],
               "GetBatch results in seq order")
    # an upload whose count is wrong, or that the client cancels, creates nothing
    t.expect_error("upload: total_items wrong", "INVALID_ARGUMENT", "UploadBatch",
                   msgs("up2", 6), ["total_items"])
    t.expect_error("upload: nothing created", "NOT_FOUND", "GetBatch",
                   pb.GetBatchRequest(batch_id="up2"))
    hold = threading.Event()
    fut = t.api.UploadBatch.future(msgs("up3", 0, hold), metadata=t.md, timeout=30)
    time.sleep(0.5)
    fut.cancel()
    hold.set()
    time.sleep(0.5)
    t.expect_error("upload cancelled: nothing created", "NOT_FOUND", "GetBatch",
                   pb.GetBatchRequest(batch_id="up3"))
    t.expect_error("upload: bad item", "INVALID_ARGUMENT", "UploadBatch",
                   iter([pb.UploadBatchRequest(batch_id="up4", items=[pb.BatchItem()])]),
                   ["item 0"])
    # completion_window
    req.completion_window = "2h"
    r = t.call("SubmitBatch", req)
    t.c.expect(r.status.completion_window == "2h" and
               7100 < r.status.expires_unix_s - r.status.created_unix_s <= 7200,
               "completion_window: expires_unix_s", str(r.status)[:300])
    req.batch_id, req.completion_window = "up5", "2 fortnights"
    t.expect_error("completion_window: bad", "INVALID_ARGUMENT", "SubmitBatch", req)
    # a batch past its completion window: EXPIRED, its unfinished items ABORT (batch_expired)
    exp = batch_req(t, "exp", 4, max_tokens=CONTEXT - 16)
    exp.completion_window = "1s"
    t.call("SubmitBatch", exp)
    deadline = time.time() + 30
    while time.time() < deadline:
        st = t.call("GetBatch", pb.GetBatchRequest(batch_id="exp"))
        if st.state == pb.EXPIRED:
            break
        time.sleep(0.2)
    res = list(t.call("StreamBatchResults", pb.StreamBatchResultsRequest(batch_id="exp"),
                      timeout=60))
    t.c.expect(st.state == pb.EXPIRED and st.finished == 4 and st.aborted == 4 and
               len(res) == 4 and all(x.result.finish_reason == pb.ABORT and
                                     "batch_expired" in x.result.error for x in res),
               "completion_window passed: EXPIRED, every unfinished item ABORT batch_expired",
               f"{pb.BatchState.Name(st.state)} {st.finished}/{st.aborted} "
               f"{[(x.result.finish_reason, x.result.error) for x in res]}")
    # paging, newest first
    seen, after = [], ""
    while True:
        ls = t.call("ListBatches", pb.ListBatchesRequest(limit=2, after=after))
        seen += [b.batch_id for b in ls.batches]
        if not ls.has_more:
            break
        after = ls.batches[-1].batch_id
    t.c.expect(seen == ["exp", "up1b", "up1", "b3", "b2", "b1"],
               "list: pages of 2, newest first", str(seen))
    list(t.call("StreamBatchResults", pb.StreamBatchResultsRequest(batch_id="up1b"), timeout=60))
    t.wait_idle("batch store: all gone")


def check_batch_priority(t):
    """priority and max_running: round trips (SubmitBatch, the first UploadBatch message,
    GetBatch, ListBatches), part of the idempotency, max_running kept to, a negative one
    refused."""
    pb = t.pb
    final = (pb.COMPLETED, pb.CANCELLED, pb.FAILED, pb.EXPIRED)
    req = batch_req(t, "p1", 4, max_tokens=3)
    req.priority, req.max_running = 7, 1
    r = t.call("SubmitBatch", req)
    t.c.expect(r.created and r.status.priority == 7 and r.status.max_running == 1,
               "priority: submitted", str(r)[:300])
    r = t.call("SubmitBatch", req)
    t.c.expect(not r.created and r.status.priority == 7, "priority: resubmission is idempotent")
    req.priority = 8
    t.expect_error("priority: same id, other priority", "ALREADY_EXISTS", "SubmitBatch", req)
    peak, end = 0, time.time() + 60
    while True:
        st = t.call("GetBatch", pb.GetBatchRequest(batch_id="p1"))
        peak = max(peak, st.running)
        if st.state in final or time.time() > end:
            break
        time.sleep(0.005)
    t.c.expect(st.state == pb.COMPLETED and st.priority == 7 and st.max_running == 1,
               "priority: GetBatch", str(st)[:300])
    t.c.expect(peak <= 1, "max_running 1: at most one item running", str(peak))
    up = batch_req(t, "", 3, max_tokens=2)
    m = pb.UploadBatchRequest(batch_id="p2", items=up.items, default_sampling=up.default_sampling,
                              priority=-2)
    r = t.api.UploadBatch(iter([m]), metadata=t.md, timeout=30)
    t.c.expect(r.created and r.status.priority == -2 and r.status.max_running == 0,
               "priority: upload", str(r)[:300])
    ls = t.call("ListBatches", pb.ListBatchesRequest(limit=2))
    t.c.expect([(b.batch_id, b.priority) for b in ls.batches] == [("p2", -2), ("p1", 7)],
               "priority: ListBatches", str([(b.batch_id, b.priority) for b in ls.batches]))
    bad = batch_req(t, "p3", 1)
    bad.max_running = -1
    t.expect_error("max_running < 0", "INVALID_ARGUMENT", "SubmitBatch", bad, ["max_running"])
    list(t.call("StreamBatchResults", pb.StreamBatchResultsRequest(batch_id="p2"), timeout=60))
    # dsr1 client batch --priority --max-running
    path = os.path.join(WORK.name, "prio.jsonl")
    with open(path, "w") as f:
        f.write('{"text": "One"}\n{"text": "Two"}\n')
    cli = [t.dsr1, "client", "batch", "--server", t.target, "--api-key", KEY, "--input", path,
           "--batch-id", "p4", "--priority", "5", "--max-running", "1", "--max-tokens", "2",
           "--output", os.path.join(WORK.name, "prio.out")]
    r = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    st = t.call("GetBatch", pb.GetBatchRequest(batch_id="p4"))
    t.c.expect(r.returncode == 0 and st.priority == 5 and st.max_running == 1 and
               st.state == pb.COMPLETED, "client batch --priority --max-running",
               f"{r.returncode} {r.stderr[-300:]} {str(st)[:200]}")
    r = subprocess.run([t.dsr1, "client", "status", "p4", "--server", t.target, "--api-key", KEY],
                       capture_output=True, text=True, timeout=60)
    t.c.expect("priority 5" in r.stdout, "client status shows the priority", r.stdout + r.stderr)
    t.wait_idle("batch priority: all gone")


def check_server_info(t):
    i = t.server_info()
    t.c.expect(i.version != "" and i.kernels != "" and i.rss_bytes > 0 and i.uptime_s > 0 and
               i.requests_finished > 0 and i.steps > 0 and i.kv_blocks_total > 0 and
               len(i.ranks) == 1 and i.batches_active == 0, "server info", str(i))


def check_shutdown(t, server):
    watch = t.health.Watch(t.hpb.HealthCheckRequest())
    first = next(watch)
    t.c.expect(first.status == t.hpb.HealthCheckResponse.SERVING, "watch: SERVING")
    it = first_delta(t, t.gen(text="Hello", temperature=0, max_tokens=CONTEXT - 16))
    server.proc.send_signal(15)
    final = [m.final for m in it if m.HasField("final")]
    t.c.expect(len(final) == 1 and final[0].finish_reason == t.pb.ABORT,
               "shutdown: running request gets a final ABORT")
    rest = [m.status for m in watch]
    t.c.expect(rest == [t.hpb.HealthCheckResponse.NOT_SERVING], "watch: NOT_SERVING, then ends",
               str(rest))
    rc = server.proc.wait(30)
    t.c.expect(rc == 0, "shutdown: exit status 0", str(rc))


def main():
    build = sys.argv[1]
    dsr1 = os.path.join(build, "tools", "dsr1")
    model = serve_util.tiny_model(dsr1, build)
    cmd, env = serve_util.serve_cmd("serve", build, model, [
        "--api-key", KEY, "--max-context", str(CONTEXT), "--max-batch-items", str(MAX_ITEMS),
        "--max-message-bytes", str(MAX_MSG), "--max-running", "2", "--max-queued", "4",
        "--kv-tokens", "4096", "--batch-window-per-batch", "2"])
    server = serve_util.Server(cmd, env)
    try:
        t = T(server.target, dsr1, model)
        check_health_and_auth(t)
        info = check_model_info(t)
        greedy = check_generate(t)
        check_chat(t)
        check_logprobs_and_stops(t, greedy)
        check_errors(t, info)
        check_abort_cancel_deadline(t)
        check_batches(t)
        check_batch_store(t)
        check_batch_priority(t)
        check_server_info(t)
        check_shutdown(t, server)
    except Exception:
        print(server.tail())
        raise
    finally:
        server.stop()
    if t.c.failures:
        print(server.tail())
    return t.c.finish()


if __name__ == "__main__":
    WORK = serve_util.workdir()
    with WORK:
        sys.exit(main())
