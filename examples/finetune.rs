//! Model Factory on the CPU: fine-tunes a LoRA adapter on a datanet the trainer holds a grant
//! for, with a live progress bar, evaluation on a held-out split, checkpoints and the
//! hash-chained training log; saves the adapter as a PEFT folder and checks that the serving
//! model gives the trainer's logits with it.
//!
//! The base is a small random LLaMA made on the spot and the datanet a synthetic key→value
//! language (`openledger::synthetic`), so the run needs no download. Only the adapter trains:
//! the random base's frozen output head bounds how peaked its predictions can get, so the
//! held-out accuracy climbs to 100 % while the loss levels off well above zero (the influence
//! audit of the `openledger` crate pre-trains its base first).
//!
//! `cargo run --release --example finetune -- [--steps N] [--rank R] [--out DIR]`

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use openledger::core::grant::Grants;
use openledger::core::{Address, ContentId};
use openledger::lora::adapter::{LoadOptions, LoraAdapter};
use openledger::lora::model::RandomLlama;
use openledger::lora::model::SeqInput;
use openledger::synthetic::KeyValueTask;
use openledger::train::{Example, LoraSettings, TrainConfig, TrainEvent, Trainer};

type Error = Box<dyn std::error::Error>;

struct Args {
    steps: usize,
    rank: usize,
    out: PathBuf,
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        steps: 200,
        rank: 8,
        out: PathBuf::from("target/finetune-adapter"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--steps" => a.steps = value()?.parse()?,
            "--rank" => a.rank = value()?.parse()?,
            "--out" => a.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!("finetune [--steps N (200)] [--rank R (8)] [--out DIR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    if a.steps == 0 || a.rank == 0 {
        return Err("--steps and --rank must be at least 1".into());
    }
    Ok(a)
}

/// One line redrawn in place: `[#####.....] step 12/120  loss 1.234  lr 4.1e-3  312 tok/s  eta 8s`.
fn bar(step: usize, total: usize, loss: f64, lr: f64, tps: f64, eta: f64) {
    const W: usize = 30;
    let done = W * step / total.max(1);
    eprint!(
        "\r[{}{}] step {step:>4}/{total}  loss {loss:7.4}  lr {lr:8.2e}  {tps:7.0} tok/s  eta {eta:5.1}s ",
        "#".repeat(done),
        ".".repeat(W - done)
    );
    let _ = std::io::stderr().flush();
}

fn accuracy(trainer: &Trainer, held_out: &[Example]) -> Result<f64, Error> {
    let mut right = 0;
    for ex in held_out {
        let prompt = &ex.tokens[..ex.tokens.len() - 1];
        let answer = trainer.greedy(prompt, 1)?;
        right += usize::from(answer.last() == ex.tokens.last());
    }
    Ok(right as f64 / held_out.len().max(1) as f64)
}

fn main() -> Result<(), Error> {
    // SAFETY: the first thing `main` does, before any other thread runs.
    unsafe { openledger::lora::fix_cpu_threads() };
    let a = args()?;
    let task = KeyValueTask {
        keys: 24,
        values: 6,
        alphabet: 16,
        distractors: 3,
    };
    let shape = RandomLlama {
        vocab: task.vocab(),
        hidden: 64,
        intermediate: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
    };
    let model = shape.model(1)?;
    println!(
        "base: random LLaMA, {} parameters (vocab {}, hidden {}, {} layers)",
        shape.parameters(),
        shape.vocab,
        shape.hidden,
        shape.layers
    );

    // The datanet: 4 contributors, no flipped labels; its owner approves our training request.
    let table = task.table(3);
    let data = task.datanet("key-value facts", &table, 240, 0.0, 4, 5)?;
    let owner = Address::repeat_byte(0xd0);
    let trainer_account = Address::repeat_byte(0x7a);
    let mut grants = Grants::new();
    let datanet_id = grants.register_datanet(owner);
    grants.request(datanet_id, trainer_account, ContentId::of(b"fine-tune").0)?;
    grants.approve(datanet_id, owner, trainer_account)?;
    let mut examples = Vec::new();
    for record in data.datanet.records() {
        examples.push(
            task.example(&record.content)?
                .with_source(datanet_id, record.hash),
        );
    }
    let held_out = examples.split_off(200);
    println!(
        "datanet {datanet_id}: {} records from 4 contributors, root {}; training on {}, holding out {}",
        data.datanet.records().len(),
        data.datanet.versions()[0].root,
        examples.len(),
        held_out.len()
    );

    let mut config = TrainConfig::new(LoraSettings::new(
        &["all-linear"],
        a.rank,
        2.0 * a.rank as f64,
    ));
    config.steps = a.steps;
    config.batch_size = 16;
    config.learning_rate = 1e-2;
    config.warmup_steps = a.steps / 10;
    config.eval_every = Some((a.steps / 4).max(1));
    config.checkpoint_steps = vec![a.steps / 2, a.steps];
    config.seed = 11;
    let mut trainer = Trainer::new(&model, config)?;
    trainer.require_grants(grants, trainer_account);
    trainer.start_log(ContentId::of(shape.config_json().as_bytes()).0);
    println!(
        "LoRA r={} alpha={} on {} modules: {} trainable parameters",
        a.rank,
        2 * a.rank,
        trainer.modules().len(),
        trainer.num_parameters()
    );
    let before = accuracy(&trainer, &held_out)?;

    let started = Instant::now();
    let mut evals = Vec::new();
    let mut checkpoints = Vec::new();
    let summary = trainer.train(&examples, &held_out, &mut |event| match event {
        TrainEvent::Step(s) => bar(
            s.step,
            s.total_steps,
            s.loss,
            s.learning_rate,
            s.tokens_per_sec,
            s.eta_secs,
        ),
        TrainEvent::Eval(e) => evals.push(e.clone()),
        TrainEvent::Checkpoint(c) => checkpoints.push((c.step, c.id)),
    })?;
    eprintln!();
    let secs = started.elapsed().as_secs_f64();
    let after = accuracy(&trainer, &held_out)?;

    println!("\n{:>6}  {:>10}  {:>10}", "step", "eval loss", "perplexity");
    for e in &evals {
        println!("{:>6}  {:>10.4}  {:>10.3}", e.step, e.loss, e.perplexity);
    }
    let first = summary.losses.first().copied().unwrap_or(f64::NAN);
    let last = summary.losses.last().copied().unwrap_or(f64::NAN);
    println!(
        "\n{} steps in {secs:.1} s; training loss {first:.4} -> {last:.4}; held-out accuracy {:.1}% -> {:.1}%",
        summary.steps,
        100.0 * before,
        100.0 * after
    );
    for (step, id) in &checkpoints {
        println!("checkpoint at step {step}: {id}");
    }
    let log = trainer
        .training_log()
        .ok_or("the training log was not started")?;
    log.verify()?;
    println!(
        "training log: {} entries, head {} (what a model registration commits to)",
        log.len(),
        log.head()
    );

    // The adapter as PEFT saves it, and the serving model running it.
    trainer.save_adapter(&a.out)?;
    let adapter = LoraAdapter::from_dir(&a.out, &LoadOptions::default())?;
    let mut serving = shape.model(1)?;
    let id = serving.attach_adapter("finetuned", &adapter)?;
    let probe = &held_out[0].tokens;
    let engine = serving.forward(&[SeqInput {
        adapter: Some(id),
        tokens: probe,
    }])?;
    let mine = trainer.forward(&[probe])?;
    let diff = engine[0]
        .iter()
        .zip(&mine[0])
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    println!(
        "saved PEFT adapter to {} ({} modules); serving model vs trainer logits: max |diff| = {diff:.2e}",
        a.out.display(),
        adapter.num_modules()
    );
    if diff > 1e-4 {
        return Err(format!("engine and trainer disagree by {diff}").into());
    }
    Ok(())
}
