// XGrammar (its WebAssembly build, npm @mlc-ai/web-xgrammar) on the instances of
// `dsr1-bench grammar --dump FILE`: each schema compiled on R1's vocabulary, each instance's
// token ids (from our tokenizer) walked with a GrammarMatcher, timing the token bitmask
// fill before each token and before end of sequence, on one thread. The grammar is set to
// the language our engine generates: compact JSON on one line (no free whitespace,
// separators "," and ":"), additionalProperties as JSON Schema says (strictMode false);
// --any-whitespace 1 gives XGrammar's default (any whitespace) instead.
//
//   node bench/grammar/peer_xgrammar.mjs --tokens DUMP --schemas DIR \
//        --tokenizer ../shared/golden/tokenizer/tokenizer.json [--json] \
//        [--module /tmp/peers/node_modules/@mlc-ai/web-xgrammar/lib/index.js]
import { createRequire } from "node:module";
import path from "node:path";
import { parseArgs, vocabStrings, readDump, schemaText, now, cpu, cpuOverhead, Results, runTests } from "./peer_common.mjs";

const o = parseArgs(process.argv.slice(2),
  { module: "/tmp/peers/node_modules/@mlc-ai/web-xgrammar/lib/index.js", "any-whitespace": "0" });
// The package's emscripten loader expects CommonJS globals when it runs under node.
globalThis.require = createRequire(o.module);
globalThis.__filename = o.module;
globalThis.__dirname = path.dirname(o.module);
// Its UMD wrapper, loaded as an ES module, leaves the exports in globalThis.xgrammar.
const mod = await import(o.module);
const xg = mod.TokenizerInfo ? mod : globalThis.xgrammar;
const dump = readDump(o.tokens, o.onlyOurs);
const head = (await dump.next()).value;
const { strings } = vocabStrings(o.tokenizer, head.vocab);
const info = await xg.TokenizerInfo.createTokenizerInfo(strings, "byte_level", false, head.vocab, [head.eos]);
const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false); // no cache across schemas
const anyWs = o["any-whitespace"] === "1";
const res = new Results();
const cpuOver = cpuOverhead();
let n = 0;
for await (const s of dump) {
  if (o.limit && n >= o.limit) break;
  n++;
  res.files++;
  let cg;
  const text = schemaText(o.schemas, s.file);
  const t0 = now();
  try {
    cg = anyWs ? await compiler.compileJSONSchema(text, true, -1, [",", ":"], false)
               : await compiler.compileJSONSchema(text, false, -1, [",", ":"], false);
  } catch (e) {
    res.error(s.file, e && e.message ? e.message : typeof e === "number" ? "wasm exception" : String(e));
    if (o.verbose) console.error(`${s.file}: compile: ${e && e.message ? e.message : e}`);
    continue;
  }
  res.compile.push(now() - t0);
  res.compiled++;
  await runTests(o, res, s.file, s.tests, async (ids, budget) => {
    const m = await xg.GrammarMatcher.createGrammarMatcher(cg, [head.eos]);
    const h = m.handle;
    let spent = 0, ok = true, at = 0, outOfTime = false;
    for (let i = 0; i <= ids.length; i++) {
      const id = i < ids.length ? ids[i] : head.eos;
      const c1 = cpu(), t1 = now();
      const mask = h.GetNextTokenBitmask(head.vocab); // std::vector<int32_t>: bit set = allowed
      const dt = now() - t1;
      res.maskCpu.push(Math.max(0, cpu() - c1 - cpuOver));
      spent += dt;
      res.mask.push(dt);
      const allowed = (mask.get(id >>> 5) >>> (id & 31)) & 1;
      mask.delete();
      if (!allowed || !m.acceptToken(id)) { ok = false; at = i; break; }
      if (spent > budget) { ok = false; outOfTime = true; break; }
    }
    m.dispose();
    return { ok, at, spent, outOfTime };
  });
  cg.dispose();
}
info.dispose();
res.report(o, "xgrammar (web-xgrammar, wasm)", { cpu_clock_overhead_us: 1e6 * cpuOver });
