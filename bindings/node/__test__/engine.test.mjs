import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { adapterDir, ol, reference, rejects, tinyLlama } from './helpers.mjs'

let engine
before(async () => {
  engine = await ol.Engine.load(tinyLlama, { maxContext: 64, blockSize: 4, maxRunning: 4 })
})
after(async () => {
  await engine?.close()
})

async function collect(stream) {
  const tokens = []
  for await (const t of stream) tokens.push(t.token)
  return tokens
}

test('greedy generation streams the tokens transformers + PEFT produce, base and adapter', async () => {
  await engine.addAdapter('qv-r4', await ol.LoraAdapter.fromDir(adapterDir('qv-r4')))
  await engine.addAdapter('all-r8-rslora', adapterDir('all-r8-rslora'))
  assert.deepEqual((await engine.adapters()).sort(), ['all-r8-rslora', 'qv-r4'])
  const runs = []
  for (const name of ['base', 'qv-r4', 'all-r8-rslora']) {
    reference.sequences.forEach((prompt, i) => {
      const adapter = name === 'base' ? undefined : name
      const want = reference.greedy[`${name}.${i}`]
      const stream = engine.generate(new Uint32Array(prompt), { adapter, maxNewTokens: want.length })
      runs.push(collect(stream).then((got) => ({ got, want, stream, key: `${name}.${i}` })))
    })
  }
  // Every request runs at once: the engine batches different adapters together.
  for (const { got, want, stream, key } of await Promise.all(runs)) {
    assert.deepEqual(got, want, key)
    assert.equal(stream.finishReason, 'max_new_tokens')
    assert.deepEqual([...stream.tokens], want)
    assert.equal(stream.stats.tokensGenerated, want.length)
  }
  // The engine's figures: every prompt token ran once, every output token but the last.
  const stats = await engine.stats()
  const prompts = reference.sequences.reduce((n, p) => n + p.length, 0) * 3
  let decoded = 0
  for (const name of ['base', 'qv-r4', 'all-r8-rslora']) {
    reference.sequences.forEach((_, i) => { decoded += reference.greedy[`${name}.${i}`].length - 1 })
  }
  assert.equal(stats.prefillTokens, prompts)
  assert.equal(stats.decodeTokens, decoded)
  assert.equal(stats.running + stats.waiting + stats.swapped, 0)
  assert.equal(stats.kvBlocksFree, stats.kvBlocks)
  assert.equal(stats.kvUsage, 0)
  assert.ok(stats.steps > 0 && stats.kvBytes > 0)
  assert.deepEqual(stats.metrics, [], 'a model on the CPU reports no device figures')
})

test('tokens arrive with their index, and stop tokens end the request', async () => {
  const want = reference.greedy['base.0']
  const seen = []
  const stream = engine.generate(reference.sequences[0], { maxNewTokens: 8 })
  for await (const t of stream) {
    seen.push(t)
    assert.deepEqual([...stream.tokens], seen.map((s) => s.token)) // the tokens read so far
    assert.equal(stream.finishReason, null)
  }
  assert.deepEqual(seen.map((t) => t.index), [...want.keys()])
  const stop = want[2]
  const s = engine.generate(reference.sequences[0], { maxNewTokens: 8, stopTokens: [stop] })
  assert.deepEqual(await collect(s), want.slice(0, want.indexOf(stop)))
  assert.equal(s.finishReason, 'stop_token')
})

test('breaking out of the loop or cancel() stops the request', async () => {
  const s = engine.generate([1, 2, 3], { maxNewTokens: 40 })
  for await (const _ of s) break
  const c = engine.generate([1, 2, 3], { maxNewTokens: 40 })
  c.cancel()
  const got = await collect(c)
  assert.ok(got.length < 40)
  assert.equal(c.finishReason, 'cancelled')
})

test('requests the engine cannot run reject the first next() with a typed error', async () => {
  await rejects(() => collect(engine.generate([1, 99999])), 'InvalidArg', /vocabulary/)
  await rejects(() => collect(engine.generate([1, 2], { adapter: 'nope' })), 'UnknownId', /nope/)
  await rejects(() => collect(engine.generate(new Array(80).fill(1))), 'InvalidArg', /context/)
  await rejects(() => collect(engine.generate([])), 'InvalidArg', /empty/)
})

test('bad options and prompts throw at the call', async () => {
  await rejects(() => engine.generate([1, -2]), 'InvalidArg', /item 1/)
  await rejects(() => engine.generate('hello'), 'InvalidArg')
  await rejects(() => engine.generate(null), 'InvalidArg')
  await rejects(() => engine.generate([1], { temperature: -1 }), 'InvalidArg', /temperature/)
  await rejects(() => engine.generate([1], { adapter: '../x' }), 'InvalidId')
  await rejects(() => engine.addAdapter('bad', adapterDir('missing')), 'ENOENT')
})

test('a model folder that is not one rejects, and a closed engine throws Closed', async () => {
  await rejects(() => ol.Engine.load(adapterDir('qv-r4')), 'ENOENT', /config\.json/)
  await rejects(() => ol.Engine.load(tinyLlama, { blockSize: 0 }), 'InvalidArg', /blockSize/)
  const e = await ol.Engine.load(tinyLlama, { maxContext: 32, blockSize: 4 })
  const pending = e.generate([1, 2, 3], { maxNewTokens: 16 })
  await e.close()
  assert.equal(e.closed, true)
  await rejects(() => e.generate([1]), 'Closed')
  await rejects(() => e.adapters(), 'Closed')
  assert.throws(() => e.stats(), (err) => err.code === 'Closed')
  // Thrown at the call, before any folder is read or a promise made.
  assert.throws(() => e.adapters(), (err) => err.code === 'Closed')
  assert.throws(() => e.addAdapter('x', adapterDir('missing')), (err) => err.code === 'Closed')
  // The request either finished before the engine stopped, or ends with `Closed`.
  try {
    await collect(pending)
  } catch (err) {
    assert.equal(err.code, 'Closed')
  }
})

