#!/usr/bin/env python3
"""Why the fast mode's outlier rows move: the router's margins on the golden prompts.

A numpy re-implementation of DeepSeek's reference forward pass (deepseek-ai/DeepSeek-V3
inference/model.py semantics: MLA with YaRN rope, noaux_tc sigmoid routing with groups,
shared experts; weights dequantised exactly: FP8 e4m3 x 128x128 block scales) for the
small checkpoints of ../shared/golden, run twice per prompt over the teacher-forced
sequence (prompt ids, then the reference's greedy ids):
  exact  float64 throughout; its logits are checked against the golden file (error in
         std units, as check_logits.py; ~1e-6 means this file computes what the
         reference computes);
  bf16   the same, with the inputs of every FP8 product rounded to bf16 (nearest even):
         the fast mode's rounding (not its summation order, which adds ~1e-7 relative);
         kv_b (absorbed, exact in the fast mode) is not rounded.
Per MoE layer and token it reports the router's margin, the smaller of
  - the expert gap: k-th minus (k+1)-th biased score (sigmoid + e_score_correction_bias)
    among the experts of the chosen groups, and
  - the group gap: topk_group-th minus (topk_group+1)-th group score (sum of the group's
    top-2 biased scores),
and the tokens whose chosen experts differ between the exact and the bf16 run (flips).
A flip at (layer, position p) moves that token's hidden state from that layer on, so row p
and, through attention in later layers, rows after p. With DUMPDIR (an engine's dumps, as
run_accuracy.sh keeps them with DSR1_ACCURACY_KEEP) it also prints the engine's row errors
beside the first flip of each prompt.

usage: router_margins.py GOLDEN.json MODEL_DIR [DUMPDIR] [--prompts a,b] [--all-tokens]
                         [--json OUT]
--json writes {"reached": {prompt: [rows a flip of the bf16 forward reaches]}}, which
accuracy.py --reached takes to report the rows no flip reaches apart.
Exit 1 when the exact forward is more than 1e-4 std from the golden logits on some row.
Takes ~30 s for tiny-a's six prompts.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np


def e4m3_table():
    t = np.zeros(256)
    for b in range(256):
        s, e, m = b >> 7, (b >> 3) & 15, b & 7
        if e == 15 and m == 7:
            v = float("nan")
        elif e == 0:
            v = m / 8 * 2.0**-6
        else:
            v = (1 + m / 8) * 2.0 ** (e - 7)
        t[b] = -v if s else v
    return t


class Checkpoint:
    def __init__(self, d):
        with open(os.path.join(d, "model.safetensors.index.json")) as f:
            self.map = json.load(f)["weight_map"]
        self.dir, self.headers, self.e4m3 = d, {}, e4m3_table()

    def raw(self, name):
        shard = self.map[name]
        path = os.path.join(self.dir, shard)
        if shard not in self.headers:
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                self.headers[shard] = (8 + n, json.loads(f.read(n)))
        base, h = self.headers[shard]
        info = h[name]
        a, b = info["data_offsets"]
        dt = {"F8_E4M3": np.uint8, "BF16": np.uint16, "F32": np.float32}[info["dtype"]]
        data = np.fromfile(path, dtype=dt, count=(b - a) // np.dtype(dt).itemsize,
                           offset=base + a)
        return info["dtype"], data.reshape(info["shape"])

    def get(self, name):
        """A weight as float64, FP8 ones dequantised with their block scales."""
        dt, w = self.raw(name)
        if dt == "BF16":
            return (w.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        if dt == "F32":
            return w.astype(np.float64)
        w = self.e4m3[w]
        _, s = self.raw(name + "_scale_inv")
        s = np.repeat(np.repeat(s.astype(np.float64), 128, 0), 128, 1)
        return w * s[: w.shape[0], : w.shape[1]]


def bf16(x):
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32).astype(np.float64)


class Model:
    def __init__(self, ckpt, cfg):
        self.c, self.cfg, self.cache = ckpt, cfg, {}
        dim = cfg["qk_rope_head_dim"]
        inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, dim, 2) / dim)
        rs = cfg.get("rope_scaling") or {}
        self.scale = (cfg["qk_nope_head_dim"] + dim) ** -0.5
        if rs.get("type") == "yarn":
            s, orig, th = rs["factor"], rs["original_max_position_embeddings"], cfg["rope_theta"]

            def cdim(rot):
                return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(th))

            lo = max(math.floor(cdim(rs["beta_fast"])), 0)
            hi = min(math.ceil(cdim(rs["beta_slow"])), dim - 1)
            hi = hi + 0.001 if lo == hi else hi
            ramp = np.clip((np.arange(dim // 2) - lo) / (hi - lo), 0, 1)
            inv = inv / s * ramp + inv * (1 - ramp)
            m_all = 0.1 * rs.get("mscale_all_dim", 1) * math.log(s) + 1
            m = 0.1 * rs.get("mscale", 1) * math.log(s) + 1
            self.scale *= m_all * m_all
            self.rope_m = m / m_all
        else:
            self.rope_m = 1.0
        self.inv_freq = inv

    def w(self, name):
        if name not in self.cache:
            self.cache[name] = self.c.get(name)
        return self.cache[name]

    def lin(self, x, name, rnd):
        return (bf16(x) if rnd else x) @ self.w(name).T

    def norm(self, x, name):
        eps = self.cfg["rms_norm_eps"]
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * self.w(name)

    def rope(self, x, pos):
        ang = pos[:, None] * self.inv_freq[None, :]
        c, s = np.cos(ang) * self.rope_m, np.sin(ang) * self.rope_m
        if x.ndim == 3:
            c, s = c[:, None, :], s[:, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
        return out

    def attn(self, x, p, rnd):
        cfg, T = self.cfg, x.shape[0]
        H, dn, dr, dv = (cfg["num_attention_heads"], cfg["qk_nope_head_dim"],
                         cfg["qk_rope_head_dim"], cfg["v_head_dim"])
        kvl = cfg["kv_lora_rank"]
        q = self.lin(self.norm(self.lin(x, p + "q_a_proj.weight", rnd), p + "q_a_layernorm.weight"),
                     p + "q_b_proj.weight", rnd).reshape(T, H, dn + dr)
        pos = np.arange(T, dtype=np.float64)
        q = np.concatenate([q[..., :dn], self.rope(q[..., dn:], pos)], axis=-1)
        kv = self.lin(x, p + "kv_a_proj_with_mqa.weight", rnd)
        c, kpe = self.norm(kv[:, :kvl], p + "kv_a_layernorm.weight"), self.rope(kv[:, kvl:], pos)
        kvb = (c @ self.w(p + "kv_b_proj.weight").T).reshape(T, H, dn + dv)
        k = np.concatenate([kvb[..., :dn], np.broadcast_to(kpe[:, None, :], (T, H, dr))], -1)
        s = np.einsum("thd,uhd->htu", q, k) * self.scale
        s = s + np.triu(np.full((T, T), -np.inf), 1)[None]
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("htu,uhd->thd", s, kvb[..., dn:]).reshape(T, H * dv)
        return self.lin(o, p + "o_proj.weight", rnd)

    def mlp(self, x, p, rnd):
        g, u = self.lin(x, p + "gate_proj.weight", rnd), self.lin(x, p + "up_proj.weight", rnd)
        return self.lin(g / (1 + np.exp(-g)) * u, p + "down_proj.weight", rnd)

    def route(self, x, p):
        """Chosen experts, their weights, the margin and which gap it is, per token."""
        cfg = self.cfg
        E, k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
        G, kg = cfg["n_group"], cfg["topk_group"]
        sc = 1 / (1 + np.exp(-(x @ self.w(p + "gate.weight").T)))
        b = sc + self.w(p + "gate.e_score_correction_bias")
        out = []
        for t in range(x.shape[0]):
            gs = np.sort(b[t].reshape(G, E // G), axis=1)[:, -2:].sum(1)
            order = np.argsort(-gs, kind="stable")
            allowed = np.zeros(E, bool)
            for g in order[:kg]:
                allowed[g * (E // G):(g + 1) * (E // G)] = True
            bb = np.where(allowed, b[t], -np.inf)
            idx = np.argsort(-bb, kind="stable")
            sel = idx[:k]
            egap = bb[idx[k - 1]] - bb[idx[k]]
            ggap = gs[order[kg - 1]] - gs[order[kg]]
            wts = sc[t, sel] / sc[t, sel].sum() * cfg["routed_scaling_factor"]
            out.append((frozenset(sel.tolist()), sel, wts,
                        min(egap, ggap), "expert" if egap <= ggap else "group"))
        return out

    def forward(self, ids, rnd):
        cfg = self.cfg
        x = self.w("model.embed_tokens.weight")[ids]
        routes = []
        for l in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."
            x = x + self.attn(self.norm(x, p + "input_layernorm.weight"), p + "self_attn.", rnd)
            h = self.norm(x, p + "post_attention_layernorm.weight")
            if l < cfg["first_k_dense_replace"]:
                x = x + self.mlp(h, p + "mlp.", rnd)
                routes.append(None)
                continue
            r = self.route(h, p + "mlp.")
            routes.append(r)
            y = self.mlp(h, p + "mlp.shared_experts.", rnd)
            for t, (_, sel, wts, _, _) in enumerate(r):
                for e, wt in zip(sel, wts):
                    y[t] += wt * self.mlp(h[t:t + 1], p + f"mlp.experts.{e}.", rnd)[0]
            x = x + y
        x = self.norm(x, "model.norm.weight")
        return x @ self.w("lm_head.weight").T, routes


def golden_err(rows, logits):
    errs = []
    for r, x in zip(rows, logits):
        m = x.max()
        lse = m + math.log(np.exp(x - m).sum())
        e = max(np.max(np.abs(x[r["top_ids"]] - np.array(r["top_logits"]))),
                abs(lse - r["logsumexp"])) / r["std"]
        errs.append(e)
    return np.array(errs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("golden")
    ap.add_argument("model")
    ap.add_argument("dumps", nargs="?")
    ap.add_argument("--prompts")
    ap.add_argument("--all-tokens", action="store_true", help="print every token's margins")
    ap.add_argument("--json", help="write per prompt the rows that a flip reaches")
    a = ap.parse_args()
    with open(a.golden) as f:
        g = json.load(f)
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    model = Model(Checkpoint(a.model), cfg)
    vocab = cfg["vocab_size"]
    names = a.prompts.split(",") if a.prompts else list(g["prompts"])
    all_margins, summary, worst, reached = [], [], 0.0, {}
    for name in names:
        p = g["prompts"][name]
        ids = np.array(p["ids"] + p["greedy"])
        rows = p["prefill"] + p["decode"]
        ex_logits, ex_routes = model.forward(ids, False)
        bf_logits, bf_routes = model.forward(ids, True)
        err = golden_err(rows, ex_logits)
        worst = max(worst, err.max())
        print(f"{name}: {len(ids)} tokens; this file's exact forward vs golden: max error "
              f"{err.max():.1e} std; bf16-rounded forward vs golden: median "
              f"{np.median(golden_err(rows, bf_logits)):.2e} std")
        flips = []
        for l, (re, rb) in enumerate(zip(ex_routes, bf_routes)):
            if re is None:
                continue
            for t in range(len(ids)):
                all_margins.append(re[t][3])
                if re[t][0] != rb[t][0]:
                    flips.append((l, t, re[t][3], re[t][4], sorted(re[t][0] - rb[t][0]),
                                  sorted(rb[t][0] - re[t][0])))
                if a.all_tokens:
                    print(f"  layer {l} pos {t:3d}: margin {re[t][3]:.2e} ({re[t][4]})")
        smallest = sorted((re[t][3], l, t) for l, re in enumerate(ex_routes) if re
                          for t in range(len(ids)))[:3]
        print("  smallest exact margins: " + ", ".join(
            f"{m:.1e} (layer {l}, pos {t})" for m, l, t in smallest))
        nl = cfg["num_hidden_layers"]
        # a flip is primary when no earlier layer flipped at this or an earlier position
        # (those reach this token through the residual stream or attention)
        prim = [not any(l2 < l and t2 <= t for l2, t2, *_ in flips) for l, t, *_ in flips]
        for (l, t, m, kind, out_, in_), pr in zip(flips, prim):
            print(f"  flip: layer {l} pos {t:3d}: exact margin {m:.2e} ({kind} gap); "
                  f"experts {out_} -> {in_}{'' if pr else ' (downstream of a flip above)'}")
        if not flips:
            print("  no expert choice differs between the exact and the bf16 forward")
        # rows a flip reaches: its own, and later ones unless it is in the last layer
        touched = np.zeros(len(ids), bool)
        for l, t, *_ in flips:
            touched[t] = True
            if l < nl - 1:
                touched[t:] = True
        reached[name] = [int(i) for i in np.nonzero(touched)[0]]
        if a.dumps:
            d = np.fromfile(os.path.join(a.dumps, name + ".f32"), dtype="<f4")
            d = d.reshape(len(rows), vocab).astype(np.float64)
            eng = golden_err(rows, d)
            sim = golden_err(rows, bf_logits)
            mark = lambda i: "*" if touched[i] else ""
            print("  engine row errors (std; * = reached by a flip of the bf16 forward): " +
                  " ".join(f"{e:.2f}{mark(i)}" for i, e in enumerate(eng)))
            print("  bf16 forward row errors: " +
                  " ".join(f"{e:.2f}{mark(i)}" for i, e in enumerate(sim)))
            for what, sel in (("reached", touched), ("not reached", ~touched)):
                if sel.any():
                    print(f"  engine error on rows {what} by a flip: median "
                          f"{np.median(eng[sel]):.3f}, max {eng[sel].max():.3f} ({sel.sum()} rows)")
            summary.append((name, eng, touched))
    m = np.array(all_margins)
    print(f"exact router margins over all MoE (layer, token): median {np.median(m):.2e}, "
          f"p5 {np.percentile(m, 5):.2e}, min {m.min():.2e}; "
          f"{int(np.sum(m < 2e-3))} of {m.size} below 2e-3")
    if summary:
        eng = np.concatenate([e for _, e, _ in summary])
        tch = np.concatenate([t for _, _, t in summary])
        big = eng > 0.2
        print(f"engine rows with error > 0.2 std: {big.sum()} of {eng.size}; "
              f"{(big & tch).sum()} of them reached by a flip of the bf16 forward; rows "
              f"not reached: median {np.median(eng[~tch]):.3f}, reached: "
              f"{np.median(eng[tch]) if tch.any() else float('nan'):.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"reached": reached}, f)
    if worst > 1e-4:
        print(f"FAIL: this file's exact forward is {worst:.1e} std from the golden logits: "
              "it does not compute what the reference computes")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
