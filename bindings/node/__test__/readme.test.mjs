// Runs every JavaScript example of the README, from the repository root, against the built addon.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { test } from 'node:test'
import { ol, root } from './helpers.mjs'

const readme = readFileSync(join(root, 'bindings', 'node', 'README.md'), 'utf8')
const blocks = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1])
const req = createRequire(import.meta.url)
const AsyncFunction = (async () => {}).constructor

test('the README has examples', () => {
  if (blocks.length < 6) throw new Error(`only ${blocks.length} examples`)
})

blocks.forEach((code, i) => {
  const title = code.split('\n').find((l) => l.includes('ol.'))?.trim() ?? `block ${i}`
  // A block that needs what the repository does not ship says so on its first line (and names
  // the test that runs its calls); it is reported as skipped.
  const needs = code.match(/^\/\/ needs: (.*)/)?.[1]
  const run = needs ? test.skip : test
  run(`README example ${i + 1} runs: ${needs ? `needs ${needs}` : title}`, async () => {
    const cwd = process.cwd()
    process.chdir(root)
    const quiet = { ...console, log() {} }
    try {
      const require = (name) => (name === '@openledger/sdk' ? ol : req(name))
      await new AsyncFunction('require', 'console', code)(require, quiet)
    } finally {
      process.chdir(cwd)
    }
  })
})
