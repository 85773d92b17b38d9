// Builds an N-leaf (uint256 index, address account, uint256 amount) StandardMerkleTree with
// @openzeppelin/merkle-tree and all its proofs, and prints one JSON line with the root and timings.
// The leaves follow the same formula as the Rust benchmark (benches/merkle.rs), so roots must agree.
//
//   node bench-merkle.mjs 100000
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { StandardMerkleTree } = require('@openzeppelin/merkle-tree');

const n = Number(process.argv[2] ?? 1000);
const MASK160 = (1n << 160n) - 1n;
const values = Array.from({ length: n }, (_, i) => {
  const b = BigInt(i);
  const account = `0x${((b * 0x9e3779b97f4a7c15n + 1n) & MASK160).toString(16).padStart(40, '0')}`;
  const amount = (b * 1_000_000_000_000_000n + 7n).toString();
  return [b.toString(), account, amount];
});

let t0 = process.hrtime.bigint();
const tree = StandardMerkleTree.of(values, ['uint256', 'address', 'uint256']);
const buildSecs = Number(process.hrtime.bigint() - t0) / 1e9;

t0 = process.hrtime.bigint();
let proofHashes = 0;
for (let i = 0; i < n; i++) proofHashes += tree.getProof(i).length;
const proofsSecs = Number(process.hrtime.bigint() - t0) / 1e9;

console.log(JSON.stringify({ n, root: tree.root, buildSecs, proofsSecs, proofHashes }));
