// Reference side of the differential tests: encodes strings with Hugging Face's
// tokenizers (JavaScript port, @huggingface/tokenizers from the repo's package.json).
//
// usage: node hf_reference.mjs MODEL_DIR IN.json OUT.json
//   IN.json: a JSON array of strings. OUT.json: [{"ids": [...], "decoded": "..."}, ...].
// Exits 77 (meson's "skipped") when the package is not installed.
import fs from "node:fs";

let Tokenizer;
try {
  ({ Tokenizer } = await import("@huggingface/tokenizers"));
} catch (e) {
  console.error(`hf_reference: @huggingface/tokenizers not installed (${e.message})`);
  process.exit(77);
}
const [dir, inFile, outFile] = process.argv.slice(2);
const read = (f) => JSON.parse(fs.readFileSync(f, "utf8"));
const tok = new Tokenizer(read(`${dir}/tokenizer.json`), read(`${dir}/tokenizer_config.json`));
const out = read(inFile).map((text) => {
  const ids = tok.encode(text, { add_special_tokens: false }).ids;
  return { ids, decoded: ids.length ? tok.decode(ids) : "" };
});
fs.writeFileSync(outFile, JSON.stringify(out));
