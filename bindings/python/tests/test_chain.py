"""Contract calldata by name and the in-process EVM running the real contracts: the whole
settlement path (datanet, access, model, paid inference, epoch root, claims) driven from Python."""

import os
import pathlib
import socket
import subprocess
import time

import pytest

import openledger as ol

REPO = pathlib.Path(__file__).resolve().parents[3]

FEE = 10**18 + 3  # the split has remainders


def h(text):
    return ol.content_id(text.encode())


ANVIL = pathlib.Path(os.environ.get("ANVIL") or (
    REPO / "target" / "foundry" / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"))


@pytest.fixture()
def anvil_url():
    """Anvil on a free loopback port, stopped after the test."""
    if not ANVIL.is_file():
        if os.environ.get("OPENLEDGER_REQUIRE_ANVIL"):
            pytest.fail("anvil is required (bash scripts/install-foundry.sh)")
        pytest.skip("no anvil (bash scripts/install-foundry.sh)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("anvil did not start")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(params=["embedded", "anvil"])
def world(request):
    """The suite deployed on the in-process EVM, and on anvil over JSON-RPC."""
    if request.param == "embedded":
        chain = ol.EmbeddedChain()
    else:
        chain = ol.RpcChain(request.getfixturevalue("anvil_url"))
    suite = chain.deploy_suite()
    acct = chain.dev_accounts
    return chain, suite, acct


def ok(result):
    assert result.success, (result.status, result.revert)
    return result


def test_calldata_round_trips_and_matches_the_selector():
    root = "0x" + "07" * 32
    data = ol.encode_call("DatanetRegistry", "publishVersion", [1, root, 42])
    assert len(data) == 4 + 3 * 32
    name, args = ol.decode_call("DatanetRegistry", data)
    assert (name, args) == ("publishVersion", [1, root, 42])
    assert "InferencePayments" in ol.contract_names()


def test_bad_names_and_values_raise_abi_errors():
    with pytest.raises(ol.AbiError, match="Nope"):
        ol.encode_call("Nope", "f", [])
    with pytest.raises(ol.AbiError, match="noSuchFunction"):
        ol.encode_call("DatanetRegistry", "noSuchFunction", [])
    with pytest.raises(ol.AbiError, match="recordsRoot"):
        ol.encode_call("DatanetRegistry", "publishVersion", [1, "0x07", 42])
    with pytest.raises(ol.AbiError, match="3"):
        ol.encode_call("DatanetRegistry", "publishVersion", [1])
    with pytest.raises(ol.InvalidArgumentError):
        ol.encode_call("DatanetRegistry", "publishVersion", [1, object(), 42])
    with pytest.raises(ol.AbiError):
        ol.decode_call("DatanetRegistry", b"\x01\x02")
    with pytest.raises(ol.InvalidArgumentError):
        ol.EmbeddedChain().dev_key(99)


def test_the_whole_settlement_path_pays_and_every_contributor_claims_to_the_wei(world):
    chain, s, acct = world
    datanet_owner, model_owner, payer = acct[4], acct[5], acct[6]
    registry, models, payments, rewards, token = (
        s["datanets"], s["models"], s["payments"], s["rewards"], s["token"]
    )

    r = ok(chain.transact(datanet_owner, registry, "DatanetRegistry", "registerDatanet",
                          [h("legal datanet"), "ipfs://legal"]))
    on_node = isinstance(chain, ol.RpcChain)
    # A node's receipt carries no return data: the id is read from the event there.
    assert r.returns == (None if on_node else [1])
    assert r.events[0].name == "DatanetRegistered" and r.events[0].args["datanetId"] == 1
    ok(chain.transact(datanet_owner, registry, "DatanetRegistry", "publishVersion",
                      [1, h("records root"), 10]))
    ok(chain.transact(model_owner, registry, "DatanetRegistry", "requestAccess", [1, h("fine-tune")]))
    ok(chain.transact(datanet_owner, registry, "DatanetRegistry", "approveAccess", [1, model_owner]))
    assert chain.call(registry, "DatanetRegistry", "hasAccess", [1, model_owner]) == [True]

    # A model's id is derived from its registrant and a salt (nobody else can take it).
    model_id = chain.call(models, "ModelRegistry", "modelIdFor", [model_owner, h("model")])[0]
    r = ok(chain.transact(model_owner, models, "ModelRegistry", "registerModel",
                          [h("model"), h("base"), h("artifact"), h("log head"), [(1, 1)], FEE]))
    assert r.events[0].name == "ModelRegistered" and r.events[0].args["modelId"] == model_id
    got = chain.call(models, "ModelRegistry", "getModel", [model_id])[0]
    assert got[0] == model_owner and got[-1] == FEE  # (owner, active, …, feePerCall)

    ok(chain.transact(payer, token, "TestToken", "mint", [payer, 10 * FEE]))
    ok(chain.transact(payer, token, "TestToken", "approve", [payments, 2**256 - 1]))

    epoch = chain.call(payments, "InferencePayments", "currentEpoch")[0]
    wh = ol.weights_hash([(h("record a"), 2), (h("record b"), 1)])
    receipt = ol.AttributionReceipt(h("inference 1"), model_id, [], payer, FEE, epoch, wh)
    signer = ol.OperatorSigner(chain.dev_key(2))
    assert signer.address == s["operator"]
    sig = signer.sign(receipt, chain.chain_id, payments)
    struct = (receipt.inference_id, receipt.model_id, receipt.adapter_ids, receipt.payer,
              receipt.amount, receipt.epoch, receipt.weights_hash)
    digest = chain.call(payments, "InferencePayments", "receiptDigest", [struct])[0]
    assert digest == receipt.signing_hash(chain.chain_id, payments)

    paid = ok(chain.transact(payer, payments, "InferencePayments", "payForInference", [struct, sig]))
    ev = next(e for e in paid.events if e.name == "InferencePaid")
    shares = (ev.args["ownerShare"], ev.args["protocolShare"], ev.args["dataShare"])
    assert sum(shares) == FEE
    assert list(shares) == chain.call(payments, "InferencePayments", "split", [FEE])
    assert any(e.name == "Transfer" and e.contract == "TestToken" for e in paid.events)

    # Paying twice reverts with the contract's own error, decoded with its argument.
    again = chain.transact(payer, payments, "InferencePayments", "payForInference", [struct, sig])
    assert not again.success
    # Mined (and charged) on the embedded chain; caught by the node's preflight, not sent.
    assert (again.gas_used > 0) != on_node
    assert again.revert == {"kind": "custom", "name": "InferenceAlreadyPaid",
                            "args": {"inferenceId": receipt.inference_id}}

    # Close the epoch; split the data pool 2:1 between two contributors, exactly.
    chain.advance_time(86_400)
    pool = chain.call(payments, "InferencePayments", "dataPool", [epoch])[0]
    assert pool == shares[2]
    c1, c2 = acct[7], acct[8]
    totals = ol.split_weights(pool, [(c1, 2), (c2, 1)])
    assert sum(a for _, a in totals) == pool
    leaves = [[i, account, amount] for i, (account, amount) in enumerate(totals)]
    tree = ol.StandardMerkleTree.of(leaves, ["uint256", "address", "uint256"])
    ok(chain.transact(s["poster"], rewards, "AttributionRewards", "postEpochRoot",
                      [epoch, tree.root, pool]))
    # Claims open when the root's challenge window (a guardian may veto it) closes.
    too_soon = chain.transact(c1, rewards, "AttributionRewards", "claim",
                              [epoch, 0, c1, totals[0][1], tree.proof(0)])
    assert too_soon.revert["name"] == "ChallengeWindowOpen"
    chain.advance_time(chain.call(rewards, "AttributionRewards", "challengeWindow")[0])
    for i, (account, amount) in enumerate(totals):
        before = chain.call(token, "TestToken", "balanceOf", [account])[0]
        ok(chain.transact(account, rewards, "AttributionRewards", "claim",
                          [epoch, i, account, amount, tree.proof(i)]))
        assert chain.call(token, "TestToken", "balanceOf", [account])[0] - before == amount
    assert chain.call(token, "TestToken", "balanceOf", [rewards]) == [0]


def test_an_ensemble_answer_is_paid_to_each_owner_by_share(world):
    """Two models of two owners, weighted 0.7 / 0.3: the receipt the Python signer signs is the
    digest the contract checks, its fee and owners' split are the ones Python computes."""
    chain, s, acct = world
    models, payments, token = s["models"], s["payments"], s["token"]
    owners, payer = (acct[5], acct[7]), acct[6]
    fees = (FEE, 3 * FEE + 1)
    ids = []
    for i, (owner, fee) in enumerate(zip(owners, fees)):
        salt = h(f"ensemble member {i}")
        ids.append(chain.call(models, "ModelRegistry", "modelIdFor", [owner, salt])[0])
        ok(chain.transact(owner, models, "ModelRegistry", "registerModel",
                          [salt, h("base"), h(f"artifact {i}"), h("log head"), [], fee]))
    shares = ol.ensemble_shares([0.7, 0.3])
    assert shares == [700_000, 300_000]
    fee = ol.ensemble_fee(ids, fees, shares)
    assert fee == (fees[0] * 7 + fees[1] * 3) // 10
    assert chain.call(payments, "InferencePayments", "ensembleFee", [ids, shares])[0] == fee
    ok(chain.transact(payer, token, "TestToken", "mint", [payer, fee]))
    ok(chain.transact(payer, token, "TestToken", "approve", [payments, fee]))

    epoch = chain.call(payments, "InferencePayments", "currentEpoch")[0]
    wh = ol.weights_hash([(h("tracin member 0"), 5), (h("tracin member 1"), 2), (h("rag"), 7)])
    receipt = ol.EnsembleReceipt(h("ensemble inference"), ids, shares, payer, fee, epoch, wh)
    assert receipt.model_ids == ids and receipt.shares == shares and receipt.amount == fee
    sig = ol.OperatorSigner(chain.dev_key(2)).sign(receipt, chain.chain_id, payments)
    assert receipt.recover_signer(sig, chain.chain_id, payments) == s["operator"]
    struct = (receipt.inference_id, ids, shares, payer, fee, epoch, wh)
    digest = chain.call(payments, "InferencePayments", "ensembleReceiptDigest", [struct])[0]
    assert digest == receipt.signing_hash(chain.chain_id, payments)

    paid = ok(chain.transact(payer, payments, "InferencePayments", "payForEnsemble", [struct, sig]))
    ev = next(e for e in paid.events if e.name == "EnsemblePaid")
    owner_part, protocol, data = chain.call(payments, "InferencePayments", "split", [fee])
    assert ev.args["ownerShares"] == ol.ensemble_owner_shares(ids, owner_part, shares)
    assert (ev.args["protocolShare"], ev.args["dataShare"]) == (protocol, data)
    assert sum(ev.args["ownerShares"]) + protocol + data == fee
    for owner, part in zip(owners, ev.args["ownerShares"]):
        assert chain.call(payments, "InferencePayments", "withdrawable", [owner]) == [part]

    # A receipt for another share vector recovers someone else, and the contract refuses it.
    other = ol.EnsembleReceipt(h("ensemble inference"), ids, [600_000, 400_000], payer, fee, epoch, wh)
    assert other.recover_signer(sig, chain.chain_id, payments) != s["operator"]
    with pytest.raises(ol.InvalidArgumentError, match="shares"):
        ol.EnsembleReceipt(h("x"), ids, [1], payer, fee, epoch, wh)
    with pytest.raises(ol.InvalidArgumentError, match="weight"):
        ol.ensemble_shares([0.7, float("nan")])
    with pytest.raises(ol.InvalidArgumentError, match="twice"):
        ol.ensemble_fee([ids[0], ids[0]], fees, shares)


def test_a_reverting_view_raises_with_the_decoded_reason(world):
    chain, s, _ = world
    with pytest.raises(ol.TransactionError) as e:
        chain.call(s["models"], "ModelRegistry", "getModel", ["0x" + "ab" * 32])
    assert e.value.revert["kind"] == "custom"
    assert e.value.revert["name"] == "UnknownModel"


def deploy_fund_and_advance(chain):
    """Deploys a token and mints, funds a stranger, moves the clock; returns (me, token, stranger,
    seconds the clock moved)."""
    me = chain.dev_accounts[0]
    token = chain.deploy("TestToken", sender=me)
    ok(chain.transact(me, token, "TestToken", "mint", [me, 5]))
    assert chain.call(token, "TestToken", "balanceOf", [me]) == [5]
    stranger = "0x" + "12" * 20
    chain.fund(stranger, 10**18)
    assert chain.balance(stranger) == 10**18
    t = chain.timestamp
    chain.advance_time(100)
    return me, token, stranger, chain.timestamp - t


def test_deploy_fund_balance_and_time():
    chain = ol.EmbeddedChain(chain_id=7)
    assert chain.chain_id == 7
    me, token, _, moved = deploy_fund_and_advance(chain)
    assert moved == 100
    raw = chain.transact_raw(me, token, ol.encode_call("TestToken", "mint", [me, 1]))
    assert raw.success and raw.returns is None


def test_a_node_over_json_rpc(anvil_url):
    chain = ol.RpcChain(anvil_url)
    assert isinstance(chain, ol.Chain) and chain.chain_id == 31337
    assert "RpcChain(chain_id=31337" in repr(chain)
    me, token, stranger, moved = deploy_fund_and_advance(chain)
    assert moved >= 100  # anvil's clock also runs on its own
    # A sender whose key the chain does not hold; keys that are not keys; no node there.
    with pytest.raises(ol.SignatureError, match="no signer"):
        chain.transact(stranger, token, "TestToken", "mint", [me, 1])
    with pytest.raises(ol.SignatureError, match="key 0"):
        ol.RpcChain(anvil_url, keys=["0x1234"])
    one = ol.RpcChain(anvil_url, keys=[chain.dev_key(9)])
    assert one.dev_accounts == [chain.dev_accounts[9]]
    with pytest.raises(ol.InvalidArgumentError):
        one.deploy_suite()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(OSError, match="eth_chainId"):
        ol.RpcChain(f"http://127.0.0.1:{closed}")


def test_the_loop_uses_a_deployment_file_and_a_second_process_resumes(anvil_url, tmp_path):
    """A deployment file written by `deploy_suite(out=...)` is what `PayableAi` settles on (checked
    against the node first); a second loop on it finds the datanet an earlier one published."""
    chain = ol.RpcChain(anvil_url)
    path = tmp_path / "deployment.json"
    suite = chain.deploy_suite(out=path)
    assert path.is_file() and suite["payments"].lower() in path.read_text().lower()
    keys = [chain.dev_key(i) for i in range(10)]
    # The keys must hold the deployment's roles.
    swapped = keys[:]
    swapped[2], swapped[3] = swapped[3], swapped[2]
    with pytest.raises(ol.InvalidArgumentError, match="key 2 must be the deployment.s operator"):
        ol.PayableAi(tmp_path / "a", quick=True, rpc=anvil_url, keys=swapped, deployment=path)
    with pytest.raises(ol.InvalidArgumentError, match="rpc"):
        ol.PayableAi(tmp_path / "a", quick=True, deployment=path)
    first = ol.PayableAi(tmp_path / "a", quick=True, rpc=anvil_url, keys=keys, deployment=path)
    made = first.publish_datanet()
    assert first.report()["resumed"]["datanet"] is False
    second = ol.PayableAi(tmp_path / "b", quick=True, rpc=anvil_url, deployment=path)
    again = second.publish_datanet()
    assert second.report()["resumed"]["datanet"] is True
    assert (again["id"], again["version"]) == (made["id"], made["version"])
