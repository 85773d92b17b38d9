//! The serving engine (scheduler, paged KV cache with its values in device memory, adapter
//! pool, streaming) driving the GPU model, against PEFT's greedy tokens of the fixture
//! (`fixtures/peft/tiny-llama/reference.json`): a mixed batch of requests for the base model
//! and three adapters taken from the pool, with a device adapter tier of two slots (so
//! adapters are evicted from the device and copied back), and a KV pool small enough that
//! sequences are preempted — recomputed, or swapped out to host memory and back.
//!
//! Runtime: as `model_parity.rs` (the host emulation unless `OPENLEDGER_GPU_RUNTIME=cuda`).

use openledger_gpu::{
    AdapterBudget, Dtype, EmulatedRuntime, GpuModel, GpuOptions, GpuPagedModel, Runtime,
};
use openledger_lora::pool::{AdapterId, AdapterPool, Source};
use openledger_lora::serve::{Engine, EngineConfig, Event, Preemption, Request, SamplingParams};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

fn fixtures() -> PathBuf {
    std::env::var_os("OPENLEDGER_FIXTURES").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures"),
        PathBuf::from,
    )
}

fn fixture() -> PathBuf {
    fixtures().join("peft/tiny-llama")
}

fn on_cuda() -> bool {
    std::env::var("OPENLEDGER_GPU_RUNTIME").as_deref() == Ok("cuda")
}

/// The host emulation, built once per test binary.
fn emulation() -> &'static EmulatedRuntime {
    static EMU: OnceLock<EmulatedRuntime> = OnceLock::new();
    EMU.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emulated-device");
        EmulatedRuntime::build(&dir).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn runtime() -> Arc<dyn Runtime> {
    static RT: OnceLock<Arc<dyn Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        if on_cuda() {
            openledger_gpu::cuda_runtime(0).unwrap_or_else(|e| panic!("{e}"))
        } else {
            Arc::new(emulation().sibling())
        }
    })
    .clone()
}

fn reference() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap()
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn id(name: &str) -> AdapterId {
    AdapterId::new(name).unwrap()
}

fn request(prompt: Vec<u32>, adapter: Option<&str>, n: usize) -> Request {
    Request {
        prompt,
        adapter: adapter.map(|a| AdapterId::parse(a).unwrap()),
        sampling: SamplingParams {
            max_new_tokens: n,
            ..Default::default()
        },
    }
}

/// A GPU engine over the fixture with the three adapters in its pool, `num_blocks` KV blocks
/// of 4 positions and two device adapter slots.
fn engine(num_blocks: usize, preemption: Preemption) -> Engine<GpuPagedModel, AdapterPool> {
    engine_on(runtime(), num_blocks, preemption)
}

/// [`engine`] on runtime `rt`.
fn engine_on(
    rt: Arc<dyn Runtime>,
    num_blocks: usize,
    preemption: Preemption,
) -> Engine<GpuPagedModel, AdapterPool> {
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    for name in ["qv-r4", "all-r8-rslora", "attn-patterns"] {
        pool.register(id(name), Source::Dir(fixture().join("adapters").join(name)))
            .unwrap();
    }
    let opts = GpuOptions {
        dtype: Some(Dtype::F32),
        adapters: AdapterBudget {
            slots: 2,
            ..AdapterBudget::default()
        },
        ..GpuOptions::default()
    };
    let model = GpuModel::load(rt, &fixture(), opts, &mut |_, _| {}).unwrap();
    let layout = model.kv_layout(4);
    let paged = GpuPagedModel::with_pool(model, pool.clone());
    let config = EngineConfig {
        kv_layout: layout,
        num_blocks,
        max_tokens_per_step: 24,
        max_running: 6,
        max_context: 40,
        preemption,
        kv_dtype: paged.kv_dtype(),
    };
    Engine::new(paged, pool, config).unwrap()
}

fn tokens(h: openledger_lora::serve::RequestHandle) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for e in h {
        match e {
            Event::Token { token, .. } => out.push(token),
            Event::Failed { error, .. } => return Err(error.to_string()),
            _ => {}
        }
    }
    Ok(out)
}

