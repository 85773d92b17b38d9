//! Parity with PEFT on the tiny-llama fixtures (fixtures/peft, made with torch 2.15.0,
//! transformers 5.24.0 and peft 0.21.2; see fixtures/peft/README.md): merged weights equal
//! PEFT's `merge_and_unload()` to 1e-5, the unmerged LoRA path equals the dense merged matmul to
//! 1e-5, and unmerging restores the base to 1e-6.

use std::collections::BTreeMap;
use std::path::PathBuf;

use openledger_lora::adapter::base::BaseModel;
use openledger_lora::adapter::build::random_values;
use openledger_lora::adapter::merge::{DenseTensor, merge, unmerge};
use openledger_lora::adapter::tensors::read_safetensors;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};

const ADAPTERS: [&str; 3] = ["qv-r4", "all-r8-rslora", "attn-patterns"];
const MERGED_PARAMS: [&str; 2] = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
];

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

fn dense(path: PathBuf) -> BTreeMap<String, DenseTensor> {
    read_safetensors(&path, false)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                DenseTensor::new(t.shape().to_vec(), t.to_f32().into_owned()),
            )
        })
        .collect()
}

fn adapter(name: &str) -> LoraAdapter {
    LoraAdapter::from_dir(
        &fixture().join("adapters").join(name),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn merged_weights_equal_peft_merge_and_unload_to_1e5() {
    let reference = dense(fixture().join("reference.safetensors"));
    for name in ADAPTERS {
        let ad = adapter(name);
        let mut weights = dense(fixture().join("model.safetensors"));
        let base = weights.clone();
        merge(&ad, &mut weights).unwrap();
        for param in MERGED_PARAMS {
            let want = &reference[&format!("merged.{name}.{param}")];
            let got = &weights[param];
            assert_eq!(got.shape, want.shape, "{name} {param}");
            let err = max_abs_diff(&got.data, &want.data);
            assert!(err <= 1e-5, "{name} {param}: max abs diff {err}");
            // The check is not vacuous: targeted weights really moved.
            let moved = max_abs_diff(&base[param].data, &want.data);
            let targeted = ad.module(param.trim_end_matches(".weight")).is_some();
            assert_eq!(moved > 1e-4, targeted, "{name} {param}: moved {moved}");
        }
    }
}

#[test]
fn lora_path_equals_dense_merged_matmul_to_1e5() {
    for name in ADAPTERS {
        let ad = adapter(name);
        let base = dense(fixture().join("model.safetensors"));
        let mut merged = base.clone();
        merge(&ad, &mut merged).unwrap();
        for (i, (module, m)) in ad.modules().enumerate() {
            let key = format!("{module}.weight");
            let (w, w2) = (&base[&key], &merged[&key]);
            let (n_out, n_in) = (w.shape[0], w.shape[1]);
            let tokens = 5;
            let x: Vec<f32> = random_values(tokens * n_in, 100 + i as u64)
                .iter()
                .map(|v| v * 10.0)
                .collect();
            let matmul = |wd: &[f32]| -> Vec<f32> {
                let mut y = vec![0f32; tokens * n_out];
                for t in 0..tokens {
                    for o in 0..n_out {
                        y[t * n_out + o] =
                            (0..n_in).map(|k| x[t * n_in + k] * wd[o * n_in + k]).sum();
                    }
                }
                y
            };
            let mut y = matmul(&w.data);
            m.apply(&x, &mut y).unwrap();
            let want = matmul(&w2.data);
            let err = max_abs_diff(&y, &want);
            assert!(err <= 1e-5, "{name} {module}: max abs diff {err}");
        }
    }
}

#[test]
fn unmerge_restores_the_base_to_1e6() {
    for name in ADAPTERS {
        let ad = adapter(name);
        let base = dense(fixture().join("model.safetensors"));
        let mut w = base.clone();
        let rec = merge(&ad, &mut w).unwrap();
        unmerge(&ad, &mut w, rec).unwrap();
        for (k, t) in &base {
            let err = max_abs_diff(&w[k].data, &t.data);
            assert!(err <= 1e-6, "{name} {k}: {err}");
        }
    }
}

#[test]
fn rank_and_alpha_patterns_are_honoured() {
    let ad = adapter("attn-patterns");
    for layer in 0..2 {
        let m = |p: &str| {
            ad.module(&format!("model.layers.{layer}.self_attn.{p}"))
                .unwrap()
        };
        assert_eq!((m("o_proj").rank(), m("o_proj").scale()), (2, 8.0 / 2.0));
        assert_eq!((m("k_proj").rank(), m("k_proj").scale()), (8, 32.0 / 8.0));
        assert_eq!((m("q_proj").rank(), m("q_proj").scale()), (8, 1.0));
    }
    let rs = adapter("all-r8-rslora");
    let q = rs.module("model.layers.0.self_attn.q_proj").unwrap();
    assert!((q.scale() - 16.0 / 8f32.sqrt()).abs() < 1e-6);
}

#[test]
fn fixture_adapters_validate_against_the_base_headers() {
    let base = BaseModel::from_dir(&fixture()).unwrap();
    for (name, n) in [("qv-r4", 4), ("all-r8-rslora", 14), ("attn-patterns", 8)] {
        let report = base.validate(&adapter(name)).unwrap();
        assert_eq!(report.modules_checked, n, "{name}");
        assert!(report.targeted_without_weights.is_empty(), "{name}");
    }
}

#[test]
fn resident_bytes_count_every_factor() {
    // qv-r4: 2 layers × (q: 4·64 + 64·4, v: 4·64 + 32·4) f32 values.
    let ad = adapter("qv-r4");
    assert_eq!(
        ad.resident_bytes(),
        2 * ((4 * 64 + 64 * 4) + (4 * 64 + 32 * 4)) * 4
    );
}
