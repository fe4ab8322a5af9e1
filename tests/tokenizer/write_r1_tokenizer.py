#!/usr/bin/env python3
"""Write DeepSeek-R1's tokenizer.json and tokenizer_config.json into OUT_DIR by running
make_tiny.py's own write_tokenizer (and R1_TEMPLATE) from GOLDEN_DIR, without importing
make_tiny (its top level needs numpy). Used by scripts that need only the tokenizer files.

usage: write_r1_tokenizer.py GOLDEN_DIR OUT_DIR
"""
import ast
import json
import os
import sys

golden, out = sys.argv[1], sys.argv[2]
path = os.path.join(golden, "make_tiny.py")
tree = ast.parse(open(path, encoding="utf-8").read(), path)
keep = [n for n in tree.body if isinstance(n, ast.FunctionDef)
        and n.name in ("write_tokenizer", "R1_TEMPLATE")]
ns = {"json": json, "os": os, "HERE": golden}
exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), ns)
os.makedirs(out, exist_ok=True)
ns["write_tokenizer"](out)
