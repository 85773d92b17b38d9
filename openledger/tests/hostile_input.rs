//! Hostile input: no size a caller picks can kill or wedge the process, tampered files and
//! signatures are refused, inconsistent input is not served, and every refusal names its
//! culprit. One test per finding of the hostile-input review; each fails on the code before it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use openledger::chain::evm::EmbeddedChain;
use openledger::chain::receipt::{
    OperatorSigner, parse_signature, receipt_domain, recover_signer, weights_hash,
};
use openledger::chain::standard::StandardMerkleTree;
use openledger::chain::{ChainError, bindings::InferencePayments::AttributionReceipt};
use openledger::core::error::{Classify, ErrorKind};
use openledger::core::{Address, B256, ContentId, U256};
use openledger::lora::adapter::base::BaseModel;
use openledger::lora::adapter::{LoadOptions, LoraAdapter};
use openledger::lora::model::{Model, ModelError, ServeOptions, ServedError, ServedModel};
use openledger::lora::pool::AdapterId;
use openledger::lora::serve::{Event, Request, SamplingParams};
use openledger::poa::PoaError;
use openledger::poa::influence::Scores;
use openledger::poa::projection::{MAX_SKETCH_DIM, Projection, ProjectionKind};
use openledger::poa::rag::{RagIndex, Similarity};
use openledger::poa::store::{FeatureStore, FeatureStoreWriter, StoreConfig, TrainingExample};
use openledger::train::{Example, LoraSettings, TrainConfig, TrainError, Trainer};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

/// Runs `f` on a thread and fails the test if it has not returned within `secs`: a call that
/// hangs is a finding, not a stuck test run.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("the call did not return in time")
}

#[test]
fn a_huge_k_returns_every_citation_without_allocating_for_more() {
    let mut index = RagIndex::new(4, Similarity::Cosine).unwrap();
    for i in 0..3u8 {
        let e = [1.0, f32::from(i), 0.5, 0.0];
        index
            .add(ContentId::of([i]), Address::repeat_byte(i), "r", &e)
            .unwrap();
    }
    for k in [1_000_000_000, usize::MAX / 2, usize::MAX] {
        let hits = within(5, move || index_search(k));
        assert_eq!(hits, 3, "k = {k}");
    }
    fn index_search(k: usize) -> usize {
        let mut index = RagIndex::new(2, Similarity::Cosine).unwrap();
        for i in 0..3u8 {
            index
                .add(
                    ContentId::of([i]),
                    Address::repeat_byte(i),
                    "r",
                    &[1.0, f32::from(i)],
                )
                .unwrap();
        }
        index.search(&[1.0, 1.0], k).unwrap().len()
    }
    assert_eq!(
        index
            .search(&[1.0, 0.0, 0.0, 0.0], usize::MAX)
            .unwrap()
            .len(),
        3
    );
}

fn store_with(dir: &Path, n: usize) -> (PathBuf, StoreConfig) {
    let path = dir.join("s.olfs");
    let cfg = StoreConfig::new(
        Projection::new(ProjectionKind::Rademacher, 3, 16, 8).unwrap(),
        vec![0.5, 0.25],
        openledger::poa::store::FeatureDType::F32,
    )
    .unwrap();
    let mut w = FeatureStoreWriter::create(&path, cfg.clone()).unwrap();
    for i in 0..n {
        w.append(&TrainingExample {
            record: ContentId::of([i as u8]),
            contributor: Address::repeat_byte(i as u8),
            gradients: vec![vec![i as f32 + 1.0; 16]; 2],
        })
        .unwrap();
    }
    (path, cfg)
}

#[test]
fn top_k_refuses_nan_scores_and_scores_of_another_length() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = store_with(dir.path(), 3);
    let store = FeatureStore::open(&path).unwrap();
    let nan = Scores {
        values: vec![0.5, f32::NAN, 1.0],
    };
    assert!(matches!(
        nan.top_k(&store, 2),
        Err(PoaError::NonFinite { index: 1, .. })
    ));
    let short = Scores { values: vec![1.0] };
    assert!(matches!(
        short.top_k(&store, 1),
        Err(PoaError::DimensionMismatch { .. })
    ));
    let ok = Scores {
        values: vec![0.5, 2.0, 1.0],
    };
    let top = ok.top_k(&store, usize::MAX).unwrap();
    assert_eq!(top.iter().map(|r| r.index).collect::<Vec<_>>(), [1, 2, 0]);
}

