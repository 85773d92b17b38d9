//! The serving engine end to end on a real (random) llama-shaped model, in two parts.
//!
//! **Throughput.** 32 concurrent requests (prompts of 16 tokens, 16 greedy output tokens each)
//! served with continuous batching over the paged KV cache, with 1, 8 and 32 distinct rank-16
//! adapters on all seven projections of every layer, against serving the same requests one
//! adapter at a time (the requests grouped by adapter, each group run through the engine
//! alone), measured in the same run. Decode throughput counts the tokens of steps that run no
//! prefill, over those steps' wall time. TTFT and inter-token latencies come from the engine's
//! per-request statistics. Targets: 32 distinct adapters ≥ 0.8× the single-adapter decode
//! tokens/s, and ≥ 5× the one-adapter-at-a-time decode tokens/s. The adapters are stored in
//! bf16 (as the memory part's, and as the model holds them: no f32 copy); the same cases are
//! then run again with the adapters stored in f32 (figures prefixed `f32_`).
//!
//! **Ensembles.** The same 32 requests (bf16 adapters) each naming an ensemble of 2 or 4 of
//! the 32 adapters (`a3+a4`, `a3+a4+a5+a6`: one SGMV segment per member, no merged copy)
//! against each naming one adapter, in the same run: an ensemble should cost its members' LoRA
//! FLOPs, not a model's.
//!
//! **Memory.** 1,000 rank-16 all-linear adapters (bf16, written to a temporary hub folder by the
//! bench) registered in an [`AdapterPool`] with a 512 MB budget; 1,000 requests cycling through
//! all of them are served by the engine (32 running at once), which pins the adapters of running
//! requests and detaches the ones the pool evicts. The process's resident memory (`VmRSS`), the
//! pool's resident bytes and the model's attached bytes are sampled as it runs.
//!
//! Model: hidden 1024, MLP 2816, 8 layers, 16 heads / 4 key-value heads, vocabulary 8192
//! (≈ 106M parameters).
//!
//! Writes `engine.json` and `engine.png` (decode tokens/s per case; memory over time) under
//! `target/bench-results/` (or `$OPENLEDGER_BENCH_OUT`).
//!
//! `cargo bench -p openledger-benches --bench engine` (`OPENLEDGER_ENGINE_SKIP_MEMORY=1` skips the
//! memory part; `OPENLEDGER_ENGINE_ONLY_ENSEMBLES=1` runs the ensembles part alone)

use std::path::Path;
use std::time::{Duration, Instant};

use plotters::prelude::*;

