// Compiles the contracts in src/ with the pinned solc (solcjs) and writes one artifact per
// contract to ../artifacts/<Name>.json: abi, bytecode, deployedBytecode, methodIdentifiers and the
// compiler version and settings.
//
//   node compile.mjs           write the artifacts
//   node compile.mjs --check   recompile and fail (exit 1) when a committed artifact is stale
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const solc = require('solc');

const here = path.dirname(fileURLToPath(import.meta.url));
const srcDir = path.join(here, 'src');
const outDir = path.join(here, '..', 'artifacts');
const check = process.argv.includes('--check');

const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  metadata: { bytecodeHash: 'none' },
  outputSelection: {
    '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object', 'evm.methodIdentifiers'] },
  },
};

function listSources(dir, prefix = 'src') {
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const rel = `${prefix}/${entry.name}`;
    if (entry.isDirectory()) out.push(...listSources(path.join(dir, entry.name), rel));
    else if (entry.name.endsWith('.sol')) out.push(rel);
  }
  return out;
}

function findImport(importPath) {
  const candidates = [path.join(here, importPath), path.join(here, 'node_modules', importPath)];
  for (const c of candidates) {
    if (fs.existsSync(c)) return { contents: fs.readFileSync(c, 'utf8') };
  }
  return { error: `import not found: ${importPath}` };
}

const sources = Object.fromEntries(
  listSources(srcDir).map(rel => [rel, { content: fs.readFileSync(path.join(here, rel), 'utf8') }]),
);
const input = { language: 'Solidity', sources, settings };
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));

const errors = (output.errors ?? []).filter(e => e.severity === 'error');
for (const e of output.errors ?? []) console.error(e.formattedMessage);
if (errors.length > 0) process.exit(1);

const version = solc.version();
let stale = 0;
if (!check) fs.mkdirSync(outDir, { recursive: true });
for (const sourceName of Object.keys(sources)) {
  for (const [name, c] of Object.entries(output.contracts[sourceName] ?? {})) {
    const artifact = {
      contractName: name,
      sourceName,
      compiler: { version, settings: { ...settings, outputSelection: undefined } },
      abi: c.abi,
      bytecode: `0x${c.evm.bytecode.object}`,
      deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
      methodIdentifiers: c.evm.methodIdentifiers,
    };
    const text = `${JSON.stringify(artifact, null, 2)}\n`;
    const file = path.join(outDir, `${name}.json`);
    if (check) {
      const committed = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : null;
      if (committed !== text) {
        console.error(`stale artifact: artifacts/${name}.json`);
        stale += 1;
      }
    } else {
      fs.writeFileSync(file, text);
      console.log(`wrote artifacts/${name}.json (${c.evm.deployedBytecode.object.length / 2} bytes deployed)`);
    }
  }
}
if (check) {
  if (stale > 0) process.exit(1);
  console.log('artifacts are up to date');
}
