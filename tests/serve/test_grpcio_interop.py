#!/usr/bin/env python3
"""The dsr1 gRPC API through a client nobody here wrote: grpcio with stubs that protoc
generates from proto/*.proto at test time, against `dsr1 serve` (mode "serve") or mpirun'd
dsr1-coordinator with two dsr1-worker ranks (mode "mpirun") on the tiny checkpoint.

A batch of 50 chat prompts with varied sampling (greedy, seeded top-p/top-k/min-p, stop
strings, stop token ids, penalties, logprobs) goes through SubmitBatch and
StreamBatchResults; every item is checked (index, custom_id, finish reason against
max_tokens and stops, usage against token_ids, text against the token ids decoded
independently here from tokenizer.json, logprobs), seeded items again alone through
Generate must give the same ids, stop-string and stop-id items must stop where an
unstopped run of the same request says. Then batch idempotency, progress, list and cancel,
health, model info, and the error codes (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
UNAUTHENTICATED).

usage: test_grpcio_interop.py BUILD_ROOT [serve|mpirun]   (exit 77: grpcio etc. missing)
Run with /usr/bin/python3 (Debian's python3-grpcio).
"""
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

API_KEY = "interop-test-key"
N_ITEMS = 50


def byte_level_decoder():
    """GPT-2's byte-level alphabet, inverted: code point -> byte."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    bs, cs, n = keep[:], keep[:], 0
    for b in range(256):
        if b not in keep:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Detokenizer:
    """Ids -> text from tokenizer.json as Hugging Face decodes it (byte-level BPE, added
    tokens as their content, invalid UTF-8 replaced), independent of the C tokenizer."""

    def __init__(self, model):
        t = json.load(open(os.path.join(model, "tokenizer.json"), encoding="utf-8"))
        bd = byte_level_decoder()
        # a token with a character outside the byte alphabet decodes to its own UTF-8
        self.pieces = {i: bytes(bd[c] for c in tok) if all(c in bd for c in tok) else tok.encode()
                       for tok, i in t["model"]["vocab"].items()}
        self.special = set()
        for a in t["added_tokens"]:
            self.pieces[a["id"]] = a["content"].encode()
            if a["special"]:
                self.special.add(a["id"])

    def decode(self, ids, skip_special=True):
        return b"".join(self.pieces.get(i, b"") for i in ids
                        if not (skip_special and i in self.special)).decode("utf-8", "replace")


class Api:
    """The stubs with the API key on every call."""

    def __init__(self, grpc, pb, pb_grpc, hpb, hpb_grpc, target, key):
        self.grpc, self.pb, self.hpb = grpc, pb, hpb
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.Dsr1Stub(self.channel)
        self.health = hpb_grpc.HealthStub(self.channel)
        self.md = [("authorization", f"Bearer {key}")]
        self.kw = {"metadata": self.md, "timeout": 120}  # every call is bounded

    def generate(self, req):
        """(final Completion, deltas) of one Generate stream."""
        deltas, final = [], None
        for r in self.stub.Generate(req, **self.kw):
            if r.HasField("delta"):
                deltas.append(r.delta)
            else:
                final = r.final
        return final, deltas

    def code_of(self, fn):
        """The gRPC status code fn() ends with (StatusCode.OK when it succeeds)."""
        try:
            r = fn()
            if hasattr(r, "__iter__") and not hasattr(r, "ListFields"):
                list(r)
            return self.grpc.StatusCode.OK
        except self.grpc.RpcError as e:
            return e.code()


def chat(pb, i):
    msgs = []
    if i % 3 == 0:
        msgs.append(pb.ChatMessage(role="system", content=f"You are test assistant {i}."))
    msgs.append(pb.ChatMessage(role="user",
                               content=f"Question {i}: what is {i} + {i * 7 % 13}? Think."))
    return pb.Input(chat=pb.ChatMessages(messages=msgs))


def base_sampling(pb, i):
    """Item i's sampling before stops are added; kind = i % 5."""
    kind = i % 5
    if kind == 0:
        return pb.SamplingParams(temperature=0.0, max_tokens=4 + i % 9)
    if kind == 1:
        return pb.SamplingParams(temperature=0.8, top_p=0.9, seed=1000 + i, max_tokens=16)
    if kind == 2:
        return pb.SamplingParams(temperature=1.2, top_k=20, seed=2000 + i, max_tokens=1 + i % 8,
                                 logprobs=True, top_logprobs=3)
    if kind == 3:
        return pb.SamplingParams(temperature=0.0, max_tokens=24)
    return pb.SamplingParams(temperature=1.0, min_p=0.05, presence_penalty=0.5,
                             repetition_penalty=1.1, seed=4000 + i, ignore_eos=True,
                             max_tokens=20)


