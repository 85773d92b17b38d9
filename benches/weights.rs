//! Base weights held as stored (bf16) and quantised to int8, against the same weights widened
//! to f32, in the same run.
//!
//! One random llama-shaped model (hidden 1024, MLP 2816, 8 layers, 16 / 4 heads, vocabulary
//! 8192: ≈ 106M parameters) whose tensors are stored in bf16, built four times with
//! [`WeightFormat`]: `f32` (the baseline: every weight widened), `stored` (bf16 kept), `int8`
//! (one scale per output channel) and `int8-g128` (one per 128 inputs). For each: the bytes the
//! projections and the output head hold, single-stream greedy decode (64 tokens after a
//! 16-token prompt, over the KV cache) in tokens/s, prefill of 4 × 64-token prompts in
//! tokens/s, the largest logit gap to the f32 model on a 64-token prompt (absolute, and over
//! the f32 logits' standard deviation), and how many of the 64 greedy tokens equal the f32
//! model's.
//!
//! Then candle's `quantized` module (GGUF Q8_0 blocks, its `QMatMul` with its own AVX kernels)
//! against ours (`int8-g32`, the layout a Q8_0 file is held in) on one projection of each of the
//! model's MLP shapes (1024 → 2816 and 2816 → 1024) at 1, 32 and 128 rows: the time per matmul
//! (median of 41, called from a thread of rayon's pool as the engine's step calls it, each call
//! on the next of 8 weight sets so that no call finds its weights in L2), and each
//! result's largest gap to the f32 product over its root mean square.
//!
//! Writes `weights.json` under `target/bench-results/` (or `$OPENLEDGER_BENCH_OUT`).
//!
//! `cargo bench -p openledger-benches --bench weights`

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use openledger_benches::synthetic::{self, VOCAB};
use openledger_benches::{Report, median_secs};
use openledger_core::DType;
use openledger_lora::model::{BaseWeight, Model, SeqInput, WeightFormat};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const LAYERS: usize = 8;
const NEW_TOKENS: usize = 64;

fn held_bytes(m: &Model) -> usize {
    let w = m.base_weights();
    w.layers
        .iter()
        .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
        .chain([&w.lm_head])
        .map(|lin| lin.weight.bytes())
        .sum()
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (cfg, tensors) = synthetic::tensors_with_layers(&mut rng, LAYERS, DType::BF16);
    let prompt: Vec<u32> = (0..16).map(|_| rng.random_range(0..VOCAB as u32)).collect();
    let long: Vec<Vec<u32>> = (0..4)
        .map(|_| (0..64).map(|_| rng.random_range(0..VOCAB as u32)).collect())
        .collect();
    let mut report = Report::new("weights");
    let mut baseline: Option<(Vec<f32>, Vec<u32>, f64, f64)> = None;
    println!(
        "{:<10} {:>10} {:>14} {:>14} {:>12} {:>14} {:>8}",
        "format",
        "MB held",
        "decode tok/s",
        "prefill tok/s",
        "max |Δlogit|",
        "Δ / std(f32)",
        "greedy"
    );
    for (name, format) in [
        ("f32", WeightFormat::F32),
        ("stored", WeightFormat::Stored),
        ("int8", WeightFormat::Int8 { group: 0 }),
        ("int8_g128", WeightFormat::Int8 { group: 128 }),
    ] {
        let m =
            Model::from_tensors_with_format(cfg.clone(), tensors.clone(), format).expect("model");
        let bytes = held_bytes(&m);
        let t_decode = median_secs(3, || m.greedy(None, &prompt, NEW_TOKENS).expect("greedy"));
        let tokens = m.greedy(None, &prompt, NEW_TOKENS).expect("greedy");
        let seqs: Vec<SeqInput<'_>> = long
            .iter()
            .map(|t| SeqInput {
                adapter: None,
                tokens: t,
            })
            .collect();
        let t_prefill = median_secs(3, || m.forward(&seqs).expect("forward"));
        let logits = m.forward(&seqs[..1]).expect("forward").remove(0);
        let decode = NEW_TOKENS as f64 / t_decode;
        let prefill = (4 * 64) as f64 / t_prefill;
        report.figure(&format!("{name}_held_mb"), bytes as f64 / 1e6);
        report.figure(&format!("{name}_decode_tokens_per_s"), decode);
        report.figure(&format!("{name}_prefill_tokens_per_s"), prefill);
        let (gap, rel, same) = match &baseline {
            None => {
                baseline = Some((logits, tokens, decode, prefill));
                (0.0, 0.0, NEW_TOKENS)
            }
            Some((base, base_tokens, base_decode, base_prefill)) => {
                let gap = logits
                    .iter()
                    .zip(base)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let mean = base.iter().sum::<f32>() / base.len() as f32;
                let std = (base.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
                    / base.len() as f32)
                    .sqrt();
                let same = tokens
                    .iter()
                    .zip(base_tokens)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(NEW_TOKENS);
                report.ratio(
                    &format!("{name}_decode_vs_f32"),
                    decode,
                    *base_decode,
                    "> 1: faster than f32",
                );
                report.ratio(
                    &format!("{name}_prefill_vs_f32"),
                    prefill,
                    *base_prefill,
                    "> 1: faster than f32",
                );
                report.figure(&format!("{name}_max_logit_gap"), f64::from(gap));
                report.figure(&format!("{name}_logit_gap_over_std"), f64::from(gap / std));
                report.figure(&format!("{name}_greedy_tokens_equal"), same as f64);
                (gap, gap / std, same)
            }
        };
        println!(
            "{name:<10} {:>10.1} {decode:>14.1} {prefill:>14.1} {gap:>12.4} {rel:>14.4} {same:>5}/{NEW_TOKENS}",
            bytes as f64 / 1e6
        );
    }
    candle_quantized(&mut rng, &mut report);
    match report.save() {
        Ok(p) => println!("saved {}", p.display()),
        Err(e) => eprintln!("could not save the report: {e}"),
    }
}

