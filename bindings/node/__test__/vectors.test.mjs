// Replays every case of bindings/vectors/cross_language.json (computed by the Rust crates)
// through the Node bindings and checks the results are identical, byte for byte.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { ol, root } from './helpers.mjs'

const vectors = JSON.parse(readFileSync(join(root, 'bindings', 'vectors', 'cross_language.json'), 'utf8'))

/** The f64 whose IEEE-754 bits are `0x` + 16 hex digits. */
function f64(bits) {
  const v = new DataView(new ArrayBuffer(8))
  v.setBigUint64(0, BigInt(bits))
  return v.getFloat64(0)
}
/** The bits of `x` rounded to f32, as `0x` + 8 hex digits. */
function f32Bits(x) {
  const v = new DataView(new ArrayBuffer(4))
  v.setFloat32(0, x)
  return '0x' + v.getUint32(0).toString(16).padStart(8, '0')
}
const payouts = (ps) => ps.map((p) => ({ account: p.account, amount: p.amount.toString() }))
const errorCode = {
  NegativeWeight: 'Split',
  ZeroTotalWeight: 'Split',
  DuplicateAccount: 'Split',
  BasisPoints: 'Split',
  NonFinite: 'InvalidArg',
  Empty: 'InvalidArg',
}
const policy = (p) => ({ negative: p.negative, fallback: p.fallback ?? undefined })

test('the vectors file is the one the bindings replay', () => {
  assert.equal(vectors.format, 'openledger cross-language vectors v1')
  for (const k of ['splits', 'standard_merkle', 'core_merkle', 'receipts', 'abi', 'adapters']) {
    assert.ok(vectors[k].length > 0, k)
  }
})

test('reward splits give the same payouts, or the same error, as Rust', () => {
  for (const c of vectors.splits) {
    const run = () => {
      switch (c.kind) {
        case 'scores':
          return payouts(
            ol.splitScores(
              c.amount,
              c.scores.map((s) => s.account),
              new Float64Array(c.scores.map((s) => f64(s.score_bits))),
              policy(c.policy),
            ),
          )
        case 'weights':
          return payouts(ol.splitWeights(c.amount, c.weights, { fallback: c.fallback ?? undefined }))
        case 'bps':
          return payouts(ol.splitBps(c.amount, c.bps))
        case 'fee': {
          const r = new ol.FeeSplit(c.owner, c.protocol, c.protocol_bps, c.data_pool_bps, policy(c.policy)).split(
            c.amount,
            c.scores.map((s) => s.account),
            c.scores.map((s) => f64(s.score_bits)),
          )
          assert.equal(r.owner.account, c.owner, c.name)
          assert.equal(r.protocol.account, c.protocol, c.name)
          return { owner: r.owner.amount.toString(), protocol: r.protocol.amount.toString(), payouts: payouts(r.contributors) }
        }
        default:
          throw new Error(`unknown split kind ${c.kind}`)
      }
    }
    if (c.expected.error) {
      assert.throws(run, (e) => {
        assert.equal(e.message, c.expected.message, c.name)
        assert.equal(e.code, errorCode[c.expected.error], c.name)
        return true
      })
    } else if (c.kind === 'fee') {
      assert.deepEqual(run(), c.expected, c.name)
    } else {
      assert.deepEqual(run(), c.expected.payouts, c.name)
    }
  }
})

test('StandardMerkleTrees have the same roots, nodes, leaves, proofs and multiproofs', async () => {
  for (const c of vectors.standard_merkle) {
    const values = c.values.map((row) =>
      row.map((v, j) => (c.leaf_encoding[j] === 'bool' ? v === 'true' : v)),
    )
    const tree = await ol.StandardMerkleTree.of(values, c.leaf_encoding, { sortLeaves: c.sort_leaves })
    assert.equal(tree.root, c.root, c.name)
    assert.deepEqual(tree.tree(), c.tree, c.name)
    c.values.forEach((_, i) => {
      assert.equal(tree.leafHash(i), c.leaf_hashes[i], `${c.name} leaf ${i}`)
      assert.deepEqual(tree.proof(i), c.proofs[i], `${c.name} proof ${i}`)
    })
    assert.deepEqual(await tree.allProofs(), c.proofs, c.name)
    for (const m of c.multiproofs) {
      const got = tree.multiProof(m.indices)
      assert.deepEqual(got.proof, m.proof, c.name)
      assert.deepEqual(got.proofFlags, m.proof_flags, c.name)
      const asStrings = got.leaves.map((row) => row.map(String))
      assert.deepEqual(asStrings, m.leaves, c.name)
    }
    const reloaded = await ol.StandardMerkleTree.load(tree.toJson())
    assert.equal(reloaded.root, c.root, c.name)
  }
})

