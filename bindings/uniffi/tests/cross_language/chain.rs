//! EIP-712 receipt and contract calldata vectors (`openledger_chain::receipt`, `bindings`).

use alloy_primitives::Bytes;
use alloy_sol_types::SolCall;
use openledger_chain::bindings::{DatanetRegistry, InferencePayments, ModelRegistry, TestToken};
use openledger_chain::claims::EpochClaims;
use openledger_chain::receipt::{
    AttributionReceipt, OperatorSigner, receipt_domain, recover_signer, signing_hash, struct_hash,
    weights_hash,
};
use openledger_core::{Address, B256, U256};
use serde_json::{Value, json};

use crate::merkle::claims;
use crate::{addr, h, hashes, hex, named, named_address};

/// The receipts of the vectors, each with its signer's secret, chain and contract.
/// A receipt vector's input: name, signer secret, chain id, contract, receipt, weights.
type ReceiptInput = (
    &'static str,
    B256,
    u64,
    Address,
    AttributionReceipt,
    Vec<(B256, U256)>,
);

fn receipts_input() -> Vec<ReceiptInput> {
    let weights: Vec<(B256, U256)> = (0..3u64)
        .map(|i| (named(&format!("record {i}")), U256::from(1_000 * (i + 1))))
        .collect();
    vec![
        (
            "receipt with two adapters and attribution weights",
            named("operator key 1"),
            31337,
            named_address("payments contract"),
            AttributionReceipt {
                inferenceId: named("inference 1"),
                modelId: named("model tiny-llama"),
                adapterIds: vec![named("adapter qv-r4"), named("adapter all-r8-rslora")],
                payer: named_address("payer 1"),
                amount: U256::from(10u64).pow(U256::from(18u8)),
                epoch: 3,
                weightsHash: weights_hash(&weights).unwrap(),
            },
            weights,
        ),
        (
            "receipt without adapters or weights on another chain",
            named("operator key 2"),
            1,
            named_address("payments contract 2"),
            AttributionReceipt {
                inferenceId: named("inference 2"),
                modelId: named("model base"),
                adapterIds: vec![],
                payer: named_address("payer 2"),
                amount: U256::MAX,
                epoch: u64::MAX,
                weightsHash: B256::ZERO,
            },
            vec![],
        ),
    ]
}

fn receipt_json(r: &AttributionReceipt) -> Value {
    json!({
        "inference_id": h(&r.inferenceId), "model_id": h(&r.modelId),
        "adapter_ids": hashes(&r.adapterIds), "payer": addr(&r.payer),
        "amount": r.amount.to_string(), "epoch": r.epoch.to_string(), "weights_hash": h(&r.weightsHash),
    })
}

pub fn receipts() -> Value {
    let out = receipts_input()
        .into_iter()
        .map(|(name, secret, chain_id, contract, receipt, weights)| {
            let signer = OperatorSigner::from_bytes(&secret).unwrap();
            let domain = receipt_domain(chain_id, contract);
            let sig = signer.sign(&receipt, &domain).unwrap();
            assert_eq!(recover_signer(&receipt, &domain, &sig).unwrap(), signer.address());
            json!({
                "name": name, "secret": h(&secret), "signer": addr(&signer.address()),
                "chain_id": chain_id, "verifying_contract": addr(&contract),
                "weights": weights.iter().map(|(id, w)| json!({"id": h(id), "weight": w.to_string()})).collect::<Vec<_>>(),
                "receipt": receipt_json(&receipt),
                "domain_separator": h(&domain.separator()),
                "struct_hash": h(&struct_hash(&receipt)),
                "signing_hash": h(&signing_hash(&receipt, &domain)),
                "signature": hex(&sig.as_bytes()),
            })
        })
        .collect();
    Value::Array(out)
}

// ---------------------------------------------------------------- contract calldata

fn arg(ty: &str, value: Value) -> Value {
    json!({"type": ty, "value": value})
}

fn call_case<C: SolCall>(name: &str, contract: &str, call: &C, args: Vec<Value>) -> Value {
    json!({
        "name": name, "contract": contract, "function": C::SIGNATURE,
        "selector": hex(&C::SELECTOR), "args": args, "calldata": hex(&call.abi_encode()),
    })
}

