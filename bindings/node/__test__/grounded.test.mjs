// Grounded answers from Node: SmolLM2-135M-Instruct (GGUF) answers from the records
// all-MiniLM-L6-v2 retrieves from the shipped datanet, streams its text, and ContextCite credits
// the record that holds the answer. The models come from `bash scripts/fetch-models.sh`; without
// them these tests skip, unless OPENLEDGER_REQUIRE_MODELS=1.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { test } from 'node:test'
import { ol, rejects, root } from './helpers.mjs'

const models = process.env.OPENLEDGER_MODELS ?? fileURLToPath(new URL('../../../target/models', import.meta.url))
const smol = join(models, 'SmolLM2-135M-Instruct')
const minilm = join(models, 'all-MiniLM-L6-v2')
const have = [smol, minilm].every((m) => {
  try {
    readFileSync(join(m, '.complete'))
    return true
  } catch {
    if (process.env.OPENLEDGER_REQUIRE_MODELS === '1') throw new Error(`${m} is absent: run scripts/fetch-models.sh`)
    return false
  }
})
const skip = !have && 'the models are absent (bash scripts/fetch-models.sh)'

test('a grounded answer streams, and ContextCite credits the record that holds it', { skip }, async () => {
  let tensors = 0
  const g = await ol.Grounded.load(join(smol, 'SmolLM2-135M-Instruct.Q4_1.gguf'), minilm, { samples: 24, heldOut: 8 }, (n) => {
    tensors += n
  })
  const d = new ol.Datanet('drug-facts')
  d.importJsonl(readFileSync(join(root, 'openledger', 'data', 'drug-facts.jsonl'), 'utf8'))
  let embedded = 0
  const indexed = await g.indexDatanet(d, (n) => {
    embedded += n
  })
  await new Promise((r) => setImmediate(r))
  assert.equal(tensors, 272)
  assert.equal(embedded, d.length)
  assert.equal(g.records, indexed.kept.length)
  assert.equal(indexed.kept.length + indexed.copies.length, d.length)
  assert.ok(indexed.copies.length > 0)

  const q = 'what does atorvastatin treat?'
  const sources = await g.retrieve(q)
  assert.deepEqual(sources.map((s) => s.number), [1, 2, 3, 4])
  const holder = sources.find((s) => s.text.startsWith('Q: what does atorvastatin treat?'))
  assert.ok(holder, JSON.stringify(sources))
  const pieces = []
  const answer = await g.answer(q, true, (p) => pieces.push(p))
  await new Promise((r) => setImmediate(r))
  assert.equal(pieces.join(''), answer.text)
  assert.match(answer.text.toLowerCase(), /high cholesterol/)
  const plain = await g.answer(q, false)
  assert.deepEqual(plain.sources, [])

  let scored = 0
  const credit = await g.cite(answer, (n) => {
    scored += n
  })
  await new Promise((r) => setImmediate(r))
  assert.equal(credit.promptsScored, 24 + 8 + 2)
  assert.equal(scored, credit.promptsScored)
  assert.equal(credit.topSource, holder.number)
  assert.ok(Math.abs(credit.shares.reduce((a, b) => a + b, 0) - 1) < 1e-12)
  assert.ok(credit.topDrop > 1, `${credit.topDrop}`)

  await rejects(() => g.retrieve('  '), 'InvalidArg', /question/)
  await rejects(() => g.cite(plain), 'InvalidArg', /no sources/)
  await rejects(() => g.cite({ ...answer, sources: [{ ...answer.sources[0], record: '0x12' }] }), 'InvalidArg', /sources\[0\]\.record/)
})
