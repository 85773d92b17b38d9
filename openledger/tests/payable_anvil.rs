//! The whole Payable-AI loop settled on a real node (anvil 1.7.1 on a free loopback port) over
//! JSON-RPC, against the same loop on the embedded EVM with the same keys: the same report (every
//! amount, signature, root, proof length and gas figure), every token balance to the wei, and the
//! same events in the same order.
//!
//! Needs anvil (`bash scripts/install-foundry.sh`); without it the test says so and passes,
//! unless `OPENLEDGER_REQUIRE_ANVIL=1` (set by the test scripts), where it fails.
#![cfg(feature = "rpc")]

use openledger::chain::ChainError;
use openledger::chain::anvil::{self, Anvil};
use openledger::chain::bindings::TestToken;
use openledger::chain::chain::{Chain, ChainExt, LogFilter};
use openledger::chain::deploy::{DeployConfig, Deployment, DeploymentFile};
use openledger::chain::evm::EmbeddedChain;
use openledger::chain::rpc::{RpcChain, anvil_dev_keys};
use openledger::core::Address;
use openledger::payable::{EpochReport, LoopConfig, LoopError, PayableAi, Report};

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

    same_balances_and_events(&mut local, &mut remote, epoch);
}

/// Every account the loop paid or charged, and the contracts, hold the same tokens on both
/// chains, to the wei, and both chains hold the same events in the same order.
fn same_balances_and_events(local: &mut PayableAi, remote: &mut PayableAi, epoch: &EpochReport) {
    let d = *local.deployment();
    let mut accounts: Vec<Address> = epoch.contributors.iter().map(|c| c.account).collect();
    accounts.extend((0..10).filter_map(|i| local.account(i)));
    accounts.extend([d.payments, d.rewards]);
    for a in accounts {
        let q = TestToken::balanceOfCall { account: a };
        assert_eq!(
            local.chain().view(d.token, &q).unwrap(),
            remote.chain().view(d.token, &q).unwrap(),
            "token balance of {a}"
        );
    }
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

/// A chain that refuses every transaction once `sends` are spent, as a process that dies (or
/// loses its node) part of the way through would leave it: nothing after that is sent.
struct DiesAfter {
    inner: RpcChain,
    sends: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Chain for DiesAfter {
    fn chain_id(&self) -> u64 {
        self.inner.chain_id()
    }
    fn send_transaction(
        &mut self,
        tx: openledger::chain::chain::TxRequest,
    ) -> Result<openledger::chain::evm::TxOutcome, ChainError> {
        use std::sync::atomic::Ordering;
        let left = self.sends.load(Ordering::SeqCst);
        if left == 0 {
            return Err(ChainError::Rpc {
                method: "eth_sendRawTransaction".into(),
                reason: "the process died".into(),
            });
        }
        self.sends.store(left - 1, Ordering::SeqCst);
        self.inner.send_transaction(tx)
    }
    fn call(
        &mut self,
        from: Address,
        to: Address,
        calldata: alloy_primitives::Bytes,
    ) -> Result<openledger::chain::evm::TxOutcome, ChainError> {
        self.inner.call(from, to, calldata)
    }
    fn balance(&mut self, a: Address) -> Result<alloy_primitives::U256, ChainError> {
        self.inner.balance(a)
    }
    fn nonce(&mut self, a: Address) -> Result<u64, ChainError> {
        self.inner.nonce(a)
    }
    fn code(&mut self, a: Address) -> Result<alloy_primitives::Bytes, ChainError> {
        self.inner.code(a)
    }
    fn head(&mut self) -> Result<openledger::chain::chain::Head, ChainError> {
        self.inner.head()
    }
    fn logs(
        &mut self,
        f: &LogFilter,
    ) -> Result<Vec<openledger::chain::chain::ChainLog>, ChainError> {
        self.inner.logs(f)
    }
    fn dev(&mut self) -> Result<&mut dyn openledger::chain::chain::DevControls, ChainError> {
        self.inner.dev()
    }
}

/// A process dies part of the way through the payments; a new process on the same deployment
/// resumes from the chain itself: the datanet, the grants, the adapters and the payments already
/// made are read back (logs and views) and not done again, the rest is paid in the same epoch,
/// and every balance and event equals an uninterrupted run's.
#[test]
fn a_new_process_resumes_the_epoch_from_the_chain() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let Some(node) = anvil_node(&dir.path().join("anvil-state.json")) else {
        return;
    };
    let config = LoopConfig::quick(dir.path().to_path_buf());
    let embedded = Box::new(EmbeddedChain::with_dev_keys(31337, anvil_dev_keys()));
    let (want, mut local) = run(
        PayableAi::on_chain(config.clone(), embedded, anvil_dev_keys()).unwrap(),
        || {},
    );
    let n = want.requests.len();
    assert!(n >= 4, "{n} requests");
    assert!(
        want.requests[2].adapter.contains('+'),
        "the third request is the ensemble's"
    );

    let mut rpc = RpcChain::connect(&node.url(), anvil_dev_keys()).unwrap();
    let at = |i: usize| Address::from_private_key(&anvil_dev_keys()[i]);
    let deploy = DeployConfig::with_accounts([at(0), at(1), at(2), at(3)]);
    let file = Deployment::deploy_recorded(&mut rpc, &deploy).unwrap();
    drop(rpc);

    // The first process: every stage up to the payments, then it dies after the payer's mint
    // and approval and three payments (the third, the ensemble's, with payForEnsemble).
    let sends = std::sync::Arc::new(AtomicUsize::new(usize::MAX));
    let chain = DiesAfter {
        inner: RpcChain::connect(&node.url(), anvil_dev_keys()).unwrap(),
        sends: sends.clone(),
    };
    let mut first =
        PayableAi::on_deployment(config.clone(), Box::new(chain), anvil_dev_keys(), &file).unwrap();
    let mut on = |_: &openledger::payable::LoopEvent| {};
    first.publish_datanet(&mut on).unwrap();
    first.fine_tune(&mut on).unwrap();
    first.serve(&mut on).unwrap();
    sends.store(2 + 3, Ordering::SeqCst);
    match first.attribute_and_pay(&mut on) {
        Err(LoopError::Chain(ChainError::Rpc { reason, .. })) => {
            assert_eq!(reason, "the process died")
        }
        other => panic!("{:?}", other.err()),
    }
    drop(first);

    // The second process, on a fresh connection: resumes.
    let rpc = RpcChain::connect(&node.url(), anvil_dev_keys()).unwrap();
    let second = PayableAi::on_deployment(config, Box::new(rpc), anvil_dev_keys(), &file).unwrap();
    let (got, mut remote) = run(second, || {});
    let r = &got.resumed;
    assert!(r.datanet, "the datanet was found");
    assert_eq!(r.models, want.adapters.len(), "every adapter was found");
    assert_eq!(r.payments, 3, "the three payments made were found");
    assert!(!r.root && r.claims == 0);
    for (i, (a, b)) in want.requests.iter().zip(&got.requests).enumerate() {
        assert_eq!(
            (
                &a.inference_id,
                &a.fee_wei,
                &a.data_pool_wei,
                &a.owner_share_wei,
                &a.owner_shares_wei,
                &a.pool_parts,
            ),
            (
                &b.inference_id,
                &b.fee_wei,
                &b.data_pool_wei,
                &b.owner_share_wei,
                &b.owner_shares_wei,
                &b.pool_parts,
            ),
            "request {i}"
        );
        assert_eq!(b.pay_gas == 0, i < 3, "request {i} paid once");
    }
    assert_eq!(got.epoch, want.epoch, "the epoch: root, claims, balances");

    // Every balance, to the wei, and the same events in the same order: nothing was done twice.
    same_balances_and_events(&mut local, &mut remote, got.epoch.as_ref().unwrap());
}
