//! The multi-LoRA model on a GPU: a Llama-2-7B-shaped model (32 layers, hidden 4096,
//! intermediate 11008, 32 heads, vocabulary 32000) with random bf16 weights made on the host,
//! rank-16 adapters on q, k, v and o, prompts of 128 tokens and 128 new tokens per request,
//! decoded greedily on the device (only token ids come back).
//!
//! Figures, all measured in this run:
//! - decode tokens/s with 1, 32, 512 and 2,000 distinct adapters at `C` concurrent requests
//!   (512 where the device's memory holds their KV cache, else the most it holds); 2,000
//!   adapters run as waves of `C` requests, each wave's adapters copied to the device first
//!   (that copy is reported apart, not in the decode time);
//! - time to first token and time per output token, p50 / p99;
//! - the baseline: the same requests served one adapter at a time (each adapter's requests as
//!   their own batch), and the ratio of the mixed batch to it;
//! - adapter switch time: host pool → GPU (one adapter's pages and slot table) and cold from
//!   disk (read the PEFT folder, then the copy);
//! - device memory by component;
//! - one decode step of 1, 32 and `C` rows (each with its own adapter) as a graph against the
//!   same step launched kernel by kernel (every other decode step here runs as a graph, the
//!   default).
//!
//! The adapters are 16 distinct random weight sets, each attached under many names: every
//! name is its own adapter on the device (its own slot, pages and table entries), so the
//! kernels read as many distinct adapters as a real fleet; only the host time to make 2,000
//! different random sets is saved.
//!
//! `cargo bench -p openledger-gpu --features cuda --bench gpu_model` on a GPU machine;
//! `OPENLEDGER_BENCH_RUNTIME=emulated OPENLEDGER_BENCH_SHAPE=tiny` runs the same code on the
//! host emulation with a tiny model (a check of the bench, not a measurement). JSON and PNG go
//! to `$OPENLEDGER_BENCH_OUT` (default `target/bench-results`).

use openledger_benches::{Report, median};
use openledger_core::DType;
use openledger_gpu::{
    AdapterBudget, DeviceKvStorage, Dtype, EmulatedRuntime, GpuModel, GpuOptions, RowSampling,
    Runtime,
};
use openledger_lora::adapter::LoadOptions;
use openledger_lora::adapter::LoraAdapter;
use openledger_lora::adapter::build::AdapterBuilder;
use openledger_lora::adapter::config::ConfigSpec;
use openledger_lora::model::ModelConfig;
use openledger_lora::serve::{RequestId, SamplingParams, SeqId, StepBatch, StepSeq};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const RANK: usize = 16;
const WEIGHT_SETS: usize = 16;
const BLOCK: usize = 16;
const TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

/// Parameters of a model shape (embeddings, head, layers; norms too small to count).
struct ModelShapeBytes;

impl ModelShapeBytes {
    fn of(cfg: &ModelConfig) -> usize {
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (q, kv) = (
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
        );
        2 * v * h + cfg.num_layers * (h * (q + 2 * kv) + q * h + 3 * h * i)
    }
}

/// The bench's shape and workload.
struct Shape {
    name: &'static str,
    config: serde_json::Value,
    prompt: usize,
    new_tokens: usize,
    concurrency: usize,
    adapter_counts: Vec<usize>,
    prefill_tokens: usize,
}

fn shape(name: &str) -> Shape {
    let llama = |vocab, hidden, inter, layers, heads, kv_heads| {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 4096, "hidden_act": "silu", "tie_word_embeddings": false
        })
    };
    match name {
        "tiny" => Shape {
            name: "tiny",
            config: llama(320, 64, 128, 2, 4, 2),
            prompt: 8,
            new_tokens: 4,
            concurrency: 4,
            adapter_counts: vec![1, 2, 8],
            prefill_tokens: 64,
        },
        _ => Shape {
            name: "llama-2-7b",
            config: llama(32000, 4096, 11008, 32, 32, 32),
            prompt: 128,
            new_tokens: 128,
            concurrency: 512,
            adapter_counts: vec![1, 32, 512, 2000],
            prefill_tokens: 8192,
        },
    }
}

