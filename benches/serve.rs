//! Serving benchmarks.
//!
//! 1. Paged attention for one decode step (32 query heads, 8 KV heads, head_dim 128, block size
//!    16), 16 sequences of 1,024 tokens each, their blocks interleaved in the pool, against the
//!    same arithmetic over contiguous per-sequence K/V arrays in the usual `[len, n_kv, head_dim]`
//!    layout, measured in the same run: what paging costs (the block-table indirection) or saves
//!    (blocks store each KV head's rows together). Target: ≤ 1.25× the contiguous baseline.
//!    The same with f16 storage (half the memory), as a ratio to f32 storage.
//! 2. The scheduler's own cost per decoded token: 64 sequences decoding over a 32,000-token
//!    vocabulary with a model that does no work but copy out precomputed logits, against copying
//!    one row of logits and sampling it greedily (the least any engine does per token with this
//!    model). Reported as µs per token and as a ratio.
//! 3. Stop strings over a growing output: a 2,000-token answer checked after every token by
//!    `StopChecker`, which keeps the output's text a few tokens at a time, against decoding the
//!    whole output after every token and searching it (what the check did before), both with a
//!    real `tokenizers` decode (a 32,000-word SentencePiece-style vocabulary).
//!
//! Run with `cargo bench -p openledger-benches --bench serve`.

use std::hint::black_box;

use openledger_benches::{Report, median_secs};
use openledger_lora::model::Tokenizer;
use openledger_lora::serve::{
    AllReady, AttentionParams, AttnSeq, Detokenize, Engine, EngineConfig, KvDtype, KvLayout,
    Logits, PagedKvCache, Preemption, Request, Sampler, SamplingParams, SeqId, StepBatch,
    StepModel, StopChecker, paged_attention,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

const N_HEADS: usize = 32;
const N_KV: usize = 8;
const HD: usize = 128;

/// The baseline: the same attention over `[len, N_KV, HD]` contiguous K and V per sequence.
/// Shapes are read at run time, as the paged kernel reads them from the cache's layout (a
/// compile-time head_dim would let the compiler specialise the baseline alone).
fn contiguous_attention(k: &[Vec<f32>], v: &[Vec<f32>], q: &[f32], out: &mut [f32]) {
    let (n_heads, n_kv, hd) = black_box((N_HEADS, N_KV, HD));
    let group = n_heads / n_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(hd)
        .zip(q.par_chunks(hd))
        .enumerate()
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, (i, (o, qh))| {
            let (s, h) = (i / n_heads, i % n_heads);
            let kvh = h / group;
            let len = k[s].len() / (n_kv * hd);
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for j in 0..len {
                let kj = &k[s][(j * n_kv + kvh) * hd..][..hd];
                let x = scale * dot(qh, kj);
                max = max.max(x);
                scores.push(x);
            }
            let mut total = 0.0f32;
            for x in scores.iter_mut() {
                *x = (*x - max).exp();
                total += *x;
            }
            o.fill(0.0);
            for (j, w) in scores.iter().enumerate() {
                let vj = &v[s][(j * n_kv + kvh) * hd..][..hd];
                let p = w / total;
                for (acc, x) in o.iter_mut().zip(vj) {
                    *acc += p * x;
                }
            }
        });
}

/// The same dot product as the paged kernel's (eight partial sums), so the two differ only in
/// how they find K and V.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

fn attention(report: &mut Report) {
    let (seqs, len, bs) = (16usize, 1024usize, 16usize);
    let layout = KvLayout {
        n_layers: 1,
        n_kv_heads: N_KV,
        head_dim: HD,
        block_size: bs,
    };
    let mut kv = PagedKvCache::new(layout, seqs * len / bs).unwrap();
    let mut kv16 = PagedKvCache::with_dtype(layout, seqs * len / bs, KvDtype::F16).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut ks = vec![Vec::new(); seqs];
    let mut vs = vec![Vec::new(); seqs];
    for s in 0..seqs {
        kv.add_sequence(SeqId(s as u64)).unwrap();
        kv16.add_sequence(SeqId(s as u64)).unwrap();
    }
    for p in 0..len {
        for s in 0..seqs {
            let k: Vec<f32> = (0..N_KV * HD)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let v: Vec<f32> = (0..N_KV * HD)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            kv.append_slots(SeqId(s as u64), 1).unwrap();
            kv.write(SeqId(s as u64), 0, p, &k, &v).unwrap();
            kv16.append_slots(SeqId(s as u64), 1).unwrap();
            kv16.write(SeqId(s as u64), 0, p, &k, &v).unwrap();
            ks[s].extend_from_slice(&k);
            vs[s].extend_from_slice(&v);
        }
    }
    let q: Vec<f32> = (0..seqs * N_HEADS * HD)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let batch: Vec<AttnSeq> = (0..seqs)
        .map(|s| AttnSeq {
            seq: SeqId(s as u64),
            start_pos: len - 1,
            n_queries: 1,
        })
        .collect();
    let params = AttentionParams {
        n_heads: N_HEADS,
        scale: 1.0 / (HD as f32).sqrt(),
        sliding_window: None,
    };
    let mut out = vec![0.0f32; q.len()];
    let mut base = vec![0.0f32; q.len()];
    // Alternate the two, so load from other processes hits both alike; medians of 15 each.
    let (mut tp, mut td) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        tp.push(median_secs(1, || {
            paged_attention(&kv, 0, &params, &batch, &q, &mut out).unwrap();
        }));
        td.push(median_secs(1, || {
            contiguous_attention(&ks, &vs, &q, &mut base)
        }));
    }
    tp.sort_by(f64::total_cmp);
    td.sort_by(f64::total_cmp);
    let (t_paged, t_dense) = (tp[7], td[7]);
    let max_diff = out
        .iter()
        .zip(&base)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_diff <= 1e-6,
        "paged and contiguous differ by {max_diff}"
    );
    report.figure("attention_decode_16x1024_paged_ms", t_paged * 1e3);
    report.figure("attention_decode_16x1024_contiguous_ms", t_dense * 1e3);
    report.ratio("attention_paged_vs_contiguous", t_paged, t_dense, "≤ 1.25×");
    let mut out16 = vec![0.0f32; q.len()];
    let t_f16 = median_secs(15, || {
        paged_attention(&kv16, 0, &params, &batch, &q, &mut out16).unwrap();
    });
    report.figure("attention_decode_16x1024_paged_f16_ms", t_f16 * 1e3);
    report.ratio(
        "attention_f16_vs_f32_storage",
        t_f16,
        t_paged,
        "half the memory; time ≤ 1.5×",
    );
}

