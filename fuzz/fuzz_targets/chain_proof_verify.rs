//! Fuzzes proof verification with arbitrary leaves, proofs and multiproof flags (never a panic),
//! and checks that claim trees built from fuzzed amounts prove every claim and reject a tampered one.
#![no_main]

use alloy_primitives::{Address, B256, U256};
use libfuzzer_sys::fuzz_target;
use openledger_chain::DynSolValue;
use openledger_chain::claims::EpochClaims;
use openledger_chain::standard::StandardMerkleTree;
use openledger_core::merkle::{self, MultiProof};

fuzz_target!(|data: &[u8]| {
    let words: Vec<B256> = data.chunks_exact(32).map(B256::from_slice).collect();
    if let Some((leaf, proof)) = words.split_first() {
        let root = merkle::process_proof(*leaf, proof);
        assert!(merkle::verify_proof(root, *leaf, proof));
        let value = [
            DynSolValue::Uint(U256::from_be_bytes(leaf.0), 256),
            DynSolValue::Address(Address::from_word(*leaf)),
            DynSolValue::Uint(U256::from(proof.len()), 256),
        ];
        let _ = StandardMerkleTree::verify_with(
            root,
            &["uint256", "address", "uint256"],
            &value,
            proof,
        );
        // Flags from the trailing bytes, leaves/proof split from the first byte.
        let split = (data[0] as usize).min(words.len());
        let flags: Vec<bool> = data.iter().rev().take(64).map(|b| b & 1 == 1).collect();
        let m = MultiProof {
            leaves: words[..split].to_vec(),
            proof: words[split..].to_vec(),
            proof_flags: flags,
        };
        let _ = merkle::process_multi_proof(&m);
    }

    // A claim tree of up to 16 fuzzed amounts.
    let totals: Vec<(Address, U256)> = data
        .chunks(8)
        .take(16)
        .enumerate()
        .map(|(i, c)| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            (
                Address::with_last_byte(i as u8),
                U256::from(u64::from_le_bytes(b)),
            )
        })
        .collect();
    if totals.is_empty() {
        return;
    }
    let claims = EpochClaims::new(1, &totals).expect("u64 amounts cannot overflow");
    for i in 0..totals.len() {
        let proof = claims.proof(i).expect("in range");
        let leaf = claims.leaf(i).expect("in range");
        assert!(merkle::verify_proof(claims.root(), leaf, &proof));
        let mut forged = leaf;
        forged.0[0] ^= 0x80;
        assert!(!merkle::verify_proof(claims.root(), forged, &proof));
    }
});
