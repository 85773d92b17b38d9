import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ol, rejects } from './helpers.mjs'

const contract = '0x5FbDB2315678afecb367f032d93F642f64180aa3'
const fields = {
  inferenceId: '0x' + 'ab'.repeat(32),
  modelId: '0x' + 'cd'.repeat(32),
  adapterIds: ['0x' + '01'.repeat(32)],
  payer: '0x' + '44'.repeat(20),
  amount: 10n ** 18n,
  epoch: 3n,
  weightsHash: ol.weightsHash([{ id: '0x' + '02'.repeat(32), weight: 5n }]),
}

test('a signed receipt recovers to the operator, for that chain and contract only', () => {
  const signer = new ol.OperatorSigner('0x' + '07'.repeat(32))
  const receipt = new ol.AttributionReceipt(fields)
  const sig = signer.sign(receipt, 31337, contract)
  assert.ok(Buffer.isBuffer(sig))
  assert.equal(sig.length, 65)
  assert.ok(sig[64] === 27 || sig[64] === 28)
  assert.equal(receipt.recoverSigner(sig, 31337, contract), signer.address)
  assert.equal(receipt.recoverSigner('0x' + sig.toString('hex'), 31337, contract), signer.address)
  assert.notEqual(receipt.recoverSigner(sig, 1, contract), signer.address)
  assert.notEqual(receipt.signingHash(31337, contract), receipt.signingHash(1, contract))
  assert.equal(receipt.amount, 10n ** 18n)
  assert.equal(receipt.epoch, 3n)
})

test('bad keys, signatures and fields are typed errors', async () => {
  await rejects(() => new ol.OperatorSigner('0x' + '00'.repeat(32)), 'Signature')
  await rejects(() => new ol.OperatorSigner('0x12'), 'InvalidArg', /secret/)
  const receipt = new ol.AttributionReceipt(fields)
  await rejects(() => receipt.recoverSigner(Buffer.alloc(10), 1, contract), 'Signature')
  await rejects(() => new ol.AttributionReceipt({ ...fields, epoch: 1n << 64n }), 'InvalidArg', /epoch/)
  await rejects(() => new ol.AttributionReceipt({ ...fields, payer: undefined }), 'InvalidArg')
  await rejects(() => receipt.signingHash(-1, contract), 'InvalidArg', /chainId/)
})

test('contract calldata encodes and decodes back', () => {
  const data = ol.encodeCall('TestToken', 'approve', ['0x' + '55'.repeat(20), 10n ** 20n])
  assert.match(data, /^0x095ea7b3/)
  const call = ol.decodeCall('TestToken', data)
  assert.equal(call.function, 'approve')
  assert.equal(call.args[1], (10n ** 20n).toString())
  assert.throws(() => ol.encodeCall('NoSuchContract', 'f', []), (e) => e.code === 'Abi')
  assert.throws(() => ol.encodeCall('TestToken', 'approve', [1n]), (e) => e.code === 'Abi')
})
