//! The `sol!` bindings agree with solc: every function selector equals the artifact's
//! `methodIdentifiers`, and every event topic and error selector equals keccak-256 of the
//! signature rebuilt from the artifact's ABI JSON (independently of `sol!`).

use std::collections::BTreeMap;

use alloy_primitives::{hex, keccak256};
use openledger_chain::bindings::*;
use serde_json::Value;

fn artifact(name: &str) -> Value {
    let path = format!("{}/artifacts/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The canonical type of an ABI parameter (structs expanded to tuples).
fn canonical(param: &Value) -> String {
    let ty = param["type"].as_str().unwrap();
    match ty.strip_prefix("tuple") {
        Some(suffix) => {
            let inner: Vec<String> = param["components"]
                .as_array()
                .unwrap()
                .iter()
                .map(canonical)
                .collect();
            format!("({}){suffix}", inner.join(","))
        }
        None => ty.to_string(),
    }
}

fn abi_signatures(abi: &Value, kind: &str) -> Vec<String> {
    abi.as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == kind)
        .map(|item| {
            let inputs: Vec<String> = item["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(canonical)
                .collect();
            format!("{}({})", item["name"].as_str().unwrap(), inputs.join(","))
        })
        .collect()
}

fn from_sol<const N: usize>(sigs: &[&str], selectors: &[[u8; N]]) -> BTreeMap<String, String> {
    assert_eq!(sigs.len(), selectors.len());
    sigs.iter()
        .zip(selectors)
        .map(|(s, sel)| (s.to_string(), hex::encode(sel)))
        .collect()
}

fn hashed(sigs: Vec<String>, n: usize) -> BTreeMap<String, String> {
    sigs.into_iter()
        .map(|s| {
            let h = hex::encode(&keccak256(s.as_bytes())[..n]);
            (s, h)
        })
        .collect()
}

macro_rules! check_contract {
    ($name:ident, $calls:ident, $events:ident, $errors:ident) => {{
        let a = artifact(stringify!($name));
        // Functions: solc's own method identifiers.
        let solc: BTreeMap<String, String> = a["methodIdentifiers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        assert!(!solc.is_empty());
        assert_eq!(
            from_sol(&$name::$calls::SIGNATURES, &$name::$calls::SELECTORS),
            solc,
            "{} functions",
            stringify!($name)
        );
        // Our canonicalisation reproduces solc's identifiers, so it is trusted for events/errors.
        assert_eq!(hashed(abi_signatures(&a["abi"], "function"), 4), solc);
        let events = hashed(abi_signatures(&a["abi"], "event"), 32);
        assert!(!events.is_empty());
        assert_eq!(
            from_sol(&$name::$events::SIGNATURES, &$name::$events::SELECTORS),
            events,
            "{} events",
            stringify!($name)
        );
        let errors = hashed(abi_signatures(&a["abi"], "error"), 4);
        assert!(!errors.is_empty());
        assert_eq!(
            from_sol(&$name::$errors::SIGNATURES, &$name::$errors::SELECTORS),
            errors,
            "{} errors",
            stringify!($name)
        );
    }};
}

#[test]
fn datanet_registry_selectors_topics_and_errors_equal_solc() {
    check_contract!(
        DatanetRegistry,
        DatanetRegistryCalls,
        DatanetRegistryEvents,
        DatanetRegistryErrors
    );
}

#[test]
fn model_registry_selectors_topics_and_errors_equal_solc() {
    check_contract!(
        ModelRegistry,
        ModelRegistryCalls,
        ModelRegistryEvents,
        ModelRegistryErrors
    );
}

#[test]
fn inference_payments_selectors_topics_and_errors_equal_solc() {
    check_contract!(
        InferencePayments,
        InferencePaymentsCalls,
        InferencePaymentsEvents,
        InferencePaymentsErrors
    );
}

#[test]
fn attribution_rewards_selectors_topics_and_errors_equal_solc() {
    check_contract!(
        AttributionRewards,
        AttributionRewardsCalls,
        AttributionRewardsEvents,
        AttributionRewardsErrors
    );
}

#[test]
fn test_tokens_selectors_topics_and_errors_equal_solc() {
    check_contract!(TestToken, TestTokenCalls, TestTokenEvents, TestTokenErrors);
    check_contract!(
        ReentrantToken,
        ReentrantTokenCalls,
        ReentrantTokenEvents,
        ReentrantTokenErrors
    );
}

#[test]
fn embedded_artifacts_are_the_committed_files_and_name_their_compiler() {
    for (name, text) in ARTIFACTS {
        let a: Value = serde_json::from_str(text).unwrap();
        assert_eq!(a, artifact(name), "{name}");
        assert_eq!(a["contractName"], name);
        assert!(
            a["compiler"]["version"]
                .as_str()
                .unwrap()
                .starts_with("0.8.30+")
        );
    }
    // The EIP-712 type sol! hashes is the contract's RECEIPT_TYPEHASH string.
    use alloy_sol_types::SolStruct;
    assert_eq!(
        InferencePayments::AttributionReceipt::eip712_encode_type(),
        "AttributionReceipt(bytes32 inferenceId,bytes32 modelId,bytes32[] adapterIds,address payer,uint256 amount,uint64 epoch,bytes32 weightsHash)"
    );
}