#[test]
fn a_sketch_past_the_sketch_limit_is_refused_before_anything_runs() {
    for (p, k) in [(1_000_000, 1_000_000), (1 << 20, MAX_SKETCH_DIM + 1)] {
        let e = Projection::new(ProjectionKind::Rademacher, 0, p, k).unwrap_err();
        assert!(
            matches!(e, PoaError::InvalidConfig { .. }),
            "{p} → {k}: {e}"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
    assert!(Projection::new(ProjectionKind::Gaussian, 0, 1 << 20, MAX_SKETCH_DIM).is_ok());
    assert!(Projection::new(ProjectionKind::Identity, 0, 1_000_000, 1_000_000).is_ok());
}

fn trainer(
    r: usize,
    alpha: f64,
    cfg: impl FnOnce(&mut TrainConfig),
) -> Result<Trainer, TrainError> {
    let model = Model::from_dir(&fixture()).unwrap();
    let mut c = TrainConfig::new(LoraSettings::new(&["q_proj", "v_proj"], r, alpha));
    c.steps = 3;
    c.batch_size = 2;
    cfg(&mut c);
    Trainer::new(&model, c)
}

#[test]
fn trainer_sizes_are_checked_against_the_model_and_the_memory_budget() {
    let data = vec![Example::prompt_response(&[1, 10, 7], &[100]); 4];
    // A batch whose activations would pass the budget is refused before it is built.
    let mut t = trainer(4, 8.0, |c| c.batch_size = 1_000_000).unwrap();
    let e = within(10, move || t.train(&data, &[], &mut |_| {}).unwrap_err());
    assert!(
        matches!(
            e,
            TrainError::InvalidConfig {
                field: "batch_size",
                ..
            }
        ),
        "{e}"
    );
    // Generation past the model's context (max_position_embeddings) is refused at once.
    let t = trainer(4, 8.0, |_| {}).unwrap();
    let e = within(10, move || t.greedy(&[1, 2, 3], 1_000_000_000).unwrap_err());
    assert!(e.to_string().contains("max_position_embeddings"), "{e}");
    let model = Model::from_dir(&fixture()).unwrap();
    let e = within(10, move || {
        model.greedy(None, &[1, 2], 1_000_000_000).unwrap_err()
    });
    assert!(matches!(e, ModelError::InvalidArgument { .. }), "{e}");
    // A rank past a module's full rank is refused (the tiny llama's q_proj is 64 × 64).
    let e = trainer(1_000_000, 8.0, |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::InvalidConfig {
                field: "lora.r",
                ..
            }
        ) && e.to_string().contains("64"),
        "{e}"
    );
    // An alpha whose scale is infinite in f32 is refused.
    assert!(trainer(4, 1e308, |_| {}).is_err());
}

#[test]
fn a_learning_rate_that_blows_training_up_stops_it_with_a_typed_error() {
    let data: Vec<Example> = (0..8)
        .map(|k| Example::prompt_response(&[1, 10 + k, 7], &[100 + k % 5]))
        .collect();
    // A learning rate past 1 is refused outright; one at 1 blows the factors up within steps.
    let e = trainer(4, 8.0, |c| c.learning_rate = 1e30).unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::InvalidConfig {
                field: "learning_rate",
                ..
            }
        ),
        "{e}"
    );
    // A run whose factors have blown up (here set past f16's range, where no converging run
    // goes) stops with a typed error at the next step, before its update.
    let mut t = trainer(4, 8.0, |c| c.steps = 6).unwrap();
    let blown: Vec<f32> = t.parameters().unwrap().iter().map(|_| 1e5).collect();
    t.set_parameters(&blown).unwrap();
    let e = t.train(&data, &[], &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::Diverged { .. } | TrainError::NonFinite { .. }
        ),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Training);
    assert_eq!(
        t.parameters().unwrap(),
        blown,
        "the diverged step was not applied"
    );
}

#[cfg(unix)]
#[test]
fn adapter_and_model_files_must_be_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture().join("adapters/qv-r4");
    // adapter_model.safetensors → /dev/zero: refused from its metadata, nothing read.
    let zero = dir.path().join("zero");
    std::fs::create_dir(&zero).unwrap();
    std::fs::copy(
        src.join("adapter_config.json"),
        zero.join("adapter_config.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", zero.join("adapter_model.safetensors")).unwrap();
    let e = within(10, move || {
        LoraAdapter::from_dir(&zero, &LoadOptions::default()).unwrap_err()
    });
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // A FIFO: opening one would wait for a writer.
    let fifo_dir = dir.path().join("fifo");
    std::fs::create_dir(&fifo_dir).unwrap();
    std::fs::copy(
        src.join("adapter_config.json"),
        fifo_dir.join("adapter_config.json"),
    )
    .unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(fifo_dir.join("adapter_model.safetensors"))
        .status()
        .unwrap();
    assert!(status.success());
    let e = within(10, move || {
        LoraAdapter::from_dir(&fifo_dir, &LoadOptions::default()).unwrap_err()
    });
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // A directory where config.json should be.
    let model = dir.path().join("model");
    std::fs::create_dir_all(model.join("config.json")).unwrap();
    let e = Model::from_dir(&model).unwrap_err();
    assert!(e.to_string().contains("directory"), "{e}");
}

