//! The adapter tour: loads the shipped tiny model's PEFT adapters into a just-in-time pool,
//! validates each against the base model, shows what each adapter changes, merges one into the
//! base weights (and back out), and prints the pool's statistics.
//!
//! ```sh
//! cargo run --release --example adapter_tour [-- --model DIR --adapters DIR --budget-kib N]
//! ```
//! Defaults: the tiny Llama and its three adapters shipped in `fixtures/peft/tiny-llama`.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use openledger_lora::adapter::LoadOptions;
use openledger_lora::adapter::base::BaseModel;
use openledger_lora::adapter::merge::{DenseTensor, merge, unmerge};
use openledger_lora::adapter::tensors::read_safetensors;
use openledger_lora::pool::{AdapterPool, HubDir};

struct Args {
    model: PathBuf,
    adapters: PathBuf,
    budget: usize,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let fixtures = openledger_examples::tiny_llama_dir();
    let mut args = Args {
        adapters: fixtures.join("adapters"),
        model: fixtures,
        // Room for two of the three shipped adapters, not all three: loads evict the coldest.
        budget: 80 * 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => args.model = value()?.into(),
            "--adapters" => args.adapters = value()?.into(),
            "--budget-kib" => args.budget = value()?.parse::<usize>()? * 1024,
            "-h" | "--help" => {
                println!("usage: adapter_tour [--model DIR] [--adapters DIR] [--budget-kib N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    Ok(args)
}

fn frobenius(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

fn main() -> Result<(), Box<dyn Error>> {
    // SAFETY: the first thing `main` does, before any other thread runs.
    unsafe { openledger::lora::fix_cpu_threads() };
    let mut args = parse_args()?;
    args.model = args.model.canonicalize().unwrap_or(args.model);
    args.adapters = args.adapters.canonicalize().unwrap_or(args.adapters);
    println!("openledger adapter tour");
    println!("  base model : {}", args.model.display());
    println!("  adapters   : {}", args.adapters.display());

    // The base: module shapes from config.json + safetensors headers (no weights read yet).
    let base = BaseModel::from_dir(&args.model)?;
    println!("  base has {} linear modules", base.linear_modules().len());

    // The pool: every folder of the hub registered, nothing loaded until first use.
    let hub = HubDir::open(&args.adapters)?;
    let pool: AdapterPool = AdapterPool::with_options(args.budget, LoadOptions::default());
    let registered = pool.register_hub(&hub)?;
    println!(
        "  pool budget {} KiB, {registered} adapters registered\n",
        args.budget / 1024
    );

    // Dense base weights, for measuring what each adapter changes and for merging.
    let t0 = Instant::now();
    let mut weights: BTreeMap<String, DenseTensor> =
        read_safetensors(&args.model.join("model.safetensors"), false)?
            .into_iter()
            .map(|(k, t)| {
                let data = t.to_f32().into_owned();
                (k, DenseTensor::new(t.shape().to_vec(), data))
            })
            .collect();
    println!(
        "loaded {} base tensors in {:.1} ms\n",
        weights.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );

    println!(
        "{:<16} {:>7} {:>6} {:>11} {:>10}  what it changes (‖ΔW‖/‖W‖ per targeted module kind)",
        "adapter", "modules", "ranks", "scales", "resident"
    );
    let ids = hub.ids()?;
    for id in &ids {
        let adapter = pool.get(id)?;
        let report = base.validate(&adapter)?;
        let mut ranks: Vec<usize> = adapter.modules().map(|(_, m)| m.rank()).collect();
        ranks.sort_unstable();
        ranks.dedup();
        let mut scales: Vec<f32> = adapter.modules().map(|(_, m)| m.scale()).collect();
        scales.sort_by(f32::total_cmp);
        scales.dedup();
        // Relative change per module kind (q_proj, v_proj, ...), averaged over layers.
        let mut by_kind: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
        for (name, m) in adapter.modules() {
            let w = &weights[&format!("{name}.weight")];
            let rel = frobenius(&m.delta()) / frobenius(&w.data);
            let kind = name.rsplit('.').next().unwrap_or(name);
            let e = by_kind.entry(kind).or_default();
            e.0 += rel;
            e.1 += 1;
        }
        let changes: Vec<String> = by_kind
            .iter()
            .map(|(k, (sum, n))| format!("{k} {:.1}%", 100.0 * sum / *n as f64))
            .collect();
        let fmt_list = |v: Vec<String>| v.join(",");
        println!(
            "{:<16} {:>7} {:>6} {:>11} {:>7} KiB  {}",
            id.as_str(),
            report.modules_checked,
            fmt_list(ranks.iter().map(|r| r.to_string()).collect()),
            fmt_list(scales.iter().map(|s| format!("{s:.2}")).collect()),
            adapter.resident_bytes() / 1024,
            changes.join("  ")
        );
    }

    // Merge one adapter into the base, check it against the unmerged math, and undo it.
    let chosen = ids
        .iter()
        .find(|id| id.as_str() == "qv-r4")
        .unwrap_or(&ids[0]);
    let adapter = pool.get(chosen)?;
    let (name, module) = adapter.modules().next().ok_or("adapter has no modules")?;
    let key = format!("{name}.weight");
    let before = weights[&key].data.clone();
    let record = merge(&adapter, &mut weights)?;
    // y = x·W'ᵀ (merged) must equal x·Wᵀ + scale·(x·Aᵀ)·Bᵀ (unmerged) for any x.
    let (out_f, in_f) = (module.out_features(), module.in_features());
    let x: Vec<f32> = (0..in_f)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let mut y_unmerged: Vec<f32> = (0..out_f)
        .map(|o| (0..in_f).map(|i| before[o * in_f + i] * x[i]).sum())
        .collect();
    module.apply(&x, &mut y_unmerged)?;
    let merged = &weights[&key].data;
    let max_diff = (0..out_f)
        .map(|o| {
            let y: f32 = (0..in_f).map(|i| merged[o * in_f + i] * x[i]).sum();
            (y - y_unmerged[o]).abs()
        })
        .fold(0.0f32, f32::max);
    unmerge(&adapter, &mut weights, record)?;
    let restored = weights[&key]
        .data
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "\nmerged {} into the base: {} modules; on {key}: |merged − unmerged| ≤ {max_diff:.2e}, \
         unmerge restores W to {restored:.2e}",
        chosen.as_str(),
        adapter.num_modules()
    );

    // A second round of requests: resident adapters are hits, evicted ones reload.
    for id in ids.iter().rev() {
        pool.get(id)?;
    }
    let s = pool.stats();
    println!("\npool statistics");
    println!(
        "  hits {}  misses {}  loads {}  evictions {}  load failures {}",
        s.hits, s.misses, s.loads, s.evictions, s.load_failures
    );
    println!(
        "  resident {} adapters, {:.1} / {:.1} KiB budget ({} registered)",
        s.resident_count,
        s.resident_bytes as f64 / 1024.0,
        s.budget_bytes as f64 / 1024.0,
        s.registered_count
    );
    println!(
        "  load latency: p50 {:?}  p99 {:?}  max {:?}  ({} loads)",
        s.load_latency.p50, s.load_latency.p99, s.load_latency.max, s.load_latency.count
    );
    Ok(())
}
