"""Replays the cross-language vectors (bindings/vectors/cross_language.json) through the Python
package: every split, tree, proof, receipt hash, signature and adapter fact must equal what the
Rust crates computed, string for string. Contract calldata and the EIP-712 domain separator are
re-encoded by a small ABI encoder written here (keccak from `content_id`), an independent peer."""

import json
import struct

import pytest

import openledger as ol
from conftest import REPO

VECTORS = json.loads((REPO / "bindings" / "vectors" / "cross_language.json").read_text())


def f64(bits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(bits[2:]))[0]


def f32(bits: str) -> float:
    return struct.unpack(">f", bytes.fromhex(bits[2:]))[0]


def keccak(data: bytes) -> bytes:
    return bytes.fromhex(ol.content_id(data)[2:])


def payouts(ps):
    return [(p["account"], int(p["amount"])) for p in ps]


def split_kwargs(policy):
    return {"negative": policy["negative"], "fallback": policy["fallback"]}


# The Python class of each split error: rule violations are SplitError, unusable input
# (NaN, nothing to split) InvalidArgumentError.
SPLIT_ERRORS = {
    "NonFinite": ol.InvalidArgumentError,
    "Empty": ol.InvalidArgumentError,
    "NegativeWeight": ol.SplitError,
    "ZeroTotalWeight": ol.SplitError,
    "DuplicateAccount": ol.SplitError,
    "BasisPoints": ol.SplitError,
}


def split_outcome(run, expected):
    if "error" in expected:
        with pytest.raises(SPLIT_ERRORS[expected["error"]]) as e:
            run()
        assert str(e.value) == expected["message"]
        return
    got = run()
    assert [(a, int(x)) for a, x in got] == payouts(expected["payouts"])


@pytest.mark.parametrize("case", VECTORS["splits"], ids=lambda c: c["name"])
def test_splits_match_the_rust_vectors_to_the_wei(case):
    amount = int(case["amount"])
    kind = case["kind"]
    if kind == "scores":
        accounts = [s["account"] for s in case["scores"]]
        scores = [f64(s["score_bits"]) for s in case["scores"]]
        split_outcome(
            lambda: ol.split_scores(amount, accounts, scores, **split_kwargs(case["policy"])),
            case["expected"],
        )
    elif kind == "weights":
        weights = [(w["account"], int(w["weight"])) for w in case["weights"]]
        split_outcome(
            lambda: ol.split_weights(amount, weights, fallback=case["fallback"]), case["expected"]
        )
    elif kind == "bps":
        bps = [(b["account"], b["bps"]) for b in case["bps"]]
        split_outcome(lambda: ol.split_bps(amount, bps), case["expected"])
    else:
        assert kind == "fee"
        fee = ol.FeeSplit(
            case["owner"],
            case["protocol"],
            case["protocol_bps"],
            case["data_pool_bps"],
            **split_kwargs(case["policy"]),
        )
        accounts = [s["account"] for s in case["scores"]]
        scores = [f64(s["score_bits"]) for s in case["scores"]]
        got = fee.split(amount, accounts, scores)
        want = case["expected"]
        assert got["owner"] == (case["owner"], int(want["owner"]))
        assert got["protocol"] == (case["protocol"], int(want["protocol"]))
        assert [(a, int(x)) for a, x in got["contributors"]] == payouts(want["payouts"])
        total = got["owner"][1] + got["protocol"][1] + sum(x for _, x in got["contributors"])
        assert total == amount


@pytest.mark.parametrize("case", VECTORS["standard_merkle"], ids=lambda c: c["name"])
def test_standard_merkle_trees_match_the_rust_vectors(case):
    tree = ol.StandardMerkleTree.of(case["values"], case["leaf_encoding"], sort_leaves=case["sort_leaves"])
    assert tree.root == case["root"]
    assert tree.dump()["tree"] == case["tree"]
    for i, proof in enumerate(case["proofs"]):
        assert tree.proof(i) == proof
        assert tree.verify(i, proof)
    canonical = lambda v: [x if isinstance(x, str) else json.dumps(x) for x in v]  # noqa: E731
    for m in case["multiproofs"]:
        got = tree.multi_proof(m["indices"])
        assert [canonical(v) for v in got["leaves"]] == m["leaves"]
        assert got["proof"] == m["proof"]
        assert got["proofFlags"] == m["proof_flags"]


@pytest.mark.parametrize("case", VECTORS["core_merkle"], ids=lambda c: c["name"])
def test_core_merkle_trees_match_the_rust_vectors(case):
    tree = ol.MerkleTree(case["leaves"])
    assert tree.root == case["root"]
    assert tree.nodes() == case["tree"]
    assert len(tree) == len(case["leaves"])
    for k, proof in enumerate(case["proofs"]):
        assert tree.proof(k) == proof
    for m in case["multiproofs"]:
        got = tree.multi_proof(m["positions"])
        assert got == {"leaves": m["leaves"], "proof": m["proof"], "proofFlags": m["proof_flags"]}


# ---- a minimal ABI encoder (head/tail encoding of the types the vectors use)


def split_types(inner: str):
    out, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(inner[start:i])
            start = i + 1
    if inner:
        out.append(inner[start:])
    return out


def is_dynamic(ty: str) -> bool:
    if ty.endswith("[]") or ty in ("bytes", "string"):
        return True
    if ty.startswith("("):
        return any(is_dynamic(t) for t in split_types(ty[1:-1]))
    return False


