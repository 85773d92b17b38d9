#!/usr/bin/env node
// A native-solc command line over the pinned npm `solc` (solcjs, the same compiler compile.mjs
// uses), answering the two calls forge makes:
//
//   solc --version                               two lines, the last `Version: <full version>`
//   solc [--base-path P] [--include-path I]... [--allow-paths A,B] --standard-json
//                                                standard JSON in on stdin, out on stdout
//
// forge puts every source it resolved, with its content, into the input, and its remappings into
// `settings.remappings`; solc applies those itself. The import callback only serves a file that is
// still missing: it tries the name as it is (absolute), then under the base path, then under each
// include path, as native solc does, and refuses files outside them and the allowed paths.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const solc = require('solc');

function parseArgs(argv) {
  const opts = { basePath: null, includePaths: [], allowPaths: [], mode: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [flag, inline] = arg.startsWith('--') && arg.includes('=') ? arg.split(/=(.*)/s) : [arg, undefined];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    switch (flag) {
      case '--version':
        opts.mode = 'version';
        break;
      case '--standard-json':
        opts.mode = 'standard-json';
        break;
      case '--base-path':
        opts.basePath = value();
        break;
      case '--include-path':
        opts.includePaths.push(value());
        break;
      case '--allow-paths':
        opts.allowPaths.push(...value().split(',').filter(Boolean));
        break;
      default:
        // Any other flag native solc knows is not needed for standard JSON; say so and go on.
        process.stderr.write(`solc shim: ignoring argument ${arg}\n`);
    }
  }
  return opts;
}

function within(file, dir) {
  const rel = path.relative(dir, file);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

function importResolver(opts) {
  const base = path.resolve(opts.basePath ?? '.');
  const roots = [base, ...opts.includePaths.map(p => path.resolve(base, p))];
  const allowed = [...roots, ...opts.allowPaths.map(p => path.resolve(base, p))];
  return importPath => {
    const candidates = path.isAbsolute(importPath) ? [importPath] : roots.map(r => path.join(r, importPath));
    for (const file of candidates) {
      if (!allowed.some(dir => within(file, dir))) continue;
      if (fs.existsSync(file) && fs.statSync(file).isFile()) return { contents: fs.readFileSync(file, 'utf8') };
    }
    return { error: `File not found: ${importPath} (searched ${candidates.join(', ')})` };
  };
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.mode === 'version') {
    process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
    return 0;
  }
  if (opts.mode !== 'standard-json') {
    process.stderr.write('solc shim: only --version and --standard-json are supported\n');
    return 1;
  }
  const input = fs.readFileSync(0, 'utf8');
  const output = solc.compile(input, { import: importResolver(opts) });
  process.stdout.write(output);
  return 0;
}

process.exitCode = main();
