// Shared paths and helpers of the test suite. Paths are relative to this file, inside the
// repository.
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
export const root = join(here, '..', '..', '..')
export const tinyLlama = join(root, 'fixtures', 'peft', 'tiny-llama')
export const adapterDir = (name) => join(tinyLlama, 'adapters', name)
export const ol = createRequire(import.meta.url)('../index.js')
export const reference = createRequire(import.meta.url)(join(tinyLlama, 'reference.json'))

/** Asserts that `fn()` (or the promise it returns) fails with an error whose code is `code`
 * and whose message matches `message`. */
export async function rejects(fn, code, message) {
  await assert.rejects(async () => fn(), (e) => {
    assert.ok(e instanceof Error, `not an Error: ${e}`)
    assert.equal(e.code, code, `code of: ${e.message}`)
    if (message) assert.match(e.message, message)
    return true
  })
}
