//! Writes the seed corpus of every fuzz target under `fuzz/corpus/<target>/`: small inputs each
//! decoder accepts (made with the library's own encoders), so that libFuzzer starts from the
//! valid shapes and mutates inward from them. Deterministic; `scripts/fuzz.sh` runs it when a
//! target's corpus folder is missing, and its output is committed.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin make_seeds [OUT_DIR]`

use std::path::{Path, PathBuf};

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::SolCall;
use openledger_chain::bindings::{AttributionRewards, DatanetRegistry, InferencePayments};
use openledger_chain::standard::{StandardMerkleTree, TreeOptions};
use openledger_chain::DynSolValue;
use openledger_core::ContentId;
use openledger_core::merkle;
use openledger_core::trainlog::{TrainLog, TrainStep};
use openledger_poa::record::{AttributionMethod, AttributionRecord};
use openledger_poa::split::SplitPolicy;

type Error = Box<dyn std::error::Error>;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(name), bytes)?;
    Ok(())
}

/// A safetensors file of `dtype` (F32 or BF16) tensors `(name, shape)` filled with small
/// distinct values.
fn safetensors(tensors: &[(&str, &[usize])], dtype: &str) -> Vec<u8> {
    let width = if dtype == "F32" { 4 } else { 2 };
    let mut header = String::from("{");
    let mut data = Vec::new();
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let n: usize = shape.iter().product();
        let start = data.len();
        for k in 0..n {
            let v = (k as f32 + 1.0) / 64.0;
            match dtype {
                "F32" => data.extend_from_slice(&v.to_le_bytes()),
                // bf16: the top half of the f32.
                _ => data.extend_from_slice(&v.to_le_bytes()[2..]),
            }
        }
        debug_assert_eq!(data.len() - start, n * width);
        if i > 0 {
            header.push(',');
        }
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        header.push_str(&format!(
            r#""{name}":{{"dtype":"{dtype}","shape":[{}],"data_offsets":[{start},{}]}}"#,
            dims.join(","),
            data.len()
        ));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

fn adapter(dir: &Path) -> Result<(), Error> {
    let t = "adapter_decode";
    let m = "base_model.model.model.layers.0.self_attn";
    let qa = format!("{m}.q_proj.lora_A.weight");
    let qb = format!("{m}.q_proj.lora_B.weight");
    let va = format!("{m}.v_proj.lora_A.weight");
    let vb = format!("{m}.v_proj.lora_B.weight");
    let mag = format!("{m}.q_proj.lora_magnitude_vector");
    let q = safetensors(&[(&qa, &[2, 8]), (&qb, &[8, 2])], "F32");
    write(dir, t, "q-r2-f32", &q)?;
    let qv = safetensors(
        &[(&qa, &[2, 8]), (&qb, &[8, 2]), (&va, &[4, 8]), (&vb, &[8, 4])],
        "F32",
    );
    write(dir, t, "qv-rank-pattern-f32", &qv)?;
    write(
        dir,
        t,
        "q-r2-bf16",
        &safetensors(&[(&qa, &[2, 8]), (&qb, &[8, 2])], "BF16"),
    )?;
    // The split form: two bytes give the config's length, then the config, then the tensors.
    for (name, config, weights) in [
        (
            "split-lora",
            r#"{"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj"]}"#,
            &q,
        ),
        (
            "split-rslora-patterns",
            r#"{"peft_type":"LORA","r":2,"lora_alpha":4,"use_rslora":true,"target_modules":".*\\.(q|v)_proj","rank_pattern":{"v_proj":4},"alpha_pattern":{"v_proj":8}}"#,
            &qv,
        ),
    ] {
        let mut b = (config.len() as u16).to_le_bytes().to_vec();
        b.extend_from_slice(config.as_bytes());
        b.extend_from_slice(weights);
        write(dir, t, name, &b)?;
    }
    let dora = safetensors(&[(&qa, &[2, 8]), (&qb, &[8, 2]), (&mag, &[8])], "F32");
    let config = r#"{"peft_type":"LORA","r":2,"lora_alpha":2,"use_dora":true,"target_modules":["q_proj"]}"#;
    let mut b = (config.len() as u16).to_le_bytes().to_vec();
    b.extend_from_slice(config.as_bytes());
    b.extend_from_slice(&dora);
    write(dir, t, "split-dora", &b)?;
    Ok(())
}

fn chain(dir: &Path) -> Result<(), Error> {
    let t = "chain_abi_decode";
    let id = B256::repeat_byte(7);
    write(
        dir,
        t,
        "request-access",
        &DatanetRegistry::requestAccessCall {
            datanetId: U256::from(1),
            purposeHash: id,
        }
        .abi_encode(),
    )?;
    write(
        dir,
        t,
        "split",
        &InferencePayments::splitCall {
            amount: U256::from(1_000_003u64),
        }
        .abi_encode(),
    )?;
    write(
        dir,
        t,
        "claim",
        &AttributionRewards::claimCall {
            epoch: 1,
            index: U256::from(2),
            account: Address::repeat_byte(0xa1),
            amount: U256::from(5),
            proof: vec![id, B256::repeat_byte(8)],
        }
        .abi_encode(),
    )?;

    let values: Vec<Vec<DynSolValue>> = (0..5u8)
        .map(|i| {
            vec![
                DynSolValue::Address(Address::with_last_byte(i)),
                DynSolValue::Uint(U256::from(100 + u64::from(i)), 256),
            ]
        })
        .collect();
    let tree = StandardMerkleTree::of(values, &["address", "uint256"], TreeOptions::default())?;
    write(dir, "chain_tree_dump", "five-claims", tree.to_json().as_bytes())?;

    let leaves: Vec<B256> = (0..4u8).map(B256::repeat_byte).collect();
    let proof = [leaves[1], merkle::hash_pair(&leaves[2], &leaves[3])];
    let mut b = leaves[0].to_vec();
    for p in proof {
        b.extend_from_slice(p.as_slice());
    }
    write(dir, "chain_proof_verify", "leaf-and-proof", &b)?;
    Ok(())
}

fn records(dir: &Path) -> Result<(), Error> {
    let r = AttributionRecord::from_scores(
        B256::repeat_byte(1),
        B256::repeat_byte(2),
        vec![B256::repeat_byte(3)],
        AttributionMethod::TracIn,
        &[
            (Address::repeat_byte(0xa1), 0.7),
            (Address::repeat_byte(0xb0), 0.3),
        ],
        &SplitPolicy::default(),
    )?;
    write(dir, "poa_record_decode", "two-contributors", &r.encode())?;

    let ids: Vec<ContentId> = (0..3u8)
        .map(|i| ContentId::of(&[i, i + 1, i + 2]))
        .collect();
    let mut log = TrainLog::new(B256::repeat_byte(4), B256::repeat_byte(5));
    log.append(TrainStep::new(0, ids[..2].to_vec(), 2.5, 1e-3))?;
    log.append(TrainStep::new(1, ids[2..].to_vec(), 2.1, 1e-3).with_checkpoint(B256::repeat_byte(6)))?;
    write(dir, "trainlog_decode", "two-steps", &log.to_bytes())?;

    let jsonl = concat!(
        r#"{"content":"what does aspirin treat => pain and fever","contributor":"0xa11ce000000000000000000000000000000a11ce","license":"CC-BY-4.0","metadata":{"prompt":"what does aspirin treat"}}"#,
        "\n",
        r#"{"content":"what class is aspirin => salicylate","contributor":"0x00000000000000000000000000000000000b0b00","license":"CC0-1.0"}"#,
        "\n",
    );
    write(dir, "datanet_import", "two-records", jsonl.as_bytes())?;
    Ok(())
}

/// The fixed config of `fuzz_targets/adapter_decode.rs`.
const TARGET_CONFIG: &[u8] = br#"{"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ".*",
  "rank_pattern": {"q_proj": 2, "v_proj": 4}, "bias": "all", "modules_to_save": ["lm_head"]}"#;