/// Serves the reference sequences with each of `adapters` (`None`: the base model) and
/// checks PEFT's greedy tokens come out.
fn serve_and_check(num_blocks: usize, preemption: Preemption, adapters: &[Option<&str>]) {
    let r = reference();
    let mut engine = engine(num_blocks, preemption);
    let mut handles = Vec::new();
    for &adapter in adapters {
        let key = adapter.unwrap_or("base");
        for seq in 0..3 {
            let prompt = u32s(&r["sequences"][seq]);
            let want = u32s(&r["greedy"][format!("{key}.{seq}")]);
            handles.push((
                engine.submit(request(prompt, adapter, want.len())),
                want,
                format!("{key}.{seq}"),
            ));
        }
    }
    engine.run_until_idle().unwrap();
    for (h, want, key) in handles {
        assert_eq!(
            tokens(h).unwrap(),
            want,
            "{key} ({preemption:?}, {num_blocks} blocks)"
        );
    }
    // Decode-only steps ran as graphs (GpuOptions' default), replayed once captured.
    let graphs = engine.model().model().graph_stats();
    assert!(
        graphs.captures > 0 && graphs.replays > graphs.captures,
        "{graphs:?}"
    );
    // The engine's figures: everything ended and freed, the device cache's bytes counted.
    let load = engine.load();
    assert_eq!((load.waiting, load.running, load.swapped), (0, 0, 0));
    assert_eq!(load.kv_blocks_free, num_blocks);
    assert_eq!(load.kv_bytes, engine.kv().storage().bytes());
    assert_eq!(load.preemptions > 0, num_blocks < 64, "{load:?}");
    // Here (no adapter replaced, no copy failed) each upload is resident or was evicted; two
    // slots for more adapters evict. The metrics say what the model's stats say.
    let tier = engine.model().tier_stats();
    assert_eq!(
        tier.uploads,
        tier.resident as u64 + tier.evictions,
        "{tier:?}"
    );
    let distinct = adapters.iter().flatten().count();
    assert_eq!(tier.evictions > 0, distinct > 2, "{tier:?}");
    use openledger_lora::model::ServableModel;
    let metrics = engine.model().metrics();
    let value = |name: &str| metrics.iter().find(|m| m.name == name).map(|m| m.value);
    assert_eq!(
        value("openledger_device_graph_replays_total"),
        Some(graphs.replays as f64)
    );
    assert_eq!(
        value("openledger_device_adapter_evictions_total"),
        Some(tier.evictions as f64)
    );
}

#[test]
fn the_engine_on_the_gpu_model_gives_pefts_greedy_tokens() {
    let all = [
        None,
        Some("qv-r4"),
        Some("all-r8-rslora"),
        Some("attn-patterns"),
    ];
    serve_and_check(64, Preemption::Recompute, &all);
}

#[test]
fn preempted_sequences_recompute_or_swap_through_the_device_cache() {
    // 12 blocks of 4 positions: six requests of up to 17 positions cannot all run at once.
    let some = [None, Some("all-r8-rslora")];
    serve_and_check(12, Preemption::Recompute, &some);
    serve_and_check(12, Preemption::Swap, &some);
}

/// Ensembles named by their spelling run as one device adapter made from the members: the
/// same greedy tokens as the CPU engine serving the same spellings (its ensembles add each
/// member's LoRA in its own segment); an unknown adapter, alone or as a member, fails its
/// request alone.
#[test]
fn ensembles_give_the_cpu_engines_tokens_and_unknown_adapters_fail_alone() {
    use openledger_lora::model::{Model, PagedModel};
    use openledger_lora::serve::KvDtype;
    let r = reference();
    let spellings = ["qv-r4*0.7+attn-patterns*0.3", "all-r8-rslora+qv-r4*1.5"];
    let runs: Vec<(Vec<u32>, &str)> = spellings
        .iter()
        .enumerate()
        .map(|(i, &e)| (u32s(&r["sequences"][i]), e))
        .collect();
    // The CPU engine over the same pool.
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    for name in ["qv-r4", "all-r8-rslora", "attn-patterns"] {
        pool.register(id(name), Source::Dir(fixture().join("adapters").join(name)))
            .unwrap();
    }
    let cpu_model = PagedModel::with_pool(Model::from_dir(&fixture()).unwrap(), pool.clone());
    let config = EngineConfig {
        kv_layout: cpu_model.kv_layout(4),
        num_blocks: 64,
        max_tokens_per_step: 24,
        max_running: 6,
        max_context: 40,
        preemption: Preemption::Recompute,
        kv_dtype: KvDtype::F32,
    };
    let mut cpu = Engine::new(cpu_model, pool, config).unwrap();
    let mut gpu = engine(64, Preemption::Recompute);
    let submit_all = |e: &mut dyn FnMut(Request) -> openledger_lora::serve::RequestHandle| {
        runs.iter()
            .map(|(p, a)| e(request(p.clone(), Some(a), 8)))
            .collect::<Vec<_>>()
    };
    let cpu_handles = submit_all(&mut |req| cpu.submit(req));
    cpu.run_until_idle().unwrap();
    let unknown = gpu.submit(request(u32s(&r["sequences"][0]), Some("missing"), 3));
    let unknown_member = gpu.submit(request(u32s(&r["sequences"][0]), Some("qv-r4+missing"), 3));
    let gpu_handles = submit_all(&mut |req| gpu.submit(req));
    let good = gpu.submit(request(u32s(&r["sequences"][1]), Some("qv-r4"), 8));
    gpu.run_until_idle().unwrap();
    for ((c, g), (_, spelled)) in cpu_handles.into_iter().zip(gpu_handles).zip(&runs) {
        let want = tokens(c).unwrap();
        assert_eq!(want.len(), 8);
        assert_eq!(tokens(g).unwrap(), want, "{spelled}");
    }
    let e = tokens(unknown).unwrap_err();
    assert!(e.contains("missing"), "{e}");
    let e = tokens(unknown_member).unwrap_err();
    assert!(e.contains("missing"), "{e}");
    assert_eq!(tokens(good).unwrap(), u32s(&r["greedy"]["qv-r4.1"]));
}

