// Trainer on the tiny llama: the loss falls, every event reaches the callback before the
// promise settles, the saved PEFT adapter serves the trainer's own greedy tokens through the
// Engine, per-example gradients are deterministic Float32Arrays, and bad input gives typed
// errors (Busy for a second call while one runs).
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { ol, rejects, tinyLlama } from './helpers.mjs'

// A tiny key→value language over the fixture's vocabulary: prompt [1, key, 7], answer [value].
const DATA = Array.from({ length: 8 }, (_, k) => ({ prompt: [1, 10 + k, 7], response: [100 + ((k * 3) % 5)] }))

const trainer = (extra = {}) =>
  ol.Trainer.load(tinyLlama, {
    targets: ['q_proj', 'v_proj', 'down_proj'], r: 4, alpha: 8, steps: 30, batchSize: 4, learningRate: 2e-2, seed: 3, ...extra,
  })

test('the loss falls and every step, evaluation and checkpoint reaches the callback', async () => {
  const t = await trainer({ evalEvery: 10, checkpointSteps: [15, 30] })
  assert.ok(t.numParameters > 0)
  assert.equal(t.stepsTaken, 0)
  const events = []
  const summary = await t.train(DATA, DATA.slice(0, 4), (e) => events.push(e))
  const steps = events.filter((e) => e.kind === 'step')
  assert.deepEqual(steps.map((e) => e.step), Array.from({ length: 30 }, (_, i) => i + 1))
  assert.ok(steps.every((e) => e.totalSteps === 30 && e.tokensPerSec > 0 && e.learningRate > 0))
  assert.deepEqual(events.filter((e) => e.kind === 'eval').map((e) => e.step), [10, 20, 30])
  const ckpts = events.filter((e) => e.kind === 'checkpoint')
  assert.deepEqual(ckpts.map((c) => c.step), [15, 30])
  assert.match(ckpts[0].id, /^0x[0-9a-f]{64}$/)
  assert.notEqual(ckpts[0].id, ckpts[1].id)
  assert.equal(summary.steps, 30)
  assert.equal(t.stepsTaken, 30)
  assert.deepEqual(summary.losses, steps.map((e) => e.loss))
  assert.ok(summary.losses.at(-1) < 0.5 * summary.losses[0])
  assert.equal(summary.lastEval.step, 30)
  const ev = await t.evaluate(DATA)
  assert.equal(ev.kind, 'eval')
  assert.ok(Math.abs(ev.perplexity - Math.exp(ev.loss)) <= 1e-9 * ev.perplexity)
})

