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
//! Writes `weights.json` under `target/bench-results/` (or `$OPENLEDGER_BENCH_OUT`).
//!
//! `cargo bench -p openledger-benches --bench weights`

use openledger_benches::synthetic::{self, VOCAB};
use openledger_benches::{Report, median_secs};
use openledger_core::DType;
use openledger_lora::model::{Model, SeqInput, WeightFormat};
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
    match report.save() {
        Ok(p) => println!("saved {}", p.display()),
        Err(e) => eprintln!("could not save the report: {e}"),
    }
}
