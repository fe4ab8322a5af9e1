// Tokenizer benchmark, reference side: @huggingface/tokenizers (JavaScript) encoding the
// same corpus as bench_tokenizer.c. One warm-up pass, then REPS timed passes; prints the
// best pass in MB/s and writes the ids (for the cross-check in run_bench.sh).
//
// usage: node bench_hf.mjs MODEL_DIR CORPUS.json [REPS] [IDS_OUT.json]
import fs from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const [dir, corpusPath, repsArg, idsOut] = process.argv.slice(2);
const read = (f) => JSON.parse(fs.readFileSync(f, "utf8"));
const tok = new Tokenizer(read(`${dir}/tokenizer.json`), read(`${dir}/tokenizer_config.json`));
const docs = read(corpusPath);
const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d, "utf8"), 0);
const reps = Number(repsArg ?? 3);

let ids = docs.map((d) => tok.encode(d, { add_special_tokens: false }).ids); // warm-up
let best = Infinity;
for (let r = 0; r < reps; r++) {
  const t0 = process.hrtime.bigint();
  ids = docs.map((d) => tok.encode(d, { add_special_tokens: false }).ids);
  best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
}
const ntok = ids.reduce((n, v) => n + v.length, 0);
console.log(`hf-js  ${(bytes / 1e6).toFixed(2)} MB, ${ntok} tokens, best of ${reps}: ` +
  `${best.toFixed(3)} s = ${(bytes / 1e6 / best).toFixed(2)} MB/s`);
if (idsOut) fs.writeFileSync(idsOut, JSON.stringify(ids));
