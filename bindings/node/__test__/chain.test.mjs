import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { createServer, connect } from 'node:net'
import { join } from 'node:path'
import { test } from 'node:test'
import { ol, rejects, root } from './helpers.mjs'

const ANVIL =
  process.env.ANVIL || join(root, 'target', 'foundry', 'node_modules', '@foundry-rs', 'anvil-linux-amd64', 'bin', 'anvil')

/** A free loopback port. */
async function freePort() {
  const server = createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** Runs `body(url)` against anvil on a free loopback port, stopping it after; skips (or fails,
 * under OPENLEDGER_REQUIRE_ANVIL) without anvil. */
async function withAnvil(t, body) {
  if (!existsSync(ANVIL)) {
    if (process.env.OPENLEDGER_REQUIRE_ANVIL) assert.fail('anvil is required (bash scripts/install-foundry.sh)')
    t.skip('no anvil (bash scripts/install-foundry.sh)')
    return
  }
  const port = await freePort()
  const node = spawn(ANVIL, ['--host', '127.0.0.1', '--port', String(port), '--silent'], { stdio: 'ignore' })
  try {
    const deadline = Date.now() + 30_000
    for (;;) {
      const up = await new Promise((resolve) => {
        const s = connect(port, '127.0.0.1', () => {
          s.end()
          resolve(true)
        })
        s.on('error', () => resolve(false))
      })
      if (up) break
      if (Date.now() > deadline || node.exitCode !== null) throw new Error('anvil did not start')
      await new Promise((r) => setTimeout(r, 50))
    }
    await body(`http://127.0.0.1:${port}`)
  } finally {
    node.kill()
    await new Promise((resolve) => (node.exitCode !== null ? resolve() : node.once('exit', resolve)))
  }
}

/** Registers a datanet, has a model owner granted and register a model, pays one inference with
 * an operator-signed receipt and checks the split; the same on any chain. */
async function settleOne(chain) {
  const s = await chain.deploySuite()
  const [owner, modelOwner, payer] = [chain.devAccounts[4], chain.devAccounts[5], chain.devAccounts[6]]
  const h = (text) => ol.contentId(Buffer.from(text))
  const ok = async (p) => {
    const r = await p
    assert.equal(r.success, true, JSON.stringify(r.revert))
    return r
  }
  const reg = await ok(chain.transact(owner, s.datanets, 'DatanetRegistry', 'registerDatanet', [h('datanet'), 'ipfs://d']))
  assert.equal(reg.events[0].name, 'DatanetRegistered')
  await ok(chain.transact(owner, s.datanets, 'DatanetRegistry', 'publishVersion', [1, h('root'), 10]))
  await ok(chain.transact(modelOwner, s.datanets, 'DatanetRegistry', 'requestAccess', [1, h('fine-tune')]))
  await ok(chain.transact(owner, s.datanets, 'DatanetRegistry', 'approveAccess', [1, modelOwner]))
  const fee = 10n ** 18n + 3n
  const [modelId] = await chain.call(s.models, 'ModelRegistry', 'modelIdFor', [modelOwner, h('model')])
  const r = await ok(
    chain.transact(modelOwner, s.models, 'ModelRegistry', 'registerModel', [h('model'), h('base'), h('art'), h('log'), [[1, 1]], fee]),
  )
  assert.equal(r.events[0].args.modelId, modelId)
  await ok(chain.transact(payer, s.token, 'TestToken', 'mint', [payer, fee]))
  await ok(chain.transact(payer, s.token, 'TestToken', 'approve', [s.payments, fee]))
  const [epoch] = await chain.call(s.payments, 'InferencePayments', 'currentEpoch', [])
  const receipt = new ol.AttributionReceipt({
    inferenceId: h('inference 1'),
    modelId,
    adapterIds: [],
    payer,
    amount: fee,
    epoch: BigInt(epoch),
    weightsHash: ol.weightsHash([{ id: h('record'), weight: 1n }]),
  })
  const signer = new ol.OperatorSigner(chain.devKey(2))
  assert.equal(signer.address, s.operator)
  const sig = '0x' + signer.sign(receipt, chain.chainId, s.payments).toString('hex')
  const struct = [h('inference 1'), modelId, [], payer, fee.toString(), epoch, receipt.weightsHash]
  const paid = await ok(chain.transact(payer, s.payments, 'InferencePayments', 'payForInference', [struct, sig]))
  const ev = paid.events.find((e) => e.name === 'InferencePaid')
  const shares = [ev.args.ownerShare, ev.args.protocolShare, ev.args.dataShare].map(BigInt)
  assert.equal(shares[0] + shares[1] + shares[2], fee)
  // Paying again reverts with the contract's own error, decoded.
  const again = await chain.transact(payer, s.payments, 'InferencePayments', 'payForInference', [struct, sig])
  assert.equal(again.success, false)
  assert.equal(again.revert.name, 'InferenceAlreadyPaid')

  // An ensemble of that model (weight 0.7) and a second owner's (0.3), paid with payForEnsemble:
  // the digest the contract checks, its fee and the owners' split are the ones computed here.
  const second = chain.devAccounts[7]
  const fee2 = 3n * fee + 1n
  const [secondId] = await chain.call(s.models, 'ModelRegistry', 'modelIdFor', [second, h('model 2')])
  await ok(chain.transact(second, s.models, 'ModelRegistry', 'registerModel', [h('model 2'), h('base'), h('art 2'), h('log'), [], fee2]))
  const ids = [modelId, secondId]
  const weights = ol.ensembleShares([0.7, 0.3])
  assert.deepEqual(weights, [700000n, 300000n])
  const eFee = ol.ensembleFee(ids, [fee, fee2], weights)
  assert.equal(eFee, (7n * fee + 3n * fee2) / 10n)
  const [onChainFee] = await chain.call(s.payments, 'InferencePayments', 'ensembleFee', [ids, weights])
  assert.equal(BigInt(onChainFee), eFee)
  await ok(chain.transact(payer, s.token, 'TestToken', 'mint', [payer, eFee]))
  await ok(chain.transact(payer, s.token, 'TestToken', 'approve', [s.payments, eFee]))
  const ensemble = new ol.EnsembleReceipt({
    inferenceId: h('ensemble inference'),
    modelIds: ids,
    shares: weights,
    payer,
    amount: eFee,
    epoch: BigInt(epoch),
    weightsHash: ol.weightsHash([{ id: h('member 0'), weight: 2n }, { id: h('member 1'), weight: 1n }]),
  })
  assert.deepEqual(ensemble.shares, weights)
  const eSig = '0x' + signer.signEnsemble(ensemble, chain.chainId, s.payments).toString('hex')
  assert.equal(ensemble.recoverSigner(eSig, chain.chainId, s.payments), s.operator)
  const eStruct = [ensemble.inferenceId, ids, weights, payer, eFee, epoch, ensemble.weightsHash]
  const [digest] = await chain.call(s.payments, 'InferencePayments', 'ensembleReceiptDigest', [eStruct])
  assert.equal(digest, ensemble.signingHash(chain.chainId, s.payments))
  const ePaid = await ok(chain.transact(payer, s.payments, 'InferencePayments', 'payForEnsemble', [eStruct, eSig]))
  const eEv = ePaid.events.find((e) => e.name === 'EnsemblePaid')
  const [ownerPart] = await chain.call(s.payments, 'InferencePayments', 'split', [eFee])
  const owners = eEv.args.ownerShares.map(BigInt)
  assert.deepEqual(owners, ol.ensembleOwnerShares(ids, BigInt(ownerPart), weights))
  assert.equal(owners[0] + owners[1] + BigInt(eEv.args.protocolShare) + BigInt(eEv.args.dataShare), eFee)
  // Bad ensembles are typed errors naming what is wrong.
  assert.throws(() => ol.ensembleShares([0.7, Number.NaN]), (e) => e.code === 'InvalidArg' && /weight/.test(e.message))
  assert.throws(() => ol.ensembleFee([modelId, modelId], [fee, fee], weights), (e) => e.code === 'InvalidArg' && /twice/.test(e.message))
  assert.throws(
    () => new ol.EnsembleReceipt({ inferenceId: h('x'), modelIds: ids, shares: [1n], payer, amount: 1n, epoch: 0n, weightsHash: h('w') }),
    (e) => e.code === 'InvalidArg' && /shares/.test(e.message),
  )
  return { suite: s, shares: [...shares, ...owners], blockNumber: chain.blockNumber }
}

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
  const r = await chain.transact(stranger, s.payments, 'InferencePayments', 'proposeSplit', [stranger, 100, 100])
  assert.equal(r.success, false)
  assert.equal(r.status, 'revert')
  assert.ok(r.revert && typeof r.revert.kind === 'string')
  await rejects(() => chain.transact(stranger, s.payments, 'NoSuchContract', 'f', []), 'Abi')
  await rejects(() => chain.transact(stranger, s.payments, 'InferencePayments', 'proposeSplit', [1]), 'Abi')
  await rejects(() => chain.devKey(10), 'InvalidArg')
  const before = chain.balance(stranger)
  chain.fund(stranger, 5n)
  assert.equal(chain.balance(stranger), before + 5n)
})

