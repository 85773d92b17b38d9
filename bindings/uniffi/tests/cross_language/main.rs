//! The cross-language test vectors (`bindings/vectors/cross_language.json`): reward splits,
//! OpenZeppelin standard and core Merkle trees, EIP-712 receipts, contract calldata, the facts
//! of the shipped PEFT adapters, a datanet's record proofs and a training log's usage proofs,
//! computed by the Rust crates. The language bindings' suites
//! replay the same file; the format is documented in `bindings/vectors/README.md`.
//!
//! Regenerate with
//! `OPENLEDGER_WRITE_VECTORS=1 cargo test -p openledger-mobile --test cross_language writes_vectors`;
//! `vectors_are_what_the_crates_compute` recomputes every vector and compares the file byte for
//! byte, and `calldata_equals_the_dynamic_abi_encoding_of_its_args` re-encodes each call from
//! its JSON arguments with the dynamic ABI encoder and with the artifact-driven one
//! (`openledger_chain::abi`).

mod adapters;
mod chain;
mod merkle;
mod provenance;
mod splits;

use std::path::{Path, PathBuf};

use alloy_primitives::keccak256;
use openledger_chain::abi::ContractAbi;
use openledger_chain::{DynSolType, DynSolValue};
use openledger_core::{Address, B256};
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vectors_path() -> PathBuf {
    repo_root().join("bindings/vectors/cross_language.json")
}

fn hex(b: &[u8]) -> String {
    alloy_primitives::hex::encode_prefixed(b)
}

fn h(x: &B256) -> String {
    hex(x.as_slice())
}

fn hashes(xs: &[B256]) -> Value {
    Value::Array(xs.iter().map(|x| json!(h(x))).collect())
}

fn addr(a: &Address) -> String {
    a.to_checksum(None)
}

/// A deterministic 32-byte value named by `label`.
fn named(label: &str) -> B256 {
    keccak256(label.as_bytes())
}

fn named_address(label: &str) -> Address {
    Address::from_slice(&named(label)[12..])
}

fn build_vectors() -> Value {
    json!({
        "format": "openledger cross-language vectors v1",
        "splits": splits::splits(),
        "standard_merkle": merkle::standard_trees(),
        "core_merkle": merkle::core_trees(),
        "receipts": chain::receipts(),
        "abi": chain::abi_calls(),
        "adapters": adapters::adapters(),
        "datanet": provenance::datanet(),
        "usage_proofs": provenance::usage_proofs(),
    })
}

fn render(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

#[test]
fn writes_vectors() {
    if std::env::var_os("OPENLEDGER_WRITE_VECTORS").is_some() {
        std::fs::write(vectors_path(), render(&build_vectors())).unwrap();
    }
}

#[test]
fn vectors_are_what_the_crates_compute() {
    if std::env::var_os("OPENLEDGER_WRITE_VECTORS").is_some() {
        return; // `writes_vectors` is rewriting the file in this run.
    }
    let committed = std::fs::read_to_string(vectors_path()).expect("committed vectors");
    let fresh = render(&build_vectors());
    assert!(
        committed == fresh,
        "bindings/vectors/cross_language.json is stale: regenerate it with OPENLEDGER_WRITE_VECTORS=1"
    );
}

/// A JSON argument as a dynamic ABI value of type `ty`.
fn dyn_value(ty: &DynSolType, v: &Value) -> DynSolValue {
    match (ty, v) {
        (DynSolType::Array(inner), Value::Array(items)) => {
            DynSolValue::Array(items.iter().map(|x| dyn_value(inner, x)).collect())
        }
        (DynSolType::Tuple(types), Value::Array(items)) => DynSolValue::Tuple(
            types
                .iter()
                .zip(items)
                .map(|(t, x)| dyn_value(t, x))
                .collect(),
        ),
        (DynSolType::String, Value::String(s)) => DynSolValue::String(s.clone()),
        (_, Value::String(s)) => ty.coerce_str(s).unwrap(),
        _ => panic!("unexpected argument {v} for {ty}"),
    }
}

#[test]
fn calldata_equals_the_dynamic_abi_encoding_of_its_args() {
    let v = build_vectors();
    for case in v["abi"].as_array().unwrap() {
        let sig = case["function"].as_str().unwrap();
        let selector = &keccak256(sig.as_bytes())[..4];
        assert_eq!(case["selector"], json!(hex(selector)), "{sig}");
        let values: Vec<DynSolValue> = case["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let ty = DynSolType::parse(a["type"].as_str().unwrap()).unwrap();
                dyn_value(&ty, &a["value"])
            })
            .collect();
        let mut data = selector.to_vec();
        data.extend(DynSolValue::Tuple(values).abi_encode_params());
        assert_eq!(case["calldata"], json!(hex(&data)), "{}", case["name"]);
        // The artifact-driven encoder of the bindings agrees, by signature.
        let args: Vec<Value> = case["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["value"].clone())
            .collect();
        let contract = ContractAbi::named(case["contract"].as_str().unwrap()).unwrap();
        let by_abi = contract.encode_call(sig, &args).unwrap();
        assert_eq!(case["calldata"], json!(hex(&by_abi)), "{}", case["name"]);
    }
}
