//! The RPC backend against a real node: anvil 1.7.1 on a free loopback port.
//!
//! The same transactions on the embedded EVM and on anvil give the same contract addresses,
//! events, token balances and gas; reverts come back decoded; dev controls work; faults (a
//! restarted node, a dropped transaction, a send whose answer is lost, a node that is not there,
//! an unknown sender) end in typed errors or are recovered without paying twice.
//!
//! Needs anvil (`bash scripts/install-foundry.sh`); without it each test says so and passes,
//! unless `OPENLEDGER_REQUIRE_ANVIL=1` (set by the test scripts), where it fails.
#![cfg(feature = "rpc")]

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_sol_types::SolCall;
use openledger_chain::ChainError;
use openledger_chain::anvil::{self, Anvil};
use openledger_chain::bindings::{
    AttributionRewards, DatanetRegistry, InferencePayments, ModelRegistry, TestToken,
};
use openledger_chain::chain::{Chain, ChainExt, LogFilter};
use openledger_chain::claims::EpochClaims;
use openledger_chain::deploy::{DEPLOYMENT_FORMAT, DeployConfig, Deployment};
use openledger_chain::evm::{EmbeddedChain, RevertReason, TxStatus};
use openledger_chain::receipt::{AttributionReceipt, OperatorSigner, weights_hash};
use openledger_chain::rpc::{RpcChain, RpcConfig, anvil_dev_keys};
use openledger_core::merkle::MerkleTree;

/// Anvil with the embedded chain's genesis time, so epochs line up.
fn node(extra: &[&str]) -> Option<Anvil> {
    let mut args = vec!["--timestamp", "1700000000"];
    args.extend_from_slice(extra);
    anvil::spawn_or_skip(&args)
}

fn rpc(node: &Anvil) -> RpcChain {
    RpcChain::connect(&node.url(), anvil_dev_keys()).expect("connects")
}

fn addr(i: usize) -> Address {
    Address::from_private_key(&anvil_dev_keys()[i])
}

const FEE: u64 = 1_000_000_000_000_000_003;

