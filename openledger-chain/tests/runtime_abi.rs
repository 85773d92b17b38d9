//! The run-time ABI (`openledger_chain::abi`) against the `sol!` bindings (whose selectors and
//! encodings equal solc's): calldata byte for byte, return values, events and custom errors from
//! real transactions on the embedded EVM, and typed errors for bad input.

mod common;

use alloy_primitives::{Address, B256, hex, keccak256};
use alloy_sol_types::{SolCall, SolError};
use common::{FEE, World, u};
use openledger_chain::abi::{
    ContractAbi, DecodedRevert, contract_names, decode_log_any, decode_outcome, decode_revert_any,
    value_to_json,
};
use openledger_chain::bindings::{InferencePayments, ModelRegistry, TestToken};
use openledger_chain::deploy::Deployment;
use openledger_chain::{ChainError, DynSolValue};
use serde_json::{Value, json};

fn hex32(b: B256) -> Value {
    json!(b.to_string())
}

#[test]
fn every_shipped_contract_parses_and_every_selector_equals_solc_method_identifiers() {
    for name in contract_names() {
        let c = ContractAbi::named(name).unwrap();
        assert!(!c.bytecode().is_empty(), "{name}");
        let (_, artifact) = openledger_chain::bindings::ARTIFACTS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap();
        let v: Value = serde_json::from_str(artifact).unwrap();
        let ids = v["methodIdentifiers"].as_object().unwrap();
        assert_eq!(ids.len(), c.abi().functions().count(), "{name}");
        for (sig, id) in ids {
            let f = c.function(sig).unwrap();
            assert_eq!(
                hex::encode(f.selector()),
                id.as_str().unwrap(),
                "{name}.{sig}"
            );
        }
    }
}

#[test]
fn calldata_with_structs_and_arrays_equals_the_sol_bindings() {
    let w = World::new();
    // registerModel: bytes32s, a dynamic array of structs, a uint256.
    let typed = ModelRegistry::registerModelCall {
        salt: keccak256("m"),
        baseModel: keccak256("b"),
        artifactHash: keccak256("a"),
        trainingLogHead: keccak256("l"),
        sources: vec![
            ModelRegistry::TrainingSource {
                datanetId: u(1),
                version: 3,
            },
            ModelRegistry::TrainingSource {
                datanetId: u(7),
                version: 1,
            },
        ],
        feePerCall: u(FEE),
    }
    .abi_encode();
    let dynamic = ContractAbi::named("ModelRegistry")
        .unwrap()
        .encode_call(
            "registerModel",
            &[
                hex32(keccak256("m")),
                hex32(keccak256("b")),
                hex32(keccak256("a")),
                hex32(keccak256("l")),
                json!([["1", 3], [7, "1"]]),
                json!(FEE.to_string()),
            ],
        )
        .unwrap();
    assert_eq!(dynamic.as_ref(), typed.as_slice());

    // payForInference: a struct with a bytes32[] inside, and bytes.
    let mut w = w;
    let r = w.receipt(1);
    let sig = w.sign(&r);
    let typed = Deployment::pay_call(r.clone(), &sig).abi_encode();
    let adapters: Vec<Value> = r.adapterIds.iter().map(|a| hex32(*a)).collect();
    let receipt = json!([
        r.inferenceId.to_string(),
        r.modelId.to_string(),
        adapters,
        r.payer.to_string(),
        r.amount.to_string(),
        r.epoch,
        r.weightsHash.to_string()
    ]);
    let payments = ContractAbi::named("InferencePayments").unwrap();
    let dynamic = payments
        .encode_call(
            "payForInference",
            &[receipt, json!(hex::encode_prefixed(sig.as_bytes()))],
        )
        .unwrap();
    assert_eq!(dynamic.as_ref(), typed.as_slice());

    // And back: the decoded arguments re-encode to the same calldata.
    let (name, args) = payments.decode_call(&dynamic).unwrap();
    assert_eq!(name, "payForInference");
    let args: Vec<Value> = args.iter().map(value_to_json).collect();
    assert_eq!(payments.encode_call(&name, &args).unwrap(), dynamic);
}