#[test]
fn merkle_dumps_must_show_every_leaf_exactly_once() {
    let values: Vec<Vec<openledger::chain::DynSolValue>> = (1..=4u64)
        .map(|i| vec![openledger::chain::DynSolValue::Uint(U256::from(i), 256)])
        .collect();
    let tree = StandardMerkleTree::of(values, &["uint256"], Default::default()).unwrap();
    let dump = tree.dump();
    assert!(StandardMerkleTree::load(dump.clone()).is_ok());
    let mut hidden = dump.clone();
    hidden.values.pop();
    let e = StandardMerkleTree::load(hidden).unwrap_err();
    assert!(
        e.to_string().contains("3 values for a tree of 4 leaves"),
        "{e}"
    );
    let mut none = dump.clone();
    none.values.clear();
    assert!(StandardMerkleTree::load(none).is_err());
    let mut twice = dump;
    twice.values[1] = twice.values[0].clone();
    let e = StandardMerkleTree::load(twice).unwrap_err();
    assert!(matches!(e, ChainError::InconsistentDump(_)), "{e}");
}

#[test]
fn feature_stores_refuse_to_be_emptied_and_catch_edits() {
    let dir = tempfile::tempdir().unwrap();
    let (path, cfg) = store_with(dir.path(), 3);
    // Creating over an existing store is refused; the store keeps its rows.
    let e = FeatureStoreWriter::create(&path, cfg.clone()).unwrap_err();
    assert!(
        matches!(&e, PoaError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{e}"
    );
    assert_eq!(FeatureStore::open(&path).unwrap().len(), 3);
    let original = std::fs::read(&path).unwrap();
    // The count (byte 40), a learning rate (byte 64) and a feature (the last byte) edited.
    for at in [40, 64, original.len() - 1] {
        let mut bytes = original.clone();
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = FeatureStore::open(&path).unwrap_err();
        assert!(
            matches!(e, PoaError::Checksum { .. } | PoaError::Truncated { .. }),
            "byte {at}: {e}"
        );
    }
    std::fs::write(&path, &original).unwrap();
    assert_eq!(FeatureStore::open(&path).unwrap().len(), 3);
    // Replacing is explicit.
    FeatureStoreWriter::replace(&path, cfg).unwrap();
    assert_eq!(FeatureStore::open(&path).unwrap().len(), 0);
    // A directory is named as one.
    let e = FeatureStore::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("directory"), "{e}");
}

#[test]
fn signatures_off_chain_follow_what_ecdsa_sol_accepts() {
    let signer = OperatorSigner::from_bytes(&B256::repeat_byte(7)).unwrap();
    let domain = receipt_domain(31337, Address::repeat_byte(9));
    let receipt = AttributionReceipt {
        inferenceId: B256::repeat_byte(1),
        modelId: B256::repeat_byte(2),
        adapterIds: vec![],
        payer: Address::repeat_byte(3),
        amount: U256::from(1000),
        epoch: 1,
        weightsHash: B256::repeat_byte(4),
    };
    let sig = signer.sign(&receipt, &domain).unwrap();
    let bytes = sig.as_bytes();
    assert!(bytes[64] == 27 || bytes[64] == 28);
    let parsed = parse_signature(&bytes).unwrap();
    assert_eq!(
        recover_signer(&receipt, &domain, &parsed).unwrap(),
        signer.address()
    );
    // v ∈ {0, 1} is refused, as ecrecover refuses it.
    let mut v01 = bytes;
    v01[64] -= 27;
    assert!(
        parse_signature(&v01)
            .unwrap_err()
            .to_string()
            .contains("27 or 28")
    );
    // The high-s twin of a valid signature recovers the same signer but is refused.
    let n = U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )
    .unwrap();
    let high = alloy_primitives::Signature::new(sig.r(), n - sig.s(), !sig.v());
    let e = recover_signer(&receipt, &domain, &high).unwrap_err();
    assert!(e.to_string().contains("high-s"), "{e}");
    let mut high_bytes = high.as_bytes();
    high_bytes[64] = 27 + u8::from(high.v());
    assert!(parse_signature(&high_bytes).is_err());
    // An invalid key says what is wrong with it.
    let e = OperatorSigner::from_bytes(&B256::ZERO).unwrap_err();
    assert!(e.to_string().contains("secp256k1 scalar"), "{e}");
}