/// The GPU model behind a [`ServedModel`](openledger_lora::model::ServedModel) (what the
/// bindings and the server hold): the same calls as on the CPU — requests for the base model,
/// for an adapter of the pool and for one attached through the served model, events to a
/// callback, unknown adapters refused at submission — and PEFT's greedy tokens out.
#[test]
fn the_served_model_takes_the_same_calls_on_the_gpu() {
    use openledger_lora::adapter::{LoadOptions, LoraAdapter};
    use openledger_lora::model::{ServeOptions, ServedError};
    use openledger_lora::serve::RequestError;
    let r = reference();
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    pool.register(
        id("qv-r4"),
        Source::Dir(fixture().join("adapters").join("qv-r4")),
    )
    .unwrap();
    // Served as `gpu::serve` serves a folder: the GPU model's options made from the served
    // model's. Graphs are off here (the other tests decode through them).
    let options = ServeOptions {
        max_context: 40,
        block_size: 4,
        device_adapter_slots: 3,
        device_graph_max_batch: 0,
        ..ServeOptions::default()
    };
    let opts = openledger_gpu::gpu_options(&options).unwrap();
    assert_eq!(
        (opts.dtype, opts.adapters.slots, opts.graph_max_batch),
        (Some(Dtype::F32), 3, 0)
    );
    let mut loaded = Vec::new();
    let model =
        openledger_gpu::load_model(runtime(), &fixture(), opts, &mut |p| loaded.push(p)).unwrap();
    assert!(!loaded.is_empty(), "progress is reported");
    assert_eq!(model.graph_max_batch(), 0);
    let served =
        openledger_gpu::serve_model(model, None, &fixture(), Some(pool), &options).unwrap();
    assert_eq!(served.vocab_size(), 320);

    let direct = LoraAdapter::from_dir(
        &fixture().join("adapters").join("attn-patterns"),
        &LoadOptions::default(),
    )
    .unwrap();
    served.attach(id("direct"), Arc::new(direct)).unwrap();

    let want = |key: &str, seq: usize| u32s(&r["greedy"][format!("{key}.{seq}")]);
    let prompt = |seq: usize| u32s(&r["sequences"][seq]);
    let base = served
        .submit(request(prompt(0), None, want("base", 0).len()))
        .unwrap();
    let pooled = served
        .submit(request(prompt(1), Some("qv-r4"), want("qv-r4", 1).len()))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    served
        .submit_with_callback(
            request(prompt(2), Some("direct"), want("attn-patterns", 2).len()),
            move |e| {
                if let Event::Token { token, .. } = e {
                    let _ = tx.send(*token);
                }
            },
        )
        .unwrap();
    assert_eq!(tokens(base).unwrap(), want("base", 0));
    assert_eq!(tokens(pooled).unwrap(), want("qv-r4", 1));
    assert_eq!(rx.iter().collect::<Vec<_>>(), want("attn-patterns", 2));

    let mut names = served.adapter_names().unwrap();
    names.sort();
    assert_eq!(names, ["direct", "qv-r4"]);
    match served.submit(request(prompt(0), Some("missing"), 2)) {
        Err(ServedError::Request(RequestError::UnknownAdapter { adapter })) => {
            assert_eq!(adapter.as_str(), "missing")
        }
        other => panic!("unexpected: {other:?}"),
    }
    // A token outside the vocabulary is refused there too; the engine goes on.
    assert!(matches!(
        served.submit(request(vec![1, 100_000], None, 2)),
        Err(ServedError::Request(_))
    ));
    let again = served
        .submit(request(prompt(0), None, want("base", 0).len()))
        .unwrap();
    assert_eq!(tokens(again).unwrap(), want("base", 0));

    // The engine's figures and the device's, as the server's metrics show them.
    let stats = served.stats().unwrap();
    let runs = [("base", 0), ("qv-r4", 1), ("attn-patterns", 2), ("base", 0)];
    let prompts: usize = runs.iter().map(|&(_, s)| prompt(s).len()).sum();
    let decoded: usize = runs.iter().map(|&(k, s)| want(k, s).len() - 1).sum();
    assert_eq!(stats.engine.prefill_tokens, prompts as u64);
    assert_eq!(stats.engine.decode_tokens, decoded as u64);
    assert_eq!(stats.engine.running + stats.engine.waiting, 0);
    let metric = |name: &str, label: Option<&str>| {
        let found: Vec<f64> = stats
            .model
            .iter()
            .filter(|m| m.name == name)
            .filter(|m| label.is_none_or(|l| m.labels.iter().any(|(_, v)| v == l)))
            .map(|m| m.value)
            .collect();
        assert_eq!(found.len(), 1, "{name} {label:?}: {:?}", stats.model);
        found[0]
    };
    assert_eq!(metric("openledger_device_adapters_resident", None), 2.0);
    assert_eq!(metric("openledger_device_adapter_slots", None), 3.0);
    assert_eq!(metric("openledger_device_adapter_uploads_total", None), 2.0);
    assert_eq!(
        metric("openledger_device_adapter_evictions_total", None),
        0.0
    );
    assert!(metric("openledger_device_memory_bytes", Some("weights")) > 0.0);
    assert!(metric("openledger_device_memory_bytes", Some("adapters")) > 0.0);
    let device = runtime().device_name();
    assert!(
        stats
            .model
            .iter()
            .all(|m| m.labels.contains(&("device", device.clone())))
    );
    served.close().unwrap().join().unwrap();
}