/// Every call of the settlement, from deployment to the claims, on `chain`; returns the
/// deployment and each call's label and gas.
fn settle(chain: &mut dyn Chain) -> (Deployment, Vec<(&'static str, u64)>) {
    let config = DeployConfig::with_accounts([addr(0), addr(1), addr(2), addr(3)]);
    let d = Deployment::deploy(chain, &config).unwrap();
    let (owner, trainer, payer, relayer) = (addr(4), addr(5), addr(6), addr(7));
    let mut gas = Vec::new();
    let mut ok = |chain: &mut dyn Chain, label: &'static str, from, to, data: Vec<u8>| {
        let out = chain.transact(from, to, data.into()).unwrap();
        assert!(out.is_success(), "{label}: {:?} {}", out.status, out.output);
        gas.push((label, out.gas_used));
        out
    };
    let records: Vec<B256> = (0..10u8).map(|i| keccak256([i])).collect();
    let tree = MerkleTree::new(&records).unwrap();
    let reg = DatanetRegistry::registerDatanetCall {
        metadataHash: keccak256("datanet"),
        uri: "ipfs://datanet".into(),
    };
    ok(
        chain,
        "registerDatanet",
        owner,
        d.datanets,
        reg.abi_encode(),
    );
    let publish = DatanetRegistry::publishVersionCall {
        datanetId: U256::from(1),
        recordsRoot: tree.root(),
        recordCount: 10,
    };
    ok(
        chain,
        "publishVersion",
        owner,
        d.datanets,
        publish.abi_encode(),
    );
    let request = DatanetRegistry::requestAccessCall {
        datanetId: U256::from(1),
        purposeHash: keccak256("fine-tune"),
    };
    ok(
        chain,
        "requestAccess",
        trainer,
        d.datanets,
        request.abi_encode(),
    );
    let approve = DatanetRegistry::approveAccessCall {
        datanetId: U256::from(1),
        requester: trainer,
    };
    ok(
        chain,
        "approveAccess",
        owner,
        d.datanets,
        approve.abi_encode(),
    );
    let model = openledger_chain::bindings::model_id(trainer, keccak256("model"));
    let register = ModelRegistry::registerModelCall {
        salt: keccak256("model"),
        baseModel: keccak256("base"),
        artifactHash: keccak256("artifact"),
        trainingLogHead: keccak256("log"),
        sources: vec![ModelRegistry::TrainingSource {
            datanetId: U256::from(1),
            version: 1,
        }],
        feePerCall: U256::from(FEE),
    };
    ok(
        chain,
        "registerModel",
        trainer,
        d.models,
        register.abi_encode(),
    );
    let mint = TestToken::mintCall {
        to: payer,
        amount: U256::from(FEE) * U256::from(3),
    };
    ok(chain, "mint", payer, d.token, mint.abi_encode());
    let allow = TestToken::approveCall {
        spender: d.payments,
        value: U256::MAX,
    };
    ok(chain, "approve", payer, d.token, allow.abi_encode());
    let operator = OperatorSigner::new(anvil_dev_keys()[2].clone());
    let domain = d.receipt_domain(&*chain);
    let (alice, bob) = (addr(8), addr(9));
    for n in 0..3u64 {
        let receipt = AttributionReceipt {
            inferenceId: keccak256(format!("inference {n}")),
            modelId: model,
            adapterIds: Vec::new(),
            payer,
            amount: U256::from(FEE),
            epoch: 0,
            weightsHash: weights_hash(&[(keccak256([1u8]), U256::from(7))]).unwrap(),
        };
        let sig = operator.sign(&receipt, &domain).unwrap();
        let pay = Deployment::pay_call(receipt, &sig);
        ok(
            chain,
            "payForInference",
            payer,
            d.payments,
            pay.abi_encode(),
        );
    }
    chain.dev().unwrap().advance_time(86_400).unwrap();
    let pool = chain
        .view(d.payments, &InferencePayments::dataPoolCall { epoch: 0 })
        .unwrap();
    let third = pool / U256::from(3);
    let claims = EpochClaims::new(0, &[(alice, third), (bob, pool - third)]).unwrap();
    ok(
        chain,
        "postEpochRoot",
        config.poster,
        d.rewards,
        claims.post_call().abi_encode(),
    );
    // Claims open when the root's challenge window closes.
    chain
        .dev()
        .unwrap()
        .advance_time(config.challenge_window)
        .unwrap();
    for i in 0..2 {
        let claim = claims.claim_call(i).unwrap();
        ok(chain, "claim", relayer, d.rewards, claim.abi_encode());
    }
    for who in [trainer, config.treasury] {
        let w = InferencePayments::withdrawCall {};
        ok(chain, "withdraw", who, d.payments, w.abi_encode());
    }
    (d, gas)
}