use openledger_benches::synthetic::{self, VOCAB};
use openledger_benches::{Report, median_secs};
use openledger_core::DType;
use openledger_lora::adapter::LoadOptions;
use openledger_lora::model::{Model, PagedModel};
use openledger_lora::pool::{AdapterId, AdapterPool, HubDir};
use openledger_lora::serve::{
    AllReady, Engine, EngineConfig, Event, KvDtype, Preemption, Request, RequestHandle,
    SamplingParams,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const RANK: usize = 16;
const REQUESTS: usize = 32;
const PROMPT: usize = 16;
const NEW_TOKENS: usize = 16;
/// Adapters registered for the memory part.
const MANY: usize = 1000;
/// The pool's budget in the memory part.
const BUDGET: usize = 512 << 20;
/// Decoder layers of the synthetic model (≈ 106M parameters).
const LAYERS: usize = 8;

fn adapter_id(k: usize) -> AdapterId {
    AdapterId::new(&format!("a{k}")).expect("id")
}

/// What serving a set of requests measured.
#[derive(Default)]
struct Run {
    decode_tokens: usize,
    decode_time: Duration,
    ttft: Vec<Duration>,
    inter_token: Vec<Duration>,
}

impl Run {
    fn decode_tokens_per_s(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_time.as_secs_f64()
    }

    fn absorb(&mut self, other: Run) {
        self.decode_tokens += other.decode_tokens;
        self.decode_time += other.decode_time;
        self.ttft.extend(other.ttft);
        self.inter_token.extend(other.inter_token);
    }
}

/// Decode throughput and latencies of the 32 requests with 1, 8 and 32 distinct adapters
/// (attached to `paged` as `dtype`), each beside the same requests served one adapter at a time.
fn throughput(
    paged: &PagedModel,
    prompts: &[Vec<u32>],
    dtype: DType,
    report: &mut Report,
    bars: &mut Vec<(String, f64)>,
) {
    // The headline figures are the bf16 adapters'; f32 ones are prefixed.
    let (key, label) = match dtype {
        DType::BF16 => ("", " bf16"),
        DType::F32 => ("f32_", " f32"),
        other => panic!("adapters are benched as bf16 or f32, not {other:?}"),
    };
    let mut single = f64::NAN;
    for distinct in [1, 8, 32] {
        let requests: Vec<(Vec<u32>, AdapterId)> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), adapter_id(i % distinct)))
            .collect();
        let mut batched = serve(paged, &requests);
        let mut one_at_a_time = Run::default();
        if distinct > 1 {
            for a in 0..distinct {
                let group: Vec<_> = requests
                    .iter()
                    .filter(|r| r.1 == adapter_id(a))
                    .cloned()
                    .collect();
                one_at_a_time.absorb(serve(paged, &group));
            }
        }
        let tps = batched.decode_tokens_per_s();
        bars.push((format!("{distinct}{label}"), tps));
        let k = |what: &str| format!("{key}adapters_{distinct}_{what}");
        report.figure(&k("decode_tokens_per_s"), tps);
        report.figure(&k("ttft_p50_ms"), quantile_ms(&mut batched.ttft, 0.5));
        report.figure(&k("ttft_p99_ms"), quantile_ms(&mut batched.ttft, 0.99));
        report.figure(
            &k("inter_token_p50_ms"),
            quantile_ms(&mut batched.inter_token, 0.5),
        );
        report.figure(
            &k("inter_token_p99_ms"),
            quantile_ms(&mut batched.inter_token, 0.99),
        );
        if distinct == 1 {
            single = tps;
        } else {
            let each = one_at_a_time.decode_tokens_per_s();
            bars.push((format!("{distinct}{label} 1-by-1"), each));
            report.figure(&k("one_at_a_time_decode_tokens_per_s"), each);
            report.ratio(&k("vs_single_adapter"), tps, single, "≥ 0.8");
            report.ratio(&k("vs_one_adapter_at_a_time"), tps, each, "≥ 5");
        }
    }
}

