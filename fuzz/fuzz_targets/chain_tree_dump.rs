//! Fuzzes the `standard-v1` tree dump parser: no panic on any input, and a dump that loads
//! proves every value, saves back unchanged and reloads to the same root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openledger_chain::standard::StandardMerkleTree;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tree) = StandardMerkleTree::from_json(text) {
        for i in 0..tree.len().min(64) {
            let proof = tree.proof(i).expect("loaded values have proofs");
            assert!(tree.verify(i, &proof).expect("index in range"));
        }
        let saved = tree.to_json();
        let again = StandardMerkleTree::from_json(&saved).expect("a saved dump loads");
        assert_eq!(again.root(), tree.root());
        assert_eq!(again.to_json(), saved);
        let _ = tree.render();
    }
});
