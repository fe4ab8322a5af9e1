#!/usr/bin/env python3
"""Accuracy of an engine's logits against DeepSeek's reference (a golden file), per row.

The way llama.cpp's --kl-divergence reports quantisation loss, but against the golden
summaries of ../shared/golden (top-32 ids and logits, logsumexp, mean and std of every row
of the reference's teacher-forced run; see its README and check_logits.py). DUMPDIR holds
one raw little-endian float32 dump per prompt, DUMPDIR/<prompt>.f32, shape
[len(ids) + len(greedy), vocab], as `dsr1 run --dump-logits` writes it (run_accuracy.sh).

Per row, with g the golden top-32 logits of ids T, G its logsumexp (over the whole
vocabulary, from the golden file), s the golden row's std, x the engine's full row and
X = logsumexp(x) (computed here, float64):
  err   max(max_t |x_t - g_t|, |X - G|) / s: check_logits.py's error, in std units;
  KL    KL(P || Q) of the two distributions coarsened to 33 outcomes: the 32 golden top
        ids and "any other id". P_t = exp(g_t - G), Q_t = exp(x_t - X) for t in T (exact
        probabilities under each side's full distribution), P_rest = 1 - sum P_t,
        Q_rest = 1 - sum Q_t. KL = sum_t P_t log(P_t/Q_t) + P_rest log(P_rest/Q_rest), in
        nats. By the data-processing inequality this is a LOWER BOUND of the full-vocabulary
        KL that llama.cpp reports: it is blind to how the engine redistributes the mass
        among the ids outside the golden top-32 (the golden file does not have them).
  KLc   KL of the two distributions conditioned on the golden top-32 (each renormalised
        over those 32 ids): how the choice among the candidates that matter moves, whatever
        the rest of the vocabulary does (on a near-flat random model's row, where the top-32
        hold ~1% of the mass, KL above is small even when the logits move by one std);
  top1  whether the engine's argmax over the whole vocabulary is the golden top-1 id;
        margin = (g_1 - g_2) / s tells how decided the reference was;
  dp    Q_top1 - P_top1, the change of the golden top-1 id's probability.
Summary (all rows of all prompts, and per prompt): err median / p95 / max (p95: numpy's
linearly interpolated percentile), KL mean / median / p95 / max, top-1 agreement.

usage: accuracy.py GOLDEN.json DUMPDIR [--rows] [--bounds fast|exact|none|K=V,...]
                   [--reached FILE] [--json OUT] [--label TEXT]
--reached takes router_margins.py --json's file: the rows that an expert choice flipped by
bf16 rounding reaches (tiny-a's router has near-ties; docs/kernels.md). The rows it does
not list ("clean" rows) are summarised apart: their error is the fast mode's own, not a
flip's, so a bound there sees much smaller mistakes.
Exit 2 on a missing or malformed dump (NaN or inf included), 1 when a bound is passed
(bounds: err_median, err_p95, kl_median, kl_p95 and, with
--reached, clean_err_median, clean_kl_median at most; top1_min, the smallest fraction of
rows whose argmax must agree), else 0.
"""
import argparse
import json
import os
import sys

import numpy as np

# Bounds (docs/kernels.md, "Accuracy against the reference", has the measurements and the
# broken-kernel runs they were chosen from). "fast": the fast mode on tiny-a measured err
# median 0.074-0.094, p95 0.77-0.85, KL median 3.0e-6-5.2e-6, top-1 0.79-0.84, and on the
# 33 clean rows err median 0.025-0.030, KL median 3.6e-7-5.2e-7 (bf16-tiles on vdpbf16ps
# and on emulated AMX, with and without the bf16 cache, and the retired avx512-bf16); a
# kernel that gets one 16x32 tile of every FP8 product wrong measured err median 2.5, p95
# 3.8-4.0, KL median 3.2e-3-3.5e-3, top-1 0.07-0.08; one wrong tile of layer 2's shared
# expert down_proj alone, clean err median 0.091, clean KL median 4.5e-6. "exact": the
# exact mode measured err p95 1e-5, KL 1e-13, top-1 1.0.
BOUNDS = {
    "fast": {"err_median": 0.3, "err_p95": 2.0, "kl_median": 3e-5, "top1_min": 0.65,
             "clean_err_median": 0.06, "clean_kl_median": 2e-6},
    "exact": {"err_median": 1e-4, "err_p95": 1e-3, "kl_median": 1e-9, "top1_min": 0.97},
    "none": {},
}
NAMES = ("err_median", "err_p95", "kl_median", "kl_p95", "clean_err_median",
         "clean_kl_median")


def logsumexp(v):
    m = np.max(v)
    return m + np.log(np.sum(np.exp(v - m)))


def row_stats(r, x):
    """The per-row numbers described above; x is the engine's row (float64)."""
    ids = np.asarray(r["top_ids"], dtype=np.int64)
    g = np.asarray(r["top_logits"], dtype=np.float64)
    G, s = float(r["logsumexp"]), float(r["std"])
    X = float(logsumexp(x))
    xt = x[ids]
    err = max(float(np.max(np.abs(xt - g))), abs(X - G)) / s
    lp, lq = g - G, xt - X  # log P_t, log Q_t
    kl = float(np.sum(np.exp(lp) * (lp - lq)))
    # 1 - sum exp(l) without cancellation: -expm1(logsumexp(l))
    p_rest = -np.expm1(logsumexp(lp))
    q_rest = -np.expm1(logsumexp(lq))
    if p_rest > 0:
        kl += float(p_rest * (np.log(p_rest) - np.log(max(q_rest, 1e-300))))
    cp, cq = lp - logsumexp(lp), lq - logsumexp(lq)
    klc = float(np.sum(np.exp(cp) * (cp - cq)))
    top1 = int(np.argmax(x)) == int(ids[0])
    margin = (g[0] - g[1]) / s
    dp = float(np.exp(lq[0]) - np.exp(lp[0]))
    return {"err": err, "kl": max(kl, 0.0), "klc": max(klc, 0.0), "top1": top1, "margin": float(margin), "dp": dp,
            "p_top32": float(np.exp(logsumexp(lp)))}


