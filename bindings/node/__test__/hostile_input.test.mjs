// Hostile input through the Node package: sizes a caller picks cannot kill or wedge the process,
// tampered files and signatures are refused, inconsistent input is not served, and errors name
// their culprit (the Rust suite has the same findings, openledger/tests/hostile_input.rs).
import assert from 'node:assert/strict'
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { adapterDir, ol, rejects, tinyLlama } from './helpers.mjs'

const ALICE = '0x' + 'a1'.repeat(20)

test('a huge k returns every citation', async () => {
  const index = new ol.RagIndex(2)
  for (let i = 0; i < 3; i++) index.add('0x' + i.toString(16).padStart(64, '0'), ALICE, 'r', new Float32Array([1, i]))
  for (const k of [1e9, 2 ** 53 - 1]) assert.equal((await index.search(new Float32Array([1, 1]), k)).length, 3)
})

test('trainer sizes are checked before anything is allocated', async () => {
  const data = Array.from({ length: 4 }, () => ({ prompt: [1, 10, 7], response: [100] }))
  const big = await ol.Trainer.load(tinyLlama, { targets: ['q_proj'], r: 4, alpha: 8, steps: 2, batchSize: 1e6 })
  await rejects(() => big.train(data), 'InvalidArg', /batch_size/)
  const t = await ol.Trainer.load(tinyLlama, { targets: ['q_proj'], r: 4, alpha: 8, steps: 2 })
  await rejects(() => t.greedy([1, 2, 3], 1e9), 'InvalidArg', /max_position_embeddings/)
  await rejects(() => ol.Trainer.load(tinyLlama, { targets: ['q_proj'], r: 1e6, alpha: 8 }), 'InvalidArg', /full rank/)
})

test('feature stores: sizes, overwrites and edits', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'openledger-hostile-'))
  try {
    await rejects(() => ol.FeatureStoreWriter.create(join(dir, 'big.olfs'), { inputDim: 1e6, k: 1e6, learningRates: [0.1] }), 'InvalidArg', /largest sketch/)
    const path = join(dir, 's.olfs')
    const w = await ol.FeatureStoreWriter.create(path, { inputDim: 8, k: 4, learningRates: [0.5] })
    await w.append('0x' + '11'.repeat(32), ALICE, new Float32Array(8).fill(1))
    await rejects(() => ol.FeatureStoreWriter.create(path, { inputDim: 8, k: 4, learningRates: [0.5] }), 'EIO', /exists/)
    assert.equal((await ol.FeatureStore.open(path)).length, 1)
    const raw = readFileSync(path)
    raw[40] ^= 1
    writeFileSync(path, raw)
    await rejects(() => ol.FeatureStore.open(path), 'Integrity', /checksum/)
    await ol.FeatureStoreWriter.create(path, { inputDim: 8, k: 4, learningRates: [0.5], overwrite: true })
    assert.equal((await ol.FeatureStore.open(path)).length, 0)
    await rejects(() => ol.FeatureStore.open(dir), 'EIO', /directory/)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('adapter files must be regular files', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'openledger-zero-'))
  try {
    mkdirSync(join(dir, 'zero'))
    copyFileSync(join(adapterDir('qv-r4'), 'adapter_config.json'), join(dir, 'zero', 'adapter_config.json'))
    symlinkSync('/dev/zero', join(dir, 'zero', 'adapter_model.safetensors'))
    await rejects(() => ol.LoraAdapter.fromDir(join(dir, 'zero')), 'EIO', /not a regular file/)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('merkle dumps that hide leaves are refused', async () => {
  const tree = await ol.StandardMerkleTree.of([[1], [2], [3], [4]], ['uint256'])
  const dump = tree.dump()
  await rejects(() => ol.StandardMerkleTree.load({ ...dump, values: dump.values.slice(0, 3) }), 'MerkleTree', /3 values for a tree of 4 leaves/)
  await rejects(() => ol.StandardMerkleTree.load({ ...dump, values: [] }), 'MerkleTree')
})

test('signatures follow what ECDSA.sol accepts; duplicate weights and overflows are refused', async () => {
  const signer = new ol.OperatorSigner('0x' + '07'.repeat(32))
  const r = new ol.AttributionReceipt({
    inferenceId: '0x' + '01'.repeat(32), modelId: '0x' + '02'.repeat(32), adapterIds: [], payer: ALICE,
    amount: 1000n, epoch: 1n, weightsHash: '0x' + '04'.repeat(32),
  })
  const contract = '0x' + '09'.repeat(20)
  const sig = signer.sign(r, 31337, contract)
  assert.ok(sig[64] === 27 || sig[64] === 28)
  assert.equal(r.recoverSigner(sig, 31337, contract), signer.address)
  const v01 = Buffer.from(sig)
  v01[64] -= 27
  await rejects(() => r.recoverSigner(v01, 31337, contract), 'Signature', /27 or 28/)
  const n = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n
  const s = BigInt('0x' + sig.subarray(32, 64).toString('hex'))
  const high = Buffer.concat([sig.subarray(0, 32), Buffer.from((n - s).toString(16).padStart(64, '0'), 'hex'), Buffer.from([55 - sig[64]])])
  await rejects(() => r.recoverSigner(high, 31337, contract), 'Signature', /high-s/)
  await rejects(() => ol.weightsHash([{ id: '0x' + '01'.repeat(32), weight: 1n }, { id: '0x' + '01'.repeat(32), weight: 2n }]), 'InvalidArg', /twice/)
  const chain = new ol.EmbeddedChain()
  chain.fund(ALICE, 2n ** 256n - 1n - chain.balance(ALICE))
  await rejects(() => chain.fund(ALICE, 1n), 'InvalidArg', /overflows/)
  assert.equal(chain.balance(ALICE), 2n ** 256n - 1n)
})

test('an adapter serving requests is not replaced under them', async () => {
  const engine = await ol.Engine.load(tinyLlama, { maxContext: 64, blockSize: 4 })
  try {
    await engine.addAdapter('mine', adapterDir('qv-r4'))
    const stream = engine.generate([1, 17, 42], { adapter: 'mine', maxNewTokens: 40 })
    const it = stream[Symbol.asyncIterator]()
    await it.next() // running: the engine holds the adapter
    await rejects(() => engine.addAdapter('mine', adapterDir('attn-patterns')), 'State', /pending requests/)
    for await (const _ of { [Symbol.asyncIterator]: () => it }) { /* drain */ }
    await engine.addAdapter('mine', adapterDir('attn-patterns'))
  } finally {
    await engine.close()
  }
})