#[test]
fn transactions_built_by_name_run_on_chain_and_their_events_and_returns_decode() {
    let mut w = World::new();
    let payments = ContractAbi::named("InferencePayments").unwrap();
    let r = w.receipt(2);
    let sig = w.sign(&r);
    let data = Deployment::pay_call(r.clone(), &sig).abi_encode();
    let (payer, to) = (w.payer, w.d.payments);
    let out = w.chain.transact(payer, to, data.into()).unwrap();
    assert!(out.is_success());
    let typed = &out.events::<InferencePayments::InferencePaid>()[0];
    let decoded: Vec<_> = out.logs.iter().filter_map(decode_log_any).collect();
    let paid = decoded
        .iter()
        .find(|d| d.event == "InferencePaid")
        .expect("InferencePaid decoded");
    assert_eq!(paid.contract, "InferencePayments");
    assert_eq!(paid.address, to.to_checksum(None));
    let field = |n: &str| value_to_json(&paid.fields.iter().find(|(k, _)| k == n).unwrap().1);
    assert_eq!(field("inferenceId"), json!(typed.inferenceId.to_string()));
    assert_eq!(field("operator"), json!(typed.operator.to_checksum(None)));
    assert_eq!(field("ownerShare"), json!(typed.ownerShare.to_string()));
    assert_eq!(field("dataShare"), json!(typed.dataShare.to_string()));
    // The token's Transfer event decodes too (ERC-20 from OpenZeppelin).
    assert!(decoded.iter().any(|d| d.event == "Transfer"));

    // A view by name: split(amount) returns the same three shares as the typed call.
    let call = payments
        .encode_call("split", &[json!(FEE.to_string())])
        .unwrap();
    let out = w.chain.call(Address::ZERO, to, call).unwrap();
    let shares: Vec<Value> = payments
        .decode_output("split", &out.output)
        .unwrap()
        .iter()
        .map(value_to_json)
        .collect();
    let t = w
        .chain
        .view(to, &InferencePayments::splitCall { amount: u(FEE) })
        .unwrap();
    assert_eq!(
        shares,
        vec![
            json!(t.ownerShare.to_string()),
            json!(t.protocolShare.to_string()),
            json!(t.dataShare.to_string())
        ]
    );
}

#[test]
fn custom_errors_messages_and_panics_decode_with_their_arguments() {
    let mut w = World::new();
    let r = w.receipt(3);
    let sig = w.sign(&r);
    assert!(w.pay(r.clone(), &sig).is_success());
    let again = w.pay(r.clone(), &sig);
    assert!(!again.is_success());
    assert_eq!(
        decode_revert_any(&again.output),
        DecodedRevert::Custom {
            name: "InferenceAlreadyPaid".into(),
            args: vec![(
                "inferenceId".into(),
                DynSolValue::FixedBytes(r.inferenceId, 32)
            )],
        }
    );
    // A message and a panic, built by hand.
    let msg = alloy_sol_types::Revert::from("no").abi_encode();
    assert_eq!(decode_revert_any(&msg), DecodedRevert::Message("no".into()));
    let panic = alloy_sol_types::Panic::from(0x11u64).abi_encode();
    assert_eq!(decode_revert_any(&panic), DecodedRevert::Panic(0x11));
    assert_eq!(
        decode_revert_any(&[1, 2]),
        DecodedRevert::Unknown("0x0102".into())
    );
}

#[test]
fn outcomes_decode_to_events_and_returns_or_to_the_called_contracts_revert() {
    let mut w = World::new();
    let payments = ContractAbi::named("InferencePayments").unwrap();
    let r = w.receipt(4);
    let sig = w.sign(&r);
    let data = Deployment::pay_call(r.clone(), &sig).abi_encode();
    let (payer, to) = (w.payer, w.d.payments);
    let out = w.chain.transact(payer, to, data.clone().into()).unwrap();
    let d = decode_outcome(&out, Some((payments, "payForInference"))).unwrap();
    assert_eq!(out.status.to_string(), "success");
    assert_eq!(d.returns, Some(vec![]));
    assert_eq!(d.revert, None);
    let names: Vec<&str> = d.events.iter().map(|e| e.event.as_str()).collect();
    assert!(
        names.contains(&"InferencePaid") && names.contains(&"Transfer"),
        "{names:?}"
    );
    // Paying again reverts: the reason is the called contract's custom error, also when the
    // call is not named (every shipped ABI is tried).
    let again = w.chain.transact(payer, to, data.into()).unwrap();
    assert_eq!(again.status.to_string(), "revert");
    for call in [Some((payments, "payForInference")), None] {
        let d = decode_outcome(&again, call).unwrap();
        assert_eq!(d.returns, None);
        assert!(d.events.is_empty());
        match d.revert {
            Some(DecodedRevert::Custom { ref name, .. }) => {
                assert_eq!(name, "InferenceAlreadyPaid")
            }
            other => panic!("{other:?}"),
        }
    }
    // Return data that does not decode as the named function's outputs is an ABI error.
    let call = payments.encode_call("split", &[json!("10")]).unwrap();
    let mut view = w.chain.call(Address::ZERO, to, call).unwrap();
    assert!(decode_outcome(&view, Some((payments, "split"))).is_ok());
    view.output = vec![1, 2, 3].into();
    let e = decode_outcome(&view, Some((payments, "split"))).unwrap_err();
    assert_eq!(
        openledger_core::error::Classify::kind(&e),
        openledger_core::ErrorKind::Abi
    );
}

