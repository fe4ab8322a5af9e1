// The official `openai` npm package (6.x, a devDependency) against `dsr1 serve`'s HTTP API:
// models, chat (plain, seeded, streamed with usage), completions, logprobs, tools accepted,
// tool_choice required (one call that parses and fits its schema),
// and errors raised as the SDK's own classes. Run by test_openai_sdk.py.
//
// usage: node openai_sdk_check.mjs BASE_URL API_KEY MODEL
// Prints one line per check; exits 1 if any failed.
import OpenAI from "openai";

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
let failed = 0;
let passed = 0;

function expect(ok, label, detail = "") {
  if (ok) passed++;
  else {
    failed++;
    console.log(`FAIL ${label} ${detail}`);
  }
}

async function expectError(label, cls, status, fn) {
  try {
    await fn();
    expect(false, label, "no error raised");
  } catch (e) {
    expect(e instanceof cls, `${label}: ${cls.name}`, `${e?.constructor?.name}: ${e?.message}`);
    expect(e.status === status, `${label}: status`, `${e.status}`);
    expect(typeof e.error?.message === "string", `${label}: error body`, JSON.stringify(e.error));
  }
}

const messages = [{ role: "user", content: "Say hello." }];

// models
const list = await client.models.list();
const ids = [];
for await (const m of list) ids.push(m.id);
expect(ids.length === 1 && ids[0] === model, "models.list", JSON.stringify(ids));
const one = await client.models.retrieve(model);
expect(one.id === model && one.object === "model", "models.retrieve", JSON.stringify(one));

// chat, seeded twice
const a = await client.chat.completions.create({ model, messages, max_tokens: 8, seed: 11 });
const b = await client.chat.completions.create({ model, messages, max_completion_tokens: 8, seed: 11 });
expect(a.object === "chat.completion" && a.choices.length === 1, "chat: shape", JSON.stringify(a));
expect(JSON.stringify(a.choices[0].message) === JSON.stringify(b.choices[0].message),
  "chat: seeded reproduction", `${JSON.stringify(a.choices[0])} ${JSON.stringify(b.choices[0])}`);
expect(a.usage.total_tokens === a.usage.prompt_tokens + a.usage.completion_tokens &&
  typeof a.usage.prompt_tokens_details.cached_tokens === "number" &&
  typeof a.usage.completion_tokens_details.reasoning_tokens === "number", "chat: usage",
  JSON.stringify(a.usage));

// streamed: the deltas add up to the same message
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 8, seed: 11, stream: true, stream_options: { include_usage: true },
});
let content = "";
let reasoning = "";
let finish = null;
let usage = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  for (const ch of chunk.choices) {
    content += ch.delta.content ?? "";
    reasoning += ch.delta.reasoning_content ?? "";
    if (ch.finish_reason) finish = ch.finish_reason;
  }
}
expect(content === a.choices[0].message.content &&
  reasoning === (a.choices[0].message.reasoning_content ?? ""), "chat stream: deltas add up",
  `${JSON.stringify(content)} ${JSON.stringify(reasoning)} vs ${JSON.stringify(a.choices[0].message)}`);
expect(finish === a.choices[0].finish_reason, "chat stream: finish_reason", `${finish}`);
expect(usage && usage.completion_tokens === a.usage.completion_tokens, "chat stream: usage",
  JSON.stringify(usage));

// logprobs
const lp = await client.chat.completions.create({
  model, messages, max_tokens: 4, logprobs: true, top_logprobs: 2, seed: 3,
});
const entries = lp.choices[0].logprobs?.content ?? [];
expect(entries.length === lp.usage.completion_tokens &&
  entries.every((e) => e.top_logprobs.length === 2 && e.logprob <= 0), "chat: logprobs",
  JSON.stringify(lp.choices[0].logprobs).slice(0, 300));

// completions
const c = await client.completions.create({ model, prompt: "Once upon", max_tokens: 6, seed: 4 });
expect(c.object === "text_completion" && typeof c.choices[0].text === "string" &&
  c.usage.completion_tokens >= 1, "completions", JSON.stringify(c));
const cs = await client.completions.create({ model, prompt: "Once upon", max_tokens: 6, seed: 4, stream: true });
let text = "";
for await (const chunk of cs) for (const ch of chunk.choices) text += ch.text;
expect(text === c.choices[0].text, "completions stream: adds up", `${JSON.stringify(text)}`);

// tools and response_format are accepted (whether the model calls them is the model's)
const t = await client.chat.completions.create({
  model, messages, max_tokens: 4,
  tools: [{ type: "function", function: { name: "get_time", description: "the time", parameters: { type: "object", properties: {} } } }],
  tool_choice: "auto",
});
expect(["stop", "length", "tool_calls"].includes(t.choices[0].finish_reason), "tools accepted",
  JSON.stringify(t.choices[0]));

// tool_choice required: the grammar engine makes even the random model's call well-formed
const weather = { type: "object", properties: { city: { type: "string", maxLength: 10 } },
  required: ["city"], additionalProperties: false };
const req = await client.chat.completions.create({
  model, messages, max_tokens: 200, temperature: 1.5, seed: 7, reasoning_effort: "none",
  tools: [{ type: "function", function: { name: "get_weather", parameters: weather, strict: true } }],
  tool_choice: "required", parallel_tool_calls: false,
});
const calls = req.choices[0].message.tool_calls || [];
let args = null;
try { args = JSON.parse(calls[0].function.arguments); } catch (e) { args = null; }
expect(req.choices[0].finish_reason === "tool_calls" && calls.length === 1 &&
  calls[0].type === "function" && calls[0].function.name === "get_weather" && args !== null &&
  Object.keys(args).join() === "city" && typeof args.city === "string" && [...args.city].length <= 10,
  "tool_choice required: one well-formed call", JSON.stringify(req.choices[0]));

// errors as the SDK's classes
await expectError("wrong key", OpenAI.AuthenticationError, 401, () =>
  new OpenAI({ baseURL, apiKey: "wrong", maxRetries: 0 }).models.list());
await expectError("unknown model", OpenAI.NotFoundError, 404, () =>
  client.chat.completions.create({ model: "gpt-4o", messages }));
await expectError("bad temperature", OpenAI.BadRequestError, 400, () =>
  client.chat.completions.create({ model, messages, temperature: 9 }));
await expectError("bad message", OpenAI.BadRequestError, 400, () =>
  client.chat.completions.create({ model, messages: [{ role: "user", content: 12 }] }));

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
