//! A PEFT adapter merged into a model folder (`merge_adapter_into_dir`) serves as a plain model
//! with PEFT's logits (fixtures/peft/tiny-llama: `merge_and_unload()` weights and `PeftModel`
//! logits from torch 2.15.0, transformers 5.24.0, peft 0.21.2, float32 CPU).

mod tiny_llama;

use std::collections::BTreeMap;
use std::path::PathBuf;

use openledger_lora::adapter::tensors::{HostTensor, read_safetensors};
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{Model, ModelError, SeqInput, merge_adapter_into_dir};

use tiny_llama::{fixture, sequence};

fn tensors(path: PathBuf) -> BTreeMap<String, HostTensor> {
    read_safetensors(&path, false)
        .unwrap()
        .into_iter()
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_merged_folder_has_peft_merged_weights_and_serves_peft_logits_without_the_adapter() {
    let reference = tensors(fixture().join("reference.safetensors"));
    let seq = sequence(0);
    for name in ["qv-r4", "all-r8-rslora", "attn-patterns"] {
        let adapter = LoraAdapter::from_dir(
            &fixture().join("adapters").join(name),
            &LoadOptions::default(),
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut files = 0;
        merge_adapter_into_dir(&fixture(), &adapter, out.path(), &mut |_| files += 1).unwrap();
        assert!(files >= 1, "no progress reported");
        assert!(out.path().join("generation_config.json").is_file());
        // The merged weights are PEFT's `merge_and_unload()` weights (1e-6: one f32 rounding of
        // `W + scale·B·A`).
        let merged = tensors(out.path().join("model.safetensors"));
        for param in [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
        ] {
            let want = &reference[&format!("merged.{name}.{param}")];
            let got = &merged[param];
            assert_eq!(got.shape(), want.shape());
            let d = max_diff(&got.to_f32(), &want.to_f32());
            assert!(d <= 1e-6, "{name} {param}: {d}");
        }
        // The merged folder, served with no adapter, gives PeftModel's logits (1e-5, as the
        // unmerged engine does).
        let model = Model::from_dir(out.path()).unwrap();
        let logits = model
            .forward(&[SeqInput {
                adapter: None,
                tokens: &seq,
            }])
            .unwrap();
        let want = reference[&format!("logits.{name}.0")].to_f32();
        let d = max_diff(&logits[0], &want);
        assert!(d <= 1e-5, "{name}: max abs logit diff {d}");
    }
}

#[test]
fn an_adapter_for_another_base_is_refused_and_nothing_is_written() {
    // An adapter whose module is wider than the base's.
    let mut b = openledger_lora::adapter::build::AdapterBuilder::new(
        openledger_lora::adapter::config::ConfigSpec::new(2, 4.0, &["q_proj"]),
    );
    b.random_lora("model.layers.0.self_attn.q_proj", 128, 64, 2, 3);
    let adapter = b.build(&LoadOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("merged");
    let e = merge_adapter_into_dir(&fixture(), &adapter, &dir, &mut |_| {}).unwrap_err();
    assert!(matches!(e, ModelError::IncompatibleAdapter { .. }), "{e}");
    assert!(!dir.exists());
}
