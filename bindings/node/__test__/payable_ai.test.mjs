// The Payable-AI loop from Node: examples/node/payable_ai.mjs run end to end (small: the quick
// loop, 60 steps), its report checked to the wei, and the typed errors of the stages.
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { after, before, test } from 'node:test'
import { ol, rejects } from './helpers.mjs'
import { main, parseArgs } from '../../../examples/node/payable_ai.mjs'

const STAGES = ['datanet', 'fine-tune', 'serve', 'attribute-and-pay', 'epoch']
const sum = (xs) => xs.reduce((a, b) => a + b, 0n)
const sink = () => ({ text: '', write(s) { this.text += s } })

let dir
before(() => { dir = mkdtempSync(join(tmpdir(), 'ol-payable-')) })
after(() => rmSync(dir, { recursive: true, force: true }))

/** A loop small enough for the error tests: its stages up to `publishDatanet` take milliseconds. */
const small = (name) => new ol.PayableAi({ workDir: join(dir, name), quick: true, steps: 3, counterfactual: false })

test('the example runs the loop end to end and every amount adds up to the wei', async () => {
  const events = []
  const stdout = sink()
  const stderr = sink()
  const file = join(dir, 'example', 'report.json')
  const { code, report } = await main(
    ['--quick', '--steps', '60', '--work-dir', join(dir, 'example'), '--report', file],
    { stdout, stderr, tty: false, onEvent: (e) => events.push(e) },
  )
  assert.equal(code, 0, stderr.text)
  assert.match(stdout.text, /every balance to the wei: ✔/)
  assert.match(stderr.text, /60\/60 +pharma-lora-r8 +loss/)

  // The JSON report on disk: amounts as decimal strings, the same as the bigints returned.
  const json = JSON.parse(readFileSync(file, 'utf8'))
  const e = json.epoch
  assert.equal(BigInt(e.pool_wei), report.epoch.pool_wei)
  assert.equal(typeof report.epoch.pool_wei, 'bigint')
  assert.ok(e.claims_match)
  assert.equal(e.contributors.length, 5)
  for (const c of e.contributors) {
    assert.equal(BigInt(c.balance_wei), BigInt(c.claimed_wei), c.name)
    assert.ok(c.matches, c.name)
  }
  const pool = BigInt(e.pool_wei)
  assert.ok(pool > 0n)
  assert.equal(sum(e.contributors.map((c) => BigInt(c.claimed_wei))), pool)
  assert.equal(BigInt(e.claimed_total_wei), pool)
  assert.equal(BigInt(e.rewards_left_wei), 0n)
  assert.equal(BigInt(e.payments_left_wei), 0n)

  // The contributor who split her records into re-worded copies earns no more for them.
  const n = e.near_duplicates
  assert.ok(n, 'the counterfactual ran')
  assert.ok(n.holds)
  assert.ok(BigInt(n.paid_wei) <= BigInt(n.before_splitting_wei))
  assert.equal(json.accounts[n.account], n.name)

  // mallory's copies of alice's records are flagged, and none of her addresses is paid.
  const copies = json.datanet.copies.filter((c) => c.contributor !== c.owner)
  assert.equal(copies.length, 36)
  assert.deepEqual([...new Set(copies.map((c) => json.accounts[c.owner]))], ['alice'])
  const mallory = new Set(copies.map((c) => c.contributor))
  assert.deepEqual([...mallory].map((m) => json.accounts[m]).sort(), ['mallory-1', 'mallory-2', 'mallory-3'])
  for (const q of json.requests) assert.ok(Object.keys(q.contributors).every((a) => !mallory.has(a)), `request ${q.index}`)
  assert.ok(e.contributors.every((c) => !mallory.has(c.account)))

  // Each payment: fee = owner + protocol + data pool, the pool split exactly among contributors.
  assert.equal(json.requests.length, 4)
  for (const q of json.requests) {
    const split = sum(Object.values(q.contributors).map(BigInt))
    assert.equal(split, BigInt(q.data_pool_wei), `request ${q.index}`)
    assert.equal(BigInt(q.owner_share_wei) + BigInt(q.protocol_share_wei) + BigInt(q.data_pool_wei), BigInt(q.fee_wei))
    assert.equal(sum(Object.values(report.requests[q.index].contributors)), BigInt(q.data_pool_wei))
  }

  // Events: the stages in order, tokens only while serving, and they spell the answers.
  const stages = events.filter((x) => x.kind === 'stage').map((x) => x.name)
  assert.deepEqual(stages, STAGES)
  const serveAt = events.findIndex((x) => x.kind === 'stage' && x.name === 'serve')
  const payAt = events.findIndex((x) => x.kind === 'stage' && x.name === 'attribute-and-pay')
  const tokens = events.map((x, i) => [x, i]).filter(([x]) => x.kind === 'token')
  assert.ok(tokens.length > 0, 'some answer has a word')
  for (const [, i] of tokens) assert.ok(i > serveAt && i < payAt, `token event ${i} outside serve`)
  for (const q of json.requests) {
    const words = tokens.filter(([x]) => x.request === q.index).map(([x]) => x.text)
    assert.equal(words.join(' '), q.answer, `request ${q.index}`)
    for (const [x] of tokens.filter(([x]) => x.request === q.index)) assert.equal(x.adapter, q.adapter)
  }
  const progress = events.filter((x) => x.kind === 'progress')
  for (const x of progress) {
    assert.ok(x.done >= 0 && x.done <= x.total, JSON.stringify(x))
    assert.equal(STAGES.indexOf(x.stage) >= 0, true)
  }
  const losses = progress.filter((x) => x.stage === 'fine-tune' && x.loss !== undefined)
  assert.equal(losses.length, 4 * 60) // two adapters, trained again with no clustering
})

