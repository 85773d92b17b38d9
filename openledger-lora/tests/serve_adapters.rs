//! Adapters in the serving engine, on the tiny llama (fixtures/peft/tiny-llama, greedy
//! references from transformers + PEFT): bad requests in a mixed batch (an adapter made for
//! another base, an unknown adapter, an empty or too long prompt, a token outside the
//! vocabulary) fail alone while the others produce PEFT's tokens; adapters of running requests
//! are pinned in the pool until the last of their requests ends; more distinct adapters than the
//! pool's budget holds are served with the tokens each gives alone while the model's attached
//! memory stays bounded; an adapter still loading does not stall the sequences decoding; and a
//! detached adapter frees its prepared copies and its slot.

mod tiny_llama;

use std::sync::{Arc, Condvar, Mutex};

use openledger_core::DType;
use openledger_lora::adapter::LoadOptions;
use openledger_lora::adapter::build::AdapterBuilder;
use openledger_lora::adapter::config::ConfigSpec;
use openledger_lora::model::PROJECTIONS;
use openledger_lora::model::{Model, PagedModel};
use openledger_lora::pool::{
    AdapterBytes, AdapterId, AdapterPool, AdapterSource, Source, SourceError,
};
use openledger_lora::serve::{
    Engine, EngineConfig, Event, FinishReason, KvDtype, Preemption, RequestError, RequestHandle,
};
use tiny_llama::{fixture, id, peft_greedy, request, sequence};

const NEW_TOKENS: usize = 8;

fn config(paged: &PagedModel, max_running: usize) -> EngineConfig {
    EngineConfig {
        kv_layout: paged.kv_layout(4),
        num_blocks: 64,
        max_tokens_per_step: 64,
        max_running,
        max_context: 32,
        preemption: Preemption::Recompute,
        kv_dtype: KvDtype::F32,
    }
}

fn collect(h: RequestHandle) -> (Vec<u32>, Event) {
    let mut toks = Vec::new();
    for e in h {
        match e {
            Event::Token { token, .. } => toks.push(token),
            t => return (toks, t),
        }
    }
    panic!("the stream ended without a terminal event")
}

fn fixture_adapter_bytes(name: &str) -> AdapterBytes {
    let dir = fixture().join("adapters").join(name);
    AdapterBytes {
        config_json: std::fs::read(dir.join("adapter_config.json")).unwrap(),
        safetensors: std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
    }
}

/// A well-formed PEFT adapter for a base whose hidden size is 96, not the tiny llama's 64.
fn other_base_adapter() -> Source {
    let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["q_proj"]));
    b.random_lora("model.layers.0.self_attn.q_proj", 96, 96, 4, 3);
    Source::bytes(b.config_json().into_bytes(), b.safetensors_bytes().unwrap())
}

/// A rank-4 adapter on every projection of the tiny llama, seeded by `seed`.
fn tiny_adapter(seed: u64) -> AdapterBuilder {
    let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &PROJECTIONS)).with_dtype(DType::F32);
    let shapes = [
        ("self_attn.q_proj", 64, 64),
        ("self_attn.k_proj", 64, 32),
        ("self_attn.v_proj", 64, 32),
        ("self_attn.o_proj", 64, 64),
        ("mlp.gate_proj", 64, 128),
        ("mlp.up_proj", 64, 128),
        ("mlp.down_proj", 128, 64),
    ];
    for l in 0..2 {
        for (k, (name, i, o)) in shapes.iter().enumerate() {
            let module = format!("model.layers.{l}.{name}");
            b.random_lora(&module, *i, *o, 4, seed * 100 + (l * 7 + k) as u64);
        }
    }
    b
}

fn bytes_source(b: &AdapterBuilder) -> Source {
    Source::bytes(b.config_json().into_bytes(), b.safetensors_bytes().unwrap())
}

