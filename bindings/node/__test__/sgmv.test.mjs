import assert from 'node:assert/strict'
import { test } from 'node:test'
import { adapterDir, ol, rejects } from './helpers.mjs'

/** `y + scale · (x · Aᵀ) · Bᵀ` for one row, in f64. */
function reference(m, x, y) {
  const [A, B, r, n, o] = [m.a(), m.b(), m.rank, m.inFeatures, m.outFeatures]
  const v = Array.from({ length: r }, (_, k) => x.reduce((s, xi, i) => s + xi * A[k * n + i], 0))
  return Array.from({ length: o }, (_, j) => y[j] + m.scale * v.reduce((s, vk, k) => s + vk * B[j * r + k], 0))
}

const rowsOf = (flat, n) => Array.from({ length: flat.length / n }, (_, i) => Array.from(flat.subarray(i * n, (i + 1) * n)))

test('sgmv and bgmv apply each row its own adapter (f32, within 1e-4 of an f64 reference)', async () => {
  const qv = await ol.LoraAdapter.fromDir(adapterDir('qv-r4'))
  const attn = await ol.LoraAdapter.fromDir(adapterDir('attn-patterns'))
  const name = 'model.layers.0.self_attn.q_proj'
  const mods = [qv.module(name), attn.module(name)]
  const [n, o, rows] = [mods[0].inFeatures, mods[0].outFeatures, 5]
  const x = Float32Array.from({ length: rows * n }, (_, i) => Math.sin(i))
  const y = Float32Array.from({ length: rows * o }, (_, i) => Math.cos(i) / 4)
  const slots = [0, 0, 1, null, 1]
  const bg = await ol.bgmv(x, y, mods, slots)
  const sg = await ol.sgmv(x, y, mods, [
    { start: 0, end: 2, slot: 0 },
    { start: 2, end: 3, slot: 1 },
    { start: 4, end: 5, slot: 1 },
  ])
  assert.ok(bg instanceof Float32Array)
  const xr = rowsOf(x, n)
  const yr = rowsOf(y, o)
  slots.forEach((s, i) => {
    const want = s === null ? yr[i] : reference(mods[s], xr[i], yr[i])
    for (let j = 0; j < o; j++) {
      assert.ok(Math.abs(bg[i * o + j] - want[j]) <= 1e-4, `bgmv row ${i} col ${j}`)
      assert.ok(Math.abs(sg[i * o + j] - want[j]) <= 1e-4, `sgmv row ${i} col ${j}`)
    }
  })
  assert.equal(y[0], Math.fround(Math.cos(0) / 4)) // y itself is untouched
})

function toF16Bits(v) {
  const f = new Float32Array([v])
  const u = new Uint32Array(f.buffer)[0]
  const sign = (u >>> 16) & 0x8000
  let exp = ((u >>> 23) & 0xff) - 127 + 15
  let mant = u & 0x7fffff
  if (exp <= 0) return sign // tiny values flush to zero in this helper
  // round to nearest even
  let h = sign | (exp << 10) | (mant >>> 13)
  const rest = mant & 0x1fff
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++
  return h
}
function fromF16Bits(h) {
  const s = h & 0x8000 ? -1 : 1
  const e = (h >>> 10) & 0x1f
  const m = h & 0x3ff
  if (e === 0) return s * m * 2 ** -24
  return s * (1 + m / 1024) * 2 ** (e - 15)
}

test('f16 batches (Uint16Array bit patterns) agree with f32 within f16 precision', async () => {
  const qv = await ol.LoraAdapter.fromDir(adapterDir('qv-r4'))
  const m = qv.module('model.layers.1.self_attn.v_proj')
  const [n, o, rows] = [m.inFeatures, m.outFeatures, 3]
  const x = Float32Array.from({ length: rows * n }, (_, i) => Math.sin(i * 0.7))
  const y = new Float32Array(rows * o)
  const x16 = Uint16Array.from(x, toF16Bits)
  const y16 = Uint16Array.from(y, toF16Bits)
  const xr = Float32Array.from(x16, fromF16Bits)
  const want = await ol.bgmv(xr, y, [m], [0, 0, 0])
  const got = await ol.bgmv(x16, y16, [m], [0, 0, 0], { dtype: 'f16' })
  assert.ok(got instanceof Uint16Array)
  const scale = Math.max(...want.map(Math.abs))
  got.forEach((h, i) => assert.ok(Math.abs(fromF16Bits(h) - want[i]) <= 4e-3 * scale, `element ${i}`))
})

test('wrong dtypes, shapes and slots are InvalidArg errors', async () => {
  const qv = await ol.LoraAdapter.fromDir(adapterDir('qv-r4'))
  const m = qv.module('model.layers.0.self_attn.q_proj')
  const x = new Float32Array(2 * m.inFeatures)
  const y = new Float32Array(2 * m.outFeatures)
  await rejects(() => ol.bgmv(new Float32Array(7), y, [m], [0, 0]), 'InvalidArg')
  await rejects(() => ol.bgmv(x, y, [m], [0, 1]), 'InvalidArg')
  await rejects(() => ol.bgmv(x, y, [m], [0, 0], { dtype: 'f16' }), 'InvalidArg', /Uint16Array/)
  await rejects(() => ol.bgmv(x, y, [m], [0, 0], { dtype: 'f64' }), 'InvalidArg', /dtype/)
  await rejects(() => ol.bgmv(new Float64Array(2), y, [m], [0, 0]), 'InvalidArg')
  await rejects(() => ol.sgmv(x, y, [m], [{ start: 0, end: 3, slot: 0 }]), 'InvalidArg')
  await rejects(() => ol.sgmv(x, y, [], []), 'InvalidArg', /module/)
})
