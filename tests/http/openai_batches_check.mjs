// The official `openai` npm package (6.x) drives `dsr1 serve`'s Files and Batches API: an
// upload of chat requests with invalid lines among them, a batch over it polled to the end,
// its output and error files (every custom_id once; invalid lines in the error file with
// their line number; seeded greedy items equal to the same requests sent directly), a
// completions batch, listing and paging of files and batches, cancel, delete, and errors as
// the SDK's classes. Run by test_http_batches.py, which validates every JSON response this
// script records (RECORD_FILE) against OpenAI's published schemas.
//
// usage: node openai_batches_check.mjs BASE_URL API_KEY MODEL RECORD_FILE
// Prints one line per failed check; exits 1 if any failed.
import fs from "node:fs";
import OpenAI, { toFile } from "openai";

const [baseURL, apiKey, model, recordFile] = process.argv.slice(2);
const records = []; // {method, path, status, body} of every JSON response
async function recordingFetch(url, init) {
  const r = await fetch(url, init);
  const type = r.headers.get("content-type") || "";
  if (type.includes("application/json")) {
    const body = await r.clone().json();
    records.push({ method: init?.method || "GET", path: new URL(url).pathname, status: r.status, body });
  }
  return r;
}
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000, fetch: recordingFetch });
let failed = 0;
let passed = 0;

function expect(ok, label, detail = "") {
  if (ok) passed++;
  else {
    failed++;
    console.log(`FAIL ${label} ${detail}`);
  }
  return ok;
}

