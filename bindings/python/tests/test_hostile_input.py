"""Hostile input through the Python package: sizes a caller picks cannot kill or wedge the
interpreter, tampered files and signatures are refused, inconsistent input is not served, and
errors name their culprit (the Rust suite has the same findings, openledger/tests/hostile_input.rs)."""

import os
import shutil
import threading

import numpy as np
import pytest

import openledger as ol

from conftest import ADAPTERS, TINY

ALICE = "0x" + "a1" * 20


def test_a_huge_k_returns_every_citation():
    index = ol.RagIndex(2)
    for i in range(3):
        index.add("0x%064x" % i, ALICE, "r", np.array([1.0, float(i)], dtype=np.float32))
    for k in (10**9, 2**62, 2**64 - 1):
        assert len(index.search(np.array([1.0, 1.0], dtype=np.float32), k)) == 3


def test_trainer_sizes_are_checked_before_anything_is_allocated():
    data = [([1, 10, 7], [100])] * 4
    t = ol.Trainer(TINY, ["q_proj"], 4, 8.0, steps=2, batch_size=10**6)
    with pytest.raises(ol.InvalidArgumentError, match="batch_size"):
        t.train(data)
    t = ol.Trainer(TINY, ["q_proj"], 4, 8.0, steps=2)
    with pytest.raises(ol.InvalidArgumentError, match="max_position_embeddings"):
        t.greedy([1, 2, 3], 10**9)
    with pytest.raises(ol.InvalidArgumentError, match="full rank"):
        ol.Trainer(TINY, ["q_proj"], 10**6, 8.0)
    with pytest.raises(ol.InvalidArgumentError, match="learning_rate"):
        ol.Trainer(TINY, ["q_proj"], 4, 8.0, learning_rate=1e30)


def test_feature_store_sizes_and_overwrites_are_checked(tmp_path):
    with pytest.raises(ol.InvalidArgumentError, match="largest sketch"):
        ol.FeatureStoreWriter.create(tmp_path / "big.olfs", input_dim=10**6, k=10**6, learning_rates=[0.1])
    path = tmp_path / "s.olfs"
    w = ol.FeatureStoreWriter.create(path, input_dim=8, k=4, learning_rates=[0.5])
    w.append("0x" + "11" * 32, ALICE, np.ones((1, 8), dtype=np.float32))
    with pytest.raises(FileExistsError):
        ol.FeatureStoreWriter.create(path, input_dim=8, k=4, learning_rates=[0.5])
    assert len(ol.FeatureStore.open(path)) == 1
    raw = bytearray(path.read_bytes())
    raw[40] ^= 1  # the record count
    path.write_bytes(bytes(raw))
    with pytest.raises(ol.IntegrityError, match="checksum"):
        ol.FeatureStore.open(path)
    ol.FeatureStoreWriter.create(path, input_dim=8, k=4, learning_rates=[0.5], overwrite=True)
    assert len(ol.FeatureStore.open(path)) == 0
    with pytest.raises(OSError, match="directory") as e:
        ol.FeatureStore.open(tmp_path)
    assert e.value.errno != 0


def test_top_k_refuses_nan(tmp_path):
    path = tmp_path / "s.olfs"
    w = ol.FeatureStoreWriter.create(path, input_dim=4, k=4, learning_rates=[0.5], projection="identity")
    for i in range(3):
        w.append("0x%064x" % i, ALICE, np.ones((1, 4), dtype=np.float32))
    store = ol.FeatureStore.open(path)
    with pytest.raises(ol.InvalidArgumentError, match="non-finite"):
        store.top_k(np.array([0.5, np.nan, 1.0], dtype=np.float32), 2)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_adapter_files_must_be_regular(tmp_path):
    zero = tmp_path / "zero"
    zero.mkdir()
    shutil.copy(ADAPTERS / "qv-r4" / "adapter_config.json", zero)
    os.symlink("/dev/zero", zero / "adapter_model.safetensors")
    with pytest.raises(OSError, match="not a regular file"):
        ol.LoraAdapter.from_dir(zero)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    shutil.copy(ADAPTERS / "qv-r4" / "adapter_config.json", fifo)
    os.mkfifo(fifo / "adapter_model.safetensors")
    with pytest.raises(OSError, match="not a regular file"):
        ol.LoraAdapter.from_dir(fifo)


def test_merkle_dumps_that_hide_leaves_are_refused():
    tree = ol.StandardMerkleTree.of([[i] for i in range(4)], ["uint256"])
    dump = tree.dump()
    hidden = dict(dump, values=dump["values"][:3])
    with pytest.raises(ol.MerkleTreeError, match="3 values for a tree of 4 leaves"):
        ol.StandardMerkleTree.load(hidden)
    with pytest.raises(ol.MerkleTreeError):
        ol.StandardMerkleTree.load(dict(dump, values=[]))


def test_signatures_follow_what_ecdsa_sol_accepts():
    signer = ol.OperatorSigner("0x" + "07" * 32)
    r = ol.AttributionReceipt("0x" + "01" * 32, "0x" + "02" * 32, [], ALICE, 1000, 1, "0x" + "04" * 32)
    contract = "0x" + "09" * 20
    sig = signer.sign(r, 31337, contract)
    assert sig[64] in (27, 28)
    assert r.recover_signer(sig, 31337, contract) == signer.address
    with pytest.raises(ol.SignatureError, match="27 or 28"):
        r.recover_signer(sig[:64] + bytes([sig[64] - 27]), 31337, contract)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(sig[32:64], "big")
    high = sig[:32] + (n - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(ol.SignatureError, match="high-s"):
        r.recover_signer(high, 31337, contract)
    with pytest.raises(ol.SignatureError, match="secp256k1 scalar"):
        ol.OperatorSigner("0x" + "00" * 32)


def test_duplicate_weights_and_chain_overflows_are_refused():
    with pytest.raises(ol.InvalidArgumentError, match="twice"):
        ol.weights_hash([("0x" + "01" * 32, 1), ("0x" + "01" * 32, 2)])
    chain = ol.EmbeddedChain(31337)
    chain.fund(ALICE, 2**256 - 1 - chain.balance(ALICE))
    with pytest.raises(ol.InvalidArgumentError, match="overflows"):
        chain.fund(ALICE, 1)
    assert chain.balance(ALICE) == 2**256 - 1
    with pytest.raises(ol.InvalidArgumentError, match="overflows"):
        chain.advance_time(2**64 - 1)


def test_an_adapter_serving_requests_is_not_replaced():
    with ol.Engine(TINY, max_context=64, block_size=4) as e:
        e.add_adapter("mine", ADAPTERS / "qv-r4")
        s = e.generate([1, 17, 42], "mine", max_new_tokens=40)
        next(s)  # running: the engine holds the adapter
        with pytest.raises(ol.StateError, match="pending requests"):
            e.add_adapter("mine", ADAPTERS / "attn-patterns")
        s.collect()
        e.add_adapter("mine", ADAPTERS / "attn-patterns")


def test_misaligned_arrays_are_called_misaligned():
    qv = ol.LoraAdapter.from_dir(ADAPTERS / "qv-r4")
    buf = np.zeros(4 * 64 + 1, dtype=np.uint8).tobytes()
    x = np.frombuffer(buf, dtype=np.float32, count=64, offset=1).reshape(1, 64)
    y = np.zeros((1, 64), dtype=np.float32)
    m = qv.module("model.layers.0.self_attn.q_proj")
    with pytest.raises(ol.InvalidArgumentError, match="aligned"):
        ol.sgmv(x, y, [m], [(0, 1, 0)])