def summarise(rows):
    e = np.array([r["err"] for r in rows])
    k = np.array([r["kl"] for r in rows])
    c = np.array([r["klc"] for r in rows])
    t = np.array([r["top1"] for r in rows])
    return {"rows": len(rows), "err_median": float(np.median(e)),
            "err_p95": float(np.percentile(e, 95)), "err_max": float(np.max(e)),
            "kl_mean": float(np.mean(k)), "kl_median": float(np.median(k)),
            "kl_p95": float(np.percentile(k, 95)), "kl_max": float(np.max(k)),
            "klc_median": float(np.median(c)), "klc_max": float(np.max(c)),
            "top1": int(np.sum(t)), "top1_frac": float(np.mean(t))}


def fmt(s):
    return (f"err median {s['err_median']:.2e} p95 {s['err_p95']:.2e} max {s['err_max']:.2e} | "
            f"KL mean {s['kl_mean']:.2e} median {s['kl_median']:.2e} p95 {s['kl_p95']:.2e} "
            f"max {s['kl_max']:.2e} | KLc median {s['klc_median']:.2e} max {s['klc_max']:.2e} | top-1 {s['top1']}/{s['rows']}")


def parse_bounds(spec):
    if spec in BOUNDS:
        return dict(BOUNDS[spec])
    b = {}
    for kv in spec.split(","):
        k, v = kv.split("=")
        if k not in NAMES + ("top1_min",):
            raise SystemExit(f"accuracy.py: unknown bound '{k}'")
        b[k] = float(v)
    return b


def check_bounds(s, b):
    """The bounds that s passes beyond, as text."""
    bad = []
    for k in NAMES:
        if k in b and k in s and not s[k] <= b[k]:
            bad.append(f"{k} {s[k]:.2e} > {b[k]:g}")
    if "top1_min" in b and not s["top1_frac"] >= b["top1_min"]:
        bad.append(f"top-1 {s['top1_frac']:.3f} < {b['top1_min']:g}")
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("golden")
    ap.add_argument("dumps")
    ap.add_argument("--rows", action="store_true", help="print every row")
    ap.add_argument("--bounds", default="none")
    ap.add_argument("--json")
    ap.add_argument("--label", default="")
    ap.add_argument("--reached")
    a = ap.parse_args()
    bounds = parse_bounds(a.bounds)
    with open(a.golden) as f:
        g = json.load(f)
    vocab = g["model_config"]["vocab_size"]
    reached = None
    if a.reached:
        with open(a.reached) as f:
            reached = {k: set(v) for k, v in json.load(f)["reached"].items()}
    every, per_prompt = [], {}
    for name, p in g["prompts"].items():
        rows = p["prefill"] + p["decode"]
        path = os.path.join(a.dumps, name + ".f32")
        if not os.path.isfile(path):
            print(f"FAIL: {path}: no such dump")
            return 2
        data = np.fromfile(path, dtype="<f4")
        if data.size != len(rows) * vocab:
            print(f"FAIL: {path}: {data.size} floats, expected {len(rows)} rows x {vocab}")
            return 2
        data = data.reshape(len(rows), vocab)
        if not np.all(np.isfinite(data)):
            print(f"FAIL: {path}: NaN or inf")
            return 2
        out = []
        for i, r in enumerate(rows):
            x = data[i].astype(np.float64)
            st = row_stats(r, x)
            st.update(prompt=name, row=i, phase="prefill" if i < len(p["prefill"]) else "decode",
                      pos=i, clean=None if reached is None else i not in reached.get(name, ()))
            out.append(st)
            if a.rows:
                print(f"  {name:7s} row {i:3d} {st['phase']:7s} err {st['err']:.2e} "
                      f"KL {st['kl']:.2e} KLc {st['klc']:.2e} top1 {'ok ' if st['top1'] else 'NO '} "
                      f"margin {st['margin']:.3f} dp {st['dp']:+.1e}"
                      f"{' (a flip reaches it)' if st['clean'] is False else ''}")
        per_prompt[name] = summarise(out)
        every += out
    label = f" [{a.label}]" if a.label else ""
    for name, s in per_prompt.items():
        print(f"{name:7s} {s['rows']:3d} rows: {fmt(s)}")
    total = summarise(every)
    if reached is not None:
        clean = [r for r in every if r["clean"]]
        if clean:
            c = summarise(clean)
            total["clean_rows"] = c["rows"]
            total["clean_err_median"], total["clean_kl_median"] = c["err_median"], c["kl_median"]
            print(f"clean   {c['rows']:3d} rows (no flip reaches them): {fmt(c)}")
    bad = check_bounds(total, bounds)
    print(f"{'FAIL' if bad else 'ok'}{label}: all {fmt(total)}")
    if bad:
        print("  beyond the bounds: " + "; ".join(bad))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"label": a.label, "summary": total, "prompts": per_prompt,
                       "rows": every, "bounds": bounds}, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError, KeyError) as e:  # a missing or malformed file: not a bound
        print(f"FAIL: accuracy.py: {e!r}")
        sys.exit(2)