async function expectError(label, cls, status, fn) {
  try {
    await fn();
    expect(false, label, "no error raised");
  } catch (e) {
    expect(e instanceof cls, `${label}: ${cls.name}`, `${e?.constructor?.name}: ${e?.message}`);
    expect(e.status === status, `${label}: status`, `${e.status}`);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFinal(id, seconds = 180) {
  const until = Date.now() + seconds * 1000;
  for (;;) {
    const b = await client.batches.retrieve(id);
    if (["completed", "failed", "expired", "cancelled"].includes(b.status) || Date.now() > until) return b;
    await sleep(200);
  }
}
const jsonl = (lines) => lines.map((l) => (typeof l === "string" ? l : JSON.stringify(l))).join("\n") + "\n";
async function lines(fileId) {
  const r = await client.files.content(fileId);
  const text = await r.text();
  return text.split("\n").filter((l) => l.length).map((l) => JSON.parse(l));
}

// ---- a chat batch with invalid lines ----
const topics = ["cats", "rain", "the sea", "bread", "trains", "snow", "music", "paper", "salt", "stars"];
const chatBody = (i) => ({
  model, max_tokens: 6 + (i % 5), temperature: 0, seed: 100 + i,
  messages: [{ role: "user", content: `Say something about ${topics[i % topics.length]} (${i}).` }],
  ...(i === 3 ? { n: 2, temperature: 1, seed: 77 } : {}),
  ...(i === 5 ? { logprobs: true, top_logprobs: 2 } : {}),
});
const items = [];
const invalid = {}; // custom_id or label -> 1-based line
for (let i = 0; i < 20; i++) {
  items.push({ custom_id: `chat-${i}`, method: "POST", url: "/v1/chat/completions", body: chatBody(i) });
  if (i === 4) items.push("{this is not json");
  if (i === 9) items.push({ custom_id: "bad-url", method: "POST", url: "/v1/completions", body: chatBody(0) });
  if (i === 12) items.push({ custom_id: "bad-temperature", method: "POST", url: "/v1/chat/completions", body: { ...chatBody(0), temperature: 9 } });
  if (i === 15) items.push({ custom_id: "bad-stream", method: "POST", url: "/v1/chat/completions", body: { ...chatBody(0), stream: true } });
  if (i === 17) items.push({ method: "POST", url: "/v1/chat/completions", body: chatBody(0) });
  // prompt + max_tokens beyond the context (--kv-tokens 16384 bounds it)
  if (i === 18) items.push({ custom_id: "bad-max-tokens", method: "POST", url: "/v1/chat/completions", body: { ...chatBody(0), max_tokens: 17000 } });
}
items.forEach((it, k) => {
  if (typeof it === "string") invalid["not-json"] = k + 1;
  else if (!it.custom_id) invalid["no-custom-id"] = k + 1;
  else if (it.custom_id.startsWith("bad-")) invalid[it.custom_id] = k + 1;
});
const nInvalid = Object.keys(invalid).length;

const input = await client.files.create({ file: await toFile(Buffer.from(jsonl(items)), "chat.jsonl"), purpose: "batch" });
expect(input.object === "file" && input.purpose === "batch" && input.filename === "chat.jsonl" &&
  input.bytes === Buffer.byteLength(jsonl(items)) && input.status === "processed", "files.create", JSON.stringify(input));
const got = await client.files.retrieve(input.id);
expect(JSON.stringify(got) === JSON.stringify(input), "files.retrieve", JSON.stringify(got));
const raw = await (await client.files.content(input.id)).text();
expect(raw === jsonl(items), "files.content: the bytes uploaded", `${raw.length} vs ${jsonl(items).length}`);

const batch = await client.batches.create({
  input_file_id: input.id, endpoint: "/v1/chat/completions", completion_window: "24h",
  metadata: { purpose: "test", n: "20" },
});
expect(batch.object === "batch" && batch.input_file_id === input.id && batch.endpoint === "/v1/chat/completions" &&
  batch.completion_window === "24h" && batch.metadata?.purpose === "test" &&
  ["validating", "in_progress", "finalizing", "completed"].includes(batch.status), "batches.create", JSON.stringify(batch));
const done = await waitFinal(batch.id);
expect(done.status === "completed", "chat batch completed", JSON.stringify(done));
expect(done.request_counts.completed === 20 && done.request_counts.failed === nInvalid &&
  done.request_counts.total === 20 + nInvalid, "chat batch: request_counts", JSON.stringify(done.request_counts));
expect(done.output_file_id && done.error_file_id && done.in_progress_at && done.finalizing_at &&
  done.completed_at >= done.created_at && done.failed_at === null && done.cancelled_at === null,
"chat batch: files and timestamps", JSON.stringify(done));
expect(done.errors?.object === "list" && done.errors.data.length === nInvalid &&
  done.errors.data.every((e) => Object.values(invalid).includes(e.line)), "chat batch: errors name the lines",
JSON.stringify(done.errors));
expect(done.usage?.input_tokens > 0 && done.usage.output_tokens > 0, "chat batch: usage", JSON.stringify(done.usage));

const out = await lines(done.output_file_id);
const errs = await lines(done.error_file_id);
const ids = out.map((l) => l.custom_id).sort();
const want = items.filter((it) => typeof it !== "string" && it.custom_id?.startsWith("chat-")).map((it) => it.custom_id).sort();
expect(JSON.stringify(ids) === JSON.stringify(want), "output file: every custom_id exactly once", JSON.stringify(ids));
expect(out.every((l) => /^batch_req_/.test(l.id) && l.error === null && l.response.status_code === 200 &&
  l.response.body.object === "chat.completion"), "output lines: shape", JSON.stringify(out[0]));
expect(new Set(out.map((l) => l.id)).size === out.length, "output lines: distinct ids");
// the batch's usage is the sum of its lines' (the reasoning tokens too: R1's template
// starts each answer inside the reasoning)
const sum = (f) => out.reduce((a, l) => a + f(l.response.body.usage), 0);
expect(done.usage.output_tokens === sum((u) => u.completion_tokens) &&
  done.usage.input_tokens === sum((u) => u.prompt_tokens) &&
  done.usage.output_tokens_details.reasoning_tokens === sum((u) => u.completion_tokens_details.reasoning_tokens) &&
  done.usage.output_tokens_details.reasoning_tokens > 0, "chat batch: usage sums its lines",
JSON.stringify(done.usage));
const n2 = out.find((l) => l.custom_id === "chat-3");
expect(n2?.response.body.choices.length === 2, "n: 2 in a batch: two choices", JSON.stringify(n2?.response.body));
const lp = out.find((l) => l.custom_id === "chat-5");
expect(lp?.response.body.choices[0].logprobs?.content?.length > 0, "logprobs in a batch", JSON.stringify(lp?.response.body.choices[0]));
expect(errs.length === nInvalid, "error file: one line per invalid line", JSON.stringify(errs));
for (const [label, line] of Object.entries(invalid)) {
  const e = errs.find((x) => x.error && x.error.message.includes(`line ${line}:`));
  expect(e && e.response === null && typeof e.error.code === "string", `error file: ${label} (line ${line})`, JSON.stringify(errs));
  if (e && label.startsWith("bad-")) expect(e.custom_id === label, `error file: ${label}'s custom_id`, JSON.stringify(e));
}
// the same requests sent directly: greedy and seeded, so equal (batch invariance)
for (const it of items) {
  if (typeof it === "string" || !it.custom_id?.startsWith("chat-")) continue;
  const direct = await client.chat.completions.create(it.body);
  const line = out.find((l) => l.custom_id === it.custom_id);
  const strip = (b) => JSON.stringify(b?.choices.map((c) => ({ m: c.message, f: c.finish_reason, l: c.logprobs })));
  expect(line && strip(line.response.body) === strip(direct) &&
    line.response.body.usage.completion_tokens === direct.usage.completion_tokens,
  `${it.custom_id}: batch output equals the direct request`, `${strip(line?.response.body)} vs ${strip(direct)}`);
}

// ---- a completions batch ----
const citems = [0, 1, 2].map((i) => ({ custom_id: `c${i}`, method: "POST", url: "/v1/completions",
  body: { model, prompt: `Once upon a time ${i}`, max_tokens: 5, temperature: 0, seed: i } }));
const cfile = await client.files.create({ file: await toFile(Buffer.from(jsonl(citems)), "completions.jsonl"), purpose: "batch" });
const cb = await client.batches.create({ input_file_id: cfile.id, endpoint: "/v1/completions", completion_window: "1h" });
const cdone = await waitFinal(cb.id);
expect(cdone.status === "completed" && cdone.request_counts.completed === 3 && cdone.error_file_id === null &&
  cdone.completion_window === "1h", "completions batch", JSON.stringify(cdone));
const cout = cdone.output_file_id ? await lines(cdone.output_file_id) : [];
for (const it of citems) {
  const direct = await client.completions.create(it.body);
  const line = cout.find((l) => l.custom_id === it.custom_id);
  expect(line?.response.body.object === "text_completion" &&
    line.response.body.choices[0].text === direct.choices[0].text, `${it.custom_id}: completions batch equals direct`,
  `${JSON.stringify(line?.response.body.choices)} vs ${JSON.stringify(direct.choices)}`);
}

// ---- listing and paging ----
const extra = [];
for (let i = 0; i < 3; i++)
  extra.push((await client.files.create({ file: await toFile(Buffer.from(jsonl([citems[0]])), `x${i}.jsonl`), purpose: "batch" })).id);
const all = [];
for await (const f of client.files.list({ limit: 2 })) all.push(f.id);
const mine = [input.id, cfile.id, ...extra];
expect(mine.every((id) => all.includes(id)) && new Set(all).size === all.length, "files.list pages (limit 2)", JSON.stringify(all));
const firstPage = await client.files.list({ limit: 2 });
expect(firstPage.data.length === 2 && firstPage.has_more === true && firstPage.data[0].id === all[0], "files.list: first page", JSON.stringify(firstPage.data.map((f) => f.id)));
const newestFirst = all.filter((id) => mine.includes(id));
expect(JSON.stringify(newestFirst) === JSON.stringify([...extra].reverse().concat([cfile.id, input.id])),
  "files.list: newest first", JSON.stringify(newestFirst));
const asc = [];
for await (const f of client.files.list({ limit: 2, order: "asc" })) asc.push(f.id);
expect(JSON.stringify(asc) === JSON.stringify([...all].reverse()), "files.list order asc pages", `${JSON.stringify(asc)} vs ${JSON.stringify(all)}`);
const outputs = [];
for await (const f of client.files.list({ purpose: "batch_output" })) outputs.push(f);
expect(outputs.length >= 2 && outputs.every((f) => f.purpose === "batch_output") &&
  outputs.some((f) => f.id === done.output_file_id), "files.list purpose batch_output", JSON.stringify(outputs.map((f) => f.id)));
const blist = [];
for await (const b of client.batches.list({ limit: 1 })) blist.push(b.id);
expect(blist[0] === cb.id && blist[1] === batch.id && blist.length === 2, "batches.list pages (limit 1), newest first", JSON.stringify(blist));

// ---- cancel ----
const long = [];
for (let i = 0; i < 24; i++)
  long.push({ custom_id: `long-${i}`, method: "POST", url: "/v1/chat/completions",
    body: { model, max_tokens: 400, ignore_eos: true, messages: [{ role: "user", content: `Count to a thousand (${i}).` }] } });
const lfile = await client.files.create({ file: await toFile(Buffer.from(jsonl(long)), "long.jsonl"), purpose: "batch" });
const lb = await client.batches.create({ input_file_id: lfile.id, endpoint: "/v1/chat/completions", completion_window: "24h" });
await sleep(300);
const cancelling = await client.batches.cancel(lb.id);
expect(["cancelling", "cancelled"].includes(cancelling.status) && cancelling.cancelling_at, "batches.cancel", JSON.stringify(cancelling));
const cancelled = await waitFinal(lb.id, 60);
expect(cancelled.status === "cancelled" && cancelled.cancelled_at && cancelled.request_counts.completed < 24,
  "cancelled", JSON.stringify(cancelled));
const again = await client.batches.cancel(lb.id);
expect(again.status === "cancelled", "cancel a cancelled batch: unchanged", JSON.stringify(again));

// ---- delete ----
const del = await client.files.delete(extra[0]);
expect(del.id === extra[0] && del.object === "file" && del.deleted === true, "files.delete", JSON.stringify(del));

// ---- errors ----
await expectError("retrieve a deleted file", OpenAI.NotFoundError, 404, () => client.files.retrieve(extra[0]));
await expectError("content of a deleted file", OpenAI.NotFoundError, 404, () => client.files.content(extra[0]));
await expectError("delete a deleted file", OpenAI.NotFoundError, 404, () => client.files.delete(extra[0]));
await expectError("unknown batch", OpenAI.NotFoundError, 404, () => client.batches.retrieve("batch_nope"));
await expectError("cancel an unknown batch", OpenAI.NotFoundError, 404, () => client.batches.cancel("batch_nope"));
await expectError("batch over an unknown file", OpenAI.NotFoundError, 404, () =>
  client.batches.create({ input_file_id: "file-nope", endpoint: "/v1/chat/completions", completion_window: "24h" }));
await expectError("endpoint /v1/embeddings", OpenAI.BadRequestError, 400, () =>
  client.batches.create({ input_file_id: input.id, endpoint: "/v1/embeddings", completion_window: "24h" }));
await expectError("completion_window nonsense", OpenAI.BadRequestError, 400, () =>
  client.batches.create({ input_file_id: input.id, endpoint: "/v1/chat/completions", completion_window: "soon" }));
await expectError("metadata of 17 keys", OpenAI.BadRequestError, 400, () =>
  client.batches.create({ input_file_id: input.id, endpoint: "/v1/chat/completions", completion_window: "24h",
    metadata: Object.fromEntries([...Array(17).keys()].map((k) => [`k${k}`, "v"])) }));
await expectError("a batch_output file as input", OpenAI.BadRequestError, 400, () =>
  client.batches.create({ input_file_id: done.output_file_id, endpoint: "/v1/chat/completions", completion_window: "24h" }));
await expectError("purpose fine-tune", OpenAI.BadRequestError, 400, () =>
  client.files.create({ file: toFile(Buffer.from("{}\n"), "f.jsonl"), purpose: "fine-tune" }));
await expectError("files.list after an unknown file", OpenAI.NotFoundError, 404, () => client.files.list({ after: "file-nope" }));
await expectError("batches.list after an unknown batch", OpenAI.NotFoundError, 404, () => client.batches.list({ after: "batch_nope" }));
await expectError("files.list limit 0", OpenAI.BadRequestError, 400, () => client.files.list({ limit: 0 }));
await expectError("batches.list limit 101", OpenAI.BadRequestError, 400, () => client.batches.list({ limit: 101 }));
try {
  await client.files.create({ file: toFile(Buffer.from("{}\n"), "f.jsonl"), purpose: "assistants" });
} catch (e) {
  expect(e.error?.param === "purpose" && /assistants/.test(e.error?.message), "purpose error names it", JSON.stringify(e.error));
}

fs.writeFileSync(recordFile, JSON.stringify({ records, outputs: out, errors: errs, completions: cout }));
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
