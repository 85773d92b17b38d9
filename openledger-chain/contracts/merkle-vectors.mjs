// Writes ../tests/vectors/merkle.json: StandardMerkleTree reference vectors from
// @openzeppelin/merkle-tree (trees of several value types and sizes with their roots, leaf hashes,
// every proof, a multiproof, the rendering and the full `standard-v1` dump).
//
//   node merkle-vectors.mjs            write the vectors
//   node merkle-vectors.mjs --check    fail (exit 1) when the committed vectors differ
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const { StandardMerkleTree } = require('@openzeppelin/merkle-tree');
const { keccak256 } = require('ethereum-cryptography/keccak');

const here = path.dirname(fileURLToPath(import.meta.url));
const outFile = path.join(here, '..', 'tests', 'vectors', 'merkle.json');

// Deterministic pseudo-random bytes (xorshift64*), so the vectors never change between runs.
let state = 0x9e3779b97f4a7c15n;
function nextU64() {
  state ^= state >> 12n;
  state ^= (state << 25n) & 0xffffffffffffffffn;
  state ^= state >> 27n;
  return (state * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn;
}
function randomHex(bytes) {
  let s = '';
  while (s.length < bytes * 2) s += nextU64().toString(16).padStart(16, '0');
  return s.slice(0, bytes * 2);
}
function checksum(hex40) {
  const lower = hex40.toLowerCase();
  const hash = Buffer.from(keccak256(Buffer.from(lower, 'ascii'))).toString('hex');
  let out = '0x';
  for (let i = 0; i < 40; i++) out += parseInt(hash[i], 16) >= 8 ? lower[i].toUpperCase() : lower[i];
  return out;
}
const address = () => checksum(randomHex(20));
const uint = bits => BigInt(`0x${randomHex(bits / 8)}`).toString();

const cases = [];
function add(name, leafEncoding, values, options = {}) {
  const tree = StandardMerkleTree.of(values, leafEncoding, options);
  const n = values.length;
  const multiIdx = [...new Set([0, n - 1, Math.floor(n / 2), Math.floor(n / 3)])];
  const multi = tree.getMultiProof(multiIdx);
  cases.push({
    name,
    leafEncoding,
    sortLeaves: options.sortLeaves ?? true,
    values,
    root: tree.root,
    leafHashes: values.map(v => tree.leafHash(v)),
    proofs: values.map((_, i) => tree.getProof(i)),
    multiProof: { indices: multiIdx, leaves: multi.leaves, proof: multi.proof, proofFlags: multi.proofFlags },
    render: tree.render(),
    dump: tree.dump(),
    dumpJson: JSON.stringify(tree.dump()),
  });
}

add('strings a..f', ['string'], ['a', 'b', 'c', 'd', 'e', 'f'].map(s => [s]));
for (const n of [1, 2, 3, 5, 8, 13, 50]) {
  add(`claims ${n}`, ['uint256', 'address', 'uint256'],
    Array.from({ length: n }, (_, i) => [String(i), address(), uint(96)]));
}
add('claims 9 unsorted', ['uint256', 'address', 'uint256'],
  Array.from({ length: 9 }, (_, i) => [String(i), address(), uint(256)]), { sortLeaves: false });
add('bytes32 7', ['bytes32'], Array.from({ length: 7 }, () => [`0x${randomHex(32)}`]));
add('bool uint8 4', ['bool', 'uint8'], Array.from({ length: 4 }, (_, i) => [i % 2 === 0, String(i * 60)]));
add('bytes string 11', ['bytes', 'string'],
  Array.from({ length: 11 }, (_, i) => [`0x${randomHex(i * 3)}`, `record ${i} "quoted" ✓ ${'x'.repeat(i * 7)}`]));
add('address 1', ['address'], [[address()]]);
add('int256 uint64 int8 6', ['int256', 'uint64', 'int8'],
  Array.from({ length: 6 }, (_, i) => [String((BigInt(i) - 3n) * 10n ** 30n), uint(64), String(i * 40 - 128)]));
add('duplicate values 4', ['uint256'], [['7'], ['7'], ['8'], ['7']]);

const text = `${JSON.stringify({ generator: '@openzeppelin/merkle-tree 1.0.8', cases }, null, 2)}\n`;
if (process.argv.includes('--check')) {
  const committed = fs.existsSync(outFile) ? fs.readFileSync(outFile, 'utf8') : null;
  if (committed !== text) {
    console.error('stale vectors: tests/vectors/merkle.json');
    process.exit(1);
  }
  console.log('merkle vectors are up to date');
} else {
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  fs.writeFileSync(outFile, text);
  console.log(`wrote tests/vectors/merkle.json (${cases.length} trees)`);
}
