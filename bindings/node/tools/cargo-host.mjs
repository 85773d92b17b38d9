#!/usr/bin/env node
// Stands in for `cargo` under `napi build` (through the `CARGO` variable): napi always passes
// `--target <triple>`, which puts every artifact under `<target-dir>/<triple>/`, apart from what
// `cargo test` builds for the host in `<target-dir>/<profile>/`. Building for the host without
// `--target` lets the addon reuse the workspace's compiled dependencies; the library is then
// copied to the place napi reads it from.
//
// Only the host triple is dropped: a build for another triple runs unchanged.
import { spawnSync } from 'node:child_process'
import { copyFileSync, mkdirSync, readdirSync } from 'node:fs'
import { join } from 'node:path'

const cargo = process.env.OPENLEDGER_REAL_CARGO || 'cargo'
const run = (args, opts = {}) => spawnSync(cargo, args, { stdio: 'inherit', ...opts })

const args = process.argv.slice(2)
const host = /host: (\S+)/.exec(spawnSync('rustc', ['-vV'], { encoding: 'utf8' }).stdout)?.[1]
const t = args.indexOf('--target')
if (args[0] !== 'build' || t < 0 || args[t + 1] !== host) {
  process.exit(run(args).status ?? 1)
}
const triple = args[t + 1]
args.splice(t, 2)

const value = (flag) => {
  const i = args.indexOf(flag)
  return i < 0 ? undefined : args[i + 1]
}
const status = run(args).status ?? 1
if (status !== 0) process.exit(status)

let targetDir = value('--target-dir') ?? process.env.CARGO_TARGET_DIR
if (!targetDir) {
  const meta = spawnSync(cargo, ['metadata', '--format-version', '1', '--no-deps'], {
    encoding: 'utf8',
    maxBuffer: 1 << 28,
  })
  targetDir = JSON.parse(meta.stdout).target_directory
}
// Cargo's folder for the profile, and the name napi looks under (it reuses the profile name).
const profile = value('--profile') ?? (args.includes('--release') ? 'release' : 'dev')
const cargoDir = { dev: 'debug', test: 'debug', bench: 'release' }[profile] ?? profile
const napiDir = value('--profile') ?? (args.includes('--release') ? 'release' : 'debug')
const from = join(targetDir, cargoDir)
const to = join(targetDir, triple, napiDir)
mkdirSync(to, { recursive: true })
for (const name of readdirSync(from)) {
  if (/^(lib)?openledger_node\.(so|dylib|dll)$/.test(name)) {
    copyFileSync(join(from, name), join(to, name))
  }
}
