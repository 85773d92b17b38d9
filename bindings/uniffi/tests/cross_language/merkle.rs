//! Standard and core Merkle tree vectors (`openledger_chain::standard`, `openledger_core::merkle`).

use openledger_chain::claims::EpochClaims;
use openledger_chain::standard::{StandardMerkleTree, TreeOptions};
use openledger_core::merkle::MerkleTree;
use openledger_core::{Address, B256, U256};
use serde_json::{Value, json};

use crate::{addr, h, hashes, named, named_address};

/// The canonical string of one field of a dump value (strings as they are, bools as
/// `true` / `false`).
fn field_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn standard_tree_case(
    name: &str,
    encoding: &[&str],
    values: Vec<Vec<String>>,
    sort_leaves: bool,
    multi: &[Vec<usize>],
) -> Value {
    let tree =
        StandardMerkleTree::from_strings(&values, encoding, TreeOptions { sort_leaves }).unwrap();
    let dump = tree.dump();
    // Values are written in canonical form, so a dump gives them back unchanged.
    for (v, d) in values.iter().zip(&dump.values) {
        assert_eq!(v, &d.value.iter().map(field_str).collect::<Vec<_>>());
    }
    let proofs: Vec<Value> = (0..values.len())
        .map(|i| {
            let p = tree.proof(i).unwrap();
            assert!(tree.verify(i, &p).unwrap());
            hashes(&p)
        })
        .collect();
    let multiproofs: Vec<Value> = multi
        .iter()
        .map(|indices| {
            let m = tree.multi_proof(indices).unwrap();
            assert!(tree.verify_multi_proof(&m).unwrap());
            let leaves: Vec<Value> = m
                .leaves
                .iter()
                .map(|leaf| {
                    let i = tree.values().iter().position(|v| &v.value == leaf).unwrap();
                    json!(values[i])
                })
                .collect();
            json!({"indices": indices, "leaves": leaves, "proof": hashes(&m.proof), "proof_flags": m.proof_flags})
        })
        .collect();
    json!({
        "name": name, "leaf_encoding": encoding, "sort_leaves": sort_leaves, "values": values,
        "root": h(&tree.root()), "tree": hashes(tree.tree()),
        "leaf_hashes": (0..values.len()).map(|i| h(&tree.leaf_hash(tree.at(i).unwrap()).unwrap())).collect::<Vec<_>>(),
        "proofs": proofs, "multiproofs": multiproofs,
    })
}

/// The epoch of the claims tree and its `(account, amount)` totals.
pub fn claims() -> (u64, Vec<(Address, U256)>) {
    let totals = (0..7u64)
        .map(|i| {
            (
                named_address(&format!("contributor {i}")),
                U256::from(10u64).pow(U256::from(15u8 + i as u8)) + U256::from(i * 7919),
            )
        })
        .collect();
    (42, totals)
}

pub fn standard_trees() -> Value {
    let (epoch, totals) = claims();
    let epoch_claims = EpochClaims::new(epoch, &totals).unwrap();
    let claim_values: Vec<Vec<String>> = totals
        .iter()
        .enumerate()
        .map(|(i, (a, amount))| vec![i.to_string(), addr(a), amount.to_string()])
        .collect();
    let claims_case = standard_tree_case(
        "reward claims (index, account, amount)",
        &["uint256", "address", "uint256"],
        claim_values,
        true,
        &[vec![0, 3], vec![1, 2, 6], vec![0, 1, 2, 3, 4, 5, 6]],
    );
    assert_eq!(claims_case["root"], json!(h(&epoch_claims.root())));
    let letters = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|s| vec![s.to_string()])
        .collect();
    let mixed = (0..5u8)
        .map(|i| {
            vec![
                addr(&named_address(&format!("mixed {i}"))),
                (u64::from(i) * 1_000_003).to_string(),
                (i % 2 == 0).to_string(),
                h(&named(&format!("record {i}"))),
                format!("note \u{e9}{i}"),
            ]
        })
        .collect();
    Value::Array(vec![
        claims_case,
        standard_tree_case("strings a..f", &["string"], letters, true, &[vec![1, 4]]),
        standard_tree_case(
            "mixed types, leaves in input order",
            &["address", "uint64", "bool", "bytes32", "string"],
            mixed,
            false,
            &[vec![4, 0], vec![2]],
        ),
        standard_tree_case(
            "a single value",
            &["bytes32"],
            vec![vec![h(&named("only"))]],
            true,
            &[vec![0]],
        ),
    ])
}

pub fn core_trees() -> Value {
    let cases: [(&str, usize, &[&[usize]]); 3] = [
        ("seven leaves", 7, &[&[0, 3], &[6, 1, 2]]),
        ("one leaf", 1, &[&[0]]),
        ("sixteen leaves", 16, &[&[0, 15], &[3, 4, 5, 6, 7]]),
    ];
    let out = cases
        .iter()
        .map(|(name, n, multi)| {
            let leaves: Vec<B256> = (0..*n).map(|i| named(&format!("leaf {i}"))).collect();
            let tree = MerkleTree::new(&leaves).unwrap();
            let proofs: Vec<Value> = (0..*n).map(|k| hashes(&tree.proof(k).unwrap())).collect();
            let multiproofs: Vec<Value> = multi
                .iter()
                .map(|positions| {
                    let m = tree.multi_proof(positions).unwrap();
                    json!({"positions": positions, "leaves": hashes(&m.leaves), "proof": hashes(&m.proof), "proof_flags": m.proof_flags})
                })
                .collect();
            json!({
                "name": name, "leaves": hashes(&leaves), "root": h(&tree.root()),
                "tree": hashes(tree.nodes()), "proofs": proofs, "multiproofs": multiproofs,
            })
        })
        .collect();
    Value::Array(out)
}
