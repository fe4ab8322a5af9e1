#!/usr/bin/env python3
"""`dsr1 grammar` end to end: exit statuses, messages, --print, check's token walk.

    check_grammar_cli.py DSR1_EXE GOLDEN_DIR      (exit 77 without GOLDEN_DIR/tokenizer)
"""
import os
import subprocess
import sys
import tempfile

dsr1, golden = sys.argv[1], sys.argv[2]
tok = os.path.join(golden, "tokenizer")
if not os.path.exists(os.path.join(tok, "tokenizer.json")):
    print("skipped: no", tok)
    sys.exit(77)
tmp = tempfile.mkdtemp()
failures = 0


def write(name, text):
    path = os.path.join(tmp, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def run(*args):
    p = subprocess.run([dsr1, "grammar", *args], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def expect(what, got_rc, want_rc, text, needle):
    global failures
    if got_rc != want_rc or needle not in text:
        failures += 1
        print(f"FAIL {what}: exit {got_rc} (want {want_rc}), output lacks {needle!r}:\n{text}")


person = write("person.json", '{"type":"object","properties":{"name":{"type":"string"},'
               '"age":{"type":"integer","minimum":0,"maximum":150}},'
               '"required":["name","age"],"additionalProperties":false}')
rc, out, err = run("compile", "--schema", person)
expect("compile", rc, 0, out, "ok: ")
rc, out, err = run("compile", "--schema", person, "--print")
expect("compile --print", rc, 0, out, 'root ::= "{\\"name\\":"')
bad = write("bad.json", '{"properties":{"a":{"patternProperties":{"x":{"type":"integer"}}}}}')
rc, out, err = run("compile", "--schema", bad)
expect("unsupported keyword", rc, 2, err, "unsupported keyword 'patternProperties' at /properties/a")
broken = write("broken.json", '{"type":\n  "object",}')
rc, out, err = run("compile", "--schema", broken)
expect("JSON syntax", rc, 2, err, "line 2 column")
rc, out, err = run("compile", "--regex", "[a-z]+(")
expect("bad regex", rc, 2, err, "--regex")
rc, out, err = run("compile")
expect("no grammar", rc, 2, err, "exactly one of")
rc, out, err = run("check", "--schema", person, "--instance", person)
expect("check without model", rc, 2, err, "--model DIR")
rc, out, err = run("--help")
expect("help", rc, 0, out, "exit status")

# members out of order and with whitespace: re-serialised in schema order, accepted
ok = write("ok.json", '{ "age": 33, "name": "Ann \\"the\\" 1st" }')
rc, out, err = run("check", "--schema", person, "--instance", ok, "--model", tok)
expect("check valid", rc, 0, out, "accepted: ")
expect("mask times", rc, 0, out, "mask time per token (us): p50")
old = write("old.json", '{"name": "x", "age": 151}')
rc, out, err = run("check", "--schema", person, "--instance", old, "--model", tok)
expect("check invalid", rc, 1, out, "rejected: token")
extra = write("extra.json", '{"name": "x", "age": 1, "z": 0}')
rc, out, err = run("check", "--schema", person, "--instance", extra, "--model", tok)
expect("additional member", rc, 1, out, "rejected: token")
short = write("short.json", '{"name": "x"}')
rc, out, err = run("check", "--schema", person, "--instance", short, "--model", tok)
expect("missing member", rc, 1, out, "rejected: token")
# --raw: the bytes as they are (whitespace refused without --whitespace)
rc, out, err = run("check", "--schema", person, "--instance", ok, "--model", tok, "--raw")
expect("raw with spaces", rc, 1, out, "rejected: token 1 of")
spaced = write("spaced.json", '{ "name" : "Ann",\n  "age": 7 }')
rc, out, err = run("check", "--schema", person, "--instance", spaced, "--model", tok, "--raw",
                   "--whitespace")
expect("raw with --whitespace", rc, 0, out, "accepted: ")
phone = write("phone.txt", "555-0123")
rc, out, err = run("check", "--regex", "[0-9]{3}-[0-9]{4}", "--instance", phone, "--model", tok,
                   "--raw")
expect("regex", rc, 0, out, "accepted: ")
phone2 = write("phone2.txt", "555-01234")
rc, out, err = run("check", "--regex", "[0-9]{3}-[0-9]{4}", "--instance", phone2, "--model", tok,
                   "--raw")
expect("regex too long", rc, 1, out, "rejected")
ebnf = write("g.ebnf", 'root ::= "yes" | "no"\n')
no = write("no.txt", "no")
rc, out, err = run("check", "--ebnf", ebnf, "--instance", no, "--model", tok, "--raw")
expect("ebnf", rc, 0, out, "accepted: ")
rc, out, err = run("check", "--json-object", "--instance", ok, "--model", tok)
expect("json-object", rc, 0, out, "accepted: ")

print("ok" if not failures else f"{failures} failure(s)")
sys.exit(1 if failures else 0)
