//! The `openledger` extension: citations from the datanet, a fee split that sums to the fee to
//! the wei, and an EIP-712 receipt whose signature recovers to the operator and whose weights
//! hash commits to the split.

mod common;

use common::*;
use openledger::chain::receipt::{
    AttributionReceipt, parse_signature, receipt_domain, recover_signer, weights_hash,
};
use openledger::core::{Address, B256, U256};
use openledger_server::{AttributionConfig, ChainTarget, Server, ServerConfig};
use serde_json::{Value, json};

const KEY: &str = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";

fn attributing(root: &std::path::Path) -> Server {
    let (model, adapters) = model_and_adapters(root);
    let mut config = ServerConfig::new(model).with_adapters(adapters);
    config.serve.max_context = 128;
    let datanet = fixtures().join("../openledger/data/drug-facts.jsonl");
    let mut a = AttributionConfig::new(datanet, KEY.parse().unwrap());
    a.fee_wei = U256::from(1_000_000_007u64);
    a.owner = Address::repeat_byte(0x0e);
    a.protocol = Address::repeat_byte(0x0f);
    config.attribution = Some(a);
    Server::load(config, &mut |_| {}).unwrap()
}

fn u(v: &Value) -> U256 {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn answers_carry_sources_an_exact_split_and_a_receipt_the_operator_signed() {
    let dir = tempfile::tempdir().unwrap();
    let s = attributing(dir.path());
    let payer = "0x00000000000000000000000000000000000000aa";
    let r = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "qv-r4", "max_tokens": 4, "openledger": {"payer": payer},
               "messages": [{"role": "user", "content": "what does aspirin treat"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let ext = &v["openledger"];
    let citations = ext["citations"].as_array().unwrap();
    assert!(!citations.is_empty());
    assert!(
        citations[0]["snippet"]
            .as_str()
            .unwrap()
            .starts_with("what does aspirin treat"),
        "{ext}"
    );
    assert_eq!(ext["datanet"], "drug-facts");
    // The split: 5 % protocol, 30 % pool, the owner the rest, to the wei.
    let fee = u(&ext["fee_wei"]);
    assert_eq!(fee, U256::from(1_000_000_007u64));
    let protocol = u(&ext["split"]["protocol"]["amount_wei"]);
    let owner = u(&ext["split"]["owner"]["amount_wei"]);
    let pool: Vec<(Address, U256)> = ext["split"]["contributors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["account"].as_str().unwrap().parse().unwrap(),
                u(&p["amount_wei"]),
            )
        })
        .collect();
    assert_eq!(protocol, U256::from(50_000_000u64));
    assert_eq!(
        pool.iter().map(|p| p.1).fold(U256::ZERO, |a, b| a + b),
        U256::from(300_000_002u64)
    );
    assert_eq!(
        owner + protocol + pool.iter().map(|p| p.1).fold(U256::ZERO, |a, b| a + b),
        fee
    );
    let weights: f64 = ext["contributors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["weight"].as_f64().unwrap())
        .sum();
    assert!((weights - 1.0).abs() < 1e-9);
    // The receipt: rebuilt from the response, its signature recovers to the operator.
    let rc = &ext["receipt"];
    let receipt = AttributionReceipt {
        inferenceId: rc["inferenceId"].as_str().unwrap().parse().unwrap(),
        modelId: rc["modelId"].as_str().unwrap().parse().unwrap(),
        adapterIds: rc["adapterIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().parse().unwrap())
            .collect(),
        payer: rc["payer"].as_str().unwrap().parse().unwrap(),
        amount: u(&rc["amount"]),
        epoch: rc["epoch"].as_u64().unwrap(),
        weightsHash: rc["weightsHash"].as_str().unwrap().parse().unwrap(),
    };
    assert_eq!(receipt.payer, payer.parse::<Address>().unwrap());
    assert_eq!(
        receipt.inferenceId,
        openledger::core::B256::from(alloy_primitives::keccak256(v["id"].as_str().unwrap()))
    );
    // Model ids are the registry's: derived from the owner and the model's name.
    assert_eq!(
        receipt.adapterIds,
        vec![openledger::chain::bindings::model_id(
            Address::repeat_byte(0x0e),
            alloy_primitives::keccak256("qv-r4")
        )]
    );
    let hashed: Vec<(B256, U256)> = pool.iter().map(|(a, w)| (a.into_word(), *w)).collect();
    assert_eq!(receipt.weightsHash, weights_hash(&hashed).unwrap());
    let sig = alloy_primitives::hex::decode(ext["signature"].as_str().unwrap()).unwrap();
    let domain = receipt_domain(31337, Address::ZERO);
    let signer = recover_signer(&receipt, &domain, &parse_signature(&sig).unwrap()).unwrap();
    assert_eq!(signer, s.operator().unwrap());
    assert_eq!(ext["signer"], signer.to_string());

    // Streams carry it in their last chunk; plain requests never see it.
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": "how does metformin work", "max_tokens": 3,
               "stream": true, "openledger": true}),
    )
    .await;
    let events = r.events();
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"], json!([]));
    assert!(
        last["openledger"]["citations"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("metformin")
    );
    assert_eq!(last["openledger"]["receipt"]["adapterIds"], json!([]));
    let plain = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": "w5", "max_tokens": 1}),
    )
    .await
    .json();
    assert!(plain.get("openledger").is_none());
    let info = call(&s, "GET", "/openledger/info", None, None).await.json();
    assert_eq!(info["attribution"]["records"], 124);
    // A question with no word (a prompt of special tokens only): no source, and the data
    // pool goes to the owner.
    let none = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": [1, 3], "max_tokens": 1, "openledger": true}),
    )
    .await
    .json();
    assert_eq!(none["openledger"]["citations"], json!([]));
    assert_eq!(
        none["openledger"]["split"]["owner"]["amount_wei"],
        "950000007"
    );
    // Bad asks name their field.
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": "w5", "openledger": {"payer": "0xnope"}}),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), error_of(&r).1.as_deref()),
        (400, Some("openledger.payer"))
    );
}

