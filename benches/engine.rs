//! The serving engine end to end on a real (random) llama-shaped model: 32 concurrent requests
//! (prompts of 16 tokens, 16 greedy output tokens each) served with continuous batching over the
//! paged KV cache, with 1, 8 and 32 distinct rank-16 adapters on all seven projections of every
//! layer, against serving the same requests one adapter at a time (the requests grouped by
//! adapter, each group run through the engine alone), measured in the same run.
//!
//! Model: hidden 1024, MLP 2816, 4 layers, 16 heads / 4 key-value heads, vocabulary 8192
//! (≈ 62M parameters; sized for a run under two minutes on a 2-core CPU).
//!
//! Decode throughput counts the tokens of steps that run no prefill, over those steps' wall
//! time. TTFT and inter-token latencies come from the engine's per-request statistics.
//! Targets: 32 distinct adapters ≥ 0.8× the single-adapter decode tokens/s, and ≥ 5× the
//! one-adapter-at-a-time decode tokens/s.
//!
//! `cargo bench -p openledger-benches --bench engine`

use std::time::{Duration, Instant};

use openledger_benches::Report;
use openledger_benches::synthetic::{self, VOCAB};
use openledger_lora::model::PagedModel;
use openledger_lora::pool::AdapterId;
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

/// Serves `requests` (prompt, adapter index) together through one engine.
fn serve(paged: &PagedModel, requests: &[(Vec<u32>, usize)]) -> Run {
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
                adapter: Some(adapter_id(*a)),
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

fn main() {
    let t_start = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut paged = PagedModel::new(synthetic::model(&mut rng));
    for k in 0..REQUESTS {
        paged
            .attach(adapter_id(k), &synthetic::adapter(RANK, k as u64))
            .expect("attach");
    }
    let prompts: Vec<Vec<u32>> = (0..REQUESTS)
        .map(|_| {
            (0..PROMPT)
                .map(|_| rng.random_range(0..VOCAB as u32))
                .collect()
        })
        .collect();
    // Warm-up (thread pool, allocator).
    serve(&paged, &[(prompts[0].clone(), 0)]);
    let mut report = Report::new("engine");
    let mut single = f64::NAN;
    for distinct in [1, 8, 32] {
        let requests: Vec<(Vec<u32>, usize)> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i % distinct))
            .collect();
        let mut batched = serve(&paged, &requests);
        let mut one_at_a_time = Run::default();
        if distinct > 1 {
            for a in 0..distinct {
                let group: Vec<_> = requests.iter().filter(|r| r.1 == a).cloned().collect();
                one_at_a_time.absorb(serve(&paged, &group));
            }
        }
        let tps = batched.decode_tokens_per_s();
        report.figure(&format!("adapters_{distinct}_decode_tokens_per_s"), tps);
        report.figure(
            &format!("adapters_{distinct}_ttft_p50_ms"),
            quantile_ms(&mut batched.ttft, 0.5),
        );
        report.figure(
            &format!("adapters_{distinct}_ttft_p99_ms"),
            quantile_ms(&mut batched.ttft, 0.99),
        );
        report.figure(
            &format!("adapters_{distinct}_inter_token_p50_ms"),
            quantile_ms(&mut batched.inter_token, 0.5),
        );
        report.figure(
            &format!("adapters_{distinct}_inter_token_p99_ms"),
            quantile_ms(&mut batched.inter_token, 0.99),
        );
        if distinct == 1 {
            single = tps;
        } else {
            let each = one_at_a_time.decode_tokens_per_s();
            report.figure(
                &format!("adapters_{distinct}_one_at_a_time_decode_tokens_per_s"),
                each,
            );
            report.ratio(
                &format!("adapters_{distinct}_vs_single_adapter"),
                tps,
                single,
                "≥ 0.8",
            );
            report.ratio(
                &format!("adapters_{distinct}_vs_one_adapter_at_a_time"),
                tps,
                each,
                "≥ 5",
            );
        }
    }
    report.figure("total_run_s", t_start.elapsed().as_secs_f64());
    match report.save() {
        Ok(p) => println!("saved {}", p.display()),
        Err(e) => eprintln!("could not save the report: {e}"),
    }
}