test('core Merkle trees have the same roots, nodes, proofs and multiproofs', () => {
  for (const c of vectors.core_merkle) {
    const tree = new ol.MerkleTree(c.leaves)
    assert.equal(tree.root, c.root, c.name)
    assert.deepEqual(tree.nodes(), c.tree, c.name)
    c.leaves.forEach((_, k) => assert.deepEqual(tree.proof(k), c.proofs[k], `${c.name} proof ${k}`))
    for (const m of c.multiproofs) {
      const got = tree.multiProof(m.positions)
      assert.deepEqual(got.leaves, m.leaves, c.name)
      assert.deepEqual(got.proof, m.proof, c.name)
      assert.deepEqual(got.proofFlags, m.proof_flags, c.name)
    }
  }
})

test('EIP-712 receipts have the same hashes and deterministic signatures', () => {
  for (const c of vectors.receipts) {
    const r = c.receipt
    const receipt = new ol.AttributionReceipt({
      inferenceId: r.inference_id,
      modelId: r.model_id,
      adapterIds: r.adapter_ids,
      payer: r.payer,
      amount: r.amount,
      epoch: r.epoch,
      weightsHash: r.weights_hash,
    })
    if (c.weights.length > 0) {
      assert.equal(ol.weightsHash(c.weights), r.weights_hash, c.name)
    }
    assert.equal(ol.receiptDomainSeparator(c.chain_id, c.verifying_contract), c.domain_separator, c.name)
    assert.equal(receipt.structHash(), c.struct_hash, c.name)
    assert.equal(receipt.signingHash(c.chain_id, c.verifying_contract), c.signing_hash, c.name)
    const signer = new ol.OperatorSigner(c.secret)
    assert.equal(signer.address, c.signer, c.name)
    const sig = signer.sign(receipt, c.chain_id, c.verifying_contract)
    assert.equal('0x' + sig.toString('hex'), c.signature, c.name)
    assert.equal(receipt.recoverSigner(c.signature, c.chain_id, c.verifying_contract), c.signer, c.name)
  }
})

test('contract calldata is the same', () => {
  for (const c of vectors.abi) {
    const data = ol.encodeCall(c.contract, c.function, c.args.map((a) => a.value))
    assert.equal(data, c.calldata, c.name)
    assert.ok(data.startsWith(c.selector), c.name)
  }
})

test('adapter facts and validation are the same', async () => {
  for (const c of vectors.adapters) {
    const a = await ol.LoraAdapter.fromDir(join(root, c.path))
    assert.equal(a.r, c.r, c.name)
    assert.equal(a.loraAlpha, c.lora_alpha, c.name)
    assert.equal(a.useRslora, c.use_rslora, c.name)
    assert.equal(a.useDora, c.use_dora, c.name)
    assert.equal(a.numModules, c.module_count, c.name)
    assert.equal(a.residentBytes, c.resident_bytes, c.name)
    assert.deepEqual(a.moduleNames(), c.modules.map((m) => m.name), c.name)
    for (const m of c.modules) {
      const got = a.module(m.name)
      assert.equal(got.rank, m.rank, m.name)
      assert.equal(got.inFeatures, m.in_features, m.name)
      assert.equal(got.outFeatures, m.out_features, m.name)
      assert.equal(f32Bits(got.scale), m.scale_bits, m.name)
    }
    const base = await ol.BaseModel.fromDir(join(root, c.base))
    if (c.validation.ok) {
      const report = await base.validate(a)
      assert.equal(report.modulesChecked, c.validation.modules_checked, c.name)
      assert.deepEqual(report.targetedWithoutWeights, c.validation.targeted_without_weights, c.name)
    } else {
      await assert.rejects(base.validate(a), c.name)
    }
  }
})

test('datanet versions and record proofs equal Rust', () => {
  const c = vectors.datanet
  const net = new ol.Datanet(c.name)
  for (const v of c.versions) {
    net.importJsonl(c.jsonl.slice(net.length, v.record_count).join('\n'))
    const got = net.commit()
    assert.deepEqual([got.number, got.recordCount, got.root], [v.number, v.record_count, v.root])
    v.records.forEach((r, i) => {
      assert.equal(net.record(i).hash, r.hash)
      assert.deepEqual(net.inclusionProof(v.number, i), r.proof)
      assert.ok(ol.verifyRecordProof(v.root, r.hash, r.proof))
    })
  }
})

test('usage proofs verify as Rust says', () => {
  const c = vectors.usage_proofs
  for (const p of c.proofs) {
    const proof = Buffer.from(p.proof.slice(2), 'hex')
    assert.equal(ol.verifyUsageProof(proof, p.record, c.head), p.step)
    assert.equal(ol.verifyUsageProof(proof, p.record, c.other_head), null)
  }
})