test('RpcChain has the methods of EmbeddedChain and settles the same on anvil', async (t) => {
  const embedded = await settleOne(new ol.EmbeddedChain())
  await withAnvil(t, async (url) => {
    const chain = new ol.RpcChain(url)
    assert.equal(chain.chainId, 31337)
    // anvil's well-known dev accounts when no keys are given.
    assert.equal(chain.devAccounts.length, 10)
    assert.equal(chain.devAccounts[0], '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266')
    const remote = await settleOne(chain)
    // The same split, to the wei, as on the embedded chain.
    assert.deepEqual(remote.shares, embedded.shares)
    assert.ok(remote.blockNumber > 0)
    // anvil's dev controls.
    const t0 = chain.timestamp
    chain.advanceTime(100)
    assert.ok(chain.timestamp >= t0 + 100)
    const stranger = '0x' + '12'.repeat(20)
    chain.fund(stranger, 7n)
    assert.equal(chain.balance(stranger), 7n)
    // The loop on a deployment file: checked against the node; a second loop on it finds the
    // datanet the first one published.
    const dir = mkdtempSync(join(tmpdir(), 'openledger-'))
    const file = join(dir, 'deployment.json')
    const suite = await chain.deploySuite({ out: file })
    assert.ok(readFileSync(file, 'utf8').toLowerCase().includes(suite.payments.toLowerCase()))
    assert.throws(() => new ol.PayableAi({ workDir: join(dir, 'x'), quick: true, deployment: file }), (e) => e.code === 'InvalidArg')
    const first = new ol.PayableAi({ workDir: join(dir, 'a'), quick: true, rpc: url, deployment: file })
    const made = await first.publishDatanet()
    assert.equal(first.report().resumed.datanet, false)
    const second = new ol.PayableAi({ workDir: join(dir, 'b'), quick: true, rpc: url, deployment: file })
    const again = await second.publishDatanet()
    assert.equal(second.report().resumed.datanet, true)
    assert.deepEqual([again.id, again.version], [made.id, made.version])
    rmSync(dir, { recursive: true, force: true })
    // Given keys: only those accounts.
    const one = new ol.RpcChain(url, [chain.devKey(3)])
    assert.deepEqual(one.devAccounts, [chain.devAccounts[3]])
    await rejects(() => one.devKey(1), 'InvalidArg')
  })
  // Bad endpoints and keys are typed errors, thrown at once.
  assert.throws(() => new ol.RpcChain('http://127.0.0.1:1'), (e) => typeof e.code === 'string')
  assert.throws(() => new ol.RpcChain('not a url'), (e) => typeof e.code === 'string')
  assert.throws(() => new ol.RpcChain('http://127.0.0.1:1', ['0x12']), (e) => typeof e.code === 'string')
})
