//! Load of a rank-16 all-linear bf16 adapter shaped for Llama-2-7B (32 layers, hidden 4096,
//! intermediate 11008, q/k/v/o/gate/up/down; ~80 MB) from the page cache (the file was read
//! before, so no disk is touched: this is parsing, checking and copying, not a cold read), as a
//! ratio to a plain `std::fs::read` of the same page-cached file measured in the same run.
//! Target: ≤ 1.5×.

use openledger_benches::{Report, median_secs};
use openledger_core::DType;
use openledger_lora::adapter::build::AdapterBuilder;
use openledger_lora::adapter::config::{ConfigSpec, TargetModules};
use openledger_lora::adapter::{LoadOptions, LoraAdapter};

const LAYERS: usize = 32;
const HIDDEN: usize = 4096;
const INTERMEDIATE: usize = 11008;
const RANK: usize = 16;

fn main() {
    let mut spec = ConfigSpec::new(RANK, 32.0, &[]);
    spec.target_modules = TargetModules::AllLinear;
    let mut b = AdapterBuilder::new(spec).with_dtype(DType::BF16);
    let shapes = [
        ("self_attn.q_proj", HIDDEN, HIDDEN),
        ("self_attn.k_proj", HIDDEN, HIDDEN),
        ("self_attn.v_proj", HIDDEN, HIDDEN),
        ("self_attn.o_proj", HIDDEN, HIDDEN),
        ("mlp.gate_proj", HIDDEN, INTERMEDIATE),
        ("mlp.up_proj", HIDDEN, INTERMEDIATE),
        ("mlp.down_proj", INTERMEDIATE, HIDDEN),
    ];
    for layer in 0..LAYERS {
        for (i, (name, n_in, n_out)) in shapes.iter().enumerate() {
            let module = format!("model.layers.{layer}.{name}");
            b.random_lora(&module, *n_in, *n_out, RANK, (layer * 7 + i) as u64);
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    b.write_dir(dir.path()).expect("write adapter");
    drop(b);
    let file = dir.path().join("adapter_model.safetensors");
    let size = std::fs::metadata(&file).expect("stat").len() as f64;

    let opts = LoadOptions::default();
    let adapter = LoraAdapter::from_dir(dir.path(), &opts).expect("load");
    assert_eq!(adapter.num_modules(), LAYERS * shapes.len());
    let resident = adapter.resident_bytes() as f64;
    drop(adapter);

    let runs = 9;
    let read = median_secs(runs, || std::fs::read(&file).expect("read").len());
    let load = median_secs(runs, || {
        LoraAdapter::from_dir(dir.path(), &opts)
            .expect("load")
            .resident_bytes()
    });

    let mut r = Report::new("adapter_load");
    r.figure("file_mb", size / 1e6);
    r.figure("resident_mb", resident / 1e6);
    r.figure("fs_read_s", read);
    r.figure("load_s", load);
    r.figure("load_gb_per_s", size / load / 1e9);
    r.ratio("load_vs_fs_read", load, read, "<= 1.5x");
    match r.save() {
        Ok(p) => println!("saved {}", p.display()),
        Err(e) => eprintln!("could not save the report: {e}"),
    }
}