#[test]
fn the_settlement_on_anvil_equals_the_embedded_run() {
    let Some(node) = node(&[]) else { return };
    let mut remote = rpc(&node);
    assert!(remote.is_anvil(), "{}", remote.client_version());
    assert_eq!(remote.chain_id(), 31337);
    let mut local = EmbeddedChain::with_dev_keys(31337, anvil_dev_keys());
    let (d_local, gas_local) = settle(&mut local);
    let (d_remote, gas_remote) = settle(&mut remote);
    // The same deployer and nonces: the same addresses, so the same EIP-712 domain.
    assert_eq!(d_local, d_remote);
    // Gas per call is the EVM's, whichever runs it (Prague rules on both).
    assert_eq!(gas_local, gas_remote);
    println!("\n{:<20} {:>10} {:>10}", "call", "embedded", "anvil");
    for ((label, a), (_, b)) in gas_local.iter().zip(&gas_remote) {
        println!("{label:<20} {a:>10} {b:>10}");
    }
    // Every token balance, to the wei.
    let token = d_local.token;
    for i in 0..10 {
        let q = TestToken::balanceOfCall { account: addr(i) };
        let a = local.view(token, &q).unwrap();
        let b = remote.view(token, &q).unwrap();
        assert_eq!(a, b, "token balance of account {i}");
    }
    for c in [d_local.payments, d_local.rewards] {
        let q = TestToken::balanceOfCall { account: c };
        assert_eq!(remote.view(token, &q).unwrap(), U256::ZERO);
    }
    // The same events, in the same order (read back in pages of 3 blocks on anvil).
    let filter = LogFilter {
        addresses: vec![
            d_local.datanets,
            d_local.models,
            d_local.payments,
            d_local.rewards,
        ],
        ..LogFilter::default()
    };
    let a: Vec<_> = local
        .logs(&filter)
        .unwrap()
        .into_iter()
        .map(|l| l.log)
        .collect();
    let mut paged = RpcChain::connect_with(
        &node.url(),
        Vec::new(),
        RpcConfig {
            log_page_blocks: 3,
            ..RpcConfig::default()
        },
    )
    .unwrap();
    let b: Vec<_> = paged
        .logs(&filter)
        .unwrap()
        .into_iter()
        .map(|l| l.log)
        .collect();
    // Role grants at deployment (admin, guardian and poster roles in the constructors), registry
    // events, three payments, the root, two claims, two withdrawals and the pool release.
    assert_eq!(a.len(), 22, "events: {a:#?}");
    assert_eq!(a, b);
    // Filtered by event: the three payments.
    let paid = LogFilter {
        topic0: vec![
            <InferencePayments::InferencePaid as alloy_sol_types::SolEvent>::SIGNATURE_HASH,
        ],
        ..LogFilter::default()
    };
    let logs = remote.logs(&paid).unwrap();
    assert_eq!(logs.len(), 3);
    assert!(logs.iter().all(|l| l.tx_hash.is_some()));
}

#[test]
fn reverts_come_back_decoded_and_unsent() {
    let Some(node) = node(&[]) else { return };
    let mut chain = rpc(&node);
    let config = DeployConfig::with_accounts([addr(0), addr(1), addr(2), addr(3)]);
    let d = Deployment::deploy(&mut chain, &config).unwrap();
    let stranger = addr(5);
    let nonce = chain.nonce(stranger).unwrap();
    let claims = EpochClaims::new(0, &[(addr(8), U256::from(1))]).unwrap();
    let out = chain
        .send(stranger, d.rewards, &claims.post_call())
        .unwrap();
    assert_eq!(out.status, TxStatus::Revert);
    assert_eq!(out.tx_hash, None, "a preflighted revert is not sent");
    match out.revert_reason::<AttributionRewards::AttributionRewardsErrors>() {
        Some(RevertReason::Custom(
            AttributionRewards::AttributionRewardsErrors::AccessControlUnauthorizedAccount(e),
        )) => assert_eq!(e.account, stranger),
        other => panic!("{other:?}"),
    }
    assert_eq!(chain.nonce(stranger).unwrap(), nonce, "nothing was sent");
    // A view that reverts is a typed failure too.
    let bad = chain.view(
        d.models,
        &ModelRegistry::servingCall {
            modelId: keccak256("unknown"),
        },
    );
    assert!(
        matches!(bad, Err(ChainError::TransactionFailed { .. })),
        "{bad:?}"
    );
    // A sender whose key the chain does not hold.
    let nobody = Address::repeat_byte(0x42);
    let e = chain
        .send(
            nobody,
            d.token,
            &TestToken::mintCall {
                to: nobody,
                amount: U256::from(1),
            },
        )
        .unwrap_err();
    assert_eq!(e, ChainError::NoSigner(nobody));
}