/// Every seed decodes: a seed the decoder refuses would start the fuzzer outside the format.
fn check(dir: &Path) -> Result<(), Error> {
    use openledger_lora::adapter::{LoadOptions, LoraAdapter};
    let read = |t: &str| -> Result<Vec<(String, Vec<u8>)>, Error> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir.join(t))? {
            let e = e?;
            v.push((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path())?));
        }
        Ok(v)
    };
    let opts = LoadOptions::default();
    for (name, b) in read("adapter_decode")? {
        let ok = if name.starts_with("split-") {
            let cut = u16::from_le_bytes([b[0], b[1]]) as usize;
            let (config, weights) = b[2..].split_at(cut);
            LoraAdapter::from_bytes(config, weights, &opts).map(|_| ())
        } else {
            LoraAdapter::from_bytes(TARGET_CONFIG, &b, &opts).map(|_| ())
        };
        ok.map_err(|e| format!("seed adapter_decode/{name}: {e}"))?;
    }
    for (name, b) in read("poa_record_decode")? {
        AttributionRecord::decode(&b).map_err(|e| format!("seed {name}: {e}"))?;
    }
    for (name, b) in read("trainlog_decode")? {
        TrainLog::from_bytes(&b).map_err(|e| format!("seed {name}: {e}"))?;
    }
    for (name, b) in read("chain_tree_dump")? {
        StandardMerkleTree::from_json(std::str::from_utf8(&b)?)
            .map_err(|e| format!("seed {name}: {e}"))?;
    }
    for (name, b) in read("datanet_import")? {
        let mut net = openledger_core::datanet::Datanet::new("seed");
        net.import_jsonl(&b[..])
            .map_err(|e| format!("seed {name}: {e}"))?;
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    adapter(&dir)?;
    chain(&dir)?;
    records(&dir)?;
    check(&dir)?;
    println!("seeds written under {} (each one decodes)", dir.display());
    Ok(())
}
