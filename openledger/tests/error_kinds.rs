//! One classification of every error: real failures of each layer, and the kind each binding
//! maps to its own error class (`Classify::kind`).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use openledger::chain::abi::ContractAbi;
use openledger::chain::evm::EmbeddedChain;
use openledger::chain::receipt::OperatorSigner;
use openledger::chain::standard::StandardMerkleTree;
use openledger::core::datanet::Datanet;
use openledger::core::error::{Classify, ErrorKind};
use openledger::core::grant::Grants;
use openledger::core::trainlog::TrainLog;
use openledger::core::{Address, B256, ContentId, U256};
use openledger::lora::adapter::base::BaseModel;
use openledger::lora::adapter::{LoadOptions, LoraAdapter};
use openledger::lora::model::{Model, SeqInput};
use openledger::lora::pool::{AdapterId, AdapterPool, HubDir};
use openledger::payable::{LoopConfig, PayableAi};
use openledger::poa::split::{ZeroWeightPolicy, split_weights};
use openledger::poa::store::FeatureStore;
use openledger::train::{LoraSettings, TrainConfig, Trainer};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

fn kind<T: std::fmt::Debug, E: Classify>(r: Result<T, E>) -> ErrorKind {
    r.map(|v| panic!("expected an error, got {v:?}"))
        .unwrap_err()
        .kind()
}

