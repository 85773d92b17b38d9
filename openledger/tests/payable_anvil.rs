//! The whole Payable-AI loop settled on a real node (anvil 1.7.1 on a free loopback port) over
//! JSON-RPC, against the same loop on the embedded EVM with the same keys: the same report (every
//! amount, signature, root, proof length and gas figure), every token balance to the wei, and the
//! same events in the same order.
//!
//! Needs anvil (`bash scripts/install-foundry.sh`); without it the test says so and passes,
//! unless `OPENLEDGER_REQUIRE_ANVIL=1` (set by the test scripts), where it fails.
#![cfg(feature = "rpc")]

use openledger::chain::anvil::{self, Anvil};
use openledger::chain::bindings::TestToken;
use openledger::chain::chain::{Chain, ChainExt, LogFilter};
use openledger::chain::deploy::{DeployConfig, Deployment, DeploymentFile};
use openledger::chain::evm::EmbeddedChain;
use openledger::chain::rpc::{RpcChain, anvil_dev_keys};
use openledger::core::Address;
use openledger::payable::{LoopConfig, LoopError, PayableAi, Report};

/// Anvil keeping its chain in `state` across restarts, with the embedded chain's genesis time
/// (so both runs see the same clock from the start).
fn anvil_node(state: &std::path::Path) -> Option<Anvil> {
    let state = state.to_str().expect("a UTF-8 path");
    anvil::spawn_or_skip(&["--timestamp", "1700000000", "--state", state])
}

/// Every stage; `between` runs after the payments, before the epoch closes.
fn run(mut l: PayableAi, between: impl FnOnce()) -> (Report, PayableAi) {
    let mut on = |_: &openledger::payable::LoopEvent| {};
    l.publish_datanet(&mut on).unwrap();
    l.fine_tune(&mut on).unwrap();
    l.serve(&mut on).unwrap();
    l.attribute_and_pay(&mut on).unwrap();
    between();
    l.close_epoch(&mut on).unwrap();
    // Wall-clock figures are the only ones allowed to differ.
    let mut r = l.report().clone();
    r.seconds.clear();
    for a in &mut r.adapters {
        a.train_seconds = 0.0;
    }
    if let Some(s) = &mut r.serving {
        s.seconds = 0.0;
    }
    (r, l)
}

/// The node is stopped and restarted (from its state file) between the payments and the epoch
/// close: the loop goes on from the chain as it was, and nothing is paid twice.
#[test]
fn the_loop_on_anvil_pays_what_the_embedded_loop_pays() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut node) = anvil_node(&dir.path().join("anvil-state.json")) else {
        return;
    };
    let config = LoopConfig::quick(dir.path().to_path_buf());
    let embedded = Box::new(EmbeddedChain::with_dev_keys(31337, anvil_dev_keys()));
    let (want, mut local) = run(
        PayableAi::on_chain(config.clone(), embedded, anvil_dev_keys()).unwrap(),
        || {},
    );
    // On anvil the suite is deployed first and written to a deployment file, which the loop
    // then uses (the same deployer and nonces: the same addresses as the embedded run's).
    let mut rpc = RpcChain::connect(&node.url(), anvil_dev_keys()).unwrap();
    let at = |i: usize| Address::from_private_key(&anvil_dev_keys()[i]);
    let deploy = DeployConfig::with_accounts([at(0), at(1), at(2), at(3)]);
    let path = dir.path().join("deployment.json");
    Deployment::deploy_recorded(&mut rpc, &deploy)
        .unwrap()
        .write(&path)
        .unwrap();
    let file = DeploymentFile::read(&path).unwrap();
    // Keys that are not the deployment's roles are refused before anything is sent.
    let mut swapped = anvil_dev_keys();
    swapped.swap(2, 3);
    let rpc2 = RpcChain::connect(&node.url(), anvil_dev_keys()).unwrap();
    match PayableAi::on_deployment(config.clone(), Box::new(rpc2), swapped, &file) {
        Err(LoopError::Config(m)) => {
            assert!(m.contains("key 2 must be the deployment's operator"), "{m}")
        }
        other => panic!("{:?}", other.err()),
    }
    let l = PayableAi::on_deployment(config, Box::new(rpc), anvil_dev_keys(), &file).unwrap();
    let state = dir.path().join("anvil-state.json");
    let state = state.to_str().unwrap();
    // The reloaded chain keeps its own clock (no `--timestamp` this time).
    let (got, mut remote) = run(l, || node.restart_with(&["--state", state]).unwrap());
    let epoch = got.epoch.as_ref().unwrap();
    assert!(epoch.claims_match, "every claim and withdrawal landed");
    assert!(!epoch.contributors.is_empty());
    // The whole report: amounts, receipts' signatures, the root, gas per call.
    if want != got {
        let (a, b) = (
            serde_json::to_value(&want).unwrap(),
            serde_json::to_value(&got).unwrap(),
        );
        for (k, v) in a.as_object().unwrap() {
            assert_eq!(v, &b[k], "report field {k}");
        }
        panic!("the reports differ");
    }

    // Every account the loop paid or charged, and the contracts, to the wei.
    let token = local.deployment().token;
    let d = *local.deployment();
    let mut accounts: Vec<Address> = epoch.contributors.iter().map(|c| c.account).collect();
    accounts.extend((0..10).filter_map(|i| local.account(i)));
    accounts.extend([d.payments, d.rewards]);
    for a in accounts {
        let q = TestToken::balanceOfCall { account: a };
        assert_eq!(
            local.chain().view(token, &q).unwrap(),
            remote.chain().view(token, &q).unwrap(),
            "token balance of {a}"
        );
    }
    // The same events, in the same order.
    let filter = LogFilter {
        addresses: vec![d.token, d.datanets, d.models, d.payments, d.rewards],
        ..LogFilter::default()
    };
    let a: Vec<_> = local.chain().logs(&filter).unwrap();
    let b: Vec<_> = remote.chain().logs(&filter).unwrap();
    assert!(a.len() > 20, "{} events", a.len());
    assert_eq!(
        a.iter().map(|l| &l.log).collect::<Vec<_>>(),
        b.iter().map(|l| &l.log).collect::<Vec<_>>()
    );
}

#[test]
fn the_loop_needs_ten_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = LoopConfig::quick(dir.path().to_path_buf());
    let chain: Box<dyn Chain> = Box::new(EmbeddedChain::new(31337));
    let keys = anvil_dev_keys()[..3].to_vec();
    match PayableAi::on_chain(config, chain, keys) {
        Err(LoopError::Config(m)) => assert!(m.contains("3 keys"), "{m}"),
        other => panic!("{:?}", other.err()),
    }
}
