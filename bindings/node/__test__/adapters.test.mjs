import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { adapterDir, ol, rejects, tinyLlama } from './helpers.mjs'

test('an adapter folder loads with its config, modules, scales and factors', async () => {
  const a = await ol.LoraAdapter.fromDir(adapterDir('qv-r4'))
  assert.equal(a.r, 4)
  assert.equal(a.loraAlpha, 8)
  assert.deepEqual(a.targetModules, ['q_proj', 'v_proj'])
  assert.equal(a.numModules, 4)
  const m = a.module('model.layers.0.self_attn.q_proj')
  assert.equal(m.scale, 2)
  assert.equal(m.kind, 'linear')
  const A = m.a()
  assert.ok(A instanceof Float32Array)
  assert.equal(A.length, m.rank * m.inFeatures)
  assert.equal(m.b().length, m.outFeatures * m.rank)
  assert.deepEqual(m.rawA(), A) // stored as f32
  assert.equal(Object.keys(a.scales()).length, a.numModules)
})

test('loading from bytes gives the same adapter as from the folder', async () => {
  const dir = adapterDir('qv-r4')
  const fromBytes = await ol.LoraAdapter.fromBytes(
    readFileSync(join(dir, 'adapter_config.json')),
    readFileSync(join(dir, 'adapter_model.safetensors')),
  )
  const fromDir = await ol.LoraAdapter.fromDir(dir)
  assert.deepEqual(fromBytes.moduleNames(), fromDir.moduleNames())
  assert.equal(fromBytes.residentBytes, fromDir.residentBytes)
})

test('missing folders reject with ENOENT and the Rust error as cause', async () => {
  await assert.rejects(ol.LoraAdapter.fromDir(join(tinyLlama, 'no-such-adapter')), (e) => {
    assert.equal(e.code, 'ENOENT')
    assert.match(e.message, /adapter_config\.json/)
    assert.ok(e.cause instanceof Error)
    return true
  })
})

test('truncated safetensors bytes reject with AdapterFormat', async () => {
  const dir = adapterDir('qv-r4')
  const st = readFileSync(join(dir, 'adapter_model.safetensors'))
  await rejects(
    () => ol.LoraAdapter.fromBytes(readFileSync(join(dir, 'adapter_config.json')), st.subarray(0, st.length - 10)),
    'AdapterFormat',
  )
  await rejects(() => ol.LoraAdapter.fromBytes(Buffer.from('{'), st), 'AdapterFormat')
  await rejects(() => ol.LoraAdapter.fromBytes(null, st), 'InvalidArg')
})

test('an adapter validates against its base and unknown modules are UnknownId', async () => {
  const base = await ol.BaseModel.fromDir(tinyLlama)
  assert.ok(base.linearModules().includes('model.layers.0.self_attn.q_proj'))
  const a = await ol.LoraAdapter.fromDir(adapterDir('all-r8-rslora'))
  const report = await base.validate(a)
  assert.equal(report.modulesChecked, a.numModules)
  await rejects(() => a.module('nope'), 'UnknownId')
})

test('the pool loads on demand, counts hits and misses, evicts within its budget', async () => {
  const one = (await ol.LoraAdapter.fromDir(adapterDir('qv-r4'))).residentBytes
  const pool = new ol.AdapterPool(one)
  pool.registerDir('qv', adapterDir('qv-r4'))
  pool.registerDir('attn', adapterDir('attn-patterns'))
  await rejects(() => pool.get('attn'), 'Budget')
  const a = await pool.get('qv')
  assert.equal(a.r, 4)
  await pool.get('qv')
  const s = pool.stats()
  assert.equal(s.misses, 1)
  assert.equal(s.hits, 1)
  assert.equal(s.residentBytes, one)
  assert.deepEqual(pool.residentIds(), ['qv'])
  await rejects(() => pool.get('unknown'), 'UnknownId')
  await rejects(() => pool.registerDir('../escape', adapterDir('qv-r4')), 'InvalidId')
  await rejects(() => pool.registerDir('qv', adapterDir('qv-r4')), 'State')
  await rejects(() => pool.unpin('qv'), 'State')
  await rejects(() => new ol.AdapterPool(-1), 'InvalidArg')
})

test('warmUp reports progress once per adapter', async () => {
  const pool = new ol.AdapterPool(1 << 30)
  for (const n of ['qv-r4', 'attn-patterns']) pool.registerDir(n, adapterDir(n))
  let seen = 0
  const n = await pool.warmUp(['qv-r4', 'attn-patterns'], (k) => {
    seen += k
  })
  assert.equal(n, 2)
  await new Promise((r) => setImmediate(r))
  assert.equal(seen, 2)
  assert.equal(pool.stats().residentCount, 2)
})
