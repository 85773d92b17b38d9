//! The multi-LoRA forward pass on the CPU (synthetic llama: hidden 1024, MLP 2816, 4 layers,
//! 16 heads / 4 key-value heads, vocabulary 8192; 8 adapters of rank 16 on all seven
//! projections), against two baselines measured in the same run:
//! (a) the base model alone on the same batch (what the LoRA updates cost on top);
//! (b) the same 8 sequences run one at a time, each with its adapter (what batching saves).
//!
//! Then greedy decoding of 32 tokens after a 32-token prompt with one adapter, as the mobile
//! library's `generate` runs it (`Model::greedy`, over a key/value cache), against recomputing
//! the whole prefix for every token (what it did before).
//!
//! `cargo bench -p openledger-benches --bench model_forward`

use openledger_benches::synthetic::{self, VOCAB};
use openledger_benches::{Report, median_secs};
use openledger_lora::model::{AdapterSlot, SeqInput, greedy_token};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ADAPTERS: usize = 8;
const RANK: usize = 16;
const TOKENS: usize = 32;

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut m = synthetic::model(&mut rng);
    let ids: Vec<AdapterSlot> = (0..ADAPTERS)
        .map(|k| {
            m.attach_adapter(&format!("a{k}"), &synthetic::adapter(RANK, k as u64))
                .expect("attach")
        })
        .collect();
    let seqs: Vec<Vec<u32>> = (0..ADAPTERS)
        .map(|_| {
            (0..TOKENS)
                .map(|_| rng.random_range(0..VOCAB as u32))
                .collect()
        })
        .collect();
    let mixed: Vec<SeqInput<'_>> = seqs
        .iter()
        .zip(&ids)
        .map(|(tokens, id)| SeqInput {
            adapter: Some(*id),
            tokens,
        })
        .collect();
    let base: Vec<SeqInput<'_>> = seqs
        .iter()
        .map(|tokens| SeqInput {
            adapter: None,
            tokens,
        })
        .collect();
    let runs = 9;
    let t_mixed = median_secs(runs, || m.forward(&mixed).expect("forward"));
    let t_base = median_secs(runs, || m.forward(&base).expect("forward"));
    let t_each = median_secs(runs, || {
        mixed
            .iter()
            .map(|s| m.forward(std::slice::from_ref(s)).expect("forward").len())
            .sum::<usize>()
    });
    let mut report = Report::new("model_forward");
    let tokens = (ADAPTERS * TOKENS) as f64;
    report.figure("mixed_batch_8x32_s", t_mixed);
    report.figure("mixed_batch_tokens_per_s", tokens / t_mixed);
    report.figure("base_only_batch_s", t_base);
    report.figure("one_sequence_at_a_time_s", t_each);
    report.ratio(
        "mixed_vs_base_only",
        t_mixed,
        t_base,
        "close to 1: LoRA adds little",
    );
    report.ratio(
        "mixed_vs_one_at_a_time",
        t_mixed,
        t_each,
        "< 1: batching pays",
    );
    let prompt = &seqs[0];
    let adapter = Some(ids[0]);
    let t_greedy = median_secs(3, || m.greedy(adapter, prompt, TOKENS).expect("greedy"));
    let t_recompute = median_secs(3, || {
        let mut tokens = prompt.clone();
        for _ in 0..TOKENS {
            let logits = m
                .forward(&[SeqInput {
                    adapter,
                    tokens: &tokens,
                }])
                .expect("forward");
            tokens.push(greedy_token(&logits[0][(tokens.len() - 1) * VOCAB..]));
        }
        tokens
    });
    report.figure("greedy_32_after_32_cached_s", t_greedy);
    report.figure("greedy_32_after_32_recomputed_s", t_recompute);
    report.ratio(
        "greedy_cached_speedup_vs_recompute",
        t_recompute,
        t_greedy,
        "> 1: each token runs once",
    );
    match report.save() {
        Ok(p) => println!("saved {}", p.display()),
        Err(e) => eprintln!("could not save the report: {e}"),
    }
}