def encode_tuple(types, values) -> bytes:
    heads, tails = [], []
    head_len = sum(32 if is_dynamic(t) else len(encode(t, None, size_only=True)) for t in types)
    for t, v in zip(types, values):
        enc = encode(t, v)
        if is_dynamic(t):
            heads.append((head_len + sum(len(x) for x in tails)).to_bytes(32, "big"))
            tails.append(enc)
        else:
            heads.append(enc)
    return b"".join(heads) + b"".join(tails)


def encode(ty: str, v, size_only=False) -> bytes:
    if size_only:  # static types only: their encoded width
        if ty.startswith("("):
            return b"\0" * sum(len(encode(t, None, True)) for t in split_types(ty[1:-1]))
        return b"\0" * 32
    if ty.endswith("[]"):
        inner = ty[:-2]
        return len(v).to_bytes(32, "big") + encode_tuple([inner] * len(v), v)
    if ty.startswith("("):
        return encode_tuple(split_types(ty[1:-1]), v)
    if ty.startswith("uint"):
        return int(v).to_bytes(32, "big")
    if ty == "address":
        return bytes(12) + bytes.fromhex(v[2:])
    if ty == "bool":
        return (1 if v in ("true", True) else 0).to_bytes(32, "big")
    if ty.startswith("bytes") and ty != "bytes":
        raw = bytes.fromhex(v[2:])
        return raw + bytes(32 - len(raw))
    raw = v.encode() if ty == "string" else bytes.fromhex(v[2:])
    return len(raw).to_bytes(32, "big") + raw + bytes(-len(raw) % 32)


@pytest.mark.parametrize("case", VECTORS["abi"], ids=lambda c: c["name"])
def test_calldata_equals_an_independent_abi_encoding(case):
    selector = keccak(case["function"].encode())[:4]
    assert "0x" + selector.hex() == case["selector"]
    types = [a["type"] for a in case["args"]]
    data = selector + encode_tuple(types, [a["value"] for a in case["args"]])
    assert "0x" + data.hex() == case["calldata"]


def receipt_of(r):
    return ol.AttributionReceipt(
        r["inference_id"],
        r["model_id"],
        r["adapter_ids"],
        r["payer"],
        int(r["amount"]),
        int(r["epoch"]),
        r["weights_hash"],
    )


@pytest.mark.parametrize("case", VECTORS["receipts"], ids=lambda c: c["name"])
def test_receipts_hash_and_sign_as_in_rust(case):
    receipt = receipt_of(case["receipt"])
    chain_id, contract = case["chain_id"], case["verifying_contract"]
    if case["weights"]:
        weights = [(w["id"], int(w["weight"])) for w in case["weights"]]
        assert ol.weights_hash(weights) == case["receipt"]["weights_hash"]
    assert receipt.struct_hash() == case["struct_hash"]
    assert receipt.signing_hash(chain_id, contract) == case["signing_hash"]
    signer = ol.OperatorSigner(case["secret"])
    assert signer.address == case["signer"]
    signature = signer.sign(receipt, chain_id, contract)
    assert "0x" + signature.hex() == case["signature"]
    assert receipt.recover_signer(bytes.fromhex(case["signature"][2:]), chain_id, contract) == case["signer"]
    # EIP-712 domain separator and digest, encoded here.
    typehash = keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    separator = keccak(
        typehash
        + keccak(b"OpenLedger InferencePayments")
        + keccak(b"1")
        + encode("uint256", chain_id)
        + encode("address", contract)
    )
    assert "0x" + separator.hex() == case["domain_separator"]
    digest = keccak(b"\x19\x01" + separator + bytes.fromhex(case["struct_hash"][2:]))
    assert "0x" + digest.hex() == case["signing_hash"]


@pytest.mark.parametrize("case", VECTORS["adapters"], ids=lambda c: c["name"])
def test_shipped_adapter_facts_match_the_rust_vectors(case):
    adapter = ol.LoraAdapter.from_dir(REPO / case["path"])
    assert adapter.r == case["r"]
    assert adapter.lora_alpha == case["lora_alpha"]
    assert adapter.use_rslora == case["use_rslora"]
    assert len(adapter) == case["module_count"]
    assert adapter.resident_bytes == case["resident_bytes"]
    modules = adapter.modules()
    assert sorted(modules) == [m["name"] for m in case["modules"]]
    for m in case["modules"]:
        got = modules[m["name"]]
        assert (got.rank, got.in_features, got.out_features) == (m["rank"], m["in_features"], m["out_features"])
        assert got.scale == f32(m["scale_bits"])  # exact: an f32 read back from its bits
    report = ol.BaseModel.from_dir(REPO / case["base"]).validate(adapter)
    assert case["validation"]["ok"]
    assert report["modules_checked"] == case["validation"]["modules_checked"]
    assert report["targeted_without_weights"] == case["validation"]["targeted_without_weights"]


def test_datanet_versions_and_record_proofs_equal_rust():
    case = VECTORS["datanet"]
    net = ol.Datanet(case["name"])
    for v in case["versions"]:
        new = case["jsonl"][len(net) : v["record_count"]]
        net.import_jsonl("\n".join(new))
        got = net.commit()
        assert (got["number"], got["record_count"], got["root"]) == (v["number"], v["record_count"], v["root"])
        for i, r in enumerate(v["records"]):
            assert net.record(i)["hash"] == r["hash"]
            assert net.inclusion_proof(v["number"], i) == r["proof"]
            assert ol.verify_record_proof(v["root"], r["hash"], r["proof"])


def test_usage_proofs_verify_as_rust_says():
    case = VECTORS["usage_proofs"]
    for p in case["proofs"]:
        proof = bytes.fromhex(p["proof"][2:])
        assert ol.verify_usage_proof(proof, p["record"], case["head"]) == p["step"]
        assert ol.verify_usage_proof(proof, p["record"], case["other_head"]) is None