#[test]
fn bad_requests_in_a_mixed_batch_fail_alone_and_the_others_match_peft() {
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    for name in ["qv-r4", "all-r8-rslora"] {
        pool.register(id(name), Source::Dir(fixture().join("adapters").join(name)))
            .unwrap();
    }
    pool.register(id("other-base"), other_base_adapter())
        .unwrap();
    let paged = PagedModel::with_pool(Model::from_dir(&fixture()).unwrap(), pool.clone());
    let cfg = config(&paged, 16);
    let mut engine = Engine::new(paged, pool.clone(), cfg).unwrap();
    let good = [
        (
            engine.submit(request(sequence(0), None, NEW_TOKENS)),
            "base.0",
        ),
        (
            engine.submit(request(sequence(1), Some("qv-r4"), NEW_TOKENS)),
            "qv-r4.1",
        ),
    ];
    let other_base = engine.submit(request(sequence(2), Some("other-base"), NEW_TOKENS));
    let unknown = engine.submit(request(sequence(0), Some("missing"), NEW_TOKENS));
    let empty = engine.submit(request(vec![], Some("qv-r4"), NEW_TOKENS));
    let too_long = engine.submit(request(vec![1; 32], None, NEW_TOKENS));
    let out_of_vocab = engine.submit(request(vec![1, 320, 5], Some("qv-r4"), NEW_TOKENS));
    let good_after = engine.submit(request(sequence(2), Some("all-r8-rslora"), NEW_TOKENS));
    engine.run_until_idle().unwrap();

    for (h, key) in good {
        assert_eq!(collect(h).0, peft_greedy(key), "{key}");
    }
    assert_eq!(collect(good_after).0, peft_greedy("all-r8-rslora.2"));
    let failure = |h: RequestHandle| match collect(h) {
        (toks, Event::Failed { error, .. }) if toks.is_empty() => error,
        other => panic!("expected a failure, got {other:?}"),
    };
    match failure(other_base) {
        RequestError::AdapterRejected { adapter, reason } => {
            assert_eq!(adapter.as_str(), "other-base");
            assert!(reason.contains("other-base"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    assert!(
        matches!(failure(unknown), RequestError::UnknownAdapter { adapter } if adapter.as_str() == "missing")
    );
    assert_eq!(failure(empty), RequestError::EmptyPrompt);
    assert_eq!(
        failure(too_long),
        RequestError::PromptTooLong {
            len: 32,
            max_context: 32
        }
    );
    assert_eq!(
        failure(out_of_vocab),
        RequestError::TokenOutOfVocab {
            index: 1,
            token: 320,
            vocab_size: 320
        }
    );
    // Nothing is left held or pinned, every block is back, and the refused adapter is not
    // attached.
    assert!(engine.held_adapters().is_empty());
    assert_eq!(pool.stats().pinned_count, 0);
    assert_eq!(engine.kv().free_blocks(), 64);
    assert!(!engine.model().is_attached(&id("other-base")));
}

#[test]
fn an_adapter_is_pinned_while_its_requests_run_and_unpinned_after_the_last() {
    // Room for exactly two of these adapters.
    let size = tiny_adapter(1)
        .build(&LoadOptions::default())
        .unwrap()
        .resident_bytes();
    let pool: AdapterPool = AdapterPool::new(2 * size);
    for k in 1..=3 {
        pool.register(id(&format!("t{k}")), bytes_source(&tiny_adapter(k)))
            .unwrap();
    }
    let paged = PagedModel::with_pool(Model::from_dir(&fixture()).unwrap(), pool.clone());
    let cfg = config(&paged, 4);
    let mut engine = Engine::new(paged, pool.clone(), cfg).unwrap();
    // Loaded before the requests come, so both are admitted at the same step (a load that
    // finished between the two readiness checks of one step would admit only the second).
    pool.get(&id("t1")).unwrap();
    let short = engine.submit(request(sequence(0), Some("t1"), 2));
    let long = engine.submit(request(sequence(1), Some("t1"), 6));
    // Admit and run until both run.
    while engine.held_adapters().is_empty() {
        engine.step().unwrap();
    }
    assert_eq!(engine.held_adapters(), [(id("t1"), 2)]);
    assert_eq!(pool.stats().pinned_count, 1);
    // Loading the two others evicts the unpinned one, never t1.
    pool.get(&id("t2")).unwrap();
    pool.get(&id("t3")).unwrap();
    assert!(pool.is_resident(&id("t1")));
    assert!(!pool.is_resident(&id("t2")));
    while engine.held_adapters() == [(id("t1"), 2)] {
        engine.step().unwrap();
    }
    assert_eq!(collect(short).0.len(), 2);
    assert_eq!(
        engine.held_adapters(),
        [(id("t1"), 1)],
        "the long one holds it"
    );
    assert_eq!(pool.stats().pinned_count, 1);
    engine.run_until_idle().unwrap();
    assert_eq!(collect(long).0.len(), 6);
    assert!(engine.held_adapters().is_empty());
    assert_eq!(pool.stats().pinned_count, 0);
    // Unpinned, t1 is the least recently used and makes room for t2.
    pool.get(&id("t2")).unwrap();
    assert!(!pool.is_resident(&id("t1")));
    assert!(pool.is_resident(&id("t3")));
}

#[test]
fn more_adapters_than_the_budget_holds_give_their_own_tokens_with_bounded_model_memory() {
    const ADAPTERS: u64 = 10;
    const RESIDENT: usize = 3;
    const RUNNING: usize = 2;
    let one = tiny_adapter(1).build(&LoadOptions::default()).unwrap();
    let pool: AdapterPool = AdapterPool::new(RESIDENT * one.resident_bytes());
    let base = Model::from_dir(&fixture()).unwrap();
    // Each adapter's greedy tokens alone, on a model that holds only it.
    let mut alone = Vec::new();
    let prompt = sequence(2);
    for k in 1..=ADAPTERS {
        let b = tiny_adapter(k);
        pool.register(id(&format!("t{k}")), bytes_source(&b))
            .unwrap();
        let mut m = base.clone();
        let slot = m
            .attach_adapter("t", &b.build(&LoadOptions::default()).unwrap())
            .unwrap();
        alone.push(m.greedy(Some(slot), &prompt, 4).unwrap());
    }
    let mut probe = base.clone();
    probe.attach_adapter("t", &one).unwrap();
    let prepared = probe.attached_bytes();
    assert!(prepared > 0);

    let paged = PagedModel::with_pool(base, pool.clone());
    let cfg = config(&paged, RUNNING);
    let mut engine = Engine::new(paged, pool.clone(), cfg).unwrap();
    // Twice round the adapters, so the second round reloads evicted ones.
    let handles: Vec<_> = (0..2 * ADAPTERS)
        .map(|n| {
            let name = format!("t{}", n % ADAPTERS + 1);
            (n, engine.submit(request(prompt.clone(), Some(&name), 4)))
        })
        .collect();
    let mut max_attached = 0;
    while engine.pending() > 0 {
        let r = engine.step().unwrap();
        if r.batch_seqs == 0 && r.ended == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        max_attached = max_attached.max(engine.model().attached_bytes());
    }
    for (n, h) in handles {
        let (toks, end) = collect(h);
        assert!(
            matches!(
                end,
                Event::Finished {
                    reason: FinishReason::MaxNewTokens,
                    ..
                }
            ),
            "{n}: {end:?}"
        );
        assert_eq!(toks, alone[(n % ADAPTERS) as usize], "request {n}");
    }
    let stats = pool.stats();
    assert!(stats.loads > ADAPTERS, "evicted adapters were loaded again");
    assert!(stats.evictions > 0);
    // Attached copies: those the pool holds, plus at most the ones admitted in the step that
    // evicted them.
    assert!(
        max_attached <= (RESIDENT + RUNNING) * prepared,
        "attached {max_attached} > {} × {prepared}",
        RESIDENT + RUNNING
    );
    assert!(engine.model().model().adapter_names().len() <= RESIDENT + RUNNING);
    assert_eq!(stats.pinned_count, 0);
}

/// Serves the fixture's qv-r4 once [`Gate::open`] is called; fetches block until then.
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    bytes: AdapterBytes,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl AdapterSource for Gate {
    fn fetch(&self, _: &AdapterId) -> Result<AdapterBytes, SourceError> {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        Ok(self.bytes.clone())
    }
}

#[test]
fn an_id_registered_again_with_other_weights_serves_the_new_ones() {
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    let dir = |name: &str| Source::Dir(fixture().join("adapters").join(name));
    pool.register(id("x"), dir("qv-r4")).unwrap();
    let paged = PagedModel::with_pool(Model::from_dir(&fixture()).unwrap(), pool.clone());
    let cfg = config(&paged, 4);
    let mut engine = Engine::new(paged, pool.clone(), cfg).unwrap();
    let first = engine.submit(request(sequence(1), Some("x"), NEW_TOKENS));
    engine.run_until_idle().unwrap();
    assert_eq!(collect(first).0, peft_greedy("qv-r4.1"));
    // The engine is idle; "x" now names other weights.
    pool.unregister(&id("x")).unwrap();
    pool.register(id("x"), dir("all-r8-rslora")).unwrap();
    let second = engine.submit(request(sequence(1), Some("x"), NEW_TOKENS));
    engine.run_until_idle().unwrap();
    assert_eq!(collect(second).0, peft_greedy("all-r8-rslora.1"));
    assert_eq!(engine.model().model().adapter_names(), ["x"]);
}

#[test]
fn a_request_whose_adapter_is_loading_waits_while_the_others_decode() {
    let gate = Arc::new(Gate {
        open: Mutex::new(false),
        opened: Condvar::new(),
        bytes: fixture_adapter_bytes("qv-r4"),
    });
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    pool.register(id("qv-r4"), Source::Custom(gate.clone()))
        .unwrap();
    let paged = PagedModel::with_pool(Model::from_dir(&fixture()).unwrap(), pool.clone());
    let cfg = config(&paged, 4);
    let mut engine = Engine::new(paged, pool.clone(), cfg).unwrap();
    let decoding = engine.submit(request(sequence(0), None, 20));
    engine.step().unwrap(); // its prefill
    let late = engine.submit(request(sequence(1), Some("qv-r4"), NEW_TOKENS));
    // The load blocks in its source; each step still decodes the first request.
    for _ in 0..10 {
        let r = engine.step().unwrap();
        assert_eq!((r.batch_seqs, r.decode_tokens), (1, 1));
    }
    assert_eq!(decoding.drain().len(), 11, "one token per step");
    assert!(late.try_next().is_none());
    assert!(!pool.is_resident(&id("qv-r4")));
    gate.open();
    engine.run_until_idle().unwrap();
    assert_eq!(collect(late).0, peft_greedy("qv-r4.1"));
    let (rest, _) = collect(decoding);
    assert_eq!(rest.len(), 9);
}

#[test]
fn a_detached_adapter_frees_its_copies_is_refused_and_its_slot_is_reused() {
    use openledger_lora::adapter::LoraAdapter;
    use openledger_lora::model::{ModelError, SeqInput};

    let mut model = Model::from_dir(&fixture()).unwrap();
    let load = |name: &str| {
        LoraAdapter::from_dir(
            &fixture().join("adapters").join(name),
            &LoadOptions::default(),
        )
        .unwrap()
    };
    let qv = model.attach_adapter("qv-r4", &load("qv-r4")).unwrap();
    let after_qv = model.attached_bytes();
    let all = model
        .attach_adapter("all-r8-rslora", &load("all-r8-rslora"))
        .unwrap();
    assert!(model.attached_bytes() > after_qv);
    model.detach_adapter(all).unwrap();
    assert_eq!(model.attached_bytes(), after_qv);
    assert_eq!(model.adapter_names(), ["qv-r4"]);
    // Whether a forward pass with `adapter` is refused as naming an unknown adapter.
    let refused = |m: &Model, adapter| {
        matches!(
            m.forward(&[SeqInput {
                adapter: Some(adapter),
                tokens: &[1, 2],
            }]),
            Err(ModelError::UnknownAdapter { seq: 0, .. })
        )
    };
    assert!(refused(&model, all));
    assert!(matches!(
        model.detach_adapter(all),
        Err(ModelError::UnknownAdapter { .. })
    ));
    // The freed slot is reused, and the adapter in it computes as it did.
    let again = model
        .attach_adapter("all-r8-rslora", &load("all-r8-rslora"))
        .unwrap();
    assert_eq!(again, all);
    let greedy = model.greedy(Some(again), &sequence(2), NEW_TOKENS).unwrap();
    assert_eq!(greedy, peft_greedy("all-r8-rslora.2"));
    assert!(!refused(&model, qv));
    assert!(model.new_cache(Some(qv)).is_ok());
}