#[test]
fn dev_controls_move_time_fund_and_snapshot() {
    let Some(node) = node(&[]) else { return };
    let mut chain = rpc(&node);
    let t0 = chain.head().unwrap().timestamp;
    chain.dev().unwrap().advance_time(3_600).unwrap();
    assert!(chain.head().unwrap().timestamp >= t0 + 3_600);
    let fresh = Address::repeat_byte(7);
    chain.dev().unwrap().fund(fresh, U256::from(5)).unwrap();
    assert_eq!(chain.balance(fresh).unwrap(), U256::from(5));
    let a = addr(0);
    let token = chain.deploy(a, &TestToken::BYTECODE, &[]).unwrap();
    let id = chain.dev().unwrap().snapshot().unwrap();
    chain
        .send(
            a,
            token,
            &TestToken::mintCall {
                to: a,
                amount: U256::from(9),
            },
        )
        .unwrap()
        .into_success()
        .unwrap();
    chain.dev().unwrap().revert_to(id).unwrap();
    let bal = chain
        .view(token, &TestToken::balanceOfCall { account: a })
        .unwrap();
    assert_eq!(bal, U256::ZERO);
    // The nonce cache followed the state back: the next send goes through.
    chain
        .send(
            a,
            token,
            &TestToken::mintCall {
                to: a,
                amount: U256::from(1),
            },
        )
        .unwrap()
        .into_success()
        .unwrap();
    assert_eq!(
        chain.dev().unwrap().revert_to(id),
        Err(ChainError::UnknownSnapshot(id.0)),
        "a snapshot is used up"
    );
}

#[test]
fn a_node_that_is_not_there_is_a_typed_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = RpcConfig {
        retries: 1,
        retry_delay: std::time::Duration::from_millis(10),
        ..RpcConfig::default()
    };
    let e = RpcChain::connect_with(&format!("http://127.0.0.1:{port}"), Vec::new(), config)
        .unwrap_err();
    assert!(
        matches!(&e, ChainError::Rpc { method, .. } if method == "eth_chainId"),
        "{e}"
    );
    // https goes through rustls: the same typed error, no panic for want of a TLS provider.
    let e = RpcChain::connect_with(
        &format!("https://127.0.0.1:{port}"),
        Vec::new(),
        RpcConfig {
            retries: 0,
            ..RpcConfig::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&e, ChainError::Rpc { method, .. } if method == "eth_chainId"),
        "{e}"
    );
    let e = RpcChain::connect("ws://127.0.0.1:1", Vec::new()).unwrap_err();
    assert!(e.to_string().contains("only http and https"), "{e}");
    let e = RpcChain::connect("not a url", Vec::new()).unwrap_err();
    assert!(e.to_string().contains("is not a URL"), "{e}");
}

