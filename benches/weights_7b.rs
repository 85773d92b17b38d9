//! A Llama-2-7B-shaped random model (hidden 4096, MLP 11008, 32 layers, 32 heads, vocabulary
//! 32000: 6.7B parameters) stored in bf16, loaded on this 24 GB machine with its projections
//! kept in bf16 and quantised to int8 (f32 would need 27 GB), each in a process of its own:
//! load time, resident memory after loading and its peak (`VmRSS`, `VmHWM`), the bytes the
//! projections hold, and single-stream greedy decode of 8 tokens after an 8-token prompt.
//!
//! The model file (13.5 GB) is written to a temporary folder under `$OPENLEDGER_7B_DIR` (default:
//! the system's temporary folder) and removed at the end. Writes `weights_7b.json` under
//! `target/bench-results/` (or `$OPENLEDGER_BENCH_OUT`).
//!
//! `cargo bench -p openledger-benches --bench weights_7b` (about 10 minutes on 2 cores)

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use openledger_benches::Report;
use openledger_lora::model::{Model, WeightFormat};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const H: usize = 4096;
const I: usize = 11008;
const LAYERS: usize = 32;
const VOCAB: usize = 32000;
const NEW_TOKENS: usize = 8;

/// `(name, shape, amplitude)` of every tensor, in file order.
fn tensors() -> Vec<(String, Vec<usize>, f32)> {
    let mut t = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![VOCAB, H],
            0.02,
        ),
        ("lm_head.weight".to_string(), vec![VOCAB, H], 0.02),
        ("model.norm.weight".to_string(), vec![H], 0.0),
    ];
    for l in 0..LAYERS {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        t.push((p("input_layernorm.weight"), vec![H], 0.0));
        t.push((p("post_attention_layernorm.weight"), vec![H], 0.0));
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            t.push((p(&format!("self_attn.{n}.weight")), vec![H, H], 0.02));
        }
        t.push((p("mlp.gate_proj.weight"), vec![I, H], 0.02));
        t.push((p("mlp.up_proj.weight"), vec![I, H], 0.02));
        t.push((p("mlp.down_proj.weight"), vec![H, I], 0.01));
    }
    t
}

/// Writes the folder: config.json and one bf16 safetensors file, tensor by tensor (norms at
/// 1, weights uniform in ±amplitude).
fn write_model(dir: &Path) {
    std::fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": {VOCAB},
            "hidden_size": {H}, "intermediate_size": {I}, "num_hidden_layers": {LAYERS},
            "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}}"#
        ),
    )
    .unwrap();
    let list = tensors();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, _) in &list {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let f = std::fs::File::create(dir.join("model.safetensors")).unwrap();
    let mut f = std::io::BufWriter::with_capacity(8 << 20, f);
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut buf = Vec::with_capacity(8 << 20);
    for (_, shape, amp) in &list {
        let n: usize = shape.iter().product();
        let mut left = n;
        while left > 0 {
            let chunk = left.min(4 << 20);
            buf.clear();
            for _ in 0..chunk {
                let v: f32 = if *amp == 0.0 {
                    1.0
                } else {
                    rng.random_range(-*amp..*amp)
                };
                buf.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
            }
            f.write_all(&buf).unwrap();
            left -= chunk;
        }
    }
    f.flush().unwrap();
}

fn status_kb(key: &str) -> f64 {
    openledger_benches::status_bytes(key) as f64 / 1024.0
}

/// One format in this process: prints a JSON line of its figures.
fn run_one(dir: &Path, format: WeightFormat) {
    let t = Instant::now();
    let m = Model::from_dir_with_format(dir, format, &mut |_| {}).expect("model");
    let load_s = t.elapsed().as_secs_f64();
    let rss_gb = status_kb("VmRSS:") / 1e6;
    let peak_gb = status_kb("VmHWM:") / 1e6;
    let w = m.base_weights();
    let held: usize = w
        .layers
        .iter()
        .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
        .chain([&w.lm_head])
        .map(|lin| lin.weight.bytes())
        .sum();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let prompt: Vec<u32> = (0..8).map(|_| rng.random_range(0..VOCAB as u32)).collect();
    m.greedy(None, &prompt, 1).expect("warm-up");
    let t = Instant::now();
    let out = m.greedy(None, &prompt, NEW_TOKENS).expect("greedy");
    let decode = out.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"format": format.to_string(), "load_s": load_s, "rss_gb": rss_gb,
            "peak_gb": peak_gb, "held_gb": held as f64 / 1e9, "decode_tokens_per_s": decode})
    );
}

fn main() {
    if let (Ok(dir), Ok(format)) = (
        std::env::var("OPENLEDGER_7B_MODEL"),
        std::env::var("OPENLEDGER_7B_FORMAT"),
    ) {
        run_one(Path::new(&dir), format.parse().expect("format"));
        return;
    }
    let base = std::env::var_os("OPENLEDGER_7B_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).expect("temporary folder");
    let t = Instant::now();
    write_model(dir.path());
    println!(
        "wrote the 13.5 GB model in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let mut report = Report::new("weights_7b");
    for format in ["stored", "int8"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env("OPENLEDGER_7B_MODEL", dir.path())
            .env("OPENLEDGER_7B_FORMAT", format)
            .output()
            .expect("run the format in a process of its own");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find(|l| l.starts_with('{')) else {
            eprintln!(
                "{format}: no result ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        };
        println!("{format}: {line}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in [
            "load_s",
            "rss_gb",
            "peak_gb",
            "held_gb",
            "decode_tokens_per_s",
        ] {
            report.figure(
                &format!("{format}_{key}"),
                v[key].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
    match report.save() {
        Ok(p) => println!("saved {}", p.display()),
        Err(e) => eprintln!("could not save the report: {e}"),
    }
}
