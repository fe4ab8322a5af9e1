#!/usr/bin/env python3
"""A tiny GGUF model (llama architecture, 1 layer, random weights) carrying R1's tokenizer,
for the llama.cpp peer of `dsr1-bench grammar` (bench/grammar/peer_llamacpp.mjs): llama.cpp's
grammar sampler needs a loaded model for its vocabulary; the weights only produce logits to
mask and are never judged. Standard library only; writes GGUF version 3.

    python3 bench/grammar/make_gguf.py ../shared/golden/tokenizer/tokenizer.json /tmp/peers/r1-vocab.gguf
"""
import json
import random
import struct
import sys
from array import array

ALIGN = 32
T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR = 4, 5, 6, 7, 8, 9
N_EMBD, N_FF, N_HEAD = 64, 128, 2


def gstr(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def kv(key, typ, val):
    out = gstr(key) + struct.pack("<I", typ)
    if typ == T_U32:
        return out + struct.pack("<I", val)
    if typ == T_I32:
        return out + struct.pack("<i", val)
    if typ == T_F32:
        return out + struct.pack("<f", val)
    if typ == T_BOOL:
        return out + struct.pack("<?", val)
    if typ == T_STR:
        return out + gstr(val)
    elem, items = val
    out += struct.pack("<IQ", elem, len(items))
    if elem == T_STR:
        return out + b"".join(gstr(x) for x in items)
    return out + array("i", items).tobytes()


def main():
    src, dst = sys.argv[1], sys.argv[2]
    t = json.load(open(src, encoding="utf-8"))
    vocab = t["model"]["vocab"]
    added = {a["id"]: a for a in t["added_tokens"]}
    n = max(max(vocab.values()), max(added)) + 1
    tokens, types = [""] * n, [1] * n
    for s, i in vocab.items():
        tokens[i] = s
    for i, a in added.items():
        tokens[i] = a["content"]
        types[i] = 3 if a["special"] else 4  # CONTROL, USER_DEFINED
    for i in range(n):
        if not tokens[i]:
            tokens[i], types[i] = f"[UNUSED_{i}]", 5
    merges = t["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    meta = [
        kv("general.architecture", T_STR, "llama"),
        kv("general.name", T_STR, "r1-vocab-tiny"),
        kv("general.alignment", T_U32, ALIGN),
        kv("llama.context_length", T_U32, 4096),
        kv("llama.embedding_length", T_U32, N_EMBD),
        kv("llama.block_count", T_U32, 1),
        kv("llama.feed_forward_length", T_U32, N_FF),
        kv("llama.attention.head_count", T_U32, N_HEAD),
        kv("llama.attention.head_count_kv", T_U32, N_HEAD),
        kv("llama.rope.dimension_count", T_U32, N_EMBD // N_HEAD),
        kv("llama.attention.layer_norm_rms_epsilon", T_F32, 1e-6),
        kv("tokenizer.ggml.model", T_STR, "gpt2"),
        kv("tokenizer.ggml.pre", T_STR, "deepseek-v3"),
        kv("tokenizer.ggml.tokens", T_ARR, (T_STR, tokens)),
        kv("tokenizer.ggml.token_type", T_ARR, (T_I32, types)),
        kv("tokenizer.ggml.merges", T_ARR, (T_STR, merges)),
        kv("tokenizer.ggml.bos_token_id", T_U32, 0),
        kv("tokenizer.ggml.eos_token_id", T_U32, 1),
        kv("tokenizer.ggml.padding_token_id", T_U32, 2),
        kv("tokenizer.ggml.add_bos_token", T_BOOL, False),
        kv("tokenizer.ggml.add_eos_token", T_BOOL, False),
    ]
    E, F = N_EMBD, N_FF
    shapes = [  # GGUF dims: innermost first
        ("token_embd.weight", [E, n]),
        ("output_norm.weight", [E]),
        ("output.weight", [E, n]),
        ("blk.0.attn_norm.weight", [E]),
        ("blk.0.attn_q.weight", [E, E]),
        ("blk.0.attn_k.weight", [E, E]),
        ("blk.0.attn_v.weight", [E, E]),
        ("blk.0.attn_output.weight", [E, E]),
        ("blk.0.ffn_norm.weight", [E]),
        ("blk.0.ffn_gate.weight", [E, F]),
        ("blk.0.ffn_up.weight", [E, F]),
        ("blk.0.ffn_down.weight", [F, E]),
    ]
    rng = random.Random(20260101)
    block = array("f", [rng.gauss(0, 0.05) for _ in range(1 << 16)])
    infos, datas, off = [], [], 0
    for name, dims in shapes:
        count = 1
        for d in dims:
            count *= d
        if name.endswith("norm.weight"):
            data = array("f", [1.0] * count).tobytes()
        else:
            reps = block * (count // len(block) + 1)
            data = reps[:count].tobytes()
        infos.append(gstr(name) + struct.pack("<I", len(dims)) +
                     b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", 0, off))
        pad = (-len(data)) % ALIGN
        datas.append(data + b"\0" * pad)
        off += len(data) + pad
    head = b"GGUF" + struct.pack("<IQQ", 3, len(shapes), len(meta)) + b"".join(meta) + b"".join(infos)
    head += b"\0" * ((-len(head)) % ALIGN)
    with open(dst, "wb") as f:
        f.write(head)
        for d in datas:
            f.write(d)
    print(f"{dst}: {n} tokens, {len(merges)} merges, {off >> 20} MiB of weights")


if __name__ == "__main__":
    main()
