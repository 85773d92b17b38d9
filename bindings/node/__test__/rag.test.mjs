import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ol, rejects } from './helpers.mjs'

const alice = '0x' + 'aa'.repeat(20)
const bob = '0x' + 'bb'.repeat(20)

test('the index finds the nearest records and cites their contributors', async () => {
  const index = new ol.RagIndex(3)
  const docs = [
    ['LoRA adapters are low-rank updates', alice, [1, 0, 0]],
    ['Merkle proofs settle claims', bob, [0, 1, 0]],
    ['Adapters share one base model', alice, [0.9, 0.1, 0]],
  ]
  for (const [text, who, e] of docs) {
    index.add(ol.contentId(Buffer.from(text)), who, text, new Float32Array(e))
  }
  assert.equal(index.length, 3)
  const hits = await index.search(new Float32Array([1, 0, 0]), 2)
  assert.deepEqual(hits.map((h) => h.snippet), [docs[0][0], docs[2][0]])
  assert.equal(hits[0].record, ol.contentId(Buffer.from(docs[0][0])))
  const w = ol.relevanceWeights(await index.search(new Float32Array([1, 1, 0]), 3))
  assert.ok(Math.abs(w.reduce((s, x) => s + x.weight, 0) - 1) < 1e-12)
})

test('embeddings of the wrong length or with NaN are refused and nothing is added', async () => {
  const index = new ol.RagIndex(3, 'dot')
  const id = ol.contentId(Buffer.from('x'))
  await rejects(() => index.add(id, alice, 'x', new Float32Array(2)), 'InvalidArg')
  await rejects(() => index.add(id, alice, 'x', new Float32Array([0, NaN, 1])), 'InvalidArg')
  await rejects(() => index.add(id, alice, 'x', [1, 2, 3]), 'InvalidArg')
  assert.equal(index.length, 0)
  await rejects(() => new ol.RagIndex(3, 'l2'), 'InvalidArg', /similarity/)
})
