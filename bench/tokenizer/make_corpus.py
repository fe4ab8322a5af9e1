#!/usr/bin/env python3
"""Write the tokenizer benchmark corpus: a JSON array of documents (~4 MB of UTF-8 in
all) mixing English prose, source code, Chinese, Japanese, Russian, emoji, numbers,
markdown and chat-formatted text with special tokens, plus every string of
tokenizer-cases.json. Deterministic (fixed seed), so every run measures the same text.

usage: make_corpus.py GOLDEN_DIR OUT.json [MEGABYTES]
"""
import json
import random
import sys

WORDS = """the of and to in is that it for was on are as with his they at be this from have or
by one had not but what all were when we there can an your which their said if do will each
about how up out them then she many some so these would other into has more her two like him
see time could no make than first been its who now people my made over did down only way find
use may water long little very after words called just where most know model token inference
engine expert layer attention cache latency throughput memory network server request response
reasoning answer question because through between however although quickly carefully""".split()
IDENTS = "x y i j n idx count total value result buffer config tensor weight scale offset".split()


def english(r):
    out = []
    for _ in range(r.randint(3, 12)):
        words = [r.choice(WORDS) for _ in range(r.randint(5, 25))]
        words[0] = words[0].capitalize()
        if r.random() < 0.3:
            words.insert(r.randint(1, len(words)), str(r.randint(0, 100000)))
        out.append(" ".join(words) + r.choice([".", ".", "!", "?", ";"]))
    return " ".join(out)


def code(r):
    lines = []
    for _ in range(r.randint(5, 30)):
        a, b = r.choice(IDENTS), r.choice(IDENTS)
        lines.append(r.choice([
            f"    {a} = {b} * {r.randint(0, 999)} + {a}",
            f"    for {a} in range(len({b})):",
            f"        if {a}[{r.randint(0, 9)}] != {b}: return None",
            f"static int {a}_{b}(const float *{a}, size_t n) {{ return (int)n; }}",
            f"    // {english(r)[:60]}",
            f"    {a}->{b} = malloc(sizeof(*{a}) * {r.randint(1, 64)});",
            f"def {a}_{b}({a}, {b}=None):",
        ]))
    return "\n".join(lines) + "\n"


def chinese(r):
    chars = "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生"
    punct = "，。！？、；："
    s = []
    for _ in range(r.randint(20, 200)):
        s.append("".join(r.choice(chars) for _ in range(r.randint(2, 12))))
        s.append(r.choice(punct))
    return "".join(s)


def mixed(r):
    parts = [
        "日本語のテキストとカタカナ、ひらがなを混ぜた文章です。",
        "Привет, мир! Это тест токенизатора.",
        "🚀🔥✨ emoji " + "".join(r.choice("😀😂🥲👍🎉🚀🔥") for _ in range(r.randint(1, 8))),
        "# Heading\n\n- item **bold** `code` [link](https://example.com/a?b=c)\n",
        "$$\\int_0^1 x^{2} dx = \\frac{1}{3}$$ and 3.14159, 2.71828, 1,000,000",
        "<｜begin▁of▁sentence｜><｜User｜>" + english(r)[:200] + "<｜Assistant｜><think>\n"
        + english(r)[:300] + "\n</think>\n\n" + english(r)[:200] + "<｜end▁of▁sentence｜>",
    ]
    return "\n".join(r.choice(parts) for _ in range(r.randint(2, 6)))


def main():
    golden, out = sys.argv[1], sys.argv[2]
    target = float(sys.argv[3]) if len(sys.argv) > 3 else 4.0
    r = random.Random(20250528)
    cases = json.load(open(f"{golden}/tokenizer-cases.json", encoding="utf-8"))["cases"]
    docs = [c["text"] for c in cases if c["text"]]
    size = sum(len(d.encode()) for d in docs)
    makers = [english, english, english, code, code, chinese, mixed]
    while size < target * 1e6:
        doc = "\n\n".join(r.choice(makers)(r) for _ in range(r.randint(1, 4)))
        docs.append(doc)
        size += len(doc.encode())
    r.shuffle(docs)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(docs, f, ensure_ascii=False)
    print(f"{out}: {len(docs)} documents, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