/// Decode throughput of the 32 requests each naming an ensemble of 1, 2 and 4 of the attached
/// adapters (request `i`: adapters `i, i+1, …` modulo 32, each at weight 1), measured `reps`
/// times in turn; the median of each.
fn ensembles(
    paged: &PagedModel,
    prompts: &[Vec<u32>],
    report: &mut Report,
    bars: &mut Vec<(String, f64)>,
) {
    const REPS: usize = 3;
    let sizes = [1usize, 2, 4];
    let requests = |members: usize| -> Vec<(Vec<u32>, AdapterId)> {
        prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ids: Vec<(AdapterId, f32)> = (0..members)
                    .map(|j| (adapter_id((i + j) % REQUESTS), 1.0))
                    .collect();
                let id = if members == 1 {
                    ids[0].0.clone()
                } else {
                    AdapterId::ensemble(&ids).expect("ensemble")
                };
                (p.clone(), id)
            })
            .collect()
    };
    let mut tps = vec![Vec::new(); sizes.len()];
    for _ in 0..REPS {
        for (k, &m) in sizes.iter().enumerate() {
            tps[k].push(serve(paged, &requests(m)).decode_tokens_per_s());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = tps.iter_mut().map(median).collect();
    for (&m, &t) in sizes.iter().zip(&medians) {
        bars.push((format!("{m}-adapter ensembles"), t));
        report.figure(&format!("ensemble_{m}_adapters_decode_tokens_per_s"), t);
        if m > 1 {
            report.ratio(
                &format!("ensemble_{m}_adapters_vs_single_adapter"),
                t,
                medians[0],
                "an ensemble costs its members' LoRA FLOPs, not a model's",
            );
        }
    }
}

/// Serves `requests` (prompt, adapter or ensemble) together through one engine.
fn serve(paged: &PagedModel, requests: &[(Vec<u32>, AdapterId)]) -> Run {
    let block_size = 16;
    let config = EngineConfig {
        kv_layout: paged.kv_layout(block_size),
        num_blocks: REQUESTS * (PROMPT + NEW_TOKENS).div_ceil(block_size) + 8,
        max_tokens_per_step: 256,
        max_running: REQUESTS,
        max_context: PROMPT + NEW_TOKENS,
        preemption: Preemption::Recompute,
        kv_dtype: KvDtype::F32,
    };
    let mut engine = Engine::new(paged.clone(), AllReady, config).expect("engine");
    let handles: Vec<RequestHandle> = requests
        .iter()
        .map(|(prompt, a)| {
            engine.submit(Request {
                prompt: prompt.clone(),
                adapter: Some(a.clone()),
                sampling: SamplingParams {
                    max_new_tokens: NEW_TOKENS,
                    ..Default::default()
                },
            })
        })
        .collect();
    let mut run = Run::default();
    while engine.pending() > 0 {
        let t0 = Instant::now();
        let r = engine.step().expect("step");
        if r.prefill_tokens == 0 && r.decode_tokens > 0 {
            run.decode_time += t0.elapsed();
            run.decode_tokens += r.decode_tokens;
        }
    }
    for h in handles {
        for e in h {
            match e {
                Event::Finished { stats, .. } => {
                    assert_eq!(stats.tokens_generated, NEW_TOKENS);
                    run.ttft.extend(stats.time_to_first_token);
                    run.inter_token.extend(stats.inter_token_latencies);
                }
                Event::Failed { error, .. } => panic!("request failed: {error}"),
                Event::Token { .. } => {}
            }
        }
    }
    run
}

/// Nearest-rank quantile in milliseconds.
fn quantile_ms(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1e3
}

/// Median seconds of the dense matmuls of one forward pass over `rows` rows: the seven
/// projections of every layer and the LM head, through candle's CPU matmul, with the weights
/// laid out as the model holds them (`W` row-major, run as `(W · xᵀ)ᵀ`) or, `transposed_copy`,
/// as it held them before (a contiguous `Wᵀ`, run as `x · Wᵀ`). The floor under a decode
/// step's time.
fn dense_floor_secs(rows: usize, transposed_copy: bool, rng: &mut ChaCha8Rng) -> f64 {
    use candle_core::{Device, Tensor};
    let mut shapes: Vec<(usize, usize)> = synthetic::projections()
        .iter()
        .map(|&(_, i, o)| (i, o))
        .collect();
    shapes.push((synthetic::H, VOCAB));
    let weights: Vec<Tensor> = shapes
        .iter()
        .map(|&(i, o)| {
            let w: Vec<f32> = (0..i * o).map(|_| rng.random_range(-0.03..0.03)).collect();
            let w = Tensor::from_vec(w, (o, i), &Device::Cpu).expect("tensor");
            if transposed_copy {
                w.t().and_then(|t| t.contiguous()).expect("transpose")
            } else {
                w
            }
        })
        .collect();
    let inputs: Vec<Tensor> = shapes
        .iter()
        .map(|&(i, _)| {
            let x: Vec<f32> = (0..rows * i).map(|_| rng.random_range(-1.0..1.0)).collect();
            Tensor::from_vec(x, (rows, i), &Device::Cpu).expect("tensor")
        })
        .collect();
    // As the model runs them: x transposed in, W · xᵀ, the result transposed back.
    let transpose = |src: &[f32], rows: usize, cols: usize| {
        let mut out = vec![0f32; src.len()];
        for (r, row) in src.chunks_exact(cols).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                out[c * rows + r] = v;
            }
        }
        out
    };
    let run = |k: usize| -> Vec<f32> {
        let (x, w) = (&inputs[k], &weights[k]);
        if transposed_copy {
            return x
                .matmul(w)
                .and_then(|y| y.flatten_all()?.to_vec1())
                .expect("matmul");
        }
        let (i, o) = shapes[k];
        let xv = x.flatten_all().and_then(|x| x.to_vec1::<f32>()).expect("x");
        let xt = Tensor::from_vec(transpose(&xv, rows, i), (i, rows), &Device::Cpu).expect("xt");
        let yt = w
            .matmul(&xt)
            .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
            .expect("matmul");
        transpose(&yt, o, rows)
    };
    median_secs(5, || {
        for layer in 0..=LAYERS {
            let range = if layer < LAYERS { 0..7 } else { 7..8 };
            for k in range {
                std::hint::black_box(run(k));
            }
        }
    })
}

