// Shared by the peers' drivers of `dsr1-bench grammar` (peer_xgrammar.mjs,
// peer_llamacpp.mjs): reads the token dump that `dsr1-bench grammar --dump FILE` writes (the
// same instances, serialised and tokenized by our tokenizer, so every engine walks the same
// token ids), the schema files, and prints the same report as bench/grammar.c (nearest-rank
// percentiles, shares, errors by kind). Benchmark-time only: the peers are installed with
// npm outside the repository (docs/benchmarks.md, "Grammar engine").
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";

export function parseArgs(argv, extra = {}) {
  const o = { tokens: null, schemas: null, tokenizer: null, budget: 2, limit: 0, json: false,
              verbose: false, onlyOurs: false, ...extra };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} wants a value`);
      return argv[++i];
    };
    if (a === "--tokens") o.tokens = val();
    else if (a === "--schemas") o.schemas = val();
    else if (a === "--tokenizer") o.tokenizer = val();
    else if (a === "--budget") o.budget = Number(val());
    else if (a === "--limit") o.limit = Number(val());
    else if (a === "--json") o.json = true;
    else if (a === "--verbose") o.verbose = true;
    else if (a === "--only-ours") o.onlyOurs = true; // the schemas our engine compiled
    else if (a.startsWith("--") && a.slice(2) in extra) o[a.slice(2)] = val();
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.tokens || !o.schemas || !o.tokenizer)
    throw new Error("usage: --tokens DUMP --schemas DIR --tokenizer tokenizer.json " +
                    "[--limit N] [--budget S] [--json] [--verbose]");
  return o;
}

// Every id's token string as tokenizer.json writes it (byte-level form; added tokens as
// their content), for vocab ids 0 .. n-1.
export function vocabStrings(tokenizerJson, n) {
  const t = JSON.parse(fs.readFileSync(tokenizerJson, "utf8"));
  const out = new Array(n).fill("");
  for (const [s, id] of Object.entries(t.model.vocab)) if (id < n) out[id] = s;
  const special = new Set();
  for (const a of t.added_tokens) if (a.id < n) { out[a.id] = a.content; if (a.special) special.add(a.id); }
  return { strings: out, special, merges: t.model.merges };
}

// Yields the dump's header, then one {file, ours, tests: [{valid, ids}]} per schema file
// (with onlyOurs, only those our engine compiled: percentiles over the same schemas).
export async function* readDump(file, onlyOurs = false) {
  const rl = readline.createInterface({ input: fs.createReadStream(file), crlfDelay: Infinity });
  let first = true;
  for await (const line of rl) {
    if (!line.trim()) continue;
    const d = JSON.parse(line);
    if (first || !onlyOurs || d.ours) yield d;
    first = false;
  }
}

// The schema of a MaskBench file, as text (JSON.stringify keeps the member order).
export function schemaText(dir, file) {
  const d = JSON.parse(fs.readFileSync(path.join(dir, file), "utf8"));
  return JSON.stringify(d.schema);
}

export const now = () => Number(process.hrtime.bigint()) / 1e9;

// The process's CPU time in seconds (user + system): a mask's cost without the time spent
// preempted on a shared machine. cpuOverhead() is what a timed empty interval reads.
export const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
export function cpuOverhead() {
  const d = [];
  for (let i = 0; i < 2001; i++) { const c0 = cpu(); now(); now(); d.push(cpu() - c0); }
  d.sort((a, b) => a - b);
  return d[d.length >> 1];
}

export class Results {
  constructor() {
    Object.assign(this, { files: 0, compiled: 0, timedOut: 0, skippedTests: 0, valid: 0,
      validOk: 0, invalid: 0, invalidRej: 0, compile: [], mask: [], maskCpu: [], kinds: new Map(),
      rejected: [] });
  }
  error(file, msg) {
    const kind = String(msg).split("\n")[0].replace(/ at [\/#]\S*/g, "").replace(/\d+(\.\d+)?/g, "N")
      .slice(0, 120);
    const k = this.kinds.get(kind);
    if (k) k.count++;
    else this.kinds.set(kind, { kind, count: 1, example: file });
  }
  report(o, engine, extra = {}) {
    const f64 = (a) => Float64Array.from(a).sort();
    const c = f64(this.compile), m = f64(this.mask), mc = f64(this.maskCpu);
    const pct = (a, p) => (a.length ? a[Math.min(a.length - 1, Math.floor(p * a.length))] : 0);
    const share = (a, b) => (b ? (100 * a) / b : 0);
    const kinds = [...this.kinds.values()].sort((a, b) => b.count - a.count || (a.kind < b.kind ? -1 : 1));
    const r = {
      engine, ...extra, schemas_dir: o.schemas, files: this.files, compiled: this.compiled,
      compiled_pct: share(this.compiled, this.files), timed_out: this.timedOut,
      skipped_tests: this.skippedTests,
      compile_ms: { n: c.length, p50: 1e3 * pct(c, 0.5), p90: 1e3 * pct(c, 0.9), p99: 1e3 * pct(c, 0.99),
                    max: c.length ? 1e3 * c[c.length - 1] : 0 },
      mask_us: { n: m.length, p50: 1e6 * pct(m, 0.5), p90: 1e6 * pct(m, 0.9), p99: 1e6 * pct(m, 0.99),
                 max: m.length ? 1e6 * m[m.length - 1] : 0 },
      mask_cpu_us: { n: mc.length, p50: 1e6 * pct(mc, 0.5), p90: 1e6 * pct(mc, 0.9), p99: 1e6 * pct(mc, 0.99),
                     max: mc.length ? 1e6 * mc[mc.length - 1] : 0 },
      valid: this.valid, valid_accepted: this.validOk, valid_accepted_pct: share(this.validOk, this.valid),
      invalid: this.invalid, invalid_rejected: this.invalidRej,
      invalid_rejected_pct: share(this.invalidRej, this.invalid),
      errors: kinds, valid_rejected: this.rejected.slice(0, 200),
    };
    if (o.json) { console.log(JSON.stringify(r)); return; }
    const p = (x, d) => x.toFixed(d).padStart(10);
    console.log(`${engine}: ${r.files} schema files in ${o.schemas}, one thread\n`);
    console.log(`  schemas compiled        ${String(r.compiled).padStart(7)} / ${String(r.files).padEnd(7)} ${r.compiled_pct.toFixed(1).padStart(6)} %`);
    console.log(`  schemas timed out       ${String(r.timed_out).padStart(7)}           (> ${o.budget} s of masks; ${r.skipped_tests} instances skipped)`);
    console.log(`  valid accepted          ${String(r.valid_accepted).padStart(7)} / ${String(r.valid).padEnd(7)} ${r.valid_accepted_pct.toFixed(1).padStart(6)} %`);
    console.log(`  invalid rejected        ${String(r.invalid_rejected).padStart(7)} / ${String(r.invalid).padEnd(7)} ${r.invalid_rejected_pct.toFixed(1).padStart(6)} %`);
    console.log(`\n  ${"".padEnd(22)} ${"p50".padStart(10)} ${"p90".padStart(10)} ${"p99".padStart(10)} ${"max".padStart(10)} ${"n".padStart(10)}`);
    const cm = r.compile_ms, mu = r.mask_us;
    console.log(`  ${"compile time (ms)".padEnd(22)} ${p(cm.p50, 3)} ${p(cm.p90, 3)} ${p(cm.p99, 3)} ${p(cm.max, 3)} ${String(cm.n).padStart(10)}`);
    console.log(`  ${"mask time/token (us)".padEnd(22)} ${p(mu.p50, 1)} ${p(mu.p90, 1)} ${p(mu.p99, 1)} ${p(mu.max, 1)} ${String(mu.n).padStart(10)}`);
    if (kinds.length) {
      console.log("\n  compile errors by kind (count, first file):");
      for (const k of kinds.slice(0, 40)) console.log(`  ${String(k.count).padStart(7)}  ${k.kind}  (${k.example})`);
      if (kinds.length > 40) console.log(`  (${kinds.length - 40} more kinds)`);
    }
  }
}

// Walks one schema's instances with a per-engine `walk(ids) -> {ok, at}` that times its own
// masks into res.mask and returns {ok, at, spent, outOfTime} (it may be async); applies the
// per-schema budget.
export async function runTests(o, res, file, tests, walk) {
  let spent = 0;
  for (let t = 0; t < tests.length; t++) {
    const tc = tests[t];
    if (spent > o.budget) { res.skippedTests++; continue; }
    const r = await walk(tc.ids, o.budget - spent);
    spent += r.spent;
    if (r.outOfTime) { res.timedOut++; spent = Infinity; continue; }
    if (tc.valid) {
      res.valid++;
      if (r.ok) res.validOk++;
      else {
        res.rejected.push({ file, test: t, token: r.at, tokens: tc.ids.length });
        if (o.verbose) console.error(`${file}: valid test ${t} rejected at token ${r.at} of ${tc.ids.length}`);
      }
    } else {
      res.invalid++;
      if (!r.ok) res.invalidRej++;
    }
  }
}
