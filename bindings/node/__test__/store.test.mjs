import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import { ol, rejects } from './helpers.mjs'

const dir = mkdtempSync(join(tmpdir(), 'openledger-store-'))
after(() => rmSync(dir, { recursive: true, force: true }))

const alice = '0x' + 'aa'.repeat(20)
const bob = '0x' + 'bb'.repeat(20)
const id = (i) => ol.contentId(Buffer.from(`record ${i}`))

test('a store written with the identity projection scores queries by TracIn and ranks them', async () => {
  const path = join(dir, 'identity.store')
  const w = await ol.FeatureStoreWriter.create(path, {
    inputDim: 3,
    k: 3,
    learningRates: [0.5, 0.25],
    projection: 'identity',
    dtype: 'f32',
  })
  // Two checkpoints × three values per example.
  const grads = new Float32Array([
    1, 0, 0, 1, 0, 0, // example 0
    0, 1, 0, 0, 1, 0, // example 1
    2, 0, 0, 0, 0, 0, // example 2
  ])
  let seen = 0
  const n = await w.extend([id(0), id(1), id(2)], [alice, bob, alice], grads, (k) => {
    seen += k
  })
  assert.equal(n, 3)
  await w.sync()
  await new Promise((r) => setImmediate(r))
  assert.equal(seen, 3)

  const store = await ol.FeatureStore.open(path)
  assert.equal(store.length, 3)
  assert.equal(store.record(1), id(1))
  assert.equal(store.contributor(1).toLowerCase(), bob)
  assert.deepEqual([...store.features(2)], [2, 0, 0, 0, 0, 0])
  const scores = await store.score(new Float32Array([1, 0, 0, 1, 0, 0]))
  // Σ_c η_c ⟨q_c, z_c⟩: 0.5·1 + 0.25·1, 0, 0.5·2
  assert.deepEqual([...scores], [0.75, 0, 1])
  const top = store.topK(scores, 2)
  assert.deepEqual(top.map((t) => t.index), [2, 0])
  assert.equal(top[0].contributor.toLowerCase(), alice)
})

test('bad gradients, files and indices are typed errors and leave the store as it was', async () => {
  const path = join(dir, 'bad.store')
  const w = await ol.FeatureStoreWriter.create(path, { inputDim: 2, k: 2, learningRates: [1], projection: 'identity' })
  await rejects(() => w.append(id(0), alice, new Float32Array(3)), 'InvalidArg', /gradients/)
  await rejects(() => w.append(id(0), alice, new Float32Array([NaN, 1])), 'InvalidArg')
  assert.equal(w.length, 0)
  await w.append(id(0), alice, new Float32Array([1, 2]))
  assert.equal(w.length, 1)
  await rejects(() => ol.FeatureStoreWriter.create(join(dir, 'x'), { inputDim: 2, k: 2, learningRates: [1], dtype: 'f64' }), 'InvalidArg', /dtype/)
  const junk = join(dir, 'junk.store')
  writeFileSync(junk, 'not a store')
  await rejects(() => ol.FeatureStore.open(junk), 'FeatureStore')
  await rejects(() => ol.FeatureStore.open(join(dir, 'missing.store')), 'ENOENT')
  await w.sync()
  const store = await ol.FeatureStore.open(path)
  await rejects(() => store.record(5), 'InvalidArg', /out of range/)
  await rejects(() => store.score(new Float32Array([1, 2]), 'pagerank'), 'InvalidArg', /method/)
})
