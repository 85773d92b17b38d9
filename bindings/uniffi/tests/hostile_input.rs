//! Hostile input through the mobile API returns the area's typed error and never panics: every
//! string argument gets malformed hex, wrong lengths, signs, exponents, huge numbers and non-ASCII
//! text; adapters get truncated and corrupted bytes.

use std::path::Path;

use openledger_mobile::{
    AttributionReceipt, LoraAdapter, MerkleTree, NegativeScores, OpenLedgerError, OperatorSigner,
    ReceiptDomain, ScoreShare, StandardMerkleTree, WeightShare, claim_calldata,
    encode_contract_call, receipt_struct_hash, split_scores, split_weights, verify_standard_proof,
};

const HOSTILE: [&str; 12] = [
    "",
    "0x",
    "0X",
    "0xg1",
    "-1",
    "1e18",
    " 1",
    "１２３",
    "0x0101010101010101010101010101010101010101ff",
    "115792089237316195423570985008687907853269984665640564039457584007913129639936",
    "\u{0}",
    "0x11111111111111111111111111111111111111111111111111111111111111",
];

fn good_address() -> String {
    format!("0x{}", "01".repeat(20))
}

fn good_hash() -> String {
    format!("0x{}", "22".repeat(32))
}

#[test]
fn split_arguments_that_cannot_be_read_are_invalid_argument() {
    for bad in HOSTILE {
        let r = split_scores(
            "100".into(),
            vec![ScoreShare {
                account: bad.into(),
                score: 1.0,
            }],
            NegativeScores::Clip,
            None,
        );
        assert!(
            matches!(r, Err(OpenLedgerError::InvalidArgument(_))),
            "{bad:?}"
        );
        let r = split_weights(
            bad.into(),
            vec![WeightShare {
                account: good_address(),
                weight: "1".into(),
            }],
            None,
        );
        assert!(
            matches!(r, Err(OpenLedgerError::InvalidArgument(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn merkle_arguments_that_cannot_be_read_are_typed_errors() {
    for bad in HOSTILE {
        assert!(
            matches!(
                MerkleTree::new(vec![bad.into()]),
                Err(OpenLedgerError::InvalidArgument(_))
            ),
            "{bad:?}"
        );
        let r = StandardMerkleTree::new(vec![vec![bad.into()]], vec!["uint256".into()], true);
        // Integers accept several notations (`0x` hex, `1e18`): whatever is refused is typed.
        assert!(
            r.is_ok() || matches!(r, Err(OpenLedgerError::Merkle(_))),
            "{bad:?}"
        );
        let r = verify_standard_proof(
            good_hash(),
            vec!["address".into()],
            vec![bad.into()],
            vec![],
        );
        assert!(matches!(r, Err(OpenLedgerError::Merkle(_))), "{bad:?}");
        let r = StandardMerkleTree::new(vec![vec!["1".into()]], vec![bad.into()], true);
        assert!(matches!(r, Err(OpenLedgerError::Merkle(_))), "{bad:?}");
    }
}

#[test]
fn chain_arguments_that_cannot_be_read_are_invalid_argument() {
    let receipt = AttributionReceipt {
        inference_id: good_hash(),
        model_id: good_hash(),
        adapter_ids: vec![],
        payer: good_address(),
        amount: "1".into(),
        epoch: 0,
        weights_hash: good_hash(),
    };
    for bad in HOSTILE {
        for r in [
            AttributionReceipt {
                inference_id: bad.into(),
                ..receipt.clone()
            },
            AttributionReceipt {
                payer: bad.into(),
                ..receipt.clone()
            },
            AttributionReceipt {
                amount: bad.into(),
                ..receipt.clone()
            },
            AttributionReceipt {
                adapter_ids: vec![bad.into()],
                ..receipt.clone()
            },
        ] {
            assert!(
                matches!(
                    receipt_struct_hash(r),
                    Err(OpenLedgerError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
        assert!(
            matches!(
                OperatorSigner::new(bad.into()),
                Err(OpenLedgerError::InvalidArgument(_))
            ),
            "{bad:?}"
        );
        let r = claim_calldata(1, "0".into(), bad.into(), "1".into(), vec![]);
        assert!(
            matches!(r, Err(OpenLedgerError::InvalidArgument(_))),
            "{bad:?}"
        );
        let r = encode_contract_call("AttributionRewards".into(), "claim".into(), bad.into());
        assert!(
            matches!(r, Err(OpenLedgerError::InvalidArgument(_))),
            "{bad:?}"
        );
    }
    let domain = ReceiptDomain {
        chain_id: 1,
        verifying_contract: "0x12".into(),
    };
    assert!(matches!(
        openledger_mobile::receipt_signing_hash(receipt, domain),
        Err(OpenLedgerError::InvalidArgument(_))
    ));
}

#[test]
fn truncated_and_corrupted_adapter_bytes_are_format_errors() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/peft/tiny-llama/adapters/qv-r4");
    let config = std::fs::read(dir.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    assert!(LoraAdapter::from_bytes(config.clone(), weights.clone()).is_ok());
    for cut in [0, 1, 7, 8, 9, 100, weights.len() / 2, weights.len() - 1] {
        let r = LoraAdapter::from_bytes(config.clone(), weights[..cut].to_vec());
        assert!(
            matches!(r, Err(OpenLedgerError::AdapterFormat(_))),
            "cut at {cut}"
        );
    }
    // Flip bytes of the header: any outcome but a panic, and a typed error when it fails.
    for at in (8..200).step_by(7) {
        let mut w = weights.clone();
        w[at] ^= 0x5a;
        if let Err(e) = LoraAdapter::from_bytes(config.clone(), w) {
            assert!(
                matches!(e, OpenLedgerError::AdapterFormat(_)),
                "byte {at}: {e:?}"
            );
        }
    }
    for cut in [0, 1, config.len() / 2] {
        let r = LoraAdapter::from_bytes(config[..cut].to_vec(), weights.clone());
        assert!(
            matches!(r, Err(OpenLedgerError::AdapterFormat(_))),
            "config cut at {cut}"
        );
    }
}