test('an adapter trained over an int8 base (QLoRA) serves the trainer tokens on int8 and f32 bases', async () => {
  const t = await trainer({ weights: 'int8' })
  const summary = await t.train(DATA)
  assert.ok(summary.losses.at(-1) < 0.5 * summary.losses[0])
  const dir = mkdtempSync(join(tmpdir(), 'openledger-qlora-'))
  try {
    await t.saveAdapter(join(dir, 'adapter'))
    for (const weights of ['int8', 'f32']) {
      const engine = await ol.Engine.load(tinyLlama, { maxContext: 64, blockSize: 4, weights })
      try {
        await engine.addAdapter('qlora', join(dir, 'adapter'))
        for (const { prompt, response } of DATA) {
          const stream = engine.generate(prompt, { adapter: 'qlora', maxNewTokens: 1 })
          for await (const _ of stream);
          const want = weights === 'int8' ? [...(await t.greedy(prompt, 1))] : response
          assert.deepEqual([...stream.tokens], want, `${weights} ${prompt}`)
        }
      } finally {
        await engine.close()
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
  assert.throws(() => ol.Trainer.load(tinyLlama, { targets: ['q_proj'], r: 4, alpha: 8, weights: 'fp4' }), /weights/)
})

test('the saved adapter serves the tokens the trainer decodes', async () => {
  const t = await trainer()
  await t.train(DATA)
  const dir = mkdtempSync(join(tmpdir(), 'openledger-trained-'))
  const engine = await ol.Engine.load(tinyLlama, { maxContext: 64, blockSize: 4 })
  try {
    await t.saveAdapter(join(dir, 'adapter'))
    assert.equal((await ol.LoraAdapter.fromDir(join(dir, 'adapter'))).r, 4)
    await engine.addAdapter('trained', join(dir, 'adapter'))
    for (const { prompt } of DATA.slice(0, 4)) {
      const mine = await t.greedy(prompt, 4)
      const stream = engine.generate(prompt, { adapter: 'trained', maxNewTokens: 4 })
      for await (const _ of stream);
      assert.deepEqual([...stream.tokens], [...mine])
    }
  } finally {
    await engine.close()
    rmSync(dir, { recursive: true, force: true })
  }
})

test('rank and alpha patterns reach the saved adapter and the engine', async () => {
  const t = await trainer({ rankPattern: { down_proj: 2, 'layers.1.self_attn.v_proj': 8 }, alphaPattern: { v_proj: 32 } })
  const plain = await trainer()
  // down_proj (128 → 64) at rank 2 instead of 4 in both layers; layer 1's v_proj (64 → 32) at 8.
  assert.equal(t.numParameters, plain.numParameters - 2 * 2 * (128 + 64) + 4 * (64 + 32))
  await t.train(DATA)
  const dir = mkdtempSync(join(tmpdir(), 'openledger-patterns-'))
  const engine = await ol.Engine.load(tinyLlama, { maxContext: 64, blockSize: 4 })
  try {
    await t.saveAdapter(join(dir, 'adapter'))
    const a = await ol.LoraAdapter.fromDir(join(dir, 'adapter'))
    const rs = (name) => { const m = a.module(name); return [m.rank, m.scale] }
    assert.deepEqual(rs('model.layers.0.mlp.down_proj'), [2, 4])
    assert.deepEqual(rs('model.layers.1.self_attn.v_proj'), [8, 4])
    assert.deepEqual(rs('model.layers.0.self_attn.v_proj'), [4, 8])
    await engine.addAdapter('patterns', join(dir, 'adapter'))
    for (const { prompt } of DATA.slice(0, 3)) {
      const stream = engine.generate(prompt, { adapter: 'patterns', maxNewTokens: 4 })
      for await (const _ of stream);
      assert.deepEqual([...stream.tokens], [...(await t.greedy(prompt, 4))])
    }
  } finally {
    await engine.close()
    rmSync(dir, { recursive: true, force: true })
  }
  assert.throws(() => ol.Trainer.load(tinyLlama, { targets: ['q_proj'], r: 4, alpha: 8, rankPattern: { q_proj: 2.5 } }),
    (e) => e.code === 'InvalidArg' && /rankPattern/.test(e.message))
  assert.throws(() => ol.Trainer.load(tinyLlama, { targets: ['q_proj'], r: 4, alpha: 8, rankPattern: { q_proj: 'big' } }),
    (e) => e.code === 'InvalidArg' && /rankPattern/.test(e.message))
  await rejects(() => ol.Trainer.load(tinyLlama, { targets: ['q_proj'], r: 4, alpha: 8, alphaPattern: { q_proj: -1 } }),
    'InvalidArg', /alpha_pattern/)
})

test('per-example gradients are deterministic Float32Arrays over every LoRA parameter', async () => {
  const [a, b] = await Promise.all([trainer(), trainer()])
  const ga = await a.exampleGradient(DATA[0])
  const gb = await b.exampleGradient({ prompt: new Uint32Array(DATA[0].prompt), response: DATA[0].response })
  assert.ok(ga instanceof Float32Array)
  assert.equal(ga.length, a.numParameters)
  assert.deepEqual(ga, gb)
  const g = await a.exampleGradient({ tokens: [1, 20, 21, 22] })
  assert.ok(g.some((v) => v !== 0))
})

test('bad input, and a second call while one runs, give typed errors', async () => {
  await rejects(() => ol.Trainer.load(join(tinyLlama, 'missing'), { targets: ['q_proj'], r: 4, alpha: 8 }), 'ENOENT')
  await rejects(() => trainer({ schedule: 'sawtooth' }), 'InvalidArg', /schedule/)
  await rejects(() => trainer({ r: 0 }), 'InvalidArg')
  await rejects(() => trainer({ r: -1 }), 'InvalidArg', /r: expected a non-negative integer/)
  await rejects(() => trainer({ targets: ['no_such_proj'] }), 'InvalidArg')
  const t = await trainer({ steps: 2 })
  await rejects(() => t.train([]), 'InvalidArg')
  await rejects(() => t.train([{ tokens: [1, 2, 10000] }]), 'InvalidArg') // outside the 320-word vocabulary
  await rejects(() => t.train([{ tokens: [1, -2] }]), 'InvalidArg', /train\[0\]\.tokens: item 1/)
  await rejects(() => t.train([{ prompt: [1, 2] }]), 'InvalidArg', /train\[0\]: an example is/)
  await rejects(() => t.train([{ tokens: [1, 2], prompt: [1], response: [2] }]), 'InvalidArg', /train\[0\]/)
  await rejects(() => t.greedy([1, 2], -1), 'InvalidArg', /n:/)
  await rejects(() => t.saveAdapter(''), 'InvalidArg', /dir/)
  // One call at a time: the others are refused while it runs, and the trainer goes on after.
  // With a callback the call cannot settle before this thread yields (every event must reach
  // the callback first), so the calls below all see it running.
  const running = t.train(DATA, undefined, () => {})
  await rejects(() => t.evaluate(DATA), 'Busy')
  assert.throws(() => t.stepsTaken, (e) => e.code === 'Busy')
  assert.equal((await running).steps, 2)
  assert.equal(t.stepsTaken, 2)
})
