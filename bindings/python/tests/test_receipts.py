"""EIP-712 attribution receipts: hashing, signing and recovery."""

import pytest

import openledger as ol

CONTRACT = "0x" + "cc" * 20
# The secp256k1 key 1 belongs to this well-known address.
KEY_ONE = "0x" + "00" * 31 + "01"
ADDRESS_OF_KEY_ONE = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"


def receipt(amount=1000, epoch=0):
    wh = ol.weights_hash([("0x" + "0a" * 32, 3), ("0x" + "0b" * 32, 2**200)])
    return ol.AttributionReceipt(
        "0x" + "01" * 32, b"\x02" * 32, ["0x" + "03" * 32], "0x" + "04" * 20, amount, epoch, wh
    )


def test_signer_address_is_derived_from_the_key():
    assert ol.OperatorSigner(KEY_ONE).address == ADDRESS_OF_KEY_ONE


def test_sign_then_recover_gives_the_signer():
    s = ol.OperatorSigner("0x" + "11" * 32)
    r = receipt()
    sig = s.sign(r, 31337, CONTRACT)
    assert len(sig) == 65 and sig[64] in (27, 28)
    assert r.recover_signer(sig, 31337, CONTRACT) == s.address
    # Low-s, as ECDSA.sol requires.
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    assert int.from_bytes(sig[32:64], "big") <= n // 2


def test_other_domain_or_field_recovers_someone_else():
    s = ol.OperatorSigner("0x" + "11" * 32)
    sig = s.sign(receipt(), 31337, CONTRACT)
    assert receipt().recover_signer(sig, 1, CONTRACT) != s.address
    assert receipt(amount=1001).recover_signer(sig, 31337, CONTRACT) != s.address
    assert receipt(epoch=1).recover_signer(sig, 31337, CONTRACT) != s.address


def test_hashes_are_deterministic_and_domain_bound():
    r = receipt()
    assert r.struct_hash() == receipt().struct_hash()
    assert r.signing_hash(31337, CONTRACT) != r.signing_hash(1, CONTRACT)
    assert r.signing_hash(31337, CONTRACT) != r.struct_hash()
    assert r.amount == 1000 and r.payer == "0x" + "04" * 20 and r.model_id == "0x" + "02" * 32
    assert ol.weights_hash([]) != ol.weights_hash([("0x" + "0a" * 32, 0)])


def test_bad_keys_signatures_and_fields():
    with pytest.raises(ol.SignatureError):
        ol.OperatorSigner("0x" + "00" * 32)
    with pytest.raises(ol.SignatureError):
        ol.OperatorSigner("0x" + "ff" * 32)
    with pytest.raises(ol.InvalidArgumentError, match="secret"):
        ol.OperatorSigner("0x1234")
    with pytest.raises(ol.SignatureError):
        receipt().recover_signer(b"\x00" * 10, 1, CONTRACT)
    with pytest.raises(ol.InvalidArgumentError, match="signature"):
        receipt().recover_signer(None, 1, CONTRACT)
    with pytest.raises(ol.InvalidArgumentError, match="payer"):
        ol.AttributionReceipt("0x" + "01" * 32, "0x" + "02" * 32, [], "nope", 1, 0, "0x" + "00" * 32)
    with pytest.raises(ol.InvalidArgumentError, match="amount"):
        receipt(amount=-5)


def test_model_ids_are_the_registrys():
    """`model_id` against the ModelRegistry's own `modelIdFor`, run by the embedded EVM."""
    chain = ol.EmbeddedChain()
    s = chain.deploy_suite()
    for who, salt in [(ADDRESS_OF_KEY_ONE, "0x" + "11" * 32), ("0x" + "00" * 20, ol.content_id(b"qv-r4"))]:
        assert ol.model_id(who, salt) == chain.call(s["models"], "ModelRegistry", "modelIdFor", [who, salt])[0]
    with pytest.raises(ol.InvalidArgumentError, match="registrant"):
        ol.model_id("0x12", "0x" + "11" * 32)
    with pytest.raises(ol.InvalidArgumentError, match="salt"):
        ol.model_id(ADDRESS_OF_KEY_ONE, "0x11")