/// The process's resident set size in bytes (`VmRSS` of /proc/self/status; 0 where there is
/// none).
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// One sample of the memory part.
#[derive(Clone, Copy)]
struct MemSample {
    secs: f64,
    requests_done: usize,
    rss: usize,
    pool: usize,
    attached: usize,
}

/// Serves `MANY` requests, one per adapter, through an engine whose adapters come from a
/// `BUDGET`-byte pool; returns the memory samples.
fn memory(model: &Model, report: &mut Report) -> Vec<MemSample> {
    const PROMPT: usize = 4;
    const NEW: usize = 4;
    const RUNNING: usize = 32;
    let dir = tempfile::tempdir().expect("temporary folder");
    let t0 = Instant::now();
    for k in 0..MANY {
        synthetic::adapter_builder(RANK, 10_000 + k as u64, LAYERS, DType::BF16)
            .write_dir(&dir.path().join(adapter_id(k).as_str()))
            .expect("write adapter");
    }
    report.figure("memory_adapters_written_s", t0.elapsed().as_secs_f64());
    let pool: AdapterPool = AdapterPool::new(BUDGET);
    let hub = HubDir::open(dir.path()).expect("hub");
    assert_eq!(pool.register_hub(&hub).expect("register"), MANY);
    let paged = PagedModel::with_pool(model.clone(), pool.clone());
    let block_size = 16;
    let config = EngineConfig {
        kv_layout: paged.kv_layout(block_size),
        num_blocks: RUNNING * (PROMPT + NEW).div_ceil(block_size) + 8,
        max_tokens_per_step: 128,
        max_running: RUNNING,
        max_context: PROMPT + NEW,
        preemption: Preemption::Recompute,
        kv_dtype: KvDtype::F32,
    };
    let mut engine = Engine::new(paged, pool.clone(), config).expect("engine");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let handles: Vec<RequestHandle> = (0..MANY)
        .map(|k| {
            engine.submit(Request {
                prompt: (0..PROMPT)
                    .map(|_| rng.random_range(0..VOCAB as u32))
                    .collect(),
                adapter: Some(adapter_id(k)),
                sampling: SamplingParams {
                    max_new_tokens: NEW,
                    ..Default::default()
                },
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut done = 0;
    let mut steps = 0usize;
    let sample = |done: usize, engine: &Engine<PagedModel, AdapterPool>| MemSample {
        secs: t0.elapsed().as_secs_f64(),
        requests_done: done,
        rss: rss_bytes(),
        pool: pool.stats().resident_bytes,
        attached: engine.model().attached_bytes(),
    };
    samples.push(sample(0, &engine));
    while engine.pending() > 0 {
        let r = engine.step().expect("step");
        done += r.ended;
        steps += 1;
        if r.batch_seqs == 0 && r.ended == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        if steps.is_multiple_of(10) {
            samples.push(sample(done, &engine));
        }
    }
    samples.push(sample(done, &engine));
    let serve_s = t0.elapsed().as_secs_f64();
    for h in handles {
        match h.last() {
            Some(Event::Finished { stats, .. }) => assert_eq!(stats.tokens_generated, NEW),
            other => panic!("request did not finish: {other:?}"),
        }
    }
    let stats = pool.stats();
    let mb = |b: usize| b as f64 / (1u64 << 20) as f64;
    println!("\n   t (s)  requests done   RSS (MB)   pool resident (MB)   attached (MB)");
    let every = (samples.len() / 12).max(1);
    for s in samples.iter().step_by(every).chain(samples.last()) {
        println!(
            "{:>8.1} {:>14} {:>10.0} {:>20.0} {:>15.0}",
            s.secs,
            s.requests_done,
            mb(s.rss),
            mb(s.pool),
            mb(s.attached)
        );
    }
    println!();
    let max = |f: fn(&MemSample) -> usize| samples.iter().map(f).max().unwrap_or(0);
    report.figure("memory_serve_s", serve_s);
    report.figure("memory_requests", MANY as f64);
    report.figure("memory_adapter_loads", stats.loads as f64);
    report.figure("memory_adapter_evictions", stats.evictions as f64);
    report.figure("memory_budget_mb", mb(BUDGET));
    report.figure("memory_max_pool_resident_mb", mb(max(|s| s.pool)));
    report.figure("memory_max_attached_mb", mb(max(|s| s.attached)));
    report.figure("memory_rss_start_mb", mb(samples[0].rss));
    report.figure("memory_max_rss_mb", mb(max(|s| s.rss)));
    report.ratio(
        "memory_max_pool_resident_vs_budget",
        max(|s| s.pool) as f64,
        BUDGET as f64,
        "≤ 1",
    );
    report.ratio(
        "memory_rss_growth_vs_budget",
        max(|s| s.rss).saturating_sub(samples[0].rss) as f64,
        BUDGET as f64,
        "bounded (adapters in the pool + their attached copies)",
    );
    assert!(max(|s| s.pool) <= BUDGET);
    assert_eq!(stats.pinned_count, 0);
    samples
}

/// Reads one figure of a memory sample.
type MemField = fn(&MemSample) -> usize;

fn draw(
    path: &Path,
    throughput: &[(String, f64)],
    samples: &[MemSample],
) -> Result<(), Box<dyn std::error::Error>> {
    // Without the memory part (skipped) the throughput bars take the whole picture.
    let width = if samples.is_empty() { 860 } else { 1500 };
    let root = BitMapBackend::new(path, (width, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(860);
    let ymax = throughput.iter().map(|t| t.1).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "decode tokens/s, 32 requests by adapters (blue: one mixed batch, red: 1-by-1)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(70)
        .y_label_area_size(60)
        .build_cartesian_2d((0usize..throughput.len()).into_segmented(), 0f64..ymax)?;
    let labels: Vec<String> = throughput.iter().map(|t| t.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(throughput.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 12))
        .y_desc("decode tokens/s")
        .draw()?;
    chart.draw_series(throughput.iter().enumerate().map(|(i, (label, v))| {
        let color = if label.contains("1-by-1") {
            RED.mix(0.6)
        } else {
            BLUE.mix(0.7)
        };
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), *v),
            ],
            color.filled(),
        );
        bar.set_margin(0, 0, 8, 8);
        bar
    }))?;
    if samples.is_empty() {
        root.present()?;
        return Ok(());
    }
    let mb = |b: usize| b as f64 / (1u64 << 20) as f64;
    let tmax = samples.last().map_or(1.0, |s| s.secs).max(1.0);
    let mmax = samples
        .iter()
        .map(|s| mb(s.rss).max(mb(BUDGET)))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            format!("memory, {MANY} adapters through a 512 MB pool"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..tmax, 0f64..mmax)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("MB")
        .draw()?;
    let lines: [(&str, RGBColor, MemField); 3] = [
        ("process RSS", BLACK, |s| s.rss),
        ("pool resident", BLUE, |s| s.pool),
        ("model attached", GREEN, |s| s.attached),
    ];
    for (label, color, f) in lines {
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.secs, mb(f(s)))),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, mb(BUDGET)), (tmax, mb(BUDGET))],
            RED.stroke_width(1),
        ))?
        .label("pool budget")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    let t_start = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let model = synthetic::model_with_layers(&mut rng, LAYERS);
    println!(
        "engine: synthetic llama, {} layers, {:.0}M parameters",
        LAYERS,
        synthetic::parameters(LAYERS) as f64 / 1e6
    );
    let prompts: Vec<Vec<u32>> = (0..REQUESTS)
        .map(|_| {
            (0..PROMPT)
                .map(|_| rng.random_range(0..VOCAB as u32))
                .collect()
        })
        .collect();
    let only_ensembles = std::env::var_os("OPENLEDGER_ENGINE_ONLY_ENSEMBLES").is_some();
    let mut report = Report::new(if only_ensembles {
        "engine_ensembles"
    } else {
        "engine"
    });
    let mut bars = Vec::new();
    // The adapters as a pool holds them (bf16, the memory part's adapters), then the same
    // values stored as f32 (twice the bytes each decode step reads).
    let dtypes: &[DType] = if only_ensembles {
        &[DType::BF16]
    } else {
        &[DType::BF16, DType::F32]
    };
    for &dtype in dtypes {
        let mut paged = PagedModel::new(model.clone());
        for k in 0..REQUESTS {
            let adapter = synthetic::adapter_builder(RANK, k as u64, LAYERS, dtype)
                .build(&LoadOptions::default())
                .expect("adapter");
            paged.attach(adapter_id(k), &adapter).expect("attach");
        }
        // Warm-up (thread pool, allocator).
        serve(&paged, &[(prompts[0].clone(), adapter_id(0))]);
        if !only_ensembles {
            throughput(&paged, &prompts, dtype, &mut report, &mut bars);
        }
        if dtype == DType::BF16 {
            ensembles(&paged, &prompts, &mut report, &mut bars);
        }
    }
    // Where a decode step's time goes: the dense matmuls alone, at 1 and 32 rows, with the
    // weight layout the model uses and with the one it used before.
    let matmul_flop = 2.0 * (synthetic::parameters(LAYERS) - VOCAB * synthetic::H) as f64;
    let floors: &[(&str, bool)] = if only_ensembles {
        &[]
    } else {
        &[("row_major_w", false), ("contiguous_wt_before", true)]
    };
    for &(name, transposed_copy) in floors {
        let floor_1 = dense_floor_secs(1, transposed_copy, &mut rng);
        let floor_32 = dense_floor_secs(REQUESTS, transposed_copy, &mut rng);
        report.figure(&format!("dense_matmuls_{name}_1_row_ms"), floor_1 * 1e3);
        report.figure(&format!("dense_matmuls_{name}_32_rows_ms"), floor_32 * 1e3);
        report.figure(
            &format!("dense_matmuls_{name}_32_rows_gflop_per_s"),
            matmul_flop * REQUESTS as f64 / floor_32 / 1e9,
        );
        report.ratio(
            &format!("dense_floor_{name}_32_batched_vs_one_at_a_time"),
            REQUESTS as f64 * floor_1,
            floor_32,
            "the most batching can give with this matmul",
        );
    }
    // The memory part starts from the base model alone (the throughput part's adapters were
    // dropped with its engines).
    let samples = if only_ensembles || std::env::var_os("OPENLEDGER_ENGINE_SKIP_MEMORY").is_some() {
        Vec::new()
    } else {
        memory(&model, &mut report)
    };
    report.figure("total_run_s", t_start.elapsed().as_secs_f64());
    match report.save() {
        Ok(p) => {
            println!("saved {}", p.display());
            let png = p.with_extension("png");
            match draw(&png, &bars, &samples) {
                Ok(()) => println!("saved {}", png.display()),
                Err(e) => eprintln!("could not draw the plot: {e}"),
            }
        }
        Err(e) => eprintln!("could not save the report: {e}"),
    }
}