fn runtime() -> Result<Arc<dyn Runtime>, String> {
    match std::env::var("OPENLEDGER_BENCH_RUNTIME").as_deref() {
        Ok("emulated") => {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/emulated-device");
            Ok(Arc::new(
                EmulatedRuntime::build(&dir).map_err(|e| e.to_string())?,
            ))
        }
        _ => openledger_gpu::cuda_runtime(0).map_err(|e| e.to_string()),
    }
}

/// A random rank-16 adapter on q, k, v, o of every layer, in bf16.
fn adapter(cfg: &ModelConfig, seed: u64) -> LoraAdapter {
    let mut b = AdapterBuilder::new(ConfigSpec::new(RANK, 32.0, &TARGETS)).with_dtype(DType::BF16);
    let (h, q, kv) = (
        cfg.hidden_size,
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    for l in 0..cfg.num_layers {
        for (p, (din, dout)) in TARGETS.iter().zip([(h, q), (h, kv), (h, kv), (q, h)]) {
            let m = format!("model.layers.{l}.self_attn.{p}");
            b.random_lora(&m, din, dout, RANK, seed * 1000 + l as u64);
        }
    }
    b.build(&LoadOptions::default()).expect("a valid adapter")
}

fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// One wave of requests run to the end: prefill in steps of at most `prefill_tokens`, then
/// one decode step per new token for all of them.
struct Wave<'a> {
    names: Vec<Option<String>>,
    prompts: &'a [Vec<u32>],
}

#[derive(Default)]
struct Timing {
    decode_tokens: usize,
    decode_secs: f64,
    ttft_ms: Vec<f64>,
    tpot_ms: Vec<f64>,
}

/// One decode step of `tokens.len()` requests: request `i`'s token `tokens[i]` at `pos`, with
/// adapter `names[i]`, in its own run of `blocks_per` blocks.
fn decode_batch(
    tokens: &[u32],
    pos: usize,
    names: &[Option<String>],
    blocks_per: usize,
) -> StepBatch {
    StepBatch {
        seqs: (0..tokens.len())
            .map(|i| StepSeq {
                request: RequestId(i as u64),
                seq: SeqId(i as u64),
                tokens: vec![tokens[i]],
                start_pos: pos,
                adapter: names[i]
                    .as_deref()
                    .map(|a| openledger_lora::pool::AdapterId::new(a).unwrap()),
                block_table: ((i * blocks_per) as u32..((i + 1) * blocks_per) as u32).collect(),
                needs_logits: true,
            })
            .collect(),
    }
}

/// Greedy sampling of each of `histories`' rows.
fn greedy_rows<'a>(greedy: &'a SamplingParams, histories: &'a [Vec<u32>]) -> Vec<RowSampling<'a>> {
    histories
        .iter()
        .map(|h| RowSampling {
            params: greedy,
            u: 0.5,
            history: h,
        })
        .collect()
}

