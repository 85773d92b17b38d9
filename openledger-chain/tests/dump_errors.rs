//! Bad dumps and values get typed errors naming the culprit, never panics.

use openledger_chain::ChainError;
use openledger_chain::standard::{StandardMerkleTree, TreeOptions};
use serde_json::{Value, json};

fn good() -> Value {
    let values: Vec<Vec<String>> = (0..5)
        .map(|i| {
            vec![
                i.to_string(),
                format!("0x{:040x}", i + 1),
                (i * 100).to_string(),
            ]
        })
        .collect();
    let t = StandardMerkleTree::from_strings(
        &values,
        &["uint256", "address", "uint256"],
        TreeOptions::default(),
    )
    .unwrap();
    serde_json::from_str(&t.to_json()).unwrap()
}

fn load(v: &Value) -> Result<StandardMerkleTree, ChainError> {
    StandardMerkleTree::from_json(&v.to_string())
}

#[test]
fn unknown_format_is_named() {
    let mut d = good();
    d["format"] = json!("simple-v1");
    assert_eq!(
        load(&d).unwrap_err(),
        ChainError::UnknownFormat("simple-v1".into())
    );
}

#[test]
fn truncated_or_non_json_input_is_malformed() {
    let text = good().to_string();
    for cut in [0, 1, text.len() / 2, text.len() - 1] {
        assert!(matches!(
            StandardMerkleTree::from_json(&text[..cut]),
            Err(ChainError::MalformedDump(_))
        ));
    }
}

#[test]
fn bad_leaf_type_is_named() {
    let mut d = good();
    d["leafEncoding"][1] = json!("adress");
    match load(&d).unwrap_err() {
        ChainError::InvalidLeafType { ty, .. } => assert_eq!(ty, "adress"),
        e => panic!("{e}"),
    }
}

#[test]
fn value_of_wrong_arity_or_type_is_named() {
    let mut d = good();
    d["values"][2]["value"].as_array_mut().unwrap().pop();
    assert_eq!(
        load(&d).unwrap_err(),
        ChainError::ValueArity {
            value_index: 2,
            expected: 3,
            found: 2
        }
    );
    let mut d = good();
    d["values"][3]["value"][1] = json!("0x1234");
    match load(&d).unwrap_err() {
        ChainError::InvalidValue {
            value_index,
            field,
            expected,
            ..
        } => {
            assert_eq!((value_index, field, expected.as_str()), (3, 1, "address"))
        }
        e => panic!("{e}"),
    }
    let mut d = good();
    d["values"][0]["value"][0] = json!(true);
    assert!(matches!(
        load(&d).unwrap_err(),
        ChainError::InvalidValue {
            value_index: 0,
            field: 0,
            ..
        }
    ));
}

#[test]
fn tampered_tree_or_values_are_inconsistent() {
    let mut d = good();
    d["values"][1]["value"][2] = json!("101");
    assert!(
        matches!(load(&d).unwrap_err(), ChainError::InconsistentDump(m) if m.contains("value 1"))
    );
    let mut d = good();
    d["tree"][1] = json!(format!("0x{}", "11".repeat(32)));
    assert!(matches!(
        load(&d).unwrap_err(),
        ChainError::InconsistentDump(_)
    ));
    let mut d = good();
    d["values"][0]["treeIndex"] = json!(0);
    assert!(
        matches!(load(&d).unwrap_err(), ChainError::InconsistentDump(m) if m.contains("not a leaf"))
    );
    let mut d = good();
    d["values"][0]["treeIndex"] = json!(1_000_000);
    assert!(matches!(
        load(&d).unwrap_err(),
        ChainError::InconsistentDump(_)
    ));
}

#[test]
fn out_of_range_indices_and_unknown_leaves_are_errors() {
    let t = load(&good()).unwrap();
    assert_eq!(
        t.proof(5).unwrap_err(),
        ChainError::IndexOutOfBounds { index: 5, len: 5 }
    );
    assert_eq!(
        t.multi_proof(&[0, 0]).unwrap_err(),
        ChainError::Merkle(openledger_core::merkle::MerkleError::DuplicateIndex(
            t.values()[0].tree_index
        ))
    );
    let stranger = vec![
        alloy_dyn_abi::DynSolValue::Uint(openledger_core::U256::from(9), 256),
        alloy_dyn_abi::DynSolValue::Address(openledger_core::Address::ZERO),
        alloy_dyn_abi::DynSolValue::Uint(openledger_core::U256::from(9), 256),
    ];
    assert_eq!(
        t.proof_of(&stranger).unwrap_err(),
        ChainError::LeafNotInTree
    );
    assert!(matches!(
        StandardMerkleTree::of(vec![], &["uint256"], TreeOptions::default()),
        Err(ChainError::Merkle(
            openledger_core::merkle::MerkleError::EmptyTree
        ))
    ));
}
