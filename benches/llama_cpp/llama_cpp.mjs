// The llama.cpp side of the side-by-side bench (benches/llama_cpp.rs runs it, one process per
// case, and reads the one JSON line it prints): llama.cpp through node-llama-cpp (its prebuilt
// CPU build), greedy, on the token ids it is given.
//
//   node llama_cpp.mjs CASE.json
//
// CASE.json: { "model": GGUF, "threads": N, "new_tokens": N, "case": "single" | "batch" |
// "adapters", "prompts": [[ids…], …], "reps": N (single), "adapter": GGUF LoRA (single, optional),
// "adapters": [GGUF LoRA, …] (adapters: request i uses adapters[i]),
// "strategy": "contexts" | "sequential" (adapters) }
//
// single:   prompts[0] generated `reps` times in one sequence; prompt tokens/s from the time to
//           the first new token, decode tokens/s over the tokens after it (medians), the greedy
//           tokens of the first run.
// batch:    every prompt in a sequence of its own of one context (llama.cpp's parallel
//           sequences, decoded together in one batch per step); aggregate tokens/s = all new
//           tokens over the wall time from the first submission to the last token.
// adapters: request i with LoRA adapters[i]. llama.cpp attaches LoRA adapters to a context, so
//           "contexts" runs the requests at once in one context per adapter, "sequential" one
//           after another, each in a context created with its adapter.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));

function vm(key) {
  const line = readFileSync("/proc/self/status", "utf8").split("\n").find((l) => l.startsWith(key + ":"));
  return Number(line.split(/\s+/)[1]) * 1024;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** Generates `n` greedy tokens after `prompt` in `sequence`: the tokens and their times (ms). */
async function generate(sequence, prompt, n) {
  const t0 = performance.now();
  const tokens = [];
  const times = [];
  for await (const token of sequence.evaluate(prompt, { temperature: 0 })) {
    tokens.push(token);
    times.push(performance.now() - t0);
    if (tokens.length >= n) break;
  }
  return { tokens, times };
}

const rssBeforeLoad = vm("VmRSS");
const llama = await getLlama({
  gpu: false,
  build: "never",
  logLevel: LlamaLogLevel.error,
  progressLogs: false,
  maxThreads: spec.threads,
});
const t0 = performance.now();
const model = await llama.loadModel({ modelPath: spec.model, gpuLayers: 0 });
const loadS = (performance.now() - t0) / 1000;
const ctxSize = Math.max(...spec.prompts.map((p) => p.length)) + spec.new_tokens + 8;
const result = { engine: "llama.cpp", case: spec.case, model: basename(spec.model), load_s: loadS, rss_before_load_bytes: rssBeforeLoad };

if (spec.case === "single") {
  const lora = spec.adapter ? { adapters: [{ filePath: spec.adapter }] } : undefined;
  const context = await model.createContext({ contextSize: ctxSize, sequences: 1, threads: spec.threads, lora });
  const sequence = context.getSequence();
  const prefill = [];
  const decode = [];
  let first;
  for (let r = 0; r < spec.reps; r++) {
    await sequence.clearHistory();
    const { tokens, times } = await generate(sequence, spec.prompts[0], spec.new_tokens);
    first ??= tokens;
    prefill.push(spec.prompts[0].length / (times[0] / 1000));
    decode.push((tokens.length - 1) / ((times.at(-1) - times[0]) / 1000));
  }
  Object.assign(result, {
    prompt_tokens_per_s: median(prefill),
    decode_tokens_per_s: median(decode),
    decode_runs: decode,
    tokens: first,
  });
} else if (spec.case === "batch") {
  const n = spec.prompts.length;
  const context = await model.createContext({ contextSize: ctxSize * n, sequences: n, threads: spec.threads, batchSize: 512 });
  const sequences = spec.prompts.map(() => context.getSequence());
  const start = performance.now();
  const outs = await Promise.all(sequences.map((s, i) => generate(s, spec.prompts[i], spec.new_tokens)));
  const wall = (performance.now() - start) / 1000;
  const total = outs.reduce((a, o) => a + o.tokens.length, 0);
  Object.assign(result, { aggregate_tokens_per_s: total / wall, wall_s: wall, tokens_generated: total, tokens: outs.map((o) => o.tokens) });
} else if (spec.case === "adapters") {
  const n = spec.prompts.length;
  const start = performance.now();
  let outs;
  const open = (i) =>
    model.createContext({ contextSize: ctxSize, sequences: 1, threads: spec.threads, lora: { adapters: [{ filePath: spec.adapters[i] }] } });
  if (spec.strategy === "contexts") {
    const contexts = await Promise.all(spec.prompts.map((_, i) => open(i)));
    outs = await Promise.all(contexts.map((c, i) => generate(c.getSequence(), spec.prompts[i], spec.new_tokens)));
  } else {
    outs = [];
    for (let i = 0; i < n; i++) {
      const context = await open(i);
      outs.push(await generate(context.getSequence(), spec.prompts[i], spec.new_tokens));
      await context.dispose();
    }
  }
  const wall = (performance.now() - start) / 1000;
  const total = outs.reduce((a, o) => a + o.tokens.length, 0);
  Object.assign(result, { strategy: spec.strategy, aggregate_tokens_per_s: total / wall, wall_s: wall, tokens_generated: total, tokens: outs.map((o) => o.tokens) });
} else {
  throw new Error(`unknown case ${spec.case}`);
}
result.peak_rss_bytes = vm("VmHWM");
console.log(JSON.stringify(result));
await llama.dispose();