fn run_wave(
    model: &mut GpuModel,
    kv: &mut DeviceKvStorage,
    s: &Shape,
    wave: &Wave<'_>,
    t: &mut Timing,
) -> Result<(), String> {
    let greedy = SamplingParams::default();
    let n = wave.names.len();
    let blocks_per = (s.prompt + s.new_tokens).div_ceil(BLOCK);
    let table = |i: usize| -> Vec<u32> {
        ((i * blocks_per) as u32..((i + 1) * blocks_per) as u32).collect()
    };
    let id = |name: &Option<String>| {
        name.as_deref()
            .map(|a| openledger_lora::pool::AdapterId::new(a).unwrap())
    };
    let mut last: Vec<u32> = vec![0; n];
    let start = Instant::now();
    // Prefill, a few requests per step.
    let per_step = (s.prefill_tokens / s.prompt).max(1);
    for group in (0..n).collect::<Vec<_>>().chunks(per_step) {
        let batch = StepBatch {
            seqs: group
                .iter()
                .map(|&i| StepSeq {
                    request: RequestId(i as u64),
                    seq: SeqId(i as u64),
                    tokens: wave.prompts[i].clone(),
                    start_pos: 0,
                    adapter: id(&wave.names[i]),
                    block_table: table(i),
                    needs_logits: true,
                })
                .collect(),
        };
        let rows: Vec<RowSampling<'_>> = group
            .iter()
            .map(|&i| RowSampling {
                params: &greedy,
                u: 0.5,
                history: &wave.prompts[i],
            })
            .collect();
        let toks = model
            .forward_sampled(&batch, kv, &rows)
            .map_err(|e| e.to_string())?;
        let at = start.elapsed().as_secs_f64() * 1e3;
        for (&i, tok) in group.iter().zip(toks) {
            last[i] = tok;
            t.ttft_ms.push(at);
        }
    }
    // Decode: every request one token per step.
    for step in 1..s.new_tokens {
        let pos = s.prompt + step - 1;
        let batch = decode_batch(&last, pos, &wave.names, blocks_per);
        let rows = greedy_rows(&greedy, &wave.prompts[..n]);
        let t0 = Instant::now();
        let toks = model
            .forward_sampled(&batch, kv, &rows)
            .map_err(|e| e.to_string())?;
        let secs = t0.elapsed().as_secs_f64();
        t.decode_secs += secs;
        t.decode_tokens += n;
        t.tpot_ms.push(secs * 1e3);
        last = toks;
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let rt = runtime()?;
    let default_shape = if std::env::var("OPENLEDGER_BENCH_RUNTIME").as_deref() == Ok("emulated") {
        "tiny"
    } else {
        "llama-2-7b"
    };
    let s =
        shape(&std::env::var("OPENLEDGER_BENCH_SHAPE").unwrap_or_else(|_| default_shape.into()));
    let cfg = ModelConfig::from_value(&s.config).map_err(|e| e.to_string())?;
    let device = rt.device_name();
    println!("gpu_model: {} on {device}", s.name);
    let max_distinct = *s.adapter_counts.iter().max().unwrap_or(&1);
    let per_adapter = openledger_gpu::adapter_bytes(&cfg, RANK, &TARGETS, Dtype::Bf16, 16 << 10);
    // Concurrency: the shape's, or as many requests as the memory left after the weights
    // holds (their KV cache and an adapter each), keeping 6 GiB for activations.
    let weights = 2 * ModelShapeBytes::of(&cfg);
    let kv_per = (s.prompt + s.new_tokens).div_ceil(BLOCK)
        * BLOCK
        * 2
        * cfg.num_layers
        * cfg.num_kv_heads
        * cfg.head_dim
        * 2;
    let c = match (
        std::env::var("OPENLEDGER_BENCH_CONCURRENCY")
            .ok()
            .and_then(|v| v.parse().ok()),
        rt.memory_info(),
    ) {
        (Some(c), _) => c,
        (None, Some((free, _))) => {
            let room = free.saturating_sub(weights + (6 << 30));
            s.concurrency.min(room / (kv_per + per_adapter)).max(1)
        }
        (None, None) => s.concurrency,
    };
    println!("concurrency {c} (KV {kv_per} B and adapter {per_adapter} B a request)");
    let budget = AdapterBudget {
        slots: c + 1,
        slab_bytes: (c + 1) * per_adapter,
        page_bytes: 16 << 10,
    };
    let opts = GpuOptions {
        dtype: Some(Dtype::Bf16),
        adapters: budget,
        ..GpuOptions::default()
    };
    let t0 = Instant::now();
    let mut model = GpuModel::random(
        rt.clone(),
        cfg.clone(),
        Dtype::Bf16,
        opts,
        7,
        &mut |done, total| {
            eprint!("\rweights {done}/{total}");
        },
    )
    .map_err(|e| e.to_string())?;
    eprintln!();
    let mut r = Report::new(&format!("gpu_model_{}", s.name));
    r.figure("load_random_weights_s", t0.elapsed().as_secs_f64());
    let blocks_per = (s.prompt + s.new_tokens).div_ceil(BLOCK);
    let mut kv = model
        .kv_storage(c * blocks_per, BLOCK)
        .map_err(|e| e.to_string())?;
    let sets: Vec<LoraAdapter> = (0..WEIGHT_SETS.min(max_distinct))
        .map(|k| adapter(&cfg, k as u64))
        .collect();
    // Switch times: host copy → device, and cold from a PEFT folder.
    let mut host_ms = Vec::new();
    for k in 0..20 {
        let t = Instant::now();
        model
            .attach_adapter("switch", &sets[k % sets.len()])
            .map_err(|e| e.to_string())?;
        rt.synchronize().map_err(|e| e.to_string())?;
        host_ms.push(t.elapsed().as_secs_f64() * 1e3);
        model.detach_adapter("switch").map_err(|e| e.to_string())?;
    }
    r.figure("switch_host_to_gpu_ms_p50", median(&host_ms));
    // The same through the copy stream (pinned staging): issued, then waited for.
    let mut async_ms = Vec::new();
    for k in 0..20 {
        let t = Instant::now();
        model
            .attach_adapter_async("switch", &sets[k % sets.len()])
            .map_err(|e| e.to_string())?;
        while !model.adapter_landed("switch").map_err(|e| e.to_string())? {
            std::hint::spin_loop();
        }
        async_ms.push(t.elapsed().as_secs_f64() * 1e3);
        model.detach_adapter("switch").map_err(|e| e.to_string())?;
    }
    r.figure("switch_host_to_gpu_copy_stream_ms_p50", median(&async_ms));
    let dir = std::env::temp_dir().join("openledger-gpu-bench-adapter");
    let mut b = AdapterBuilder::new(ConfigSpec::new(RANK, 32.0, &TARGETS)).with_dtype(DType::BF16);
    for l in 0..cfg.num_layers {
        let (h, q) = (cfg.hidden_size, cfg.num_heads * cfg.head_dim);
        let kvd = cfg.num_kv_heads * cfg.head_dim;
        for (p, (din, dout)) in TARGETS.iter().zip([(h, q), (h, kvd), (h, kvd), (q, h)]) {
            b.random_lora(
                &format!("model.layers.{l}.self_attn.{p}"),
                din,
                dout,
                RANK,
                l as u64,
            );
        }
    }
    b.write_dir(&dir).map_err(|e| e.to_string())?;
    let mut cold_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let a = LoraAdapter::from_dir(&dir, &LoadOptions::default()).map_err(|e| e.to_string())?;
        model
            .attach_adapter("cold", &a)
            .map_err(|e| e.to_string())?;
        rt.synchronize().map_err(|e| e.to_string())?;
        cold_ms.push(t.elapsed().as_secs_f64() * 1e3);
        model.detach_adapter("cold").map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    r.figure("switch_cold_from_disk_ms_p50", median(&cold_ms));
    let prompts: Vec<Vec<u32>> = (0..c)
        .map(|i| {
            (0..s.prompt)
                .map(|j| ((i * 31 + j * 7) % cfg.vocab_size) as u32)
                .collect()
        })
        .collect();
    // Prefill attention: one step of prompts (as many as a prefill step takes), in tiles on
    // the tensor cores against row by row; the best of three runs each.
    if model.prefill_kernel_applies() {
        let n = (s.prefill_tokens / s.prompt).clamp(1, c);
        let batch = StepBatch {
            seqs: (0..n)
                .map(|i| StepSeq {
                    request: RequestId(i as u64),
                    seq: SeqId(i as u64),
                    tokens: prompts[i].clone(),
                    start_pos: 0,
                    adapter: None,
                    block_table: ((i * blocks_per) as u32..((i + 1) * blocks_per) as u32).collect(),
                    needs_logits: true,
                })
                .collect(),
        };
        let configured = model.prefill_min_rows();
        let mut best = |model: &mut GpuModel, min_rows: usize| -> Result<f64, String> {
            model.set_prefill_min_rows(min_rows);
            let mut ms = f64::INFINITY;
            for _ in 0..3 {
                let t = Instant::now();
                model.forward(&batch, &mut kv).map_err(|e| e.to_string())?;
                rt.synchronize().map_err(|e| e.to_string())?;
                ms = ms.min(t.elapsed().as_secs_f64() * 1e3);
            }
            Ok(ms)
        };
        let tiles = best(&mut model, 1)?;
        let rows = best(&mut model, 0)?;
        model.set_prefill_min_rows(configured);
        r.figure(
            &format!("prefill_step_ms_{n}x{}_tensor_core_tiles", s.prompt),
            tiles,
        );
        r.figure(
            &format!("prefill_step_ms_{n}x{}_row_kernel", s.prompt),
            rows,
        );
        r.ratio(
            "prefill_step_speedup_tiles_vs_rows",
            rows,
            tiles,
            "> 1 (the same step, attention in tiles)",
        );
    }
    // A decode step as a graph against the same step launched kernel by kernel, each row with
    // its own adapter: one step first (it captures the graph), then the best of five each.
    let mut sizes = vec![1, 32.min(c), c];
    sizes.dedup();
    let greedy = SamplingParams::default();
    for &n in &sizes {
        let name = |i: usize| format!("g{i}");
        for i in 0..n {
            model
                .attach_adapter(&name(i), &sets[i % sets.len()])
                .map_err(|e| e.to_string())?;
        }
        let firsts: Vec<u32> = prompts[..n].iter().map(|p| p[0]).collect();
        let names: Vec<Option<String>> = (0..n).map(|i| Some(name(i))).collect();
        let batch = decode_batch(&firsts, s.prompt, &names, blocks_per);
        let rows = greedy_rows(&greedy, &prompts[..n]);
        let configured = model.graph_max_batch();
        let mut best = |model: &mut GpuModel, cap: usize| -> Result<f64, String> {
            model.set_graph_max_batch(cap);
            let mut ms = f64::INFINITY;
            for k in 0..6 {
                let t = Instant::now();
                model
                    .forward_sampled(&batch, &mut kv, &rows)
                    .map_err(|e| e.to_string())?;
                if k > 0 {
                    ms = ms.min(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            Ok(ms)
        };
        let graphs = best(&mut model, configured.max(n))?;
        let launches = best(&mut model, 0)?;
        model.set_graph_max_batch(configured);
        r.figure(&format!("decode_step_ms_{n}_rows_graph"), graphs);
        r.figure(
            &format!("decode_step_ms_{n}_rows_kernel_by_kernel"),
            launches,
        );
        r.ratio(
            &format!("decode_step_speedup_graph_vs_launches_{n}_rows"),
            launches,
            graphs,
            "> 1 (one graph launch in place of a launch per kernel)",
        );
        for i in 0..n {
            model.detach_adapter(&name(i)).map_err(|e| e.to_string())?;
        }
    }
    // Mixed batches with D distinct adapters.
    let mut curve = Vec::new();
    let mut one_adapter_tps = 0.0;
    for &d in &s.adapter_counts {
        let requests = d.max(c);
        let mut t = Timing::default();
        let mut attach_secs = 0.0;
        for w0 in (0..requests).step_by(c) {
            let n = c.min(requests - w0);
            let names: Vec<Option<String>> =
                (w0..w0 + n).map(|i| Some(format!("a{}", i % d))).collect();
            // This wave's adapters on the device (the others go first, to make room).
            let ta = Instant::now();
            let wanted: std::collections::HashSet<&str> =
                names.iter().flatten().map(String::as_str).collect();
            let held: Vec<String> = model
                .adapter_names()
                .iter()
                .map(|x| x.to_string())
                .collect();
            for h in held.iter().filter(|h| !wanted.contains(h.as_str())) {
                model.detach_adapter(h).map_err(|e| e.to_string())?;
            }
            for name in &wanted {
                if !model.adapter_names().contains(name) {
                    let k: usize = name[1..].parse().unwrap_or(0);
                    model
                        .attach_adapter(name, &sets[k % sets.len()])
                        .map_err(|e| e.to_string())?;
                }
            }
            rt.synchronize().map_err(|e| e.to_string())?;
            attach_secs += ta.elapsed().as_secs_f64();
            run_wave(
                &mut model,
                &mut kv,
                &s,
                &Wave {
                    names,
                    prompts: &prompts[..n],
                },
                &mut t,
            )?;
        }
        let tps = t.decode_tokens as f64 / t.decode_secs;
        if d == 1 {
            one_adapter_tps = tps;
        }
        r.figure(&format!("decode_tokens_per_s_{d}_adapters"), tps);
        for (what, xs) in [("ttft", &t.ttft_ms), ("tpot", &t.tpot_ms)] {
            for (p, q) in [("p50", 0.5), ("p99", 0.99)] {
                r.figure(&format!("{what}_ms_{p}_{d}_adapters"), percentile(xs, q));
            }
        }
        r.figure(&format!("adapter_copy_s_{d}_adapters"), attach_secs);
        if one_adapter_tps > 0.0 {
            r.ratio(
                &format!("tokens_per_s_{d}_vs_1_adapter"),
                tps,
                one_adapter_tps,
                "≥ 0.65 at the most adapters",
            );
        }
        curve.push((d, tps));
    }
    // Baseline: the same requests one adapter at a time (the mixed run's middle count).
    let d = s.adapter_counts[s.adapter_counts.len() / 2].min(c);
    let mut t = Timing::default();
    let held: Vec<String> = model
        .adapter_names()
        .iter()
        .map(|x| x.to_string())
        .collect();
    for h in &held {
        model.detach_adapter(h).map_err(|e| e.to_string())?;
    }
    for k in 0..d {
        let idx: Vec<usize> = (0..c).filter(|i| i % d == k).collect();
        let name = format!("a{k}");
        model
            .attach_adapter(&name, &sets[k % sets.len()])
            .map_err(|e| e.to_string())?;
        let prompts_k: Vec<Vec<u32>> = idx.iter().map(|&i| prompts[i].clone()).collect();
        let names = vec![Some(name.clone()); idx.len()];
        run_wave(
            &mut model,
            &mut kv,
            &s,
            &Wave {
                names,
                prompts: &prompts_k,
            },
            &mut t,
        )?;
        model.detach_adapter(&name).map_err(|e| e.to_string())?;
    }
    let base_tps = t.decode_tokens as f64 / t.decode_secs;
    r.figure(
        &format!("baseline_one_adapter_at_a_time_tokens_per_s_{d}_adapters"),
        base_tps,
    );
    if let Some(&(_, mixed)) = curve.iter().find(|(k, _)| *k == d) {
        r.ratio(
            &format!("mixed_vs_one_at_a_time_{d}_adapters"),
            mixed,
            base_tps,
            "> 1",
        );
    }
    let mem = model.memory();
    r.figure(
        "memory_weights_gib",
        mem.weights as f64 / (1u64 << 30) as f64,
    );
    r.figure(
        "memory_kv_cache_gib",
        kv.bytes() as f64 / (1u64 << 30) as f64,
    );
    r.figure(
        "memory_adapters_gib",
        mem.adapters as f64 / (1u64 << 30) as f64,
    );
    r.figure(
        "memory_scratch_gib",
        mem.scratch as f64 / (1u64 << 30) as f64,
    );
    r.figure("concurrency", c as f64);
    r.save_with_plot(|png| draw(png, &device, &curve, base_tps, d));
    Ok(())
}

/// Decode tokens/s against distinct adapters, with the one-at-a-time baseline.
fn draw(
    path: &Path,
    device: &str,
    curve: &[(usize, f64)],
    base: f64,
    base_d: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = curve.iter().map(|p| p.1).fold(base, f64::max) * 1.2;
    let max_d = curve.iter().map(|p| p.0).max().unwrap_or(1).max(2) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("decode tokens/s vs distinct adapters, on {device}"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..max_d * 1.5).log_scale(), 0f64..max)?;
    chart
        .configure_mesh()
        .x_desc("distinct adapters")
        .y_desc("tokens/s")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            curve.iter().map(|&(d, t)| (d as f64, t)),
            BLUE.stroke_width(2),
        ))?
        .label("mixed batch (SGMV/BGMV)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
    chart.draw_series(
        curve
            .iter()
            .map(|&(d, t)| Circle::new((d as f64, t), 4, BLUE.filled())),
    )?;
    chart
        .draw_series(std::iter::once(Circle::new(
            (base_d as f64, base),
            6,
            RED.filled(),
        )))?
        .label(format!("one adapter at a time ({base_d} adapters)"))
        .legend(|(x, y)| Circle::new((x + 9, y), 4, RED.filled()));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        println!("gpu_model: not run: {e}");
        std::process::exit(1);
    }
}