#[test]
fn a_contract_deployed_from_deploy_data_works() {
    let mut w = World::new();
    let token = ContractAbi::named("TestToken").unwrap();
    let code = token.deploy_data(&[]).unwrap();
    let admin = w.config.admin;
    let addr = w.chain.deploy(admin, &code, &[]).unwrap();
    let mint = token
        .encode_call("mint", &[json!(admin.to_string()), json!(5)])
        .unwrap();
    assert!(w.chain.transact(admin, addr, mint).unwrap().is_success());
    let bal = w
        .chain
        .view(addr, &TestToken::balanceOfCall { account: admin })
        .unwrap();
    assert_eq!(bal, u(5));
}

#[test]
fn bad_input_is_a_typed_error_naming_the_culprit() {
    let reg = ContractAbi::named("DatanetRegistry").unwrap();
    let e = ContractAbi::named("Nope").unwrap_err();
    assert!(
        matches!(e, ChainError::Artifact { ref name, .. } if name == "Nope"),
        "{e}"
    );
    let e = reg.encode_call("nope", &[]).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let e = reg
        .encode_call("publishVersion", &[json!(1), json!("0x07")])
        .unwrap_err();
    assert!(
        matches!(
            e,
            ChainError::ArgumentCount {
                expected: 3,
                found: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = reg
        .encode_call(
            "publishVersion",
            &[json!(1), json!("0x07"), json!(1)], // bytes32 from one byte
        )
        .unwrap_err();
    match e {
        ChainError::Argument {
            index, ref name, ..
        } => {
            assert_eq!(index, 1);
            assert_eq!(name, "recordsRoot");
            assert!(
                e.to_string().contains("DatanetRegistry.publishVersion"),
                "{e}"
            );
        }
        other => panic!("{other}"),
    }
    let e = reg
        .encode_call(
            "publishVersion",
            &[json!(-1), json!(hex32(B256::ZERO)), json!(1)],
        )
        .unwrap_err();
    assert!(matches!(e, ChainError::Argument { index: 0, .. }), "{e}");
    // A uint past 64 bits written as a JSON number has been rounded by the JSON reader: it is
    // refused (with the way to write it), while the same amount as a decimal string encodes.
    let rewards = ContractAbi::named("AttributionRewards").unwrap();
    let addr = json!(Address::repeat_byte(7).to_string());
    let claim = |amount: Value| {
        rewards.encode_call(
            "claim",
            &[json!(1), json!(0), addr.clone(), amount, json!([])],
        )
    };
    let big: Value = serde_json::from_str("123456789012345678901").unwrap();
    let e = claim(big).unwrap_err();
    match e {
        ChainError::Argument { index, reason, .. } => {
            assert_eq!(index, 3);
            assert!(reason.contains("decimal string"), "{reason}");
        }
        other => panic!("{other}"),
    }
    let exact = claim(json!("123456789012345678901")).unwrap();
    assert_eq!(
        &exact[4 + 3 * 32..4 + 4 * 32],
        &u(123_456_789_012_345_678_901).to_be_bytes::<32>()
    );
    assert!(claim(json!(12345)).is_ok());
    assert!(reg.decode_call(&[1, 2, 3]).is_err());
    assert!(reg.decode_call(&[0xde, 0xad, 0xbe, 0xef]).is_err());
    assert!(reg.decode_output("getDatanet", &[0u8; 5]).is_err());
    let e = ContractAbi::from_artifact("X", "{\"abi\": 3}").unwrap_err();
    assert!(matches!(e, ChainError::Artifact { .. }), "{e}");
    let e = ContractAbi::from_artifact("X", "{").unwrap_err();
    assert!(matches!(e, ChainError::Artifact { .. }), "{e}");
}