/// An adapter not yet on the device is copied on the copy stream while the running requests
/// decode: its request is admitted once the copy has landed, and gives PEFT's tokens. Under
/// the emulation each copy lands at its fourth poll (one poll per step), and its bytes are
/// written only then, so a kernel reading the adapter earlier would compute with garbage.
#[test]
fn a_request_waits_for_its_adapters_upload_while_the_others_decode() {
    let r = reference();
    let emulated = (!on_cuda()).then(|| {
        let rt = emulation().sibling();
        rt.set_upload_polls(3);
        Arc::new(rt)
    });
    let rt: Arc<dyn Runtime> = match &emulated {
        Some(e) => e.clone(),
        None => runtime(),
    };
    let mut engine = engine_on(rt, 64, Preemption::Recompute);
    let want_base = u32s(&r["greedy"]["base.0"]);
    let want_qv = u32s(&r["greedy"]["qv-r4.1"]);
    let base = engine.submit(request(u32s(&r["sequences"][0]), None, want_base.len()));
    let qv = engine.submit(request(
        u32s(&r["sequences"][1]),
        Some("qv-r4"),
        want_qv.len(),
    ));
    let (mut base_tokens, mut qv_tokens) = (Vec::new(), Vec::new());
    // Base tokens out when the adapter's request gave its first one.
    let mut base_before_qv = None;
    let mut steps = 0;
    while engine.pending() > 0 {
        engine.step().unwrap();
        steps += 1;
        assert!(steps < 1000, "the engine does not finish");
        while let Some(e) = base.try_next() {
            if let Event::Token { token, .. } = e {
                base_tokens.push(token);
            }
        }
        while let Some(e) = qv.try_next() {
            if let Event::Token { token, .. } = e {
                if qv_tokens.is_empty() {
                    base_before_qv = Some(base_tokens.len());
                }
                qv_tokens.push(token);
            }
        }
    }
    assert_eq!(base_tokens, want_base);
    assert_eq!(qv_tokens, want_qv);
    if let Some(e) = &emulated {
        // Three polls answered "not yet", one step each, while the base request decoded.
        let before = base_before_qv.unwrap();
        assert!(before >= 3, "the base request gave {before} tokens first");
        assert_eq!(e.uploads_in_flight(), 0);
        assert_eq!(engine.model().model().adapters_in_flight(), 0);
    }
}
