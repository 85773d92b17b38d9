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

test('a store splits into shards that merge back byte for byte; DataInf scores match its closed form', async () => {
  const { readFileSync, mkdirSync } = await import('node:fs')
  const [C, k, n] = [2, 4, 2100]
  const path = join(dir, 'sharded.store')
  const w = await ol.FeatureStoreWriter.create(path, { inputDim: k, k, learningRates: [0.5, 0.25], projection: 'identity', dtype: 'f32' })
  let seed = 7
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) * 2 - 1
  const grads = new Float32Array(n * C * k).map(rand)
  const ids = Array.from({ length: n }, (_, i) => id(`s${i}`))
  const who = Array.from({ length: n }, (_, i) => (i % 3 ? alice : bob))
  await w.extend(ids, who, grads)
  await w.sync()
  const store = await ol.FeatureStore.open(path)
  assert.deepEqual(store.contributors().map((a) => a.toLowerCase()), who)

  const shardsDir = join(dir, 'shards')
  mkdirSync(shardsDir)
  const paths = await store.split(shardsDir, 2)
  assert.deepEqual(paths.map((p) => p.split('/').pop()), ['sharded.shard-000-of-002.olfs', 'sharded.shard-001-of-002.olfs'])
  const shards = await Promise.all(paths.map((p) => ol.FeatureStore.open(p)))
  assert.deepEqual(shards.map((s) => s.length), [2048, n - 2048])
  await ol.FeatureStore.merge(paths, join(dir, 'merged.store'))
  assert.ok(readFileSync(join(dir, 'merged.store')).equals(readFileSync(path)))
  const q = new Float32Array(C * k).map(rand)
  const whole = await store.score(q)
  const parts = await Promise.all(shards.map((s) => s.score(q)))
  assert.deepEqual([...parts[0], ...parts[1]], [...whole])

  // DataInf (Kwon et al.), per checkpoint c and layer l of the features:
  // λ = 0.1·mean‖g_i‖², r = Σ_i (v·g_i)/(λ + ‖g_i‖²) g_i, score_i = −(1/C) Σ (v − r/n)·g_i / λ.
  const layers = [[0, 2], [2, 4]]
  const got = await store.score(q, 'datainf', undefined, { layers, lambdaScale: 0.1 })
  const g = (i, c, j) => grads[(i * C + c) * k + j]
  const want = new Float64Array(n)
  for (let c = 0; c < C; c++) {
    for (const [a, b] of layers) {
      const dot = (i, x) => { let s = 0; for (let j = a; j < b; j++) s += x(j) * g(i, c, j); return s }
      let mean = 0
      for (let i = 0; i < n; i++) mean += dot(i, (j) => g(i, c, j)) / n
      const lambda = 0.1 * mean
      const r = new Float64Array(k)
      for (let i = 0; i < n; i++) {
        const coef = dot(i, (j) => q[c * k + j]) / (lambda + dot(i, (j) => g(i, c, j)))
        for (let j = a; j < b; j++) r[j] += coef * g(i, c, j)
      }
      for (let i = 0; i < n; i++) want[i] -= dot(i, (j) => q[c * k + j] - r[j] / n) / lambda / C
    }
  }
  const scale = Math.max(...want.map(Math.abs))
  const worst = Math.max(...[...got].map((v, i) => Math.abs(v - want[i])))
  assert.ok(worst <= 1e-5 * scale, `worst ${worst} of ${scale}`)

  await rejects(() => store.split(shardsDir, 0), 'InvalidArg', /shards/)
  await rejects(() => store.split(shardsDir, 2), 'EIO', /exists/)
  await rejects(() => store.score(q, 'datainf', undefined, { layers: [[0, 9]] }), 'InvalidArg', /layer/)
  await rejects(() => store.score(q, 'datainf', undefined, { layers: [[0]] }), 'InvalidArg', /start, end/)
  await rejects(() => ol.FeatureStore.merge([], join(dir, 'none.store')), 'InvalidArg', /merge/)
})
