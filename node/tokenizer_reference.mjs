// Reference ids from Hugging Face's JavaScript tokenizers (@huggingface/tokenizers,
// pinned in package-lock.json), for lowmem's text tests and benchmark.
//
//   node tokenizer_reference.mjs encode TOKENIZER_JSON CONFIG_JSON|- INPUTS.jsonl OUT.jsonl
//     INPUTS.jsonl: one JSON string per line. OUT.jsonl: per input
//     {"ids": [...], "plain": [...], "decoded": "...", "skipped": "..."}:
//     ids with special tokens added, plain without, and decode(plain) with
//     special tokens kept / skipped.
//   node tokenizer_reference.mjs bench TOKENIZER_JSON CONFIG_JSON|- TEXT_FILE SECONDS
//     encodes the file's lines (no special tokens) repeatedly for about SECONDS of CPU
//     time and prints {"bytes_per_second": (best pass, CPU time), "tokens": ...}.
import { readFileSync, writeFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const [mode, tokPath, cfgPath, input, arg] = process.argv.slice(2);
if (!mode || !tokPath || !cfgPath || !input || !arg) {
  console.error("usage: tokenizer_reference.mjs encode|bench TOKENIZER_JSON CONFIG|- IN OUT|SECONDS");
  process.exit(2);
}
const tokJson = JSON.parse(readFileSync(tokPath, "utf8"));
const cfgJson = cfgPath === "-" ? {} : JSON.parse(readFileSync(cfgPath, "utf8"));
const tok = new Tokenizer(tokJson, cfgJson);

if (mode === "encode") {
  const lines = readFileSync(input, "utf8").split("\n").filter((l) => l.length > 0);
  const out = [];
  for (const line of lines) {
    const text = JSON.parse(line);
    const ids = tok.encode(text, { add_special_tokens: true }).ids;
    const plain = tok.encode(text, { add_special_tokens: false }).ids;
    const rec = { ids, plain };
    if (plain.length > 0) {
      rec.decoded = tok.decode(plain, { skip_special_tokens: false });
      rec.skipped = tok.decode(plain, { skip_special_tokens: true });
    } else {
      rec.decoded = "";
      rec.skipped = "";
    }
    out.push(JSON.stringify(rec));
  }
  writeFileSync(arg, out.join("\n") + "\n");
} else if (mode === "bench") {
  const text = readFileSync(input, "utf8");
  const lines = text.split("\n");
  const bytes = Buffer.byteLength(text, "utf8");
  // CPU seconds of the process (user + system), best pass: a loaded machine
  // does not skew them.
  const seconds = Number(arg);
  const cpu = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  };
  let passes = 0;
  let tokens = 0;
  let best = 0;
  const start = cpu();
  do {
    const p0 = cpu();
    tokens = 0;
    for (const l of lines) {
      tokens += tok.encode(l, { add_special_tokens: false }).ids.length;
    }
    best = Math.max(best, bytes / (cpu() - p0));
    ++passes;
  } while (cpu() - start < seconds || passes < 2);
  console.log(JSON.stringify({ bytes_per_second: best, tokens, passes }));
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
