import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ol, rejects } from './helpers.mjs'

const A = '0x' + '11'.repeat(20)
const B = '0x' + '22'.repeat(20)
const C = '0x' + '33'.repeat(20)
const sum = (ps) => ps.reduce((s, p) => s + p.amount, 0n)

test('splitWeights splits by integer weights, sums exactly and sorts by address', () => {
  const out = ol.splitWeights(1000n, [
    { account: C, weight: 1n },
    { account: A, weight: '2' },
  ])
  assert.deepEqual(out, [
    { account: A, amount: 667n },
    { account: C, amount: 333n },
  ])
})

test('amounts beyond 2**53 and up to 2**256 - 1 stay exact', () => {
  const max = (1n << 256n) - 1n
  const out = ol.splitWeights(max, [
    { account: A, weight: 1n },
    { account: B, weight: 1n },
    { account: C, weight: 1n },
  ])
  assert.equal(sum(out), max)
  assert.equal(ol.splitWeights(max.toString(), [{ account: A, weight: 1n }])[0].amount, max)
})

test('amounts that are JS numbers, negative, fractional or 2**256 are refused with InvalidArg', async () => {
  const w = [{ account: A, weight: 1n }]
  await rejects(() => ol.splitWeights(1000, w), 'InvalidArg')
  await rejects(() => ol.splitWeights(-1n, w), 'InvalidArg', /negative/)
  await rejects(() => ol.splitWeights('1.5', w), 'InvalidArg', /amount/)
  await rejects(() => ol.splitWeights(1n << 256n, w), 'InvalidArg', /2\*\*256/)
  await rejects(() => ol.splitWeights(null, w), 'InvalidArg')
  await rejects(() => ol.splitWeights(undefined, w), 'InvalidArg')
})

test('bad addresses name the culprit', async () => {
  await rejects(() => ol.splitWeights(1n, [{ account: '0x1234', weight: 1n }]), 'InvalidArg', /weights\[0\]/)
})

test('splitBps refuses basis points that do not add up to 10000 with a Split error', async () => {
  await rejects(() => ol.splitBps(10n, [{ account: A, bps: 5 }]), 'Split', /10000/)
  const out = ol.splitBps(10001n, [
    { account: A, bps: 2500 },
    { account: B, bps: 7500 },
  ])
  assert.equal(sum(out), 10001n)
})

test('splitScores clips negatives by default, refuses them on request, takes Float64Array', async () => {
  const clipped = ol.splitScores(100n, [A, B], new Float64Array([1, -1]))
  assert.deepEqual(clipped.map((p) => p.amount), [100n, 0n])
  await rejects(() => ol.splitScores(100n, [A, B], [1, -1], { negative: 'reject' }), 'Split')
  await rejects(() => ol.splitScores(100n, [A, B], [1]), 'InvalidArg', /1 scores for 2 accounts/)
  await rejects(() => ol.splitScores(100n, [A], new Float32Array([1])), 'InvalidArg')
  await rejects(() => ol.splitScores(100n, [A], [1], { negative: 'maybe' }), 'InvalidArg', /negative/)
})

test('a zero total weight goes to the fallback, or is a Split error', async () => {
  await rejects(() => ol.splitScores(50n, [A, B], [0, 0]), 'Split')
  const out = ol.splitScores(50n, [A, B], [0, 0], { fallback: C })
  assert.equal(out.find((p) => p.account === C)?.amount, 50n)
})

test('FeeSplit pays protocol and pool by basis points and the owner the rest, to the wei', () => {
  const fee = 10n ** 30n + 7n
  const r = new ol.FeeSplit(A, B, 100, 2000).split(fee, [A, C], [1, 3])
  assert.equal(r.protocol.amount, (fee * 100n) / 10000n)
  assert.equal(r.owner.amount + r.protocol.amount + sum(r.contributors), fee)
})