#[tokio::test]
async fn a_server_without_a_datanet_refuses_the_extension_and_serves_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": "w5", "openledger": true}),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), error_of(&r).1.as_deref()),
        (400, Some("openledger"))
    );
    let page = call(&s, "GET", "/", None, None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().contains("id=\"sources\""));
    assert_eq!(
        call(&s, "GET", "/openledger/info", None, None).await.json()["attribution"],
        Value::Null
    );
}

#[tokio::test]
async fn on_the_embedded_chain_each_answer_is_paid_with_the_split_it_reports() {
    paid_on(ChainTarget::Embedded, "embedded", "fund").await;
}

/// The same on anvil over JSON-RPC: the contracts deployed on the node at start, each answer
/// paid there, and the node's token balances add up to the fees.
#[tokio::test(flavor = "multi_thread")]
async fn on_anvil_each_answer_is_paid_with_the_split_it_reports() {
    let Some(node) = openledger::chain::anvil::spawn_or_skip(&[]) else {
        return;
    };
    let keys = openledger::chain::rpc::anvil_dev_keys();
    let target = ChainTarget::Rpc {
        url: node.url(),
        keys,
    };
    // An unknown payer: no key to send from.
    let (s, info) = paid_on(target, &node.url(), "no signer").await;
    // What the node holds: the payments contract has every fee (nothing withdrawn yet).
    let url = node.url();
    let contract: Address = info["attribution"]["payments_contract"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let held = tokio::task::spawn_blocking(move || {
        use openledger::chain::bindings::{InferencePayments, TestToken};
        use openledger::chain::chain::ChainExt;
        let mut c = openledger::chain::rpc::RpcChain::connect(&url, Vec::new()).unwrap();
        let token = c.view(contract, &InferencePayments::tokenCall {}).unwrap();
        c.view(token, &TestToken::balanceOfCall { account: contract })
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(held, U256::from(4 * 999_999_999_999u64));
    drop(s);
}

/// Four answers paid on `target` (one by an ensemble); a fifth from `payer 0xbb` refused with
/// an error that says `refusal`. Returns the server and its info.
async fn paid_on(target: ChainTarget, name: &str, refusal: &str) -> (Server, Value) {
    let dir = tempfile::tempdir().unwrap();
    let (model, adapters) = model_and_adapters(dir.path());
    let mut config = ServerConfig::new(model).with_adapters(adapters);
    config.serve.max_context = 128;
    let mut a = AttributionConfig::new(
        fixtures().join("../openledger/data/drug-facts.jsonl"),
        KEY.parse().unwrap(),
    );
    a.fee_wei = U256::from(999_999_999_999u64);
    a.chain = Some(target);
    config.attribution = Some(a);
    let s = Server::load(config, &mut |_| {}).unwrap();
    let info = call(&s, "GET", "/openledger/info", None, None).await.json();
    assert_eq!(info["attribution"]["chain"], name);
    for (model, question) in [
        ("qv-r4", "what class is metformin"),
        ("tiny-llama", "how does aspirin work"),
        ("qv-r4", "what does aspirin treat"),
        // An ensemble: both members registered on the base and named in the receipt.
        ("qv-r4*0.5+attn-patterns*1.5", "what does aspirin treat"),
    ] {
        let r = post(
            &s,
            "/v1/chat/completions",
            json!({"model": model, "max_tokens": 2, "openledger": true,
                   "messages": [{"role": "user", "content": question}]}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let ext = &r.json()["openledger"];
        let pay = &ext["payment"];
        assert_eq!(pay["status"], "paid", "{ext}");
        let members = if model == "tiny-llama" {
            0
        } else {
            model.split('+').count()
        };
        assert_eq!(ext["adapters"].as_array().unwrap().len(), members);
        if members == 2 {
            // An ensemble receipt: the members are the models, their weights the shares, and
            // the owners' part is split among them by share (1 : 3), as the contract credited.
            let rc = &ext["receipt"];
            assert_eq!(rc["shares"], json!(["500000", "1500000"]));
            assert_eq!(ext["adapters"][1]["name"], "attn-patterns");
            assert_eq!(ext["adapters"][1]["weight"], 1.5);
            assert_eq!(ext["adapters"][1]["adapterId"], rc["modelIds"][1]);
            let parts: Vec<U256> = (0..2)
                .map(|i| u(&ext["adapters"][i]["owner_part_wei"]))
                .collect();
            let owners = u(&ext["split"]["owner"]["amount_wei"]);
            assert_eq!(parts[0] + parts[1], owners);
            assert_eq!(parts[1], owners * U256::from(3) / U256::from(4));
            for i in 0..2 {
                assert_eq!(
                    pay["owner_shares_wei"][i],
                    ext["adapters"][i]["owner_part_wei"]
                );
            }
        } else {
            assert_eq!(
                ext["receipt"]["adapterIds"].as_array().unwrap().len(),
                members
            );
        }
        // The contract's split is the one reported, to the wei.
        assert_eq!(pay["owner_share_wei"], ext["split"]["owner"]["amount_wei"]);
        assert_eq!(
            pay["protocol_share_wei"],
            ext["split"]["protocol"]["amount_wei"]
        );
        let pool = ext["split"]["contributors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| u(&p["amount_wei"]))
            .fold(U256::ZERO, |x, y| x + y);
        assert_eq!(u(&pay["data_pool_wei"]), pool);
        assert_eq!(
            u(&pay["owner_share_wei"]) + u(&pay["protocol_share_wei"]) + pool,
            u(&ext["fee_wei"])
        );
        assert_eq!(
            ext["receipt"]["payer"],
            info["attribution"]["default_payer"]
        );
        assert_eq!(ext["domain"]["verifyingContract"], pay["contract"]);
        assert_ne!(ext["split"]["owner"]["account"], Address::ZERO.to_string());
        assert_ne!(
            ext["split"]["protocol"]["account"],
            Address::ZERO.to_string()
        );
    }
    // A payer with no money for gas: the node refuses the transaction, and the response says
    // why (the answer itself is still given).
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "qv-r4", "prompt": "what does aspirin treat", "max_tokens": 1,
               "openledger": {"payer": "0x00000000000000000000000000000000000000bb"}}),
    )
    .await
    .json();
    let pay = &r["openledger"]["payment"];
    assert_eq!(pay["status"], "refused", "{r}");
    assert!(
        pay["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains(refusal),
        "{pay}"
    );
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    (s, info)
}
