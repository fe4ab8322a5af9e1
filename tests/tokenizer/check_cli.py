#!/usr/bin/env python3
"""Check `dsr1 tokenize`, `dsr1 detokenize` and `dsr1 chat-template --ids` from the
outside: golden cases through --text and stdin, --json, streaming and batch decoding,
exit codes and messages for bad input.

usage: check_cli.py DSR1_BINARY GOLDEN_DIR      (exit 77 without the golden files)
"""
import ast
import json
import os
import subprocess
import sys
import tempfile


def write_r1_tokenizer(golden, out):
    """make_tiny.py's write_tokenizer, without importing the module (which needs numpy)."""
    path = os.path.join(golden, "make_tiny.py")
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    keep = [n for n in tree.body
            if isinstance(n, ast.FunctionDef) and n.name in ("write_tokenizer", "R1_TEMPLATE")]
    ns = {"json": json, "os": os, "HERE": golden}
    exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), ns)
    ns["write_tokenizer"](out)


def main():
    dsr1, golden = sys.argv[1], sys.argv[2]
    cases_path = os.path.join(golden, "tokenizer-cases.json")
    if not os.path.exists(cases_path):
        print(f"skip: {cases_path} not found")
        return 77
    cases = json.load(open(cases_path, encoding="utf-8"))["cases"]
    failures, checks = [], 0

    def expect(label, ok, detail=""):
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(f"{label} {detail}")

    with tempfile.TemporaryDirectory() as model:
        write_r1_tokenizer(golden, model)

        def run(args, stdin=b""):
            return subprocess.run([dsr1] + args, input=stdin, capture_output=True)

        for i, c in enumerate(cases[::20]):
            want = ",".join(map(str, c["ids"])) + "\n"
            text = c["text"].encode()
            r = run(["tokenize", "--model", model], stdin=text)
            expect(f"tokenize stdin case {i}", r.returncode == 0 and r.stdout.decode() == want,
                   repr(r.stdout[:100]))
            if "\0" not in c["text"] and c["text"]:
                r = run(["tokenize", "--model", model, "--text", c["text"], "--json"])
                expect(f"tokenize --json case {i}", r.returncode == 0 and
                       json.loads(r.stdout) == {"ids": c["ids"]}, repr(r.stdout[:100]))
            if c["ids"]:
                ids = ",".join(map(str, c["ids"]))
                for extra in ([], ["--stream"]):
                    r = run(["detokenize", "--model", model, "--ids", ids] + extra)
                    expect(f"detokenize {extra} case {i}",
                           r.returncode == 0 and r.stdout == c["decoded"].encode(),
                           repr(r.stdout[:100]))
        r = run(["detokenize", "--model", model, "--skip-special"], stdin=b"[0, 19923, 1]")
        expect("detokenize stdin --skip-special", r.returncode == 0 and r.stdout == b"Hello",
               repr(r.stdout))
        r = run(["detokenize", "--model", model, "--ids", "1,999999"])
        expect("detokenize out of range", r.returncode == 1 and b"999999" in r.stderr, r.stderr)
        r = run(["detokenize", "--model", model, "--ids", "1,x"])
        expect("detokenize garbage", r.returncode == 2, r.stderr)
        r = run(["tokenize", "--model", model], stdin=b"ok \xff bad")
        expect("tokenize invalid UTF-8", r.returncode == 1 and b"not valid UTF-8 at byte 3"
               in r.stderr, r.stderr)
        r = run(["tokenize", "--text", "x"])
        expect("tokenize without --model", r.returncode == 2, r.stderr)
        r = run(["tokenize", "--model", "/nonexistent", "--text", "x"])
        expect("tokenize bad model", r.returncode == 1 and b"cannot open" in r.stderr, r.stderr)

        msgs = os.path.join(model, "m.json")
        with open(msgs, "w", encoding="utf-8") as f:
            json.dump([{"role": "user", "content": "What is 2+2?"}], f)
        prompt = run(["chat-template", "--model", model, "--messages", msgs])
        ids = run(["chat-template", "--model", model, "--messages", msgs, "--ids"])
        direct = run(["tokenize", "--model", model], stdin=prompt.stdout)
        expect("chat-template --ids", prompt.returncode == 0 and ids.returncode == 0 and
               ids.stdout == direct.stdout and ids.stdout.startswith(b"0,128803,"),
               repr(ids.stdout))
        expect("chat-template ends with <think>", prompt.stdout.endswith("<｜Assistant｜><think>\n"
                                                                        .encode()))
        r = run(["chat-template", "--model", model, "--messages", msgs, "--no-generation-prompt"])
        expect("chat-template --no-generation-prompt",
               r.stdout == "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?".encode(), repr(r.stdout))

    for f in failures:
        print("FAIL", f)
    print(f"{checks - len(failures)}/{checks} CLI checks pass")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
