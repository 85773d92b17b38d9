//! Arbitrary bytes thrown at every decoder of the crate: ABI calls, events and errors, tree dumps,
//! proofs and multiproofs. Nothing panics; what decodes round-trips.

use alloy_primitives::B256;
use alloy_sol_types::{SolEventInterface, SolInterface};
use openledger_chain::bindings::{AttributionRewards, InferencePayments, ModelRegistry};
use openledger_chain::evm::decode_revert;
use openledger_chain::standard::StandardMerkleTree;
use openledger_core::merkle::{self, MultiProof};
use proptest::prelude::*;

/// `StandardMerkleTree.of([["0"]], ["uint256"]).dump()` from `@openzeppelin/merkle-tree` 1.0.8.
const SINGLE_LEAF_DUMP: &str = r#"{"format":"standard-v1","leafEncoding":["uint256"],"tree":["0x510e4e770828ddbf7f7b00ab00a9f6adaf81c0dc9cc85f1f8249c256942d61d9"],"values":[{"value":["0"],"treeIndex":0}]}"#;

fn with_selector<C: SolInterface>(pick: usize, body: &[u8]) -> Vec<u8> {
    let mut v = C::selector_at(pick % C::COUNT).unwrap().to_vec();
    v.extend_from_slice(body);
    v
}

fn roundtrip<C: SolInterface + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(c) = C::abi_decode(data) {
        assert_eq!(C::abi_decode(&c.abi_encode()).unwrap(), c);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn call_and_error_decoders_never_panic(pick in 0usize..64, body in proptest::collection::vec(any::<u8>(), 0..400)) {
        roundtrip::<InferencePayments::InferencePaymentsCalls>(&with_selector::<InferencePayments::InferencePaymentsCalls>(pick, &body));
        roundtrip::<AttributionRewards::AttributionRewardsCalls>(&with_selector::<AttributionRewards::AttributionRewardsCalls>(pick, &body));
        roundtrip::<ModelRegistry::ModelRegistryCalls>(&with_selector::<ModelRegistry::ModelRegistryCalls>(pick, &body));
        roundtrip::<InferencePayments::InferencePaymentsCalls>(&body);
        let _ = decode_revert::<AttributionRewards::AttributionRewardsErrors>(&with_selector::<AttributionRewards::AttributionRewardsErrors>(pick, &body));
        let _ = decode_revert::<InferencePayments::InferencePaymentsErrors>(&body);
    }

    #[test]
    fn event_decoder_never_panics(pick in 0usize..16, extra in proptest::collection::vec(any::<[u8; 32]>(), 0..4), body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let sels = InferencePayments::InferencePaymentsEvents::SELECTORS;
        let mut topics = vec![B256::from(sels[pick % sels.len()])];
        topics.extend(extra.into_iter().map(B256::from));
        let _ = InferencePayments::InferencePaymentsEvents::decode_raw_log(&topics, &body);
        let _ = ModelRegistry::ModelRegistryEvents::decode_raw_log(&topics[1..], &body);
    }

    #[test]
    fn dump_parser_never_panics(text in ".{0,300}", cut in 0usize..2000) {
        let _ = StandardMerkleTree::from_json(&text);
        let good = SINGLE_LEAF_DUMP;
        let mut mutated = good.as_bytes().to_vec();
        let i = cut % mutated.len();
        mutated[i] = text.as_bytes().first().copied().unwrap_or(b'x');
        if let Ok(s) = std::str::from_utf8(&mutated) {
            let _ = StandardMerkleTree::from_json(s);
        }
    }

    #[test]
    fn multiproof_processing_never_panics(
        leaves in proptest::collection::vec(any::<[u8; 32]>(), 0..6),
        proof in proptest::collection::vec(any::<[u8; 32]>(), 0..6),
        flags in proptest::collection::vec(any::<bool>(), 0..12),
    ) {
        let m = MultiProof {
            leaves: leaves.into_iter().map(B256::from).collect(),
            proof: proof.into_iter().map(B256::from).collect(),
            proof_flags: flags,
        };
        let _ = merkle::process_multi_proof(&m);
    }
}

#[test]
fn the_single_leaf_reference_dump_loads_and_saves_back_unchanged() {
    let t = StandardMerkleTree::from_json(SINGLE_LEAF_DUMP).unwrap();
    assert_eq!(t.to_json(), SINGLE_LEAF_DUMP);
}
