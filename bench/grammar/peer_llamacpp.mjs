// llama.cpp's grammar sampler (through npm node-llama-cpp's prebuilt CPU binaries) on the
// instances of `dsr1-bench grammar --dump FILE`. llama.cpp computes token masks only inside
// sampling, with a loaded model's vocabulary: the model is a tiny GGUF that carries R1's
// tokenizer and random weights (bench/grammar/make_gguf.py). One token is decoded once for
// logits; then before each instance token the sampler runs over those logits with the
// grammar (llama.cpp's grammar apply over the 128,815 candidates: its "mask"), and the
// instance token is checked (canBeNextToken) and accepted into the grammar state. The time
// per token is that of sampleToken minus the median of the same call without a grammar
// (measured first: candidate setup and node's worker-thread round trip), reported as
// mask_us; the raw times are in raw_mask_us. JSON Schema goes through node-llama-cpp's own
// JSON-schema-to-GBNF converter (getGbnfGrammarForGbnfJsonSchema, what its
// createGrammarForJsonSchema uses: a subset of JSON Schema), less the four newlines that it
// appends to the root rule as its own stop trigger (the instances end with end of sequence
// instead); compile time = conversion + GBNF parse + the grammar sampler's creation.
// llama.cpp's sampling accepts the sampled token into the grammar state, so each timed call
// samples on a copy of the state (copied outside the timing).
//
//   python3 bench/grammar/make_gguf.py ../shared/golden/tokenizer/tokenizer.json /tmp/peers/r1-vocab.gguf
//   node bench/grammar/peer_llamacpp.mjs --tokens DUMP --schemas DIR \
//        --tokenizer ../shared/golden/tokenizer/tokenizer.json --gguf /tmp/peers/r1-vocab.gguf [--json]
import fs from "node:fs";
import path from "node:path";
import { parseArgs, readDump, now, cpu, Results, runTests } from "./peer_common.mjs";

const o = parseArgs(process.argv.slice(2),
  { module: "/tmp/peers/node_modules/node-llama-cpp/dist/index.js", gguf: "/tmp/peers/r1-vocab.gguf", ctl: "" });
if (!o.ctl) { // the id of the byte-level token for 0x01 ("\u0101")
  const t = JSON.parse(fs.readFileSync(o.tokenizer, "utf8"));
  o.ctl = String(t.model.vocab["\u0101"]);
}
const nlc = await import(o.module);
const { getGbnfGrammarForGbnfJsonSchema } = await import(
  path.join(path.dirname(o.module), "utils/gbnfJson/getGbnfGrammarForGbnfJsonSchema.js"));
const llama = await nlc.getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath: o.gguf, gpuLayers: 0 });
const context = await model.createContext({ contextSize: 256, sequences: 1, batchSize: 8, threads: 1 });
const ctx = context._ctx;
const B = llama._bindings;
ctx.initBatch(1);
const [logitIndex] = ctx.addToBatch(0, 0, Uint32Array.of(0), Uint32Array.of(0));
await ctx.decodeBatch();
const sampler = new B.AddonSampler(model._model);

// Greedy sampling with a grammar first takes the best token and checks only that one
// against the grammar; the whole vocabulary is masked when it is refused. A large bias on
// the byte 0x01 (never valid in JSON text) makes the best token always refused, so every
// timed call masks the whole vocabulary, as a sampler must when the model's favourite token
// is out of the grammar.
const ctl = Number(o.ctl);
const force = { tokenBiasKeys: Uint32Array.of(ctl), tokenBiasValues: Float32Array.of(1000) };
// The cost of sampleToken itself (no grammar): subtracted from every timed call.
sampler.applyConfig({ temperature: 0, ...force });
const base = [], baseCpu = [];
for (let i = 0; i < 200; i++) {
  const c0 = cpu(), t0 = now();
  await ctx.sampleToken(logitIndex, sampler);
  base.push(now() - t0);
  baseCpu.push(cpu() - c0);
}
base.sort((a, b) => a - b);
baseCpu.sort((a, b) => a - b);
const overhead = base[base.length >> 1], overheadCpu = baseCpu[baseCpu.length >> 1];

const dump = readDump(o.tokens, o.onlyOurs);
const head = (await dump.next()).value;
const res = new Results();
const raw = [];
let n = 0;
for await (const s of dump) {
  if (o.limit && n >= o.limit) break;
  n++;
  res.files++;
  const schema = JSON.parse(fs.readFileSync(path.join(o.schemas, s.file), "utf8")).schema;
  let grammar;
  const t0 = now();
  try {
    const gbnf = getGbnfGrammarForGbnfJsonSchema(schema).replace(/ "\\n\\n\\n\\n" \[\\n\]\*$/m, "");
    grammar = await llama.createGrammar({ grammar: gbnf });
    new nlc.LlamaGrammarEvaluationState({ model, grammar }); // parse + sampler creation
  } catch (e) {
    res.error(s.file, e && e.message ? e.message : String(e));
    if (o.verbose) console.error(`${s.file}: compile: ${e && e.message ? e.message : e}`);
    continue;
  }
  res.compile.push(now() - t0);
  res.compiled++;
  await runTests(o, res, s.file, s.tests, async (ids, budget) => {
    const st = new nlc.LlamaGrammarEvaluationState({ model, grammar });
    let spent = 0, ok = true, at = 0, outOfTime = false;
    for (let i = 0; i <= ids.length; i++) {
      const id = i < ids.length ? ids[i] : head.eos;
      const copy = new B.AddonGrammarEvaluationState(st._state);
      sampler.applyConfig({ temperature: 0, grammarEvaluationState: copy, ...force });
      const c1 = cpu(), t1 = now();
      await ctx.sampleToken(logitIndex, sampler);
      const dt = now() - t1;
      res.maskCpu.push(Math.max(0, cpu() - c1 - overheadCpu));
      spent += dt;
      raw.push(dt);
      res.mask.push(Math.max(0, dt - overhead));
      if (!B.AddonSampler.canBeNextTokenForGrammarEvaluationState(st._state, id)) { ok = false; at = i; break; }
      if (i < ids.length) B.AddonSampler.acceptGrammarEvaluationStateToken(st._state, id);
      if (spent > budget) { ok = false; outOfTime = true; break; }
    }
    return { ok, at, spent, outOfTime };
  });
}
raw.sort((a, b) => a - b);
const pr = (p) => (raw.length ? 1e6 * raw[Math.min(raw.length - 1, Math.floor(p * raw.length))] : 0);
res.report(o, "llama.cpp grammar (node-llama-cpp)", {
  sample_overhead_us: 1e6 * overhead, sample_overhead_cpu_us: 1e6 * overheadCpu,
  raw_mask_us: { p50: pr(0.5), p90: pr(0.9), p99: pr(0.99), max: raw.length ? 1e6 * raw[raw.length - 1] : 0 },
});
if (!o.json) console.log(`\n  sampleToken without grammar (subtracted): ${(1e6 * overhead).toFixed(1)} us`);
process.exit(0);
