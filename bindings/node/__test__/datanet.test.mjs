// Datanets, training logs, quality, attribution records, epochs, adapter combination and
// merging from JavaScript: a datanet committed and its records proved against a version root
// alone; a training run whose log names the datanet's records, verified, proved and caught when
// tampered; near-duplicate copies that earn nothing; records and epochs that add up to the wei;
// PEFT's add_weighted_adapter deltas; a merged model folder serving the adapter's tokens.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { adapterDir, ol, reference, rejects, tinyLlama } from './helpers.mjs'

const ALICE = '0x' + 'a1'.repeat(20)
const BOB = '0x' + 'b2'.repeat(20)
const ERIN = '0x' + 'e5'.repeat(20)
const line = (content, contributor, extra = {}) => JSON.stringify({ content, contributor, license: 'CC-BY-4.0', ...extra })

function sample() {
  const net = new ol.Datanet('drugs')
  const report = net.importJsonl([
    line('aspirin treats pain', ALICE, { metadata: { drug: 'aspirin' } }),
    line('metformin lowers glucose', BOB),
    line('aspirin treats pain', ERIN),
  ].join('\n'))
  return { net, report }
}

test('a datanet imports, commits and proves its records against the root alone', () => {
  const { net, report } = sample()
  assert.deepEqual(report, { added: 2, duplicates: [{ line: 3, index: 0 }] })
  assert.equal(net.length, 2)
  assert.deepEqual(net.record(0).metadata, { drug: 'aspirin' })
  const v1 = net.commit()
  assert.deepEqual(net.add('donepezil inhibits acetylcholinesterase', BOB, 'MIT'), { index: 2, added: true })
  assert.deepEqual(net.add('aspirin treats pain', BOB, 'MIT'), { index: 0, added: false })
  const v2 = net.commit()
  assert.notEqual(v1.root, v2.root)
  assert.deepEqual(net.versions.map((v) => v.number), [1, 2])
  for (const v of [v1, v2]) {
    for (let i = 0; i < v.recordCount; i++) {
      const proof = net.inclusionProof(v.number, i)
      assert.ok(ol.verifyRecordProof(v.root, net.record(i).hash, proof))
      assert.ok(!ol.verifyRecordProof(v.root, net.record((i + 1) % 2).hash, proof))
    }
  }
  assert.equal(net.get(net.record(1).hash).content, 'metformin lowers glucose')
  assert.equal(net.get('0x' + '00'.repeat(32)), null)
  const again = new ol.Datanet('copy')
  again.importJsonl(Buffer.from(net.exportJsonl(1)))
  assert.equal(again.commit().root, v1.root)
})