test('a stage called before the one it needs rejects with OutOfOrder, and runs nothing', async () => {
  const ai = small('order')
  const events = []
  await rejects(() => ai.fineTune((e) => events.push(e)), 'OutOfOrder', /fineTune needs publishDatanet first/)
  await rejects(() => ai.closeEpoch(), 'OutOfOrder', /closeEpoch needs publishDatanet first/)
  assert.deepEqual(events, [])
  assert.equal(ai.stagesDone, 0)
  await ai.publishDatanet()
  await rejects(() => ai.serve(), 'OutOfOrder', /serve needs fineTune first/)
})

test('a stage called again rejects with OutOfOrder and leaves the report as it was', async () => {
  const ai = small('again')
  const datanet = await ai.publishDatanet()
  assert.equal(datanet.records, 124)
  const before = ai.reportJson()
  await rejects(() => ai.publishDatanet(), 'OutOfOrder', /publishDatanet already ran/)
  assert.equal(ai.stagesDone, 1)
  assert.equal(ai.reportJson(), before)
})

test('every event reaches the callback before the stage resolves', async () => {
  const ai = small('events')
  const events = []
  await ai.publishDatanet((e) => events.push(e))
  assert.deepEqual(events[0], { kind: 'stage', name: 'datanet' })
  const last = events.at(-1)
  assert.equal(last.kind, 'progress')
  assert.equal(last.done, last.total)
  assert.equal(events.length, 1 + last.total)
})

test('a call while a stage runs rejects (or throws) with Busy', async () => {
  const ai = small('busy')
  // With a callback the stage cannot settle before this thread yields (every event must reach
  // the callback first), so the calls below all see it running.
  const running = ai.publishDatanet(() => {})
  const second = ai.fineTune()
  const again = ai.publishDatanet()
  assert.throws(() => ai.report(), (e) => e.code === 'Busy')
  await Promise.all([rejects(() => second, 'Busy', /busy/), rejects(() => again, 'Busy', /busy/), running])
  assert.equal(ai.stagesDone, 1)
  assert.equal(ai.report().datanet.records, 124)
})

test('unusable options throw InvalidArg naming the option', async () => {
  const workDir = join(dir, 'options')
  await rejects(() => new ol.PayableAi({ workDir, steps: 0 }), 'InvalidArg', /steps 0/)
  await rejects(() => new ol.PayableAi({ workDir, steps: 2.5 }), 'InvalidArg', /steps/)
  await rejects(() => new ol.PayableAi({ workDir, influenceBps: 10001 }), 'InvalidArg', /influence_bps 10001/)
  await rejects(() => new ol.PayableAi({ workDir, maxNewTokens: 0 }), 'InvalidArg', /max_new_tokens/)
  await rejects(() => new ol.PayableAi({ workDir: '' }), 'InvalidArg', /work_dir/)
  await rejects(() => new ol.PayableAi({}), 'InvalidArg')
  // A pretrained base: the counterfactual (which retrains every adapter) is refused, and a
  // missing model file is named.
  const model = join(dir, 'none.gguf')
  await rejects(() => new ol.PayableAi({ workDir, model, counterfactual: true }), 'InvalidArg', /counterfactual/)
  await rejects(() => new ol.PayableAi({ workDir, model }), 'ENOENT', /none\.gguf/)
})

