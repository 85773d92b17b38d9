import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ol, rejects } from './helpers.mjs'

test('the suite deploys on the embedded chain and a datanet registers with its event', async () => {
  const chain = new ol.EmbeddedChain()
  assert.equal(chain.chainId, 31337)
  assert.equal(chain.devAccounts.length, 10)
  const s = await chain.deploySuite()
  assert.ok(ol.contractNames().includes('DatanetRegistry'))
  const owner = chain.devAccounts[4]
  const r = await chain.transact(owner, s.datanets, 'DatanetRegistry', 'registerDatanet', [
    ol.contentId(Buffer.from('my datanet')),
    'ipfs://datanet',
  ])
  assert.equal(r.success, true, JSON.stringify(r.revert))
  assert.equal(r.status, 'success')
  assert.ok(r.gasUsed > 0)
  assert.ok(r.events.some((e) => e.contract === 'DatanetRegistry'))
  // The contract's own split rule agrees with the SDK's FeeSplit.
  const [owned, protocol, pool] = (await chain.call(s.payments, 'InferencePayments', 'split', [10n ** 18n])).map(BigInt)
  const fee = new ol.FeeSplit(owner, s.treasury, 500, 2000).split(10n ** 18n, [owner], [1])
  assert.equal(protocol, fee.protocol.amount)
  assert.equal(pool, fee.contributors[0].amount)
  assert.equal(owned, fee.owner.amount)
})

test('reverts are reported with their decoded reason, and bad calls are typed errors', async () => {
  const chain = new ol.EmbeddedChain(1)
  const s = await chain.deploySuite()
  const stranger = chain.devAccounts[9]
  const r = await chain.transact(stranger, s.payments, 'InferencePayments', 'setSplit', [stranger, 100, 100])
  assert.equal(r.success, false)
  assert.equal(r.status, 'revert')
  assert.ok(r.revert && typeof r.revert.kind === 'string')
  await rejects(() => chain.transact(stranger, s.payments, 'NoSuchContract', 'f', []), 'Abi')
  await rejects(() => chain.transact(stranger, s.payments, 'InferencePayments', 'setSplit', [1]), 'Abi')
  await rejects(() => chain.devKey(10), 'InvalidArg')
  const before = chain.balance(stranger)
  chain.fund(stranger, 5n)
  assert.equal(chain.balance(stranger), before + 5n)
})
