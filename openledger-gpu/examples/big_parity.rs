//! The GPU model against transformers + PEFT on a bigger model, on a CUDA device: the folder
//! `scripts/gpu/make_big_reference.py` writes (a 2-layer Llama at hidden 4096 in bf16, four
//! adapters of ranks 8 to 64, PEFT's bf16 logits of three prompts with each). Every prompt runs
//! with every adapter, and without one, in ONE mixed batch; each last-position logits row is
//! compared with PEFT's.
//!
//! Tolerance (bf16 on both sides): each side rounds activations to bf16 (8 significant bits) at
//! every layer boundary and sums its GEMMs in its own order, so logits agree to a few bf16
//! steps of their scale: |ours − PEFT| ≤ 2⁻⁵ · max|PEFT| for every logit, and the same top
//! token wherever PEFT's top two differ by more than that.
//!
//!     cargo run --release -p openledger-gpu --features cuda --example big_parity -- DIR [OUT.json]

use openledger_gpu::{Dtype, GpuModel, GpuOptions};
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::pool::AdapterId;
use openledger_lora::serve::{RequestId, SeqId, StepBatch, StepSeq};
use safetensors::SafeTensors;
use std::path::PathBuf;

fn main() {
    if let Err(e) = run() {
        println!("big_parity: failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: big_parity DIR [OUT.json]")?);
    let out = args.next();
    let rt = openledger_gpu::cuda_runtime(0)?;
    let opts = GpuOptions {
        dtype: Some(Dtype::Bf16),
        ..GpuOptions::default()
    };
    let mut model = GpuModel::load(rt, &dir.join("model"), opts, &mut |d, t| {
        eprint!("\rweights {d}/{t}")
    })?;
    eprintln!();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json"))?)?;
    let prompts: Vec<Vec<u32>> = serde_json::from_value(reference["prompts"].clone())?;
    let ranks: Vec<usize> = serde_json::from_value(reference["ranks"].clone())?;
    let mut names: Vec<Option<String>> = vec![None];
    for r in &ranks {
        let name = format!("r{r}");
        let a = LoraAdapter::from_dir(&dir.join("adapters").join(&name), &LoadOptions::default())?;
        model.attach_adapter(&name, &a)?;
        names.push(Some(name));
    }
    let block = 16;
    let mut seqs = Vec::new();
    let mut next_block = 0u32;
    for (a, name) in names.iter().enumerate() {
        for (i, p) in prompts.iter().enumerate() {
            let blocks = p.len().div_ceil(block) as u32;
            seqs.push(StepSeq {
                request: RequestId((a * prompts.len() + i) as u64),
                seq: SeqId((a * prompts.len() + i) as u64),
                tokens: p.clone(),
                start_pos: 0,
                adapter: name.as_deref().map(AdapterId::new).transpose()?,
                block_table: (next_block..next_block + blocks).collect(),
                needs_logits: true,
            });
            next_block += blocks;
        }
    }
    let mut kv = model.kv_storage(next_block as usize, block)?;
    let logits = model.forward(&StepBatch { seqs }, &mut kv)?;
    let bytes = std::fs::read(dir.join("reference.safetensors"))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let vocab = model.config().vocab_size;
    let mut rows = Vec::new();
    let mut ok = true;
    for (a, name) in names.iter().enumerate() {
        for i in 0..prompts.len() {
            let key = format!("logits.{}.{i}", name.as_deref().unwrap_or("base"));
            let want = Dtype::F32.decode(st.tensor(&key)?.data());
            let r = a * prompts.len() + i;
            let got = &logits[r * vocab..(r + 1) * vocab];
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
            let tol = scale / 32.0;
            let argmax = |v: &[f32]| {
                (0..v.len())
                    .max_by(|&x, &y| v[x].total_cmp(&v[y]))
                    .unwrap_or(0)
            };
            let mut sorted = want.clone();
            sorted.sort_by(|x, y| y.total_cmp(x));
            let top_ok = sorted[0] - sorted[1] <= tol || argmax(got) == argmax(&want);
            ok &= diff <= tol && top_ok;
            println!(
                "{key}: max |diff| {diff:.5} (scale {scale:.4}, tolerance {tol:.5}), top token {}",
                if top_ok { "same" } else { "DIFFERENT" }
            );
            rows.push(serde_json::json!({"key": key, "max_abs_diff": diff, "scale": scale, "tolerance": tol, "top_token_ok": top_ok}));
        }
    }
    if let Some(out) = out {
        std::fs::write(
            out,
            serde_json::to_string_pretty(&serde_json::json!({"rows": rows, "pass": ok}))?,
        )?;
    }
    if !ok {
        return Err("logits outside the tolerance".into());
    }
    println!("big_parity: every row within tolerance");
    Ok(())
}
