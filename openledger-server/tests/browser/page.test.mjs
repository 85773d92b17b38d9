// The chat page in a real browser: `openledger serve` with a datanet, on a free loopback port,
// driven in Debian's headless Chromium by playwright-core; answers are paid on the embedded chain.
// It picks an adapter, asks a question, waits for the streamed answer, checks the sources, the
// receipt and the payment shown, and saves a
// screenshot (OPENLEDGER_SCREENSHOT, default target/chat-page.png).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { cpSync, mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const bin = process.env.OPENLEDGER_BIN ?? join(root, "target/debug/openledger");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const shot = process.env.OPENLEDGER_SCREENSHOT ?? join(root, "target/chat-page.png");

let server, url, browser, tmp;

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), "openledger-page-"));
  const model = join(tmp, "tiny-llama");
  mkdirSync(model);
  const peft = join(root, "fixtures/peft/tiny-llama");
  for (const f of ["config.json", "generation_config.json", "model.safetensors"]) cpSync(join(peft, f), join(model, f));
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) cpSync(join(root, "fixtures/server", f), join(model, f));
  cpSync(join(peft, "adapters"), join(tmp, "adapters"), { recursive: true });
  server = spawn(bin, ["serve", "--model", model, "--adapters", join(tmp, "adapters"), "--port", "0",
    "--max-context", "128", "--datanet", join(root, "openledger/data/drug-facts.jsonl"),
    "--chain", "embedded"],
    { stdio: ["ignore", "pipe", "inherit"] });
  url = await new Promise((ok, fail) => {
    server.on("exit", (code) => fail(new Error(`server exited with ${code}`)));
    createInterface({ input: server.stdout }).on("line", (line) => {
      const m = line.match(/on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) ok(m[1]);
    });
  });
  // Flags for a closed network: no background connections, no first-run work.
  browser = await chromium.launch({
    executablePath: browserPath,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test("a question gets a streamed answer with its sources and a signed receipt", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const failed = [];
  page.on("requestfailed", (r) => failed.push(r.url()));
  page.on("pageerror", (e) => failed.push(String(e)));
  await page.goto(url + "/");
  await page.waitForFunction(() => document.querySelectorAll("#model option").length === 4);
  assert.match(await page.textContent("#status"), /3 adapters · datanet drug-facts \(124 records/);
  await page.selectOption("#model", "qv-r4");
  await page.fill("#question", "what does aspirin treat");
  await page.click("#send");
  await page.waitForSelector('.msg.assistant[data-state="done"]', { timeout: 30000 });
  const answer = await page.textContent(".msg.assistant .text");
  assert.ok(answer.trim().length > 0, "the answer is empty");
  assert.doesNotMatch(answer, /error/);
  const sources = await page.$$eval("#sources li.source .snippet", (xs) => xs.map((x) => x.textContent));
  assert.ok(sources.length >= 1, "no source shown");
  assert.match(sources[0], /^what does aspirin treat => pain and fever/);
  const receipt = await page.textContent("#receipt");
  assert.match(receipt, /fee 1000000000000000 wei \(0\.001 ETH\)/);
  assert.match(receipt, /model owner/);
  assert.match(receipt, /data contributor/);
  assert.match(receipt, /signature 0x[0-9a-f]{130}/);
  assert.match(receipt, /paid on chain in block \d+ \(gas \d+\)/);
  // The same answer as the API gives for the same request (greedy is not asked: the page samples,
  // so only the transcript's shape is compared).
  assert.equal(await page.$$eval(".msg", (xs) => xs.length), 2);
  await page.screenshot({ path: shot, fullPage: true });
  assert.deepEqual(failed, []);
});
