// Text in and out of the engine with the model folder's tokenizer.json: string prompts,
// encode / decode, stop strings, each stream's text and its pieces, and typed errors without a
// tokenizer.
import assert from 'node:assert/strict'
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { adapterDir, ol, reference, rejects, tinyLlama } from './helpers.mjs'

/** A word-level tokenizer.json: id i is the word `w<i>`, 0 is <unk>, 1 the <s> (BOS) a
 * post-processor puts first. */
function wordTokenizer(vocabSize) {
  const vocab = { '<unk>': 0, '<s>': 1 }
  for (let i = 2; i < vocabSize; i++) vocab[`w${i}`] = i
  const bos = { id: 1, content: '<s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: [bos],
    normalizer: null, pre_tokenizer: { type: 'Whitespace' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: null,
    model: { type: 'WordLevel', vocab, unk_token: '<unk>' },
  }
}

let dir
let engine
before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openledger-text-'))
  for (const f of ['config.json', 'model.safetensors']) copyFileSync(join(tinyLlama, f), join(dir, f))
  const { vocab_size: vocabSize } = JSON.parse(readFileSync(join(tinyLlama, 'config.json'), 'utf8'))
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(wordTokenizer(vocabSize)))
  engine = await ol.Engine.load(dir, { maxContext: 64, blockSize: 4 })
})
after(async () => {
  await engine?.close()
  rmSync(dir, { recursive: true, force: true })
})

const words = (ids) => ids.map((t) => `w${t}`).join(' ')

test('a string prompt encodes to the reference ids and the stream gives its text', async () => {
  assert.equal(engine.hasTokenizer, true)
  const ids = reference.sequences[0]
  assert.equal(ids[0], 1) // the references start with BOS
  const text = words(ids.slice(1))
  assert.deepEqual([...engine.encode(text)], ids)
  assert.deepEqual([...engine.encode(text, false)], ids.slice(1))
  assert.equal(engine.decode(ids), text)
  assert.equal(engine.decode(new Uint32Array(ids), false), `<s> ${text}`)
  await engine.addAdapter('qv-r4', adapterDir('qv-r4'))
  const stream = engine.generate(text, { adapter: 'qv-r4', maxNewTokens: 8 })
  const pieces = []
  for await (const _ of stream) pieces.push(stream.text)
  assert.deepEqual([...stream.tokens], reference.greedy['qv-r4.0'])
  assert.equal(stream.text, words([...stream.tokens]))
  for (let i = 1; i < pieces.length; i++) assert.ok(pieces[i].startsWith(pieces[i - 1]) && pieces[i].length > pieces[i - 1].length)
  assert.equal(stream.finishReason, 'max_new_tokens')
  assert.equal(stream.stopString, null)
})

test('a stop string ends the request once its text contains it', async () => {
  const full = reference.greedy['base.1']
  const stop = `w${full[3]}`
  let k = 1
  while (!engine.decode(full.slice(0, k)).includes(stop)) k++
  const stream = engine.generate(reference.sequences[1], { maxNewTokens: 8, stopStrings: [stop, 'never-generated'] })
  for await (const _ of stream);
  assert.deepEqual([...stream.tokens], full.slice(0, k))
  assert.equal(stream.finishReason, 'stop_string')
  assert.equal(stream.stopString, stop)
  const whole = engine.decode(full.slice(0, k))
  assert.equal(stream.text, whole.slice(0, whole.indexOf(stop)))
})

test('newText hands the answer out in pieces that are never taken back', async () => {
  const full = reference.greedy['base.1']
  const stop = `w${full[3]} w${full[4]}` // spans two tokens
  const stream = engine.generate(reference.sequences[1], { maxNewTokens: 8, stopStrings: [stop] })
  const shown = []
  for await (const _ of stream) shown.push(stream.newText())
  shown.push(stream.newText()) // the rest, once the stream has ended
  assert.equal(stream.finishReason, 'stop_string')
  const joined = shown.join('')
  assert.equal(joined, stream.text)
  assert.ok(!joined.includes(stop))
  assert.ok(shown.slice(0, -1).some((p) => p.length > 0), 'pieces arrive while the request runs')
  assert.equal(stream.newText(), '')
  // Without stop strings nothing is held back: each token's word comes with it.
  const plain = engine.generate(reference.sequences[1], { maxNewTokens: 8 })
  const pieces = []
  for await (const _ of plain) pieces.push(plain.newText())
  assert.ok(pieces.every((p) => p.length > 0))
  assert.equal(pieces.join('') + plain.newText(), words([...plain.tokens]))
})

test('text without a tokenizer, and bad text input, are typed errors', async () => {
  const plain = await ol.Engine.load(tinyLlama, { maxContext: 64, blockSize: 4 })
  try {
    assert.equal(plain.hasTokenizer, false)
    await rejects(() => plain.encode('w17'), 'ModelFormat', /tokenizer\.json/)
    await rejects(() => plain.decode([1, 2]), 'ModelFormat', /tokenizer\.json/)
    await rejects(() => plain.generate('w17 w42'), 'InvalidArg', /prompt/)
    await rejects(() => plain.generate([1, 2], { stopStrings: ['w5'] }), 'InvalidArg', /stopStrings/)
    const s = plain.generate([1, 2], { maxNewTokens: 2 })
    for await (const _ of s);
    await rejects(() => s.text, 'ModelFormat', /tokenizer\.json/)
    await rejects(() => s.newText(), 'ModelFormat', /tokenizer\.json/)
  } finally {
    await plain.close()
  }
  await rejects(() => engine.decode([1, 1e6]), 'InvalidArg', /ids/)
  await rejects(() => engine.decode([1, -1]), 'InvalidArg', /ids: item 1/)
  await rejects(() => engine.generate('w17', { stopStrings: [''] }), 'InvalidArg', /stop_strings/)
  // still serving
  const s = engine.generate('w17 w42', { maxNewTokens: 3 })
  for await (const _ of s);
  assert.equal(s.tokens.length, 3)
})

test('a broken tokenizer.json fails the load with a ModelFormat error', async () => {
  const bad = mkdtempSync(join(tmpdir(), 'openledger-badtok-'))
  try {
    for (const f of ['config.json', 'model.safetensors']) copyFileSync(join(tinyLlama, f), join(bad, f))
    writeFileSync(join(bad, 'tokenizer.json'), '{"model": ')
    await rejects(() => ol.Engine.load(bad), 'ModelFormat', /tokenizer\.json/)
  } finally {
    rmSync(bad, { recursive: true, force: true })
  }
})
