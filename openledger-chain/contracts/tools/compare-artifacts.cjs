#!/usr/bin/env node
// Compares what `forge build` wrote to out/ with the committed artifacts (../artifacts, written by
// compile.mjs): for every contract of every source in src/, the creation and runtime bytecode must
// be equal byte for byte, and no committed artifact may lack a forge counterpart. Exits 1 on any
// difference, naming the contract and the first differing byte.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const outDir = path.join(root, 'out');
const artifactsDir = path.join(root, '..', 'artifacts');

function walk(dir, pick) {
  const found = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) found.push(...walk(p, pick));
    else if (pick(entry.name, p)) found.push(p);
  }
  return found;
}

const sources = new Set(
  walk(path.join(root, 'src'), name => name.endsWith('.sol')).map(p => path.relative(root, p).split(path.sep).join('/')),
);

// Forge's artifacts of contracts defined in src/ (build-info holds the raw compiler output).
const forge = new Map();
for (const file of walk(outDir, (name, p) => name.endsWith('.json') && !p.includes(`${path.sep}build-info${path.sep}`))) {
  const a = JSON.parse(fs.readFileSync(file, 'utf8'));
  const target = a.metadata?.settings?.compilationTarget ?? {};
  for (const [sourceName, contractName] of Object.entries(target)) {
    if (!sources.has(sourceName)) continue;
    if (forge.has(contractName)) throw new Error(`two forge artifacts for ${contractName}`);
    forge.set(contractName, { file: path.relative(root, file), sourceName, artifact: a });
  }
}

function firstDifference(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

let failures = 0;
const fail = msg => {
  console.error(`MISMATCH ${msg}`);
  failures++;
};

for (const [name, { file, sourceName, artifact }] of [...forge].sort()) {
  const committedFile = path.join(artifactsDir, `${name}.json`);
  if (!fs.existsSync(committedFile)) {
    fail(`${name} (${sourceName}): no committed artifacts/${name}.json`);
    continue;
  }
  const before = failures;
  const committed = JSON.parse(fs.readFileSync(committedFile, 'utf8'));
  if (committed.sourceName !== sourceName) fail(`${name}: source ${sourceName} vs committed ${committed.sourceName}`);
  const forgeVersion = artifact.metadata?.compiler?.version ?? '';
  if (!committed.compiler.version.startsWith(forgeVersion) || forgeVersion === '') {
    fail(`${name}: compiler ${forgeVersion} vs committed ${committed.compiler.version}`);
  }
  for (const key of ['bytecode', 'deployedBytecode']) {
    const ours = artifact[key].object.toLowerCase();
    const theirs = committed[key].toLowerCase();
    if (ours === theirs) continue;
    const at = firstDifference(ours, theirs);
    fail(
      `${name}.${key}: ${file} has ${(ours.length - 2) / 2} bytes, artifacts/${name}.json ${(theirs.length - 2) / 2}; ` +
        `first difference at byte ${Math.max(0, (at - 2) >> 1)}`,
    );
  }
  if (failures === before) console.log(`ok ${name}: bytecode and deployedBytecode identical`);
}

for (const file of fs.readdirSync(artifactsDir).filter(f => f.endsWith('.json'))) {
  const name = file.replace(/\.json$/, '');
  if (!forge.has(name)) fail(`artifacts/${file}: forge built no contract ${name} from src/`);
}

if (forge.size === 0) fail('forge built nothing from src/ (is out/ empty?)');
if (failures > 0) {
  console.error(`${failures} difference(s) between forge build and the committed artifacts`);
  process.exit(1);
}
console.log(`forge build matches the committed artifacts byte for byte (${forge.size} contracts)`);
