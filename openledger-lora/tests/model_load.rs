//! Loading HF model folders: a sharded checkpoint (`model.safetensors.index.json`) and f16 /
//! bf16 weights give the same model as the single f32 file holding the same values.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use openledger_core::DType;
use openledger_lora::adapter::tensors::{HostTensor, read_safetensors};
use openledger_lora::model::{LoadProgress, Model, ModelError, SeqInput};
use safetensors::tensor::{Dtype, TensorView, serialize};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

fn write(path: &Path, tensors: &[(String, HostTensor)]) {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, t)| t.to_le_bytes()).collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((k, t), b)| {
            let dtype = match t.dtype() {
                DType::F32 => Dtype::F32,
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
            };
            (
                k.clone(),
                TensorView::new(dtype, t.shape().to_vec(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, serialize(views, None).unwrap()).unwrap();
}

fn logits(m: &Model) -> Vec<f32> {
    m.forward(&[SeqInput {
        adapter: None,
        tokens: &[1, 17, 42, 99, 3],
    }])
    .unwrap()
    .remove(0)
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let all = read_safetensors(&fixture().join("model.safetensors"), false).unwrap();
    let (a, b): (Vec<_>, Vec<_>) = all.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let a: Vec<_> = a.into_iter().map(|(_, t)| t).collect();
    let b: Vec<_> = b.into_iter().map(|(_, t)| t).collect();
    write(&dir.path().join("model-00001-of-00002.safetensors"), &a);
    write(&dir.path().join("model-00002-of-00002.safetensors"), &b);
    let mut map = BTreeMap::new();
    for (k, _) in &a {
        map.insert(k.clone(), "model-00001-of-00002.safetensors");
    }
    for (k, _) in &b {
        map.insert(k.clone(), "model-00002-of-00002.safetensors");
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let mut events = Vec::new();
    let sharded = Model::from_dir_with_progress(dir.path(), &mut |p| events.push(p)).unwrap();
    let files: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            LoadProgress::FileRead { done, total, .. } => Some(done * 10 + total),
            _ => None,
        })
        .collect();
    assert_eq!(files, vec![12, 22], "two shards reported in order");
    assert_eq!(
        events.last(),
        Some(&LoadProgress::LayerBuilt { done: 2, total: 2 })
    );
    let single = Model::from_dir(&fixture()).unwrap();
    assert_eq!(logits(&sharded), logits(&single));
}

#[test]
fn shard_names_outside_the_folder_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let index = r#"{"weight_map": {"lm_head.weight": "../model.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let err = Model::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::InvalidConfig { reason, .. } if reason.contains("../model.safetensors")),
        "{err:?}"
    );
}

#[test]
fn half_precision_weights_compute_in_f32() {
    let cfg_bytes = std::fs::read(fixture().join("config.json")).unwrap();
    let all = read_safetensors(&fixture().join("model.safetensors"), false).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), &cfg_bytes).unwrap();
        let half: Vec<(String, HostTensor)> = all
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    HostTensor::from_f32(dtype, t.shape().to_vec(), &t.to_f32()),
                )
            })
            .collect();
        write(&dir.path().join("model.safetensors"), &half);
        // the same rounded values held as f32
        let rounded: HashMap<String, HostTensor> = half
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    HostTensor::from_f32(DType::F32, t.shape().to_vec(), &t.to_f32()),
                )
            })
            .collect();
        let loaded = Model::from_dir(dir.path()).unwrap();
        let config = loaded.config().clone();
        let reference = Model::from_tensors(config, rounded.into_iter().collect()).unwrap();
        assert_eq!(logits(&loaded), logits(&reference), "{dtype:?}");
    }
}