test('a work folder that cannot be made fails fine-tuning with a file-system code naming it', async () => {
  const file = join(dir, 'not-a-folder')
  writeFileSync(file, 'x')
  const ai = new ol.PayableAi({ workDir: join(file, 'work'), quick: true, steps: 3, counterfactual: false })
  await ai.publishDatanet()
  await assert.rejects(ai.fineTune(), (e) => {
    assert.match(e.code, /^(EIO|ENOENT|EACCES)$/)
    assert.ok(e.message.includes(file), e.message)
    assert.ok(e.cause instanceof Error, 'the io error is the cause')
    return true
  })
  assert.equal(ai.stagesDone, 1)
})

test('the example refuses unknown flags and bad step counts, and puts the report in the work folder', () => {
  assert.throws(() => parseArgs(['--bogus']), /unknown argument "--bogus"/)
  assert.throws(() => parseArgs(['--steps', 'ten']), /--steps ten: expected a positive integer/)
  assert.throws(() => parseArgs(['--work-dir']), /--work-dir needs a value/)
  const a = parseArgs(['--quick', '--steps', '7', '--work-dir', 'w'])
  assert.deepEqual([a.quick, a.steps, a.report], [true, 7, join('w', 'report.json')])
})

// The sentence embedder (`bash scripts/fetch-models.sh`); skipped without it unless
// OPENLEDGER_REQUIRE_MODELS=1.
const models = process.env.OPENLEDGER_MODELS ?? fileURLToPath(new URL('../../../target/models', import.meta.url))
const minilm = join(models, 'all-MiniLM-L6-v2')
const haveMinilm = (() => {
  try {
    readFileSync(join(minilm, '.complete'))
    return true
  } catch {
    if (process.env.OPENLEDGER_REQUIRE_MODELS === '1') throw new Error(`${minilm} is absent: run scripts/fetch-models.sh`)
    return false
  }
})()

test('the embedder option indexes the datanet with the sentence model and the report says so', { skip: !haveMinilm && `${minilm} is absent` }, async () => {
  const l = new ol.PayableAi({ workDir: join(dir, 'minilm'), quick: true, steps: 3, counterfactual: false, embedder: minilm })
  const d = await l.publishDatanet()
  assert.match(d.embedder, /^all-MiniLM-L6-v2 \(384 dims\)/)
  assert.equal(d.paraphrases, 0)
  const h = await small('hashing').publishDatanet()
  assert.match(h.embedder, /^feature hashing/)
  assert.throws(() => new ol.PayableAi({ workDir: join(dir, 'nope'), quick: true, embedder: join(dir, 'absent') }), (e) => e.code === 'ENOENT')
})

test('SentenceEmbedder gives sentence-transformers vectors and refuses a broken folder', { skip: !haveMinilm && `${minilm} is absent` }, async () => {
  const e = ol.SentenceEmbedder.fromDir(minilm)
  assert.deepEqual([e.dim, e.maxSeqLen], [384, 256])
  const ref = JSON.parse(readFileSync(fileURLToPath(new URL('../../../fixtures/minilm/reference.json', import.meta.url)), 'utf8'))
  const got = await e.embed(ref.cases.map((c) => c.text))
  assert.equal(got.length, ref.cases.length * 384)
  let worst = 0
  ref.cases.forEach((c, i) => c.vector.forEach((v, j) => { worst = Math.max(worst, Math.abs(got[i * 384 + j] - v)) }))
  assert.ok(worst <= 1e-5, `max |diff| ${worst}`)
  assert.throws(() => ol.SentenceEmbedder.fromDir(join(dir, 'absent')), (err) => err.code === 'ENOENT')
})