test('loading reports progress as weights are read', async () => {
  let reads = 0
  const e = await ol.Engine.load(tinyLlama, { maxContext: 32, blockSize: 4 }, null, (n) => {
    reads += n
  })
  await e.close()
  await new Promise((r) => setImmediate(r))
  assert.ok(reads > 0)
  assert.equal(e.vocabSize, 320)
  assert.equal(e.maxContext, 32)
})

test('adapters registered in a pool are attached on first use', async () => {
  const pool = new ol.AdapterPool(1 << 30)
  pool.registerDir('qv-r4', adapterDir('qv-r4'))
  const e = await ol.Engine.load(tinyLlama, { maxContext: 64, blockSize: 4 }, pool)
  try {
    const want = reference.greedy['qv-r4.1']
    const got = await collect(e.generate(reference.sequences[1], { adapter: 'qv-r4', maxNewTokens: want.length }))
    assert.deepEqual(got, want)
    assert.ok(pool.isResident('qv-r4'))
  } finally {
    await e.close()
  }
})

test('an ensemble spelled in the adapter option gives PEFT cat combinations tokens', async () => {
  const combined = JSON.parse(readFileSync(join(tinyLlama, 'combined', 'reference.json'), 'utf8'))
  const pool = new ol.AdapterPool(1 << 30)
  for (const name of ['qv-r4', 'all-r8-rslora', 'attn-patterns']) pool.registerDir(name, adapterDir(name))
  const e = await ol.Engine.load(tinyLlama, { maxContext: 64, blockSize: 4, maxRunning: 16 }, pool)
  try {
    const runs = []
    for (const [name, spec] of Object.entries(combined.combinations)) {
      if (spec.combination_type !== 'cat') continue
      const adapter = spec.adapters.map((a, j) => `${a}*${spec.weights[j]}`).join('+')
      reference.sequences.forEach((prompt, i) => {
        const want = combined.greedy[`${name}.${i}`]
        runs.push(collect(e.generate(prompt, { adapter, maxNewTokens: 8 })).then((got) => ({ got, want, key: `${name}.${i}` })))
      })
    }
    assert.equal(runs.length, 6)
    for (const { got, want, key } of await Promise.all(runs)) assert.deepEqual(got, want, key)
    await rejects(async () => collect(e.generate(reference.sequences[0], { adapter: 'qv-r4+nope' })), 'UnknownId', /nope/)
    for (const adapter of ['qv-r4+qv-r4', 'qv-r4*-1', 'qv-r4+../x']) {
      assert.throws(() => e.generate(reference.sequences[0], { adapter }), (err) => err.code === 'InvalidId', adapter)
    }
  } finally {
    await e.close()
  }
})

test('a base held as stored or quantised to int8 serves the reference greedy tokens', async () => {
  for (const weights of ['stored', 'int8']) {
    const e = await ol.Engine.load(tinyLlama, { maxContext: 64, blockSize: 4, weights })
    try {
      await e.addAdapter('qv-r4', adapterDir('qv-r4'))
      for (const name of ['base', 'qv-r4']) {
        for (const [i, prompt] of reference.sequences.entries()) {
          const want = reference.greedy[`${name}.${i}`]
          const adapter = name === 'base' ? undefined : name
          const got = await collect(e.generate(new Uint32Array(prompt), { adapter, maxNewTokens: want.length }))
          assert.deepEqual(got, want, `${weights} ${name}.${i}`)
        }
      }
    } finally {
      await e.close()
    }
  }
  await rejects(() => ol.Engine.load(tinyLlama, { weights: 'int4' }), 'InvalidArg', /weights/)
  await rejects(() => ol.Engine.load(tinyLlama, { weights: 'int8-g48' }), 'InvalidArg', /groups of 48/)
})

test('the device is chosen by name, and a missing one is named', async () => {
  assert.equal(engine.device, 'cpu')
  await rejects(() => ol.Engine.load(tinyLlama, { device: 'tpu' }), 'InvalidArg', /device/)
  await rejects(() => ol.Engine.load(tinyLlama, { device: 'cuda:-1' }), 'InvalidArg', /device/)
  await rejects(() => ol.Engine.load(tinyLlama, { device: 'cuda', deviceAdapterMib: -1 }), 'InvalidArg', /deviceAdapterMib/)
  await rejects(() => ol.Engine.load(tinyLlama, { device: 'cuda', deviceGraphMaxBatch: 1.5 }), 'InvalidArg', /deviceGraphMaxBatch/)
  // Int8 weights are the CPU's alone.
  await rejects(() => ol.Engine.load(tinyLlama, { device: 'cuda', weights: 'int8' }), 'Unsupported', /int8 weights/)
  // A CUDA device serves where the build, the driver and a GPU are there; anywhere else the
  // error names the device and what is missing.
  let e
  try {
    e = await ol.Engine.load(tinyLlama, { device: 'cuda', weights: 'stored', maxContext: 64, blockSize: 4 })
  } catch (err) {
    assert.equal(err.code, 'Unsupported', err.message)
    assert.match(err.message, /^device cuda:0: /)
    assert.match(err.message, /`cuda` feature|cannot be loaded|cannot be opened/)
    return
  }
  try {
    assert.equal(e.device, 'cuda:0')
    const want = reference.greedy['base.0']
    const got = await collect(e.generate(reference.sequences[0], { maxNewTokens: want.length }))
    assert.deepEqual(got, want)
  } finally {
    await e.close()
  }
})
