//! Runs a mixed multi-LoRA batch through a base model and writes the logits.
//!
//! ```text
//! cargo run -p openledger-examples --example logits -- \
//!     --model fixtures/peft/tiny-llama \
//!     --adapter qv=fixtures/peft/tiny-llama/adapters/qv-r4 \
//!     --seq base:1,17,42 --seq qv:1,5,6,200 --out logits.safetensors
//! ```
//!
//! Every `--seq ADAPTER:ids` is one sequence of the batch (`base` runs without an adapter);
//! the output safetensors file holds `logits.<seq index>` as f32 `[len, vocab]`.

use std::collections::HashMap;
use std::path::PathBuf;

use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{AdapterSlot, Model, SeqInput};
use safetensors::tensor::{Dtype, TensorView, serialize};

type BoxError = Box<dyn std::error::Error>;

struct Args {
    model: PathBuf,
    adapters: Vec<(String, PathBuf)>,
    seqs: Vec<(String, Vec<u32>)>,
    out: PathBuf,
}

fn parse() -> Result<Args, BoxError> {
    let mut it = std::env::args().skip(1);
    let (mut model, mut out) = (None, None);
    let (mut adapters, mut seqs) = (Vec::new(), Vec::new());
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--adapter" => {
                let v = value()?;
                let (name, dir) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--adapter {v:?}: expected NAME=DIR"))?;
                adapters.push((name.to_string(), PathBuf::from(dir)));
            }
            "--seq" => {
                let v = value()?;
                let (name, ids) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--seq {v:?}: expected ADAPTER:1,2,3"))?;
                let ids = ids
                    .split(',')
                    .map(|t| t.trim().parse::<u32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--seq {v:?}: {e}"))?;
                seqs.push((name.to_string(), ids));
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(Args {
        model: model.ok_or("--model DIR is required")?,
        adapters,
        seqs,
        out: out.ok_or("--out FILE is required")?,
    })
}

fn main() -> Result<(), BoxError> {
    // SAFETY: the first thing `main` does, before any other thread runs.
    unsafe { openledger::lora::fix_cpu_threads() };
    let args = parse()?;
    let mut model = Model::from_dir(&args.model)?;
    let mut ids: HashMap<String, AdapterSlot> = HashMap::new();
    for (name, dir) in &args.adapters {
        let adapter = LoraAdapter::from_dir(dir, &LoadOptions::default())?;
        ids.insert(name.clone(), model.attach_adapter(name, &adapter)?);
    }
    let mut batch = Vec::new();
    for (name, tokens) in &args.seqs {
        let adapter = match name.as_str() {
            "base" => None,
            n => Some(
                *ids.get(n)
                    .ok_or_else(|| format!("--seq names unknown adapter {n:?}"))?,
            ),
        };
        batch.push(SeqInput { adapter, tokens });
    }
    let start = std::time::Instant::now();
    let logits = model.forward(&batch)?;
    let took = start.elapsed();
    let vocab = model.config().vocab_size;
    let bytes: Vec<Vec<u8>> = logits
        .iter()
        .map(|l| l.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = bytes
        .iter()
        .zip(&batch)
        .enumerate()
        .map(|(i, (b, s))| {
            Ok((
                format!("logits.{i}"),
                TensorView::new(Dtype::F32, vec![s.tokens.len(), vocab], b)?,
            ))
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    std::fs::write(&args.out, serialize(views, None)?)?;
    let rows: usize = batch.iter().map(|s| s.tokens.len()).sum();
    println!(
        "{} sequences ({rows} tokens, {} adapters) in {:.2} ms -> {}",
        batch.len(),
        ids.len(),
        took.as_secs_f64() * 1e3,
        args.out.display()
    );
    Ok(())
}