#[test]
fn a_restarted_node_resumes_its_chain_and_nothing_is_paid_twice() {
    let dir = tempdir();
    let state = dir.join("state.json");
    let state = state.to_str().unwrap();
    let Some(mut node) = node(&["--state", state]) else {
        return;
    };
    let mut chain = rpc(&node);
    let a = addr(0);
    let token = chain.deploy(a, &TestToken::BYTECODE, &[]).unwrap();
    let mint = TestToken::mintCall {
        to: a,
        amount: U256::from(10),
    };
    chain.send(a, token, &mint).unwrap().into_success().unwrap();
    node.stop().unwrap();
    // While the node is down, calls fail typed (after their retries).
    let e = chain.nonce(a).unwrap_err();
    assert!(matches!(e, ChainError::Rpc { .. }), "{e}");
    node.restart().unwrap();
    // The same chain object goes on: the state came back, the cached nonce is right.
    let bal = chain
        .view(token, &TestToken::balanceOfCall { account: a })
        .unwrap();
    assert_eq!(bal, U256::from(10));
    chain.send(a, token, &mint).unwrap().into_success().unwrap();
    let bal = chain
        .view(token, &TestToken::balanceOfCall { account: a })
        .unwrap();
    assert_eq!(bal, U256::from(20));
    assert_eq!(chain.nonce(a).unwrap(), 3);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_dropped_transaction_is_sent_again_and_mined_once() {
    let Some(node) = node(&["--no-mining"]) else {
        return;
    };
    let url = node.url();
    let a = addr(0);
    // Deploy with mining on, then turn it off.
    let mut admin = rpc(&node);
    let _: serde_json::Value = raw(&url, "evm_setAutomine", serde_json::json!([true]));
    let token = admin.deploy(a, &TestToken::BYTECODE, &[]).unwrap();
    let _: serde_json::Value = raw(&url, "evm_setAutomine", serde_json::json!([false]));
    let sender = std::thread::spawn(move || {
        let mut chain = RpcChain::connect(&url, anvil_dev_keys()).unwrap();
        let mint = TestToken::mintCall {
            to: a,
            amount: U256::from(10),
        };
        chain.send(a, token, &mint)
    });
    let url = node.url();
    // The transaction waits in the pool; drop it. Only the mint is looked for: anvil may
    // still list the deployment as pending for a moment after mining it (its pool forgets
    // mined transactions on a notification of its own).
    let to_token = token.to_string().to_ascii_lowercase();
    let hash = loop {
        let pool: serde_json::Value = raw(&url, "txpool_content", serde_json::json!([]));
        let mint = pool["pending"]
            .as_object()
            .into_iter()
            .flat_map(|senders| senders.values())
            .filter_map(|txs| txs.as_object())
            .flat_map(|txs| txs.values())
            .find(|tx| tx["to"].as_str().map(str::to_ascii_lowercase) == Some(to_token.clone()));
        if let Some(tx) = mint {
            break tx["hash"].as_str().unwrap().to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _: serde_json::Value = raw(&url, "anvil_dropTransaction", serde_json::json!([hash]));
    // The sender notices and broadcasts the same bytes again: it is back in the pool.
    let back = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let tx: serde_json::Value =
            raw(&url, "eth_getTransactionByHash", serde_json::json!([hash]));
        !tx.is_null()
    });
    assert!(back, "the dropped transaction was not sent again");
    let _: serde_json::Value = raw(&url, "evm_mine", serde_json::json!([]));
    let out = sender.join().unwrap().unwrap();
    assert!(out.is_success());
    let bal = admin
        .view(token, &TestToken::balanceOfCall { account: a })
        .unwrap();
    assert_eq!(bal, U256::from(10), "minted once");
    assert_eq!(admin.nonce(a).unwrap(), 2);
    // What the chain holds, for a mismatch to be read: the mined block's transactions and
    // what is left in the pool.
    let block: serde_json::Value = raw(
        &url,
        "eth_getBlockByNumber",
        serde_json::json!(["latest", false]),
    );
    let pool: serde_json::Value = raw(&url, "txpool_content", serde_json::json!([]));
    assert_eq!(
        out.tx_hash.unwrap().to_string(),
        hash,
        "the same transaction; block {}: {}; pool: {pool}",
        block["number"],
        block["transactions"]
    );
}

fn raw<T: serde::de::DeserializeOwned>(url: &str, method: &str, params: serde_json::Value) -> T {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let resp: serde_json::Value = ureq_post(url, &body);
    if let Some(e) = resp.get("error") {
        panic!("{method}: {e}");
    }
    serde_json::from_value(resp["result"].clone()).unwrap()
}

/// A minimal JSON-RPC POST over a std TCP stream (the tests need no HTTP client of their own).
fn ureq_post(url: &str, body: &serde_json::Value) -> serde_json::Value {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, rest) = out.split_once("\r\n\r\n").unwrap();
    let rest = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    serde_json::from_str(&rest).unwrap()
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (len, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(len.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

fn tempdir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("openledger-anvil-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_deployment_file_is_written_read_and_checked_against_the_chain() {
    use openledger_chain::deploy::DeploymentFile;
    let Some(node) = node(&[]) else { return };
    let mut chain = rpc(&node);
    let config = DeployConfig::with_accounts([addr(0), addr(1), addr(2), addr(3)]);
    let file = Deployment::deploy_recorded(&mut chain, &config).unwrap();
    assert_eq!(file.chain_id, 31337);
    assert_eq!(
        file.transactions.len(),
        7,
        "five contracts, two role grants"
    );
    assert!(file.transactions.iter().all(|t| t.hash.is_some()));
    let dir = tempdir();
    let path = dir.join("deployment.json");
    file.write(&path).unwrap();
    let back = DeploymentFile::read(&path).unwrap();
    assert_eq!(back, file);
    back.check(&mut chain).unwrap();
    // Another chain id; the same id without the contracts.
    let e = back.check(&mut EmbeddedChain::new(1)).unwrap_err();
    assert!(
        e.to_string()
            .contains("deployed on chain 31337, connected to chain 1"),
        "{e}"
    );
    let e = back.check(&mut EmbeddedChain::new(31337)).unwrap_err();
    assert!(e.to_string().contains("no contract at token"), "{e}");
    // An operator without its role.
    let mut wrong = back.clone();
    wrong.config.operator = addr(9);
    let e = wrong.check(&mut chain).unwrap_err();
    assert!(e.to_string().contains("the operator"), "{e}");
    // Files that are not deployments: each a typed error naming the file.
    let text = std::fs::read_to_string(&path).unwrap();
    for (name, bad) in [
        ("truncated", text[..text.len() / 2].to_string()),
        ("format", text.replace(DEPLOYMENT_FORMAT, "v0")),
        (
            "token",
            text.replacen(
                &format!("{:?}", file.contracts.token).to_lowercase(),
                "0x0000000000000000000000000000000000000001",
                1,
            ),
        ),
        ("hostile", "\u{0}\u{1}{[".to_string()),
    ] {
        let p = dir.join(format!("{name}.json"));
        std::fs::write(&p, bad).unwrap();
        match DeploymentFile::read(&p) {
            Err(ChainError::Deployment(m)) => assert!(m.contains(&format!("{name}.json")), "{m}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A loopback proxy to `upstream` that relays one request per connection, except the first
/// `eth_sendRawTransaction`: that one reaches the node, but its answer is dropped and the
/// connection closed, as when a connection breaks after the node took the transaction.
/// Returns the proxy's port and the count of sends handled (the first dropped, the others
/// answered).
fn lossy_proxy(upstream: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sends = std::sync::Arc::new(AtomicUsize::new(0));
    let count = sends.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let count = count.clone();
            std::thread::spawn(move || {
                // The request's head, then its body by Content-Length.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match client.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match client.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                // One request per connection: the node closes after its answer.
                let mut lines: Vec<&str> = head
                    .trim_end()
                    .lines()
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .collect();
                lines.push("Connection: close");
                let mut request = (lines.join("\r\n") + "\r\n\r\n").into_bytes();
                let body = &buf[head_end..head_end + len];
                request.extend_from_slice(body);
                let Ok(mut node) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                if node.write_all(&request).is_err() {
                    return;
                }
                let mut answer = Vec::new();
                let _ = node.read_to_end(&mut answer);
                let send = String::from_utf8_lossy(body).contains("eth_sendRawTransaction");
                if send && count.load(Ordering::SeqCst) == 0 {
                    count.fetch_add(1, Ordering::SeqCst);
                    return; // the node took it; the client hears nothing
                }
                let _ = client.write_all(&answer);
                if send {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (port, sends)
}

/// A send whose answer is lost after the node took it is retried with the same bytes while
/// the transaction waits in the pool: the node's refusal of a transaction it already holds
/// ("transaction already imported", in anvil's words) counts as taken, and it is mined once.
#[test]
fn a_send_whose_answer_is_lost_is_retried_and_mined_once() {
    use std::sync::atomic::Ordering;
    let Some(node) = node(&["--no-mining"]) else {
        return;
    };
    let url = node.url();
    let upstream: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let (port, sends) = lossy_proxy(upstream);
    let config = RpcConfig {
        retries: 2,
        retry_delay: std::time::Duration::from_millis(20),
        ..RpcConfig::default()
    };
    let proxied = format!("http://127.0.0.1:{port}");
    let sender = std::thread::spawn(move || {
        let mut chain = RpcChain::connect_with(&proxied, anvil_dev_keys(), config).unwrap();
        chain.deploy(addr(0), &TestToken::BYTECODE, &[])
    });
    // The first answer was lost; the retry's (a refusal: the node holds the transaction)
    // reached the sender before anything is mined.
    for _ in 0..3000 {
        if sends.load(Ordering::SeqCst) >= 2 || sender.is_finished() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _: serde_json::Value = raw(&url, "evm_mine", serde_json::json!([]));
    let token = sender.join().unwrap().unwrap();
    assert_eq!(
        sends.load(Ordering::SeqCst),
        2,
        "one answer lost, its retry answered"
    );
    let mut chain = rpc(&node);
    assert_eq!(chain.nonce(addr(0)).unwrap(), 1, "deployed once");
    assert!(!chain.code(token).unwrap().is_empty());
}
