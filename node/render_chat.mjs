// Renders chat-template cases with @huggingface/jinja (the reference for
// lowmem's text/chat_template). Usage:
//   node node/render_chat.mjs CASES.json OUT.json
// CASES.json: {"templates": {name: source}, "cases": [{"template": name,
// "context": {...}}]}. OUT.json: one entry per case, {"text": rendered} or
// {"error": message}, in order. Templates are parsed once; a template that
// does not parse gives every case the parse error.
import { Template } from "@huggingface/jinja";
import { readFileSync, writeFileSync } from "node:fs";

const [casesPath, outPath] = process.argv.slice(2);
if (!casesPath || !outPath) {
  console.error("usage: node render_chat.mjs CASES.json OUT.json");
  process.exit(2);
}
const input = JSON.parse(readFileSync(casesPath, "utf8"));
const parsed = {};
for (const [name, source] of Object.entries(input.templates)) {
  try {
    parsed[name] = { template: new Template(source) };
  } catch (e) {
    parsed[name] = { error: String(e.message ?? e) };
  }
}
const out = input.cases.map((c) => {
  const t = parsed[c.template];
  if (!t) return { error: `no template '${c.template}'` };
  if (t.error) return { error: t.error };
  try {
    return { text: t.template.render(c.context) };
  } catch (e) {
    return { error: String(e.message ?? e) };
  }
});
writeFileSync(outPath, JSON.stringify(out, null, 1) + "\n");