test('bad datanet input is typed and changes nothing', async () => {
  const { net } = sample()
  await rejects(() => net.importJsonl(line('fine', BOB) + '\n{not json'), 'InvalidArg', /line 2/)
  assert.equal(net.length, 2)
  await rejects(() => net.importJsonl(line('x', BOB, { hash: '0x' + '11'.repeat(32) })), 'Integrity', /does not match/)
  await rejects(() => net.version(1), 'UnknownId')
  await rejects(() => net.add('x', 'not an address', 'MIT'), 'InvalidArg')
  const dir = mkdtempSync(join(tmpdir(), 'openledger-datanet-'))
  try {
    await rejects(() => net.importFile(join(dir, 'missing.jsonl')), 'ENOENT', /missing\.jsonl/)
    writeFileSync(join(dir, 'd.jsonl'), line('from a file', ALICE))
    assert.equal((await net.importFile(join(dir, 'd.jsonl'))).added, 1)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('a training log names the datanet records, verifies, proves their use and catches tampering', async () => {
  const { net } = sample()
  net.commit()
  const examples = [0, 1].map((i) => ({ prompt: [1, 10 + i, 7], response: [100 + i], record: net.record(i).hash, datanet: 1n }))
  const t = await ol.Trainer.load(tinyLlama, { targets: ['q_proj'], r: 2, alpha: 4, steps: 4, batchSize: 2, learningRate: 1e-2, seed: 1 })
  assert.equal(t.trainingLog(), null)
  const genesis = t.startLog('0x' + '0b'.repeat(32))
  await t.train(examples)
  const log = t.trainingLog()
  assert.equal(log.length, 4)
  assert.equal(log.genesis, genesis)
  assert.equal(log.verify(), log.head)
  const used = log.entries().flatMap((e) => e.records)
  const rec = used[0]
  const step = log.wasUsed(rec)[0]
  const proof = log.prove(rec, step)
  assert.equal(ol.verifyUsageProof(proof, rec, log.head), step)
  assert.equal(ol.verifyUsageProof(proof, rec, '0x' + '00'.repeat(32)), null)
  await rejects(() => ol.verifyUsageProof(proof.subarray(0, proof.length - 1), rec, log.head), 'Integrity')
  const raw = log.toBytes()
  assert.equal(ol.TrainLog.fromBytes(raw).head, log.head)
  raw[8 + 32 + 32 + 8 + 50] ^= 1
  await rejects(() => ol.TrainLog.fromBytes(raw).verify(), 'Integrity', /entry 0/)
  const mine = new ol.TrainLog('0x' + '0b'.repeat(32), '0x' + '0c'.repeat(32))
  assert.equal(mine.append(1, [rec], 2.5, 1e-3), mine.head)
  assert.deepEqual(mine.wasUsed(rec), [1])
  await rejects(() => mine.append(1, [rec], 2.5, 1e-3), 'InvalidArg')
  await rejects(() => t.train([{ tokens: [1, 2, 3], datanet: 1n }]), 'InvalidArg', /datanet without record/)
})

test('near-duplicate copies cluster and earn nothing; flags and penalties', async () => {
  const texts = [
    'Aspirin irreversibly inhibits cyclooxygenase, reducing prostaglandins.',
    'Metformin lowers hepatic glucose production in type 2 diabetes.',
    'Aspirin irreversibly inhibits cyclooxygenase, reducing prostaglandins!',
    'aspirin irreversibly inhibits   cyclooxygenase, reducing prostaglandins.',
  ]
  const clusters = ol.clusterNearDuplicates(texts)
  assert.deepEqual(clusters, [0, 1, 0, 0])
  const who = [ALICE, BOB, ERIN, ERIN]
  const first = ol.clusterRewards(clusters, who, [1, 1, 1, 1])
  assert.deepEqual(first.map((w) => [w.account.toLowerCase(), w.weight]), [[ALICE, 1], [BOB, 1]])
  // Shared per contributor, erin's copies of alice's record would take half of it.
  const shared = ol.clusterRewards(clusters, who, [1, 1, 1, 1], 'per_contributor')
  assert.deepEqual(
    Object.fromEntries(shared.map((w) => [w.account.toLowerCase(), w.weight])),
    { [ALICE]: 0.5, [BOB]: 1, [ERIN]: 0.5 },
  )
  const copies = ol.flagCopies(clusters, who)
  assert.deepEqual(
    copies.map((c) => [c.index, c.original, c.contributor.toLowerCase(), c.owner.toLowerCase()]),
    [[2, 0, ERIN, ALICE], [3, 0, ERIN, ALICE]],
  )
  await rejects(() => ol.flagCopies([1, 1], who.slice(0, 2)), 'InvalidArg', /clusterOf\[0\]|cluster_of\[0\]/)
  const flags = ol.flagNegative(who, [0.5, -0.2, 0.1, -0.4])
  assert.deepEqual(flags.map((f) => f.index), [1, 3])
  const penalised = ol.applyPenalties([{ account: BOB, weight: 1 }, { account: ERIN, weight: 1 }], flags, { factor: 2 })
  assert.ok(Math.abs(penalised[0].weight - 0.6) < 1e-12 && Math.abs(penalised[1].weight - 0.2) < 1e-12)
  const excluded = ol.applyPenalties([{ account: ERIN, weight: 1 }], flags, { policy: 'exclude', maxFlags: 1 })
  assert.equal(excluded[0].weight, 0)
  await rejects(() => ol.clusterRewards(clusters, who, [1, 1, 1, 1], 'loudest'), 'InvalidArg')
  await rejects(() => ol.clusterNearDuplicates(texts, { shingle: 'bytes' }), 'InvalidArg')
  await rejects(() => ol.clusterRewards([0, 9], who.slice(0, 2), [1, 1]), 'InvalidArg')
  await rejects(() => ol.flagNegative(who, [NaN, 0, 0, 0]), 'InvalidArg')
})

test('attribution records encode canonically and epochs add up to the wei', async () => {
  const [inference, model] = ['0x' + '01'.repeat(32), '0x' + '02'.repeat(32)]
  const rec = ol.AttributionRecord.fromScores(inference, model, ['0x' + '03'.repeat(32)], 'tracin', [ALICE, BOB], [3, 1])
  assert.equal(rec.method, 'tracin')
  assert.deepEqual(rec.weights.map((w) => w.weight), [750000000000000000n, 250000000000000000n])
  const again = ol.AttributionRecord.decode(rec.encode())
  assert.equal(again.id, rec.id)
  await rejects(() => ol.AttributionRecord.decode(Buffer.concat([rec.encode(), Buffer.from([0])])), 'InvalidArg')
  await rejects(() => ol.AttributionRecord.fromScores(inference, model, [], 'vibes', [ALICE], [1]), 'InvalidArg', /not one of/)
  const epoch = new ol.Epoch(7)
  epoch.add(rec, 1000003n)
  const rag = ol.AttributionRecord.fromScores(inference, model, [], 'rag_relevance', [BOB, ERIN], [1, 1])
  epoch.add(rag, 10n ** 30n + 1n)
  assert.equal(epoch.pooled, 1000003n + 10n ** 30n + 1n)
  assert.equal(epoch.payouts().reduce((s, p) => s + p.amount, 0n), epoch.pooled)
  const claims = epoch.claims()
  assert.deepEqual(claims.map((c) => c.index), claims.map((_, i) => BigInt(i)))
  assert.equal(claims.reduce((s, c) => s + c.amount, 0n), epoch.pooled)
  assert.deepEqual(epoch.records, [rec.id, rag.id])
})

test('adapters combine with PEFT semantics and merge into a model folder that serves their tokens', async () => {
  const qv = await ol.LoraAdapter.fromDir(adapterDir('qv-r4'))
  const name = 'model.layers.0.self_attn.q_proj'
  const cat = await ol.addWeightedAdapter([qv, qv], [0.25, 0.5], { combinationType: 'cat' })
  assert.equal(cat.module(name).rank, 8)
  const delta = (a) => {
    const m = a.module(name)
    const [A, B, r, inF, outF] = [m.a(), m.b(), m.rank, m.inFeatures, m.outFeatures]
    const d = new Float64Array(outF * inF)
    for (let o = 0; o < outF; o++) for (let i = 0; i < inF; i++) {
      let s = 0
      for (let k = 0; k < r; k++) s += B[o * r + k] * A[k * inF + i]
      d[o * inF + i] = m.scale * s
    }
    return d
  }
  const [dc, dq] = [delta(cat), delta(qv)]
  for (let i = 0; i < dq.length; i++) assert.ok(Math.abs(dc[i] - 0.75 * dq[i]) < 1e-6, `${i}`)
  await rejects(() => ol.addWeightedAdapter([qv], [1], { combinationType: 'average' }), 'InvalidArg', /combination_type/)
  await rejects(() => ol.addWeightedAdapter([qv, qv], [1, 1], { combinationType: 'ties' }), 'InvalidArg', /density/)
  const dir = mkdtempSync(join(tmpdir(), 'openledger-merged-'))
  try {
    await ol.mergeAdapterIntoModel(tinyLlama, qv, join(dir, 'merged'))
    const engine = await ol.Engine.load(join(dir, 'merged'), { maxContext: 64, blockSize: 4 })
    const got = []
    for await (const t of engine.generate(reference.sequences[0], { maxNewTokens: 8 })) got.push(t.token)
    assert.deepEqual(got, reference.greedy['qv-r4.0'])
    await engine.close()
    await rejects(() => ol.mergeAdapterIntoModel(join(dir, 'nowhere'), qv, join(dir, 'out')), 'ENOENT')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