/// Weight sets of each shape in [`candle_quantized`].
const COPIES: usize = 8;

/// Ours (`int8-g32`) against candle's Q8_0 `QMatMul` on the model's MLP shapes.
fn candle_quantized(rng: &mut ChaCha8Rng, report: &mut Report) {
    println!(
        "\n{:<14} {:>5} {:>12} {:>12} {:>10} {:>12} {:>12}",
        "shape", "rows", "ours µs", "candle µs", "candle/ours", "ours gap", "candle gap"
    );
    for (n_in, n_out) in [(1024usize, 2816usize), (2816, 1024)] {
        // COPIES different weights, used in turn, so that a timed call does not find its
        // weights in the caches the previous call filled (each copy is 2.9 MB in int8, eight
        // are more than both cores' L2).
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let mut wts = Vec::new();
        for _ in 0..COPIES {
            let w: Vec<f32> = (0..n_in * n_out)
                .map(|_| rng.random_range(-0.05f32..0.05))
                .collect();
            ours.push(BaseWeight::from_f32(
                w.clone(),
                n_out,
                n_in,
                WeightFormat::Int8 { group: 32 },
            ));
            let wt = Tensor::from_vec(w, (n_out, n_in), &Device::Cpu).expect("tensor");
            theirs.push(
                QMatMul::from_qtensor(QTensor::quantize(&wt, GgmlDType::Q8_0).expect("q8_0"))
                    .expect("qmatmul"),
            );
            wts.push(wt);
        }
        let wt = &wts[0];
        for rows in [1usize, 32, 128] {
            let x: Vec<f32> = (0..rows * n_in)
                .map(|_| rng.random_range(-1f32..1.0))
                .collect();
            let xt = Tensor::from_vec(x.clone(), (rows, n_in), &Device::Cpu).expect("tensor");
            let exact: Vec<f32> = xt
                .matmul(&wt.t().expect("t"))
                .and_then(|y| y.flatten_all())
                .and_then(|y| y.to_vec1())
                .expect("f32 product");
            let ours_y = ours[0].matmul(&x, rows, n_in).expect("ours");
            let theirs_y: Vec<f32> = theirs[0]
                .forward(&xt)
                .and_then(|y| y.flatten_all())
                .and_then(|y| y.to_vec1())
                .expect("candle");
            let std = (exact.iter().map(|v| v * v).sum::<f32>() / exact.len() as f32).sqrt();
            let gap = |y: &[f32]| {
                y.iter()
                    .zip(&exact)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
                    / std
            };
            // Timed from a thread of rayon's pool, as the engine's step calls them.
            let mut i = 0;
            let t_ours = in_pool(|| {
                median_secs(41, || {
                    i += 1;
                    ours[i % COPIES].matmul(&x, rows, n_in).expect("ours")
                })
            });
            let t_theirs = in_pool(|| {
                median_secs(41, || {
                    i += 1;
                    theirs[i % COPIES].forward(&xt).expect("candle")
                })
            });
            let shape = format!("{n_in}x{n_out}");
            println!(
                "{shape:<14} {rows:>5} {:>12.1} {:>12.1} {:>10.2}x {:>12.4} {:>12.4}",
                t_ours * 1e6,
                t_theirs * 1e6,
                t_theirs / t_ours,
                gap(&ours_y),
                gap(&theirs_y)
            );
            let key = format!("candle_q8_0_{n_in}x{n_out}_rows{rows}");
            report.figure(&format!("{key}_ours_us"), t_ours * 1e6);
            report.figure(&format!("{key}_candle_us"), t_theirs * 1e6);
            report.figure(&format!("{key}_ours_speedup"), t_theirs / t_ours);
            report.figure(&format!("{key}_ours_gap_over_std"), f64::from(gap(&ours_y)));
            report.figure(
                &format!("{key}_candle_gap_over_std"),
                f64::from(gap(&theirs_y)),
            );
        }
    }
}

/// `f()` run on a thread of rayon's global pool (so its parallel loops do not wake the pool from
/// outside on every call).
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let mut out = None;
    rayon::scope(|s| s.spawn(|_| out = Some(f())));
    out.expect("the spawned job ran")
}