class Interop:
    def __init__(self, api, model, dsr1, checks):
        self.api, self.pb, self.grpc = api, api.pb, api.grpc
        self.model, self.dsr1, self.c = model, dsr1, checks
        self.detok = Detokenizer(model)
        self.info = None

    # ---- item construction -------------------------------------------------------------

    def plan_items(self):
        """The 50 items; stop strings and stop ids come from an unstopped run of the same
        request, so that they do stop (expectations kept in self.expect_stop)."""
        pb, items = self.pb, []
        self.expect_stop = {}
        for i in range(N_ITEMS):
            s = base_sampling(pb, i)
            if i % 5 in (3, 4):
                final, _ = self.api.generate(pb.GenerateRequest(input=chat(pb, i), sampling=s))
                ids = list(final.token_ids)
                text = final.reasoning_content
                if i % 5 == 3 and len(text) >= 6:
                    stop = text[len(text) // 2:len(text) // 2 + 2]
                    s.stop.extend([stop, "\x01never-generated\x01"])
                    self.expect_stop[i] = ("string", stop, ids, text)
                elif i % 5 == 4 and len(ids) > 3:
                    s.stop_token_ids.append(ids[3])
                    self.expect_stop[i] = ("id", ids[3], ids, None)
            items.append(pb.BatchItem(input=chat(pb, i), sampling=s, custom_id=f"item-{i}"))
        return items

    # ---- per-item checks ---------------------------------------------------------------

    def check_text(self, i, s, res):
        ids = list(res.token_ids)
        text_ids = ids
        if res.finish_reason == self.pb.STOP and ids and (
                ids[-1] in s.stop_token_ids or
                (ids[-1] == self.info.eos_token_id and not s.ignore_eos)):
            text_ids = ids[:-1]  # a stop id's text is not emitted
        full = self.detok.decode(text_ids)
        got = res.reasoning_content
        if res.content or self.info.think_end_token_id in ids:
            got += "</think>" + res.content
        if res.finish_reason == self.pb.STOP and res.stop_reason in s.stop:
            self.c.expect(res.stop_reason in full, f"item {i}: stop string in decoded ids",
                          repr(res.stop_reason))
            full = full[:full.find(res.stop_reason)]
        self.c.expect(got == full, f"item {i}: text == decoded token ids",
                      f"{got[:80]!r} vs {full[:80]!r}")

    def check_finish(self, i, s, res):
        ids, pb = list(res.token_ids), self.pb
        if res.finish_reason == pb.LENGTH:
            self.c.expect(len(ids) == s.max_tokens, f"item {i}: LENGTH at max_tokens",
                          f"{len(ids)} vs {s.max_tokens}")
        elif res.finish_reason == pb.STOP:
            by_id = bool(ids) and (ids[-1] in s.stop_token_ids or
                                   (ids[-1] == self.info.eos_token_id and not s.ignore_eos))
            self.c.expect(res.stop_reason in s.stop or by_id, f"item {i}: STOP has a cause",
                          repr(res.stop_reason))
            self.c.expect(len(ids) <= s.max_tokens, f"item {i}: STOP within max_tokens")
        else:
            self.c.expect(False, f"item {i}: finish reason", pb.FinishReason.Name(res.finish_reason))
        exp = self.expect_stop.get(i)
        if exp and exp[0] == "string":
            _, stop, full_ids, full_text = exp
            self.c.expect(res.finish_reason == pb.STOP and res.stop_reason == stop,
                          f"item {i}: stopped by its stop string", repr(res.stop_reason))
            self.c.expect(ids == full_ids[:len(ids)], f"item {i}: ids before the stop string")
            self.c.expect(res.reasoning_content == full_text[:full_text.find(stop)],
                          f"item {i}: text up to the stop string")
        if exp and exp[0] == "id":
            _, stop_id, full_ids, _ = exp
            self.c.expect(res.finish_reason == pb.STOP and res.stop_reason == str(stop_id) and
                          ids == full_ids[:full_ids.index(stop_id) + 1],
                          f"item {i}: stopped at its stop id {stop_id}",
                          f"{res.stop_reason!r} {ids}")

    def check_logprobs(self, i, s, res):
        if not s.logprobs:
            self.c.expect(len(res.logprobs) == 0, f"item {i}: no logprobs unasked")
            return
        ok = len(res.logprobs) == len(res.token_ids)
        for lp, tid in zip(res.logprobs, res.token_ids):
            tops = [t.logprob for t in lp.top]
            ok = ok and lp.token_id == tid and lp.logprob <= 1e-6 and len(lp.top) == s.top_logprobs
            ok = ok and tops == sorted(tops, reverse=True) and tops[0] >= lp.logprob - 1e-5
        self.c.expect(ok, f"item {i}: logprobs", str(res.logprobs)[:200])

    def check_item(self, items, r, batch_id, prompt_tokens):
        i = r.index
        s, res = items[i].sampling, r.result
        self.c.expect(r.custom_id == f"item-{i}", f"item {i}: custom_id", r.custom_id)
        self.c.expect(res.request_id == f"{batch_id}/{i}", f"item {i}: request_id", res.request_id)
        self.c.expect(res.usage.completion_tokens == len(res.token_ids),
                      f"item {i}: usage.completion_tokens == len(token_ids)")
        if i in prompt_tokens:
            self.c.expect(res.usage.prompt_tokens == prompt_tokens[i],
                          f"item {i}: usage.prompt_tokens",
                          f"{res.usage.prompt_tokens} vs {prompt_tokens[i]}")
        t = res.timings
        self.c.expect(0 <= t.queue_s <= t.time_to_first_token_s <= t.e2e_s,
                      f"item {i}: timings ordered", str(t))
        self.check_finish(i, s, res)
        self.check_text(i, s, res)
        self.check_logprobs(i, s, res)

    def prompt_tokens(self, indices):
        """Prompt lengths from `dsr1 chat-template --ids` (the C template and tokenizer, run
        apart from the server)."""
        out = {}
        for i in indices:
            msgs = [{"role": m.role, "content": m.content} for m in chat(self.pb, i).chat.messages]
            r = subprocess.run(
                [self.dsr1, "chat-template", "--model", self.model, "--messages", "-", "--ids"],
                input=json.dumps(msgs), capture_output=True, text=True)
            if self.c.expect(r.returncode == 0, "dsr1 chat-template", r.stderr):
                out[i] = len(r.stdout.strip().split(","))
        return out

    # ---- the batch ---------------------------------------------------------------------

    def run_batch(self):
        pb, api, c = self.pb, self.api, self.c
        items = self.plan_items()
        prompt_tokens = self.prompt_tokens(range(0, N_ITEMS, 7))
        batch_id = f"interop-{os.getpid()}"
        req = pb.SubmitBatchRequest(batch_id=batch_id, items=items)
        r = api.stub.SubmitBatch(req, **api.kw)
        c.expect(r.created and r.batch_id == batch_id and r.status.total == N_ITEMS,
                 "SubmitBatch created", str(r)[:200])

        progress, done = [], threading.Event()

        def poll():
            while not done.is_set():
                st = api.stub.GetBatch(pb.GetBatchRequest(batch_id=batch_id), **api.kw)
                progress.append((st.finished, st.state))
                time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            results = list(api.stub.StreamBatchResults(
                pb.StreamBatchResultsRequest(batch_id=batch_id), metadata=api.md, timeout=300))
        finally:
            done.set()
            poller.join()
        c.expect(sorted(x.index for x in results) == list(range(N_ITEMS)),
                 "every index streamed once", str(sorted(x.index for x in results)))
        for x in results:
            self.check_item(items, x, batch_id, prompt_tokens)
        fin = [f for f, _ in progress]
        c.expect(fin == sorted(fin) and all(0 <= f <= N_ITEMS for f in fin),
                 "GetBatch progress monotonic", str(fin[:40]))

        st = api.stub.GetBatch(pb.GetBatchRequest(batch_id=batch_id, include_results=True),
                               **api.kw)
        c.expect(st.state == pb.COMPLETED and st.finished == N_ITEMS and st.failed == 0 and
                 st.aborted == 0, "batch COMPLETED", str(st)[:300] if st.state != pb.COMPLETED
                 else f"finished {st.finished} failed {st.failed} aborted {st.aborted}")
        c.expect(st.usage.completion_tokens == sum(len(x.result.token_ids) for x in results) and
                 st.usage.prompt_tokens == sum(x.result.usage.prompt_tokens for x in results),
                 "batch usage == sum of items")
        c.expect(st.finished_unix_s >= st.created_unix_s > 1.6e9, "batch times")
        by_index = {x.index: list(x.result.token_ids) for x in results}
        c.expect({x.index: list(x.result.token_ids) for x in st.results} == by_index,
                 "GetBatch results == streamed results")
        again = list(api.stub.StreamBatchResults(
            pb.StreamBatchResultsRequest(batch_id=batch_id), **api.kw))
        c.expect({x.index: list(x.result.token_ids) for x in again} == by_index,
                 "StreamBatchResults of a finished batch replays every result")

        r2 = api.stub.SubmitBatch(req, **api.kw)
        c.expect(not r2.created and r2.batch_id == batch_id and r2.status.state == pb.COMPLETED,
                 "resubmission is idempotent (created=false)", str(r2.status)[:200])
        other = pb.SubmitBatchRequest(batch_id=batch_id, items=items[:3])
        c.expect(api.code_of(lambda: api.stub.SubmitBatch(other, **api.kw)) ==
                 self.grpc.StatusCode.ALREADY_EXISTS, "same batch id, other items: ALREADY_EXISTS")
        ids = [b.batch_id for b in api.stub.ListBatches(pb.ListBatchesRequest(),
                                                        **api.kw).batches]
        c.expect(batch_id in ids, "ListBatches lists the batch", str(ids))
        self.check_seeded_alone(items, results)

    def check_seeded_alone(self, items, results):
        """Seeded items give the same ids alone through Generate as inside the batch."""
        for x in results:
            s = items[x.index].sampling
            if not s.HasField("seed"):
                continue
            final, deltas = self.api.generate(self.pb.GenerateRequest(
                input=items[x.index].input, sampling=s))
            self.c.expect(list(final.token_ids) == list(x.result.token_ids),
                          f"item {x.index}: seeded ids reproduce alone",
                          f"{list(final.token_ids)} vs {list(x.result.token_ids)}")
            streamed = [t for d in deltas for t in d.token_ids]
            self.c.expect(streamed == list(final.token_ids),
                          f"item {x.index}: Generate deltas add up to the final ids")
            text = "".join(d.reasoning_text for d in deltas)
            self.c.expect(text == final.reasoning_content,
                          f"item {x.index}: streamed reasoning == final reasoning")

    def check_cancel(self):
        pb, api, c = self.pb, self.api, self.c
        long = pb.SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
        items = [pb.BatchItem(input=chat(pb, i), sampling=long) for i in range(8)]
        batch_id = f"cancel-{os.getpid()}"
        api.stub.SubmitBatch(pb.SubmitBatchRequest(batch_id=batch_id, items=items),
                             **api.kw)
        time.sleep(0.3)
        st = api.stub.CancelBatch(pb.CancelBatchRequest(batch_id=batch_id), **api.kw)
        c.expect(st.state in (pb.CANCELLED, pb.CANCELLING), "CancelBatch: state CANCELLING or "
                 "CANCELLED", pb.BatchState.Name(st.state))
        results = list(api.stub.StreamBatchResults(
            pb.StreamBatchResultsRequest(batch_id=batch_id), **api.kw))
        st = api.stub.GetBatch(pb.GetBatchRequest(batch_id=batch_id), **api.kw)
        c.expect(st.state == pb.CANCELLED, "cancelled batch: CANCELLED once the stream ended",
                 pb.BatchState.Name(st.state))
        aborted = sum(x.result.finish_reason == pb.ABORT for x in results)
        c.expect(len(results) == 8 and aborted >= 1, "cancelled batch: results, ABORT ones",
                 f"{len(results)} results, {aborted} aborted")
        st = api.stub.GetBatch(pb.GetBatchRequest(batch_id=batch_id), **api.kw)
        c.expect(st.aborted == aborted and st.finished == 8, "cancelled batch: counts",
                 f"aborted {st.aborted} finished {st.finished}")

    # ---- information, health, errors ---------------------------------------------------

    def check_info(self):
        pb, api, c = self.pb, self.api, self.c
        self.info = api.stub.GetModelInfo(pb.GetModelInfoRequest(), **api.kw)
        i = self.info
        c.expect(i.vocab_size == 129280 and i.eos_token_id == 1 and i.bos_token_id == 0 and
                 i.think_end_token_id == 128799, "GetModelInfo ids", str(i)[:200])
        d = i.default_sampling
        c.expect(all(d.HasField(f) for f in ("temperature", "top_p", "max_tokens",
                                             "repetition_penalty", "skip_special_tokens")) and
                 abs(d.temperature - 0.6) < 1e-6 and abs(d.top_p - 0.95) < 1e-6,
                 "default sampling from generation_config.json", str(d))
        c.expect(i.limits.max_top_logprobs == 20 and i.limits.max_context_length > 0,
                 "limits", str(i.limits))
        c.expect(json.loads(i.config_json)["vocab_size"] == 129280, "config_json")
        hpb = api.hpb
        for svc in ("", "dsr1.v1.Dsr1"):
            h = api.health.Check(hpb.HealthCheckRequest(service=svc), **api.kw)
            c.expect(h.status == hpb.HealthCheckResponse.SERVING, f"health '{svc}' SERVING")
        c.expect(api.code_of(lambda: api.health.Check(hpb.HealthCheckRequest(service="nope"),
                                                      **api.kw)) ==
                 self.grpc.StatusCode.NOT_FOUND, "health of an unknown service: NOT_FOUND")

    def check_errors(self):
        pb, api, c, S = self.pb, self.api, self.c, self.grpc.StatusCode
        ctx = self.info.limits.max_context_length

        def gen(**kw):
            inp = kw.pop("input", chat(pb, 1))
            return lambda: api.stub.Generate(pb.GenerateRequest(
                input=inp, sampling=pb.SamplingParams(**kw)), **api.kw)

        cases = [
            ("max_tokens 0", gen(max_tokens=0), S.INVALID_ARGUMENT),
            ("top_logprobs 21", gen(max_tokens=2, logprobs=True, top_logprobs=21),
             S.INVALID_ARGUMENT),
            ("prompt + max_tokens > context",
             gen(input=pb.Input(token_ids=pb.TokenIds(ids=[5] * 10)), max_tokens=ctx),
             S.INVALID_ARGUMENT),
            ("token id beyond the vocabulary",
             gen(input=pb.Input(token_ids=pb.TokenIds(ids=[5, 129280])), max_tokens=2),
             S.INVALID_ARGUMENT),
            ("no input", gen(input=pb.Input(), max_tokens=2), S.INVALID_ARGUMENT),
            ("temperature -1", gen(temperature=-1.0, max_tokens=2), S.INVALID_ARGUMENT),
            ("GetBatch of an unknown batch", lambda: api.stub.GetBatch(
                pb.GetBatchRequest(batch_id="no-such-batch"), **api.kw), S.NOT_FOUND),
            ("CancelBatch of an unknown batch", lambda: api.stub.CancelBatch(
                pb.CancelBatchRequest(batch_id="no-such-batch"), **api.kw), S.NOT_FOUND),
            ("SubmitBatch without items", lambda: api.stub.SubmitBatch(
                pb.SubmitBatchRequest(batch_id="empty"), **api.kw), S.INVALID_ARGUMENT),
        ]
        for label, fn, want in cases:
            got = api.code_of(fn)
            c.expect(got == want, f"error: {label}", f"{got} (want {want})")
        for md, label in (([("authorization", "Bearer wrong")], "wrong key"), ([], "no key")):
            got = api.code_of(lambda: api.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md,
                                                            timeout=60))
            c.expect(got == S.UNAUTHENTICATED, f"error: {label}", str(got))
            got = api.code_of(lambda: api.stub.Generate(pb.GenerateRequest(
                input=chat(pb, 1), sampling=pb.SamplingParams(max_tokens=2)), metadata=md,
                timeout=60))
            c.expect(got == S.UNAUTHENTICATED, f"error: Generate with {label}", str(got))

    def check_idle(self):
        """Once everything ended, nothing is queued, running, or holding cache blocks."""
        si = serve_util.wait_idle(self.api.stub, self.pb, self.c, "afterwards", self.api.md)
        self.c.expect(si.requests_finished > 0 and si.kv_blocks_total > 0 and si.steps > 0,
                      "GetServerInfo counters", str(si)[:300])