/// Returns fixed logits; does no model work, so the step measures the scheduler.
struct NullModel {
    row: Vec<f32>,
}

impl StepModel for NullModel {
    openledger_lora::host_kv_cache!();

    fn vocab_size(&self) -> usize {
        self.row.len()
    }

    fn forward(
        &mut self,
        batch: &StepBatch,
        _kv: &mut PagedKvCache,
    ) -> Result<Logits, Box<dyn std::error::Error + Send + Sync>> {
        let rows = batch.seqs.iter().filter(|s| s.needs_logits).count();
        let mut data = Vec::with_capacity(rows * self.row.len());
        for _ in 0..rows {
            data.extend_from_slice(&self.row);
        }
        Ok(Logits { data })
    }
}

fn scheduler(report: &mut Report) {
    let (vocab, seqs, new_tokens) = (32_000usize, 64usize, 64usize);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let row: Vec<f32> = (0..vocab).map(|_| rng.random_range(-5.0..5.0)).collect();
    let config = EngineConfig {
        kv_layout: KvLayout {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: 1,
            block_size: 16,
        },
        num_blocks: 4096,
        max_tokens_per_step: 4096,
        max_running: seqs,
        max_context: 4096,
        preemption: Preemption::Recompute,
        kv_dtype: KvDtype::F32,
    };
    let mut decode_s = 0.0;
    let runs = 5;
    for _ in 0..runs {
        let mut e = Engine::new(NullModel { row: row.clone() }, AllReady, config).unwrap();
        let hs: Vec<_> = (0..seqs)
            .map(|i| {
                e.submit(Request {
                    prompt: vec![i as u32; 32],
                    adapter: None,
                    sampling: SamplingParams {
                        max_new_tokens: new_tokens,
                        ..Default::default()
                    },
                })
            })
            .collect();
        e.step().unwrap(); // prefill
        let t0 = std::time::Instant::now();
        e.run_until_idle().unwrap();
        decode_s += t0.elapsed().as_secs_f64();
        black_box(hs);
    }
    let per_token = decode_s / runs as f64 / (seqs * (new_tokens - 1)) as f64;
    let mut sampler = Sampler::new(&SamplingParams::default()).unwrap();
    let history = vec![0u32; 64];
    // The least any engine does per token with this model: take a row of logits, sample it.
    let sample = median_secs(200, || {
        let copy = row.clone();
        sampler.sample(&copy, &history).unwrap()
    });
    report.figure("scheduler_us_per_decoded_token", per_token * 1e6);
    report.figure("copy_and_greedy_sample_32k_us", sample * 1e6);
    report.ratio(
        "scheduler_token_vs_sample_alone",
        per_token,
        sample,
        "≤ 1.5×",
    );
}

/// Section 3: stop strings checked a few tokens at a time vs over the whole output.
fn stop_strings(report: &mut Report) {
    const WORDS: usize = 32_000;
    const TOKENS: usize = 2_000;
    let vocab: Vec<String> = (0..WORDS).map(|i| format!("\"▁w{i}\": {i}")).collect();
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "post_processor": null,
        "pre_tokenizer": {{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}},
        "decoder": {{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}},
        "model": {{"type": "WordLevel", "unk_token": "▁w0", "vocab": {{{}}}}}}}"#,
        vocab.join(", ")
    );
    let tok = Tokenizer::from_bytes(json.as_bytes()).expect("the bench's tokenizer");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let out: Vec<u32> = (0..TOKENS)
        .map(|_| rng.random_range(0..WORDS as u32))
        .collect();
    let params = SamplingParams {
        stop_strings: vec!["\n\nQ:".into(), "</answer>".into()],
        max_new_tokens: 2 * TOKENS,
        ..Default::default()
    };
    let d: &dyn Detokenize = &tok;
    let incremental = median_secs(5, || {
        let mut c = StopChecker::new(&params);
        for n in 1..=TOKENS {
            black_box(c.check(&out[..n], Some(d)));
        }
    });
    let whole = median_secs(3, || {
        for n in 1..=TOKENS {
            let text = d.detokenize(&out[..n]);
            black_box(
                params
                    .stop_strings
                    .iter()
                    .any(|s| text.contains(s.as_str())),
            );
        }
    });
    let per_token = |s: f64| s / TOKENS as f64 * 1e6;
    report.figure(
        "stop_strings_incremental_us_per_token",
        per_token(incremental),
    );
    report.figure("stop_strings_whole_output_us_per_token", per_token(whole));
    report.ratio(
        "stop_strings_speedup_vs_whole_output",
        whole,
        incremental,
        "none; linear against quadratic in the answer's length",
    );
}

fn main() {
    let mut report = Report::new("serve");
    attention(&mut report);
    scheduler(&mut report);
    stop_strings(&mut report);
    match report.save() {
        Ok(p) => println!("saved {}", p.display()),
        Err(e) => eprintln!("could not save the report: {e}"),
    }
}
