"""StandardMerkleTree against the @openzeppelin/merkle-tree vectors the Rust tests use."""

import json

import pytest

import openledger as ol

ROOT_A_F = "0x6deb52b5da8fd108f79fab00341f38d2587896634c646ee52e49f845680a70c8"


def test_root_of_a_to_f_is_openzeppelins():
    t = ol.StandardMerkleTree.of([[c] for c in "abcdef"], ["string"])
    assert t.root == ROOT_A_F
    assert len(t) == 6 and t.leaf_encoding == ["string"]


def test_every_vector_matches_root_proofs_render_and_dump(merkle_vectors):
    assert merkle_vectors
    for case in merkle_vectors:
        t = ol.StandardMerkleTree.of(case["values"], case["leafEncoding"], sort_leaves=case["sortLeaves"])
        assert t.root == case["root"], case["name"]
        assert [t.proof(i) for i in range(len(t))] == case["proofs"], case["name"]
        assert t.render() == case["render"], case["name"]
        assert t.dump() == case["dump"], case["name"]
        assert t.to_json() == case["dumpJson"], case["name"]
        for i, p in enumerate(case["proofs"]):
            assert t.verify(i, p)


def test_python_ints_addresses_and_bytes_as_values():
    values = [["0x" + "11" * 20, 2**255 + 1], ["0x" + "22" * 20, 5]]
    t = ol.StandardMerkleTree.of(values, ["address", "uint256"])
    again = ol.StandardMerkleTree.of([[a, str(v)] for a, v in values], ["address", "uint256"])
    assert t.root == again.root
    assert t.values()[0][1] == str(2**255 + 1)
    arrays = ol.StandardMerkleTree.of([[[1, 2], [[3], [4, 5]]]], ["uint256[]", "uint8[][]"])
    assert arrays.values() == [[["1", "2"], [["3"], ["4", "5"]]]]
    b = ol.StandardMerkleTree.of([[b"\x01\x02"], [b"\xff"]], ["bytes"])
    assert b.values() == [["0x0102"], ["0xff"]]


def test_dump_load_round_trip_from_dict_and_json():
    t = ol.StandardMerkleTree.of([[c, i] for i, c in enumerate("abcdefg")], ["string", "uint8"])
    for dump in (t.dump(), t.to_json()):
        u = ol.StandardMerkleTree.load(dump)
        assert u.root == t.root and u.to_json() == t.to_json()


def test_all_proofs_equal_proof_and_report_progress():
    t = ol.StandardMerkleTree.of([[i] for i in range(1000)], ["uint256"])
    steps = []
    proofs = t.all_proofs(progress=steps.append)
    assert proofs == [t.proof(i) for i in range(1000)]
    assert sum(steps) == 1000


def test_tampered_proof_does_not_verify():
    t = ol.StandardMerkleTree.of([[c] for c in "abcdef"], ["string"])
    p = t.proof(2)
    p[0] = "0x" + "00" * 32
    assert not t.verify(2, p)


def test_bad_values_dumps_and_indices_raise_merkle_errors():
    with pytest.raises(ol.MerkleTreeError):
        ol.StandardMerkleTree.of([], ["string"])
    with pytest.raises(ol.MerkleTreeError):
        ol.StandardMerkleTree.of([["a"]], ["notatype"])
    with pytest.raises(ol.MerkleTreeError, match="value 1"):
        ol.StandardMerkleTree.of([["0x" + "11" * 20], ["not an address"]], ["address"])
    with pytest.raises(ol.MerkleTreeError):
        ol.StandardMerkleTree.of([[1, 2]], ["uint256"])
    t = ol.StandardMerkleTree.of([[c] for c in "abc"], ["string"])
    with pytest.raises(ol.MerkleTreeError, match="out of bounds"):
        t.proof(3)
    dump = t.dump()
    dump["tree"][0] = "0x" + "00" * 32
    with pytest.raises(ol.MerkleTreeError):
        ol.StandardMerkleTree.load(dump)
    with pytest.raises(ol.MerkleTreeError):
        ol.StandardMerkleTree.load("{not json")
    with pytest.raises(ol.MerkleTreeError):
        ol.StandardMerkleTree.load(json.dumps({**t.dump(), "format": "v2"}))
    with pytest.raises(ol.InvalidArgumentError):
        ol.StandardMerkleTree.of([[None]], ["string"])
    with pytest.raises(ol.InvalidArgumentError):
        ol.StandardMerkleTree.of(["abc"], ["string"])
    with pytest.raises(ol.InvalidArgumentError, match="proof"):
        t.verify(0, ["0x12"])
    deep = [1]
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(ol.InvalidArgumentError, match="nested"):
        ol.StandardMerkleTree.of([[deep]], ["uint256[]"])
