//! Bad input to the model gets a typed error naming the culprit, and nothing held is lost:
//! unsupported architecture, missing weight, weight of the wrong shape, token outside the
//! vocabulary, empty sequence, unknown adapter id, adapter made for another base, truncated
//! weights file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use openledger_lora::adapter::build::AdapterBuilder;
use openledger_lora::adapter::config::ConfigSpec;
use openledger_lora::adapter::tensors::{HostTensor, read_safetensors};
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::error::LoraError;
use openledger_lora::model::{AdapterSlot, Model, ModelConfig, ModelError, SeqInput};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

fn config() -> ModelConfig {
    ModelConfig::from_json(&std::fs::read(fixture().join("config.json")).unwrap()).unwrap()
}

fn tensors() -> BTreeMap<String, HostTensor> {
    read_safetensors(&fixture().join("model.safetensors"), false)
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn unsupported_architecture_is_named() {
    let err = ModelConfig::from_json(
        br#"{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 8}"#,
    )
    .unwrap_err();
    match err {
        ModelError::UnsupportedArchitecture {
            model_type,
            architectures,
        } => {
            assert_eq!(model_type, "gpt2");
            assert_eq!(architectures, vec!["GPT2LMHeadModel".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    let err = ModelConfig::from_json(br#"{"model_type": "gemma2", "vocab_size": 8}"#).unwrap_err();
    assert!(err.to_string().contains("gemma2"), "{err}");
}

#[test]
fn unsupported_rope_type_and_bad_head_counts_are_config_errors() {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("config.json")).unwrap()).unwrap();
    v["rope_parameters"]["rope_type"] = "yarn".into();
    let err = ModelConfig::from_value(&v).unwrap_err();
    assert!(
        matches!(&err, ModelError::Unsupported { what } if what.contains("yarn")),
        "{err}"
    );
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("config.json")).unwrap()).unwrap();
    v["num_key_value_heads"] = 3.into();
    assert!(matches!(
        ModelConfig::from_value(&v),
        Err(ModelError::InvalidConfig { .. })
    ));
}

#[test]
fn missing_weight_names_the_key() {
    let mut t = tensors();
    t.remove("model.layers.1.mlp.up_proj.weight");
    match Model::from_tensors(config(), t).unwrap_err() {
        ModelError::MissingWeight { key } => assert_eq!(key, "model.layers.1.mlp.up_proj.weight"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn weight_of_wrong_shape_names_key_and_both_shapes() {
    let mut t = tensors();
    t.insert(
        "model.layers.0.self_attn.k_proj.weight".into(),
        HostTensor::from_f32(
            openledger_core::DType::F32,
            vec![64, 64],
            &vec![0.0; 64 * 64],
        ),
    );
    match Model::from_tensors(config(), t).unwrap_err() {
        ModelError::WeightShape {
            key,
            expected,
            found,
        } => {
            assert_eq!(key, "model.layers.0.self_attn.k_proj.weight");
            assert_eq!((expected, found), (vec![32, 64], vec![64, 64]));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_weights_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let err = Model::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::Weights(_)), "{err:?}");
}

#[test]
fn bad_sequences_are_rejected_with_their_index_and_the_model_keeps_working() {
    let model = Model::from_dir(&fixture()).unwrap();
    let ok: &[u32] = &[1, 2, 3];
    let err = model
        .forward(&[
            SeqInput {
                adapter: None,
                tokens: ok,
            },
            SeqInput {
                adapter: None,
                tokens: &[4, 320, 5],
            },
        ])
        .unwrap_err();
    match err {
        ModelError::TokenOutOfVocab {
            seq,
            position,
            token,
            vocab,
        } => assert_eq!((seq, position, token, vocab), (1, 1, 320, 320)),
        other => panic!("{other:?}"),
    }
    let err = model
        .forward(&[
            SeqInput {
                adapter: None,
                tokens: ok,
            },
            SeqInput {
                adapter: None,
                tokens: &[],
            },
        ])
        .unwrap_err();
    assert!(
        matches!(err, ModelError::EmptySequence { seq: 1 }),
        "{err:?}"
    );
    let err = model
        .forward(&[SeqInput {
            adapter: Some(AdapterSlot(0)),
            tokens: ok,
        }])
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::UnknownAdapter {
                seq: 0,
                id: 0,
                held: 0
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        model
            .forward(&[SeqInput {
                adapter: None,
                tokens: ok
            }])
            .unwrap()[0]
            .len(),
        3 * 320
    );
}

#[test]
fn adapter_made_for_another_base_is_rejected_and_attached_ones_stay() {
    let mut model = Model::from_dir(&fixture()).unwrap();
    let good =
        LoraAdapter::from_dir(&fixture().join("adapters/qv-r4"), &LoadOptions::default()).unwrap();
    let id = model.attach_adapter("qv-r4", &good).unwrap();
    // hidden size 128 instead of 64
    let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["q_proj"]));
    b.random_lora("model.layers.0.self_attn.q_proj", 128, 128, 4, 3);
    let other = LoraAdapter::from_bytes(
        b.config_json().as_bytes(),
        &b.safetensors_bytes().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    match model.attach_adapter("wide", &other).unwrap_err() {
        ModelError::IncompatibleAdapter { name, source } => {
            assert_eq!(name, "wide");
            assert!(
                matches!(source, LoraError::ShapeMismatch { .. }),
                "{source:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(model.adapter_names(), vec!["qv-r4"]);
    model
        .forward(&[SeqInput {
            adapter: Some(id),
            tokens: &[1, 2],
        }])
        .unwrap();
}

#[test]
fn non_finite_weight_is_named() {
    let mut t = tensors();
    let mut v = vec![0.1f32; 64];
    v[5] = f32::NAN;
    t.insert(
        "model.norm.weight".into(),
        HostTensor::from_f32(openledger_core::DType::F32, vec![64], &v),
    );
    match Model::from_tensors(config(), t).unwrap_err() {
        ModelError::Weights(LoraError::NonFinite { key, index, .. }) => {
            assert_eq!((key.as_str(), index), ("model.norm.weight", 5));
        }
        other => panic!("{other:?}"),
    }
}
