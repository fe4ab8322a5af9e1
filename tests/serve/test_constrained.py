#!/usr/bin/env python3
"""Constrained decoding through the gRPC API (SamplingParams.constraint), checked by
validators nobody here wrote (Python's json and re, Debian's python3-jsonschema).

The tiny model is random, so at temperature 1.5 it would produce garbage unconstrained:
whatever it says under a constraint is what the grammar forced.

1. JSON Schemas (objects with required and optional properties, integer ranges, enums,
   string lengths and patterns, arrays with bounds, nested objects, anyOf, $ref): 8 seeded
   generations each; every output parses, validates against its schema, has no free
   whitespace, and ends with STOP (EOS where the language allows nothing more).
2. json_strict: no property beyond the declared ones.
3. A regular expression (re.fullmatch) and an EBNF grammar; json_object (any object).
4. Seeded constrained requests give the same ids again, alone and inside a batch.
5. Property-based: 12 random schemas (objects, arrays, anyOf, enums, integer and number
   ranges, bounded strings, patterns, formats) x 100 samples at temperature 1.5: every output
   that ends validates (with format checks), and at least 80% end within max_tokens.
6. Errors: an unsupported keyword is INVALID_ARGUMENT naming it and its JSON pointer; a bad
   regex and a bad grammar name the problem; a batch item with a bad schema is refused
   when the batch is submitted.
7. Reasoning stays free: a chat request (R1's template leaves the model inside <think>)
   with a constraint finishes, and its content (after the reasoning) follows the schema
   when the model closed its reasoning.

usage: test_constrained.py BUILD_ROOT   (exit 77: grpcio, protoc, jsonschema or the model missing)
"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

SCHEMAS = [
    {"type": "object",
     "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 8},
                    "age": {"type": "integer", "minimum": 0, "maximum": 150},
                    "ok": {"type": "boolean"}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object",
     "properties": {"color": {"enum": ["red", "green", "blue"]},
                    "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3},
                             "minItems": 1, "maxItems": 3}},
     "required": ["color", "code", "tags"], "additionalProperties": False},
    {"$defs": {"point": {"type": "object",
                         "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                        "y": {"type": "integer", "minimum": -9, "maximum": 9}},
                         "required": ["x", "y"], "additionalProperties": False}},
     "type": "object",
     "properties": {"a": {"$ref": "#/$defs/point"},
                    "b": {"anyOf": [{"$ref": "#/$defs/point"}, {"type": "null"}]}},
     "required": ["a", "b"], "additionalProperties": False},
]


def generate(api, pb, sampling, text="Once upon a time"):
    req = pb.GenerateRequest(input=pb.Input(text=text), sampling=sampling)
    return list(api.Generate(req, timeout=120))[-1].final


def check_schemas(c, api, pb, jsonschema):
    for k, schema in enumerate(SCHEMAS):
        for seed in range(8):
            s = pb.SamplingParams(temperature=1.5, seed=seed, max_tokens=120,
                                  json_schema=json.dumps(schema))
            f = generate(api, pb, s, text=f"item {seed}")
            label = f"schema {k} seed {seed}"
            c.expect(f.finish_reason == pb.STOP, label + ": STOP", f"{f.finish_reason} {f.content!r}")
            try:
                value = json.loads(f.content)
                jsonschema.validate(value, schema)
                ok, why = True, ""
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                ok, why = False, f"{e}: {f.content!r}"
            c.expect(ok, label + ": valid JSON for the schema", why)
            c.expect(f.content == json.dumps(json.loads(f.content) if ok else None,
                                          separators=(",", ":"), ensure_ascii=False)
                     or not ok, label + ": compact", f.content)


def random_schema(rng, depth=0):
    """A random schema over the keywords the engine enforces, small enough that a random
    model finishes it within its max_tokens."""
    kinds = ["integer", "string", "boolean", "enum", "null", "number"]
    if depth < 2:
        kinds += ["object", "array", "anyOf"]
    k = rng.choice(kinds)
    if k == "integer":
        lo = rng.randrange(-50, 50)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randrange(0, 200)}
    if k == "number":
        return {"type": "number", "minimum": -10, "maximum": 10}
    if k == "string":
        s = {"type": "string", "maxLength": rng.randrange(0, 6)}
        if rng.random() < 0.3:
            s = {"type": "string", "pattern": "^[a-z]{1,3}[0-9]?$"}
        elif rng.random() < 0.2:
            s = {"type": "string", "format": rng.choice(["date", "uuid", "time"])}
        return s
    if k == "boolean":
        return {"type": "boolean"}
    if k == "null":
        return {"type": "null"}
    if k == "enum":
        return {"enum": rng.sample(["a", "b c", 1, 2.5, True, None, "ü"], rng.randrange(1, 4))}
    if k == "array":
        return {"type": "array", "items": random_schema(rng, depth + 1),
                "minItems": 0, "maxItems": rng.randrange(1, 3)}
    if k == "anyOf":
        return {"anyOf": [random_schema(rng, depth + 1) for _ in range(rng.randrange(2, 3))]}
    names = rng.sample(["a", "bb", "c_d", "é", "e", "f"], rng.randrange(1, 4))
    props = {n: random_schema(rng, depth + 1) for n in names}
    return {"type": "object", "properties": props,
            "required": [n for n in names if rng.random() < 0.6],
            "additionalProperties": False}


def check_random_schemas(c, api, pb, jsonschema, n_schemas=12, n_samples=100):
    """Property-based: random schemas, several samples each at temperature 1.5 (16 requests
    in flight, so the scheduler batches them); every output that ends (STOP) parses and
    validates, and most do end."""
    import random
    from concurrent.futures import ThreadPoolExecutor
    rng = random.Random(2026)
    schemas = [random_schema(rng) for _ in range(n_schemas)]
    # the draft's own format checker ("time" is RFC 3339's, not draft 3's "HH:MM:SS")
    checker = getattr(jsonschema.Draft202012Validator, "FORMAT_CHECKER", None) \
        or jsonschema.FormatChecker()

    def one(job):
        k, seed = job
        return k, seed, generate(api, pb, pb.SamplingParams(
            temperature=1.5, seed=seed, max_tokens=160, json_schema=json.dumps(schemas[k])),
            text=f"random {k}")
    jobs = [(k, seed) for k in range(n_schemas) for seed in range(n_samples)]
    stopped = total = 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        for k, seed, f in pool.map(one, jobs):
            total += 1
            if f.finish_reason != pb.STOP:
                continue
            stopped += 1
            try:
                jsonschema.validate(json.loads(f.content), schemas[k], format_checker=checker)
                ok, why = True, ""
            except Exception as e:  # noqa: BLE001 - the failure is the finding
                ok, why = False, f"{e}: {f.content!r} for {json.dumps(schemas[k])}"
            c.expect(ok, f"random schema {k} seed {seed}: valid", why)
    c.expect(stopped >= total * 0.8, "random schemas: most outputs end within max_tokens",
             f"{stopped}/{total}")


def check_strict(c, api, pb):
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0,
                                                     "maximum": 9}}, "required": ["a"]}
    for seed in range(6):
        s = pb.SamplingParams(temperature=1.5, seed=seed, max_tokens=60,
                              json_schema=json.dumps(schema), json_strict=True)
        f = generate(api, pb, s)
        try:
            keys = sorted(json.loads(f.content))
        except ValueError:
            keys = None
        c.expect(keys == ["a"], f"json_strict seed {seed}: only the declared property", f.content)


def check_regex_ebnf_object(c, api, pb):
    rx = r"(yes|no|maybe) [0-9]{2,3}"
    for seed in range(6):
        f = generate(api, pb, pb.SamplingParams(temperature=1.5, seed=seed, max_tokens=40,
                                                regex=rx))
        c.expect(re.fullmatch(rx, f.content) is not None and f.finish_reason == pb.STOP,
                 f"regex seed {seed}", repr(f.content))
    ebnf = 'root ::= "(" expr ")"\nexpr ::= term (("+" | "*") term){0,3}\nterm ::= [1-9] | "(" expr ")"\n'
    for seed in range(6):
        f = generate(api, pb, pb.SamplingParams(temperature=1.5, seed=seed, max_tokens=60,
                                                ebnf=ebnf))
        ok = re.fullmatch(r"[()+*1-9]+", f.content) is not None and f.content.count("(") == f.content.count(")")
        if ok:
            try:
                eval(f.content, {"__builtins__": {}})  # balanced arithmetic over digits
            except SyntaxError:
                ok = False
        c.expect(ok and f.finish_reason == pb.STOP, f"ebnf seed {seed}", repr(f.content))
    for seed in range(6):
        f = generate(api, pb, pb.SamplingParams(temperature=1.5, seed=seed, max_tokens=80,
                                                json_object=True))
        try:
            ok = isinstance(json.loads(f.content), dict)
        except ValueError:
            ok = False
        c.expect(ok or f.finish_reason == pb.LENGTH, f"json_object seed {seed}: an object",
                 repr(f.content))


def check_reproducible(c, api, pb):
    s = pb.SamplingParams(temperature=1.2, seed=77, max_tokens=120,
                          json_schema=json.dumps(SCHEMAS[1]))
    a = generate(api, pb, s)
    items = [pb.BatchItem(input=pb.Input(text="Once upon a time"), sampling=s)]
    items += [pb.BatchItem(input=pb.Input(text=f"noise {i}"),
                           sampling=pb.SamplingParams(temperature=1.0, seed=i, max_tokens=30))
              for i in range(6)]
    r = api.SubmitBatch(pb.SubmitBatchRequest(batch_id="constrained-repro", items=items),
                        timeout=60)
    c.expect(r.created, "batch created")
    results = {x.index: x.result for x in
               api.StreamBatchResults(pb.StreamBatchResultsRequest(batch_id="constrained-repro"),
                                      timeout=120)}
    c.expect(list(results[0].token_ids) == list(a.token_ids),
             "a seeded constrained request gives the same ids alone and in a batch",
             f"{list(a.token_ids)} vs {list(results[0].token_ids)}")


def check_errors(c, grpc, api, pb):
    def code_of(sampling):
        try:
            generate(api, pb, sampling)
            return None, ""
        except grpc.RpcError as e:
            return e.code(), e.details()
    cases = [
        ("unsupported keyword", pb.SamplingParams(
            max_tokens=4, json_schema=json.dumps(
                {"type": "object", "properties": {"a": {"type": "string", "not": {"const": "x"}}}})),
         "/properties/a"),
        ("not JSON", pb.SamplingParams(max_tokens=4, json_schema="{oops"), ""),
        ("bad regex", pb.SamplingParams(max_tokens=4, regex="(ab"), ""),
        ("bad grammar", pb.SamplingParams(max_tokens=4, ebnf="root ::= missing_rule"), "missing_rule"),
    ]
    for label, s, needle in cases:
        code, details = code_of(s)
        c.expect(code == grpc.StatusCode.INVALID_ARGUMENT and needle in details,
                 f"{label}: INVALID_ARGUMENT naming the problem", f"{code} {details}")
    try:
        api.SubmitBatch(pb.SubmitBatchRequest(batch_id="constrained-bad", items=[
            pb.BatchItem(input=pb.Input(text="x"), sampling=pb.SamplingParams(max_tokens=2)),
            pb.BatchItem(input=pb.Input(text="y"), sampling=pb.SamplingParams(
                max_tokens=2, json_schema='{"type": "object", "not": {}}'))]),
            timeout=60)
        c.expect(False, "a batch with a bad schema is refused")
    except grpc.RpcError as e:
        c.expect(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "item 1" in e.details()
                 and "'not'" in e.details(),
                 "a batch with a bad schema is refused, naming the item and keyword",
                 f"{e.code()} {e.details()}")


def check_reasoning(c, api, pb):
    schema = SCHEMAS[0]
    for seed in range(3):
        req = pb.GenerateRequest(
            input=pb.Input(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Who?")])),
            sampling=pb.SamplingParams(temperature=1.0, seed=seed, max_tokens=60,
                                       json_schema=json.dumps(schema)))
        f = list(api.Generate(req, timeout=120))[-1].final
        c.expect(f.finish_reason in (pb.STOP, pb.LENGTH), f"chat + schema seed {seed}: finishes",
                 str(f.finish_reason))
        if f.finish_reason == pb.STOP and f.content:
            try:
                json.loads(f.content)
                ok = True
            except ValueError:
                ok = False
            c.expect(ok, f"chat + schema seed {seed}: the content after the reasoning is JSON",
                     repr(f.content))


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    try:
        import jsonschema
    except ImportError:
        serve_util.skip("python3-jsonschema missing")
    build_root = sys.argv[1]
    with serve_util.workdir() as tmp:
        stubs = serve_util.load_stubs(tmp)
        import grpc
        pb, pb_grpc = stubs[0], stubs[1]
        model = serve_util.tiny_model(os.path.join(build_root, "tools", "dsr1"), build_root)
        c = serve_util.Checks()
        cmd, env = serve_util.serve_cmd("serve", build_root, model, ["--workers", "2"])
        server = serve_util.Server(cmd, env)
        try:
            api = pb_grpc.Dsr1Stub(grpc.insecure_channel(server.target))
            check_schemas(c, api, pb, jsonschema)
            check_random_schemas(c, api, pb, jsonschema)
            check_strict(c, api, pb)
            check_regex_ebnf_object(c, api, pb)
            check_reproducible(c, api, pb)
            check_errors(c, grpc, api, pb)
            check_reasoning(c, api, pb)
        finally:
            c.expect(server.stop() == 0, "exit status 0", server.tail())
        return c.finish()


if __name__ == "__main__":
    sys.exit(main())