#[test]
fn core_errors_have_their_kind() {
    assert_eq!(kind(ContentId::from_str("0x12")), ErrorKind::InvalidId);
    let mut net = Datanet::new("d");
    assert_eq!(
        kind(net.import_jsonl(&b"{not json"[..])),
        ErrorKind::InvalidArgument
    );
    assert_eq!(kind(net.version(3)), ErrorKind::UnknownId);
    assert_eq!(kind(TrainLog::from_bytes(b"OLTLOG0")), ErrorKind::Integrity);
    let missing = std::env::temp_dir().join("openledger-no-such-log");
    let e = TrainLog::load(&missing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(e.io_source().map(|(p, _)| p), Some(missing.as_path()));
    let mut grants = Grants::new();
    let (owner, stranger) = (Address::repeat_byte(1), Address::repeat_byte(2));
    let id = grants.register_datanet(owner);
    assert_eq!(
        kind(grants.approve(id, stranger, stranger)),
        ErrorKind::AccessDenied
    );
    assert_eq!(kind(grants.check(id, stranger)), ErrorKind::AccessDenied);
    assert_eq!(
        kind(grants.approve(U256::from(99), owner, stranger)),
        ErrorKind::UnknownId
    );
}

#[test]
fn adapter_pool_and_model_errors_have_their_kind() {
    let adapters = fixture().join("adapters");
    let opts = LoadOptions::default();
    let e = LoraAdapter::from_dir(&adapters.join("nope"), &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.io_source().is_some());
    assert_eq!(
        kind(LoraAdapter::from_bytes(b"{", b"", &opts)),
        ErrorKind::AdapterFormat
    );
    assert_eq!(kind(AdapterId::new("../escape")), ErrorKind::InvalidId);
    let pool: AdapterPool = AdapterPool::new(1 << 20);
    let hub = HubDir::open(&adapters).unwrap();
    pool.register_hub(&hub).unwrap();
    assert_eq!(kind(pool.register_hub(&hub)), ErrorKind::State);
    assert_eq!(
        kind(pool.get(&AdapterId::new("nope").unwrap())),
        ErrorKind::UnknownId
    );
    assert_eq!(
        kind(HubDir::open(Path::new("/no/such/hub"))),
        ErrorKind::NotFound
    );
    // A 128-wide q_proj adapter does not fit the 64-wide tiny llama.
    let mut b = openledger::lora::adapter::build::AdapterBuilder::new(
        openledger::lora::adapter::config::ConfigSpec::new(2, 4.0, &["q_proj"]),
    );
    b.random_lora("model.layers.0.self_attn.q_proj", 128, 64, 2, 3);
    let wide = b.build(&opts).unwrap();
    let base = BaseModel::from_dir(&fixture()).unwrap();
    assert_eq!(kind(base.validate(&wide)), ErrorKind::BaseMismatch);
    assert_eq!(
        kind(Model::from_dir(Path::new("/no/such/model"))),
        ErrorKind::NotFound
    );
    let model = Model::from_dir(&fixture()).unwrap();
    let oov = [SeqInput {
        adapter: None,
        tokens: &[1, 100_000],
    }];
    assert_eq!(kind(model.forward(&oov)), ErrorKind::InvalidArgument);
    let mut attached = model.clone();
    assert_eq!(
        kind(attached.attach_adapter("wide", &wide)),
        ErrorKind::BaseMismatch
    );
    let zero_rank = TrainConfig::new(LoraSettings::new(&["q_proj"], 0, 1.0));
    assert_eq!(
        kind(Trainer::new(&model, zero_rank)),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn attribution_and_chain_errors_have_their_kind() {
    let (a, b) = (Address::repeat_byte(1), Address::repeat_byte(2));
    let dup = [(a, U256::from(1)), (a, U256::from(2))];
    assert_eq!(
        kind(split_weights(
            U256::from(10),
            &dup,
            ZeroWeightPolicy::Reject
        )),
        ErrorKind::Split
    );
    let none = [(a, U256::ZERO), (b, U256::ZERO)];
    assert_eq!(
        kind(split_weights(
            U256::from(10),
            &none,
            ZeroWeightPolicy::Reject
        )),
        ErrorKind::Split
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.olfs");
    std::fs::write(&junk, b"not a feature store at all, not even close").unwrap();
    assert_eq!(kind(FeatureStore::open(&junk)), ErrorKind::FeatureStore);
    assert_eq!(
        kind(FeatureStore::open(dir.path().join("none"))),
        ErrorKind::NotFound
    );

    assert_eq!(kind(StandardMerkleTree::from_json("{}")), ErrorKind::Merkle);
    assert_eq!(kind(ContractAbi::named("Nope")), ErrorKind::Abi);
    let rewards = ContractAbi::named("AttributionRewards").unwrap();
    assert_eq!(kind(rewards.encode_call("claim", &[])), ErrorKind::Abi);
    assert_eq!(
        kind(OperatorSigner::from_bytes(&B256::ZERO)),
        ErrorKind::Signature
    );
    let mut chain = EmbeddedChain::new(31337);
    let pauper = Address::repeat_byte(0x77);
    assert_eq!(
        kind(chain.transact(pauper, Address::repeat_byte(1), Default::default())),
        ErrorKind::Transaction
    );
}

#[test]
fn the_loop_refuses_bad_configs_and_stages_out_of_order_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = LoopConfig::quick(dir.path().to_path_buf());
    bad.max_new_tokens = 0;
    let e = bad.validate().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("max_new_tokens"), "{e}");
    assert_eq!(
        kind(PayableAi::new(bad).map(|_| ())),
        ErrorKind::InvalidArgument
    );
    for change in [
        (|c: &mut LoopConfig| c.batch_size = 0) as fn(&mut LoopConfig),
        |c| c.rag_top_k = 0,
        |c| c.learning_rate = f64::NAN,
        |c| c.rag_temperature = 0.0,
        |c| c.influence_bps = 10_001,
        |c| c.checkpoints = c.steps + 1,
        |c| c.work_dir = PathBuf::new(),
    ] {
        let mut c = LoopConfig::quick(dir.path().to_path_buf());
        change(&mut c);
        assert_eq!(kind(c.validate()), ErrorKind::InvalidArgument);
    }
    assert!(
        LoopConfig::quick(dir.path().to_path_buf())
            .validate()
            .is_ok()
    );
    let mut run = PayableAi::new(LoopConfig::quick(dir.path().to_path_buf())).unwrap();
    assert_eq!(
        kind(run.serve(&mut |_| {}).map(|_| ())),
        ErrorKind::OutOfOrder
    );
}
