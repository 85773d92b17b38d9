//! LoRA training and per-example gradient featurisation on the CPU, on the synthetic llama of
//! the engine bench (hidden 1024, MLP 2816, 8 layers — 107 M parameters — 16 / 4 heads,
//! vocabulary 8192), rank 16
//! on all seven projections, against the inference forward pass of the same tokens measured in
//! the same run:
//! (a) training tokens/s (forward + backward + AdamW) ÷ engine forward tokens/s;
//! (b) per-example gradients (`Trainer::example_gradient`) examples/s ÷ engine forward of the
//!     same examples.
//!
//! Each training step and each gradient is followed by the baseline forward, so that both see
//! the same load; medians are compared.
//!
//! `cargo bench -p openledger-benches --bench train` (about 1 minute on 2 cores; set
//! `OPENLEDGER_TRAIN_BENCH_STEPS` for more timed steps than the default 5).

use std::time::Instant;

use openledger_benches::synthetic::{self, VOCAB};
use openledger_benches::{Report, median};
use openledger_lora::model::SeqInput;
use openledger_train::{Example, LoraSettings, TrainConfig, TrainEvent, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Decoder layers: the ~100 M-parameter shape of the engine bench.
const LAYERS: usize = 8;
const RANK: usize = 16;
const BATCH: usize = 4;
const SEQ: usize = 128;
const GRAD_SEQ: usize = 64;
const GRAD_EXAMPLES: usize = 6;

fn tokens(rng: &mut ChaCha8Rng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..VOCAB as u32)).collect()
}

fn main() {
    let steps: usize = std::env::var("OPENLEDGER_TRAIN_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let model = synthetic::model_with_layers(&mut rng, LAYERS);
    let data: Vec<Example> = (0..BATCH * (steps + 1))
        .map(|_| Example::text(&tokens(&mut rng, SEQ)))
        .collect();
    let mut report = Report::new("train");
    let params = synthetic::parameters(LAYERS);
    report.figure("base_parameters", params as f64);
    report.figure("threads", rayon_threads() as f64);

    // The engine's forward of one training batch is timed right after every training step
    // (interleaved, so that both see the same load on a shared machine); medians are compared.
    let batch_of = |k: usize| -> Vec<SeqInput<'_>> {
        data[k * BATCH..(k + 1) * BATCH]
            .iter()
            .map(|e| SeqInput {
                adapter: None,
                tokens: &e.tokens,
            })
            .collect()
    };
    let batch_tokens = (BATCH * SEQ) as f64;
    let mut cfg = TrainConfig::new(LoraSettings::new(&["all-linear"], RANK, 32.0));
    cfg.steps = steps + 1;
    cfg.batch_size = BATCH;
    cfg.shuffle = false;
    cfg.learning_rate = 1e-4;
    let mut trainer = Trainer::new(&model, cfg).expect("trainer");
    report.figure("lora_parameters", trainer.num_parameters() as f64);
    let mut step_secs = Vec::new();
    let mut fwd_secs = Vec::new();
    let mut last = Instant::now();
    trainer
        .train(&data, &[], &mut |e| {
            if let TrainEvent::Step(s) = e {
                step_secs.push(last.elapsed().as_secs_f64());
                let t0 = Instant::now();
                std::hint::black_box(model.forward(&batch_of(s.step - 1)).expect("forward"));
                fwd_secs.push(t0.elapsed().as_secs_f64());
                last = Instant::now();
            }
        })
        .expect("train");
    // The first step warms up.
    let t_step = median(&step_secs[1..]);
    let t_fwd = median(&fwd_secs[1..]);
    report.figure("engine_forward_tokens_per_s", batch_tokens / t_fwd);
    report.figure("train_step_s", t_step);
    report.figure("train_tokens_per_s", batch_tokens / t_step);
    report.ratio(
        "train_vs_engine_forward",
        batch_tokens / t_step,
        batch_tokens / t_fwd,
        "≥ 0.25 (forward + backward ≈ 3 forwards)",
    );

    // Per-example gradients at the trained parameters, each followed by the engine's forward
    // of the same example.
    let queries: Vec<Example> = (0..GRAD_EXAMPLES)
        .map(|_| {
            let t = tokens(&mut rng, GRAD_SEQ);
            Example::prompt_response(&t[..GRAD_SEQ / 2], &t[GRAD_SEQ / 2..])
        })
        .collect();
    let mut grad_secs = Vec::new();
    let mut one_secs = Vec::new();
    let mut floats = 0;
    for q in &queries {
        let t0 = Instant::now();
        floats = trainer.example_gradient(q).expect("gradient").len();
        grad_secs.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        std::hint::black_box(
            model
                .forward(&[SeqInput {
                    adapter: None,
                    tokens: &q.tokens,
                }])
                .expect("forward"),
        );
        one_secs.push(t0.elapsed().as_secs_f64());
    }
    assert_eq!(floats, trainer.num_parameters());
    let (t_grad, t_one) = (median(&grad_secs), median(&one_secs));
    report.figure("gradient_examples_per_s", 1.0 / t_grad);
    report.figure("gradient_floats_per_example", floats as f64);
    report.ratio(
        "gradient_vs_engine_forward",
        1.0 / t_grad,
        1.0 / t_one,
        "≥ 0.25",
    );
    match report.save() {
        Ok(p) => println!("saved {}", p.display()),
        Err(e) => eprintln!("could not save the report: {e}"),
    }
}

/// Threads the CPU matmul uses (`RAYON_NUM_THREADS`, else the available cores).
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}
