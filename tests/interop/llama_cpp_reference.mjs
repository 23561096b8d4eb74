// Runs GGUF files in llama.cpp (node-llama-cpp 3.21.1's prebuilt CPU build,
// node/package-lock.json) and prints one JSON line with what
// tests/interop/gguf_test.cpp compares against lowmem, for each model of
// request.models, in order:
//   text_ids:   llama.cpp's tokenization of request.text (no BOS added),
//   next_probs: for i < ids.length - 1, llama.cpp's softmax probability of
//               ids[i + 1] after ids[0..i] (greedy sampler: all logits),
//   generated:  llama.cpp's greedy continuation of request.ids
//               (request.new_tokens tokens, end-of-generation tokens kept).
// usage: node llama_cpp_reference.mjs <node_modules> <request.json>
import {readFileSync} from "node:fs";
import {pathToFileURL} from "node:url";

const [nodeModules, requestPath] = process.argv.slice(2);
const entry = `${nodeModules}/node-llama-cpp/dist/index.js`;
const {getLlama, LlamaLogLevel} = await import(pathToFileURL(entry).href);
const request = JSON.parse(readFileSync(requestPath, "utf8"));

const llama = await getLlama({
  gpu: false,
  build: "never",
  logLevel: LlamaLogLevel.error,
});

async function run(modelPath) {
  const model = await llama.loadModel({modelPath});
  // An F32 KV cache and no flash attention keep llama.cpp's arithmetic in
  // fp32 (its defaults store keys and values in F16).
  const context = await model.createContext({
    contextSize: request.context_size ?? 256,
    threads: 2,
    flashAttention: false,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
  });
  const sequence = context.getSequence();

  const ids = request.ids;
  const items = ids.map((token, i) =>
    i + 1 < ids.length ? [token, {generateNext: {probabilities: true}}] : token);
  const results = await sequence.controlledEvaluate(items);
  const nextProbs = [];
  for (let i = 0; i + 1 < ids.length; i++) {
    const probs = results[i]?.next?.probabilities;
    if (probs == null) throw new Error(`no probabilities at position ${i}`);
    nextProbs.push(probs.get(ids[i + 1]) ?? 0);
  }
  await sequence.clearHistory();

  const generated = [];
  if (request.new_tokens > 0) {
    for await (const token of sequence.evaluate(ids, {temperature: 0, yieldEogToken: true})) {
      generated.push(token);
      if (generated.length >= request.new_tokens) break;
    }
  }
  const textIds = model.tokenize(request.text ?? "");
  await context.dispose();
  await model.dispose();
  return {text_ids: textIds, next_probs: nextProbs, generated};
}

const out = [];
for (const modelPath of request.models) out.push(await run(modelPath));
console.log(JSON.stringify(out));
await llama.dispose();