def main():
    build_root = os.path.abspath(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "serve"
    dsr1 = os.path.join(build_root, "tools", "dsr1")
    with serve_util.workdir() as tmp:
        grpc_mods = serve_util.load_stubs(tmp)
        import grpc
        model = serve_util.tiny_model(dsr1, build_root)
        cmd, env = serve_util.serve_cmd(mode, build_root, model, ["--api-key", API_KEY])
        t0 = time.time()
        srv = serve_util.Server(cmd, env)
        print(f"server up on {srv.target} in {time.time() - t0:.1f} s ({mode})", flush=True)
        checks = serve_util.Checks()
        api = None
        try:
            api = Api(grpc, *grpc_mods, srv.target, API_KEY)
            test = Interop(api, model, dsr1, checks)
            test.check_info()
            test.check_errors()
            t0 = time.time()
            test.run_batch()
            print(f"batch of {N_ITEMS} and its checks: {time.time() - t0:.1f} s", flush=True)
            test.check_cancel()
            test.check_idle()
        except grpc.RpcError as e:
            checks.expect(False, "unexpected RPC error", f"{e.code()}: {e.details()}")
        finally:
            if api:
                api.channel.close()
        return srv.finish(checks, exit_0=mode == "serve")


if __name__ == "__main__":
    sys.exit(main())