#[test]
fn duplicate_weights_and_chain_overflows_are_refused() {
    let w = [
        (B256::repeat_byte(1), U256::from(1)),
        (B256::repeat_byte(1), U256::from(2)),
    ];
    assert!(matches!(
        weights_hash(&w),
        Err(ChainError::DuplicateWeight { .. })
    ));
    let mut chain = EmbeddedChain::new(31337);
    let a = Address::repeat_byte(0x42);
    chain.fund(a, U256::MAX).unwrap();
    assert!(matches!(
        chain.fund(a, U256::from(1)),
        Err(ChainError::Overflow { .. })
    ));
    assert_eq!(chain.balance(a), U256::MAX);
    let (t, n) = (chain.timestamp(), chain.block_number());
    assert!(matches!(
        chain.advance_time(u64::MAX),
        Err(ChainError::Overflow { .. })
    ));
    assert_eq!((chain.timestamp(), chain.block_number()), (t, n));
}

#[test]
fn model_configs_must_match_their_weights() {
    let dir = tempfile::tempdir().unwrap();
    let copy = |to: &Path, edit: &dyn Fn(&mut serde_json::Value)| {
        std::fs::create_dir_all(to).unwrap();
        std::fs::copy(
            fixture().join("model.safetensors"),
            to.join("model.safetensors"),
        )
        .unwrap();
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture().join("config.json")).unwrap()).unwrap();
        edit(&mut cfg);
        std::fs::write(to.join("config.json"), cfg.to_string()).unwrap();
    };
    // One layer fewer than the weights hold.
    let fewer = dir.path().join("fewer");
    copy(&fewer, &|c| c["num_hidden_layers"] = 1.into());
    let e = Model::from_dir(&fewer).unwrap_err();
    assert!(e.to_string().contains("num_hidden_layers"), "{e}");
    let e = BaseModel::from_dir(&fewer).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ModelFormat, "{e}");
    // Negative and absurd sizes.
    for (key, v) in [("hidden_size", -64i64), ("vocab_size", 1i64 << 40)] {
        let bad = dir.path().join(key);
        copy(&bad, &|c| c[key] = v.into());
        let e = BaseModel::from_dir(&bad).unwrap_err();
        assert!(e.to_string().contains(key), "{e}");
    }
    // A vocabulary that disagrees with the embedding.
    let vocab = dir.path().join("vocab");
    copy(&vocab, &|c| c["vocab_size"] = 321.into());
    assert!(BaseModel::from_dir(&vocab).is_err());
    // Adapter configs whose scale is infinite in f32.
    let cfg =
        br#"{"peft_type": "LORA", "r": 4, "lora_alpha": 1e308, "target_modules": ["q_proj"]}"#;
    let weights =
        std::fs::read(fixture().join("adapters/qv-r4/adapter_model.safetensors")).unwrap();
    let e = LoraAdapter::from_bytes(cfg, &weights, &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("lora_alpha"), "{e}");
}

#[test]
fn an_adapter_serving_requests_is_not_replaced_under_them() {
    let options = ServeOptions {
        max_context: 64,
        block_size: 4,
        ..ServeOptions::default()
    };
    let served = Arc::new(ServedModel::load(&fixture(), None, &options, &mut |_| {}).unwrap());
    let qv = Arc::new(
        LoraAdapter::from_dir(&fixture().join("adapters/qv-r4"), &LoadOptions::default()).unwrap(),
    );
    let other = Arc::new(
        LoraAdapter::from_dir(
            &fixture().join("adapters/attn-patterns"),
            &LoadOptions::default(),
        )
        .unwrap(),
    );
    let id = AdapterId::new("mine").unwrap();
    served.attach(id.clone(), qv).unwrap();
    // A request for "mine" whose first event holds the engine thread inside a step.
    let (open, gate) = mpsc::channel::<()>();
    let (events_tx, events) = mpsc::channel();
    let mut first = true;
    served
        .submit_with_callback(
            Request {
                prompt: vec![1, 17, 42],
                adapter: Some(id.clone()),
                sampling: SamplingParams {
                    max_new_tokens: 20,
                    ..Default::default()
                },
            },
            move |e: &Event| {
                if std::mem::take(&mut first) {
                    let _ = gate.recv();
                }
                let _ = events_tx.send(e.clone());
            },
        )
        .unwrap();
    // Attach again from another thread while the request runs, then let the step finish.
    let (s2, id2, other2) = (served.clone(), id.clone(), other.clone());
    let attach = std::thread::spawn(move || s2.attach(id2, other2));
    std::thread::sleep(Duration::from_millis(100));
    open.send(()).unwrap();
    let e = attach.join().unwrap().unwrap_err();
    assert!(
        matches!(e, ServedError::AdapterInUse { requests: 1, .. }),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::State);
    // The request ends on the adapter it started with; then the id can be attached again.
    let n = events
        .iter()
        .filter(|e| matches!(e, Event::Token { .. }))
        .count();
    assert_eq!(n, 20);
    served.attach(id, other).unwrap();
}