pub fn abi_calls() -> Value {
    let (epoch, totals) = claims();
    let ec = EpochClaims::new(epoch, &totals).unwrap();
    let claim = ec.claim_call(3).unwrap();
    let post = ec.post_call();
    let (_, secret, chain_id, contract, receipt, _) = receipts_input().remove(0);
    let sig = OperatorSigner::from_bytes(&secret)
        .unwrap()
        .sign(&receipt, &receipt_domain(chain_id, contract))
        .unwrap();
    let pay = InferencePayments::payForInferenceCall {
        receipt: receipt.clone(),
        signature: Bytes::from(sig.as_bytes().to_vec()),
    };
    let r = &receipt;
    let receipt_tuple = json!([
        h(&r.inferenceId),
        h(&r.modelId),
        hashes(&r.adapterIds),
        addr(&r.payer),
        r.amount.to_string(),
        r.epoch.to_string(),
        h(&r.weightsHash)
    ]);
    let record_proof = vec![named("sibling 0"), named("sibling 1")];
    let sources = vec![
        ModelRegistry::TrainingSource {
            datanetId: U256::from(1u8),
            version: 2,
        },
        ModelRegistry::TrainingSource {
            datanetId: U256::from(7u8),
            version: 1,
        },
    ];
    let spender = named_address("spender");
    let treasury = named_address("treasury");
    Value::Array(vec![
        call_case(
            "claim of reward 3 with its proof",
            "AttributionRewards",
            &claim,
            vec![
                arg("uint64", json!(epoch.to_string())),
                arg("uint256", json!(claim.index.to_string())),
                arg("address", json!(addr(&claim.account))),
                arg("uint256", json!(claim.amount.to_string())),
                arg("bytes32[]", hashes(&claim.proof)),
            ],
        ),
        call_case(
            "post of the epoch root",
            "AttributionRewards",
            &post,
            vec![
                arg("uint64", json!(epoch.to_string())),
                arg("bytes32", json!(h(&post.root))),
                arg("uint256", json!(post.total.to_string())),
            ],
        ),
        call_case(
            "payment of a signed receipt",
            "InferencePayments",
            &pay,
            vec![
                arg(
                    "(bytes32,bytes32,bytes32[],address,uint256,uint64,bytes32)",
                    receipt_tuple,
                ),
                arg("bytes", json!(hex(&sig.as_bytes()))),
            ],
        ),
        call_case(
            "fee split proposal",
            "InferencePayments",
            &InferencePayments::proposeSplitCall {
                treasury_: treasury,
                protocolBps_: 500,
                dataPoolBps_: 6_500,
            },
            vec![
                arg("address", json!(addr(&treasury))),
                arg("uint16", json!("500")),
                arg("uint16", json!("6500")),
            ],
        ),
        call_case(
            "datanet registration with a UTF-8 URI",
            "DatanetRegistry",
            &DatanetRegistry::registerDatanetCall {
                metadataHash: named("datanet metadata"),
                uri: "ipfs://datanet/médical-notes".into(),
            },
            vec![
                arg("bytes32", json!(h(&named("datanet metadata")))),
                arg("string", json!("ipfs://datanet/médical-notes")),
            ],
        ),
        call_case(
            "record inclusion check",
            "DatanetRegistry",
            &DatanetRegistry::verifyRecordCall {
                datanetId: U256::from(1u8),
                version: 2,
                recordHash: named("record 0"),
                proof: record_proof.clone(),
            },
            vec![
                arg("uint256", json!("1")),
                arg("uint64", json!("2")),
                arg("bytes32", json!(h(&named("record 0")))),
                arg("bytes32[]", hashes(&record_proof)),
            ],
        ),
        call_case(
            "model registration with training sources",
            "ModelRegistry",
            &ModelRegistry::registerModelCall {
                salt: named("model tiny-llama"),
                baseModel: named("base llama"),
                artifactHash: named("artifact"),
                trainingLogHead: named("training log"),
                sources: sources.clone(),
                feePerCall: U256::from(10u64).pow(U256::from(15u8)),
            },
            vec![
                arg("bytes32", json!(h(&named("model tiny-llama")))),
                arg("bytes32", json!(h(&named("base llama")))),
                arg("bytes32", json!(h(&named("artifact")))),
                arg("bytes32", json!(h(&named("training log")))),
                arg("(uint256,uint64)[]", json!([["1", "2"], ["7", "1"]])),
                arg(
                    "uint256",
                    json!(U256::from(10u64).pow(U256::from(15u8)).to_string()),
                ),
            ],
        ),
        call_case(
            "token approval",
            "TestToken",
            &TestToken::approveCall {
                spender,
                value: U256::MAX,
            },
            vec![
                arg("address", json!(addr(&spender))),
                arg("uint256", json!(U256::MAX.to_string())),
            ],
        ),
    ])
}
