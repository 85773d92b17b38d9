import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ol, rejects } from './helpers.mjs'

const claims = [
  [0n, '0x1111111111111111111111111111111111111111', 5000000000000000000n],
  [1, '0x2222222222222222222222222222222222222222', '2500000000000000000'],
  [2n, '0x3333333333333333333333333333333333333333', 1n],
]

test('StandardMerkleTree proofs verify, and a wrong proof does not', async () => {
  const tree = await ol.StandardMerkleTree.of(claims, ['uint256', 'address', 'uint256'])
  assert.equal(tree.length, 3)
  assert.match(tree.root, /^0x[0-9a-f]{64}$/)
  for (let i = 0; i < tree.length; i++) {
    assert.ok(tree.verify(i, tree.proof(i)))
    assert.equal(ol.processProof(tree.leafHash(i), tree.proof(i)), tree.root)
  }
  assert.equal(tree.verify(0, tree.proof(1)), false)
  const all = await tree.allProofs()
  assert.deepEqual(all, [0, 1, 2].map((i) => tree.proof(i)))
})

test('the dump round-trips through load, as text and as an object', async () => {
  const tree = await ol.StandardMerkleTree.of(claims, ['uint256', 'address', 'uint256'])
  const dump = tree.dump()
  assert.equal(dump.format, 'standard-v1')
  assert.deepEqual(dump.values[1].value, ['1', '0x2222222222222222222222222222222222222222', '2500000000000000000'])
  for (const d of [dump, tree.toJson()]) {
    const again = await ol.StandardMerkleTree.load(d)
    assert.equal(again.root, tree.root)
  }
  const tampered = { ...dump, tree: [...dump.tree] }
  tampered.tree[0] = '0x' + '00'.repeat(32)
  await rejects(() => ol.StandardMerkleTree.load(tampered), 'MerkleTree')
})

test('sorted trees do not depend on input order; sortLeaves: false keeps it', async () => {
  const enc = ['uint256', 'address', 'uint256']
  const a = await ol.StandardMerkleTree.of(claims, enc)
  const b = await ol.StandardMerkleTree.of([...claims].reverse(), enc)
  assert.equal(a.root, b.root)
  const c = await ol.StandardMerkleTree.of([...claims].reverse(), enc, { sortLeaves: false })
  assert.ok(c.verify(0, c.proof(0)))
})

test('bad values are refused with the field named', async () => {
  await rejects(() => ol.StandardMerkleTree.of([[1.5]], ['uint256']), 'InvalidArg', /values\[0\]\[0\]/)
  await rejects(() => ol.StandardMerkleTree.of([['x']], ['uint256']), 'MerkleTree')
  await rejects(() => ol.StandardMerkleTree.of([[1n]], ['uint999']), 'MerkleTree')
  await rejects(() => ol.StandardMerkleTree.of([[{}]], ['uint256']), 'InvalidArg', /values\[0\]\[0\]/)
})

test('a core MerkleTree proves every leaf and multiproofs are consistent', () => {
  const leaves = [1, 2, 3, 4, 5].map((i) => '0x' + i.toString(16).padStart(2, '0').repeat(32))
  const t = new ol.MerkleTree(leaves)
  assert.equal(t.nodes().length, 2 * leaves.length - 1)
  leaves.forEach((leaf, k) => assert.ok(ol.verifyProof(t.root, leaf, t.proof(k))))
  const m = t.multiProof([0, 3])
  assert.equal(m.leaves.length, 2)
  assert.equal(m.proofFlags.length, m.leaves.length + m.proof.length - 1)
  assert.throws(() => new ol.MerkleTree([]), (e) => e.code === 'MerkleTree')
  assert.throws(() => t.proof(-1), (e) => e.code === 'InvalidArg')
})
