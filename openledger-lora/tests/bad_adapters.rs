//! A catalogue of bad adapter inputs: each gets its own typed error that names the culprit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use openledger_core::DType;
use openledger_lora::adapter::base::BaseModel;
use openledger_lora::adapter::build::AdapterBuilder;
use openledger_lora::adapter::config::{ConfigSpec, LoraConfig};
use openledger_lora::adapter::merge::{DenseTensor, merge};
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::error::LoraError;

const Q: &str = "model.layers.0.self_attn.q_proj";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

fn good() -> AdapterBuilder {
    let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["q_proj"]));
    b.random_lora(Q, 64, 64, 4, 1);
    b
}

fn load(b: &AdapterBuilder) -> Result<LoraAdapter, LoraError> {
    b.build(&LoadOptions::default())
}

fn load_bytes(config: &str, weights: &[u8]) -> Result<LoraAdapter, LoraError> {
    LoraAdapter::from_bytes(config.as_bytes(), weights, &LoadOptions::default())
}

/// A safetensors file from a literal header and data section.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn config() -> String {
    ConfigSpec::new(1, 1.0, &["q_proj"]).to_json()
}

#[test]
fn truncated_file_names_the_tensor_whose_data_is_cut() {
    let bytes = good().safetensors_bytes().unwrap();
    let cut = &bytes[..bytes.len() - 10];
    match load_bytes(&config(), cut).unwrap_err() {
        LoraError::Truncated {
            what,
            found,
            expected,
            ..
        } => {
            assert!(what.contains(Q), "{what}");
            assert!(expected > found);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn file_shorter_than_the_length_prefix_is_truncated() {
    match load_bytes(&config(), &[1, 2, 3]).unwrap_err() {
        LoraError::Truncated {
            what,
            expected: 8,
            found: 3,
            ..
        } => assert_eq!(what, "header length"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn header_length_past_the_file_is_truncated_header() {
    let mut bytes = good().safetensors_bytes().unwrap();
    let n = bytes.len() as u64 + 100;
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    match load_bytes(&config(), &bytes).unwrap_err() {
        LoraError::Truncated { what, file, .. } => {
            assert!(what.starts_with("header"), "{what}");
            assert_eq!(file, "adapter_model.safetensors");
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn overlapping_offsets_name_the_tensor() {
    let k = format!("base_model.model.{Q}");
    let header = format!(
        r#"{{"{k}.lora_A.weight":{{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}},"{k}.lora_B.weight":{{"dtype":"F32","shape":[2,1],"data_offsets":[4,12]}}}}"#
    );
    let err = load_bytes(&config(), &raw(&header, &[0u8; 12])).unwrap_err();
    match err {
        LoraError::BadHeader { key: Some(key), .. } => assert!(key.starts_with(&k), "{key}"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn offsets_past_the_data_section_name_the_tensor() {
    let k = format!("base_model.model.{Q}.lora_A.weight");
    let header = format!(r#"{{"{k}":{{"dtype":"F32","shape":[1,4],"data_offsets":[0,16]}}}}"#);
    match load_bytes(&config(), &raw(&header, &[0u8; 8])).unwrap_err() {
        LoraError::Truncated {
            what,
            expected: 16,
            found: 8,
            ..
        } => assert!(what.contains(&k)),
        e => panic!("{e:?}"),
    }
}

#[test]
fn byte_range_that_does_not_match_the_shape_names_the_tensor() {
    let k = format!("base_model.model.{Q}.lora_A.weight");
    let header = format!(r#"{{"{k}":{{"dtype":"F32","shape":[1,3],"data_offsets":[0,16]}}}}"#);
    match load_bytes(&config(), &raw(&header, &[0u8; 16])).unwrap_err() {
        LoraError::BadHeader {
            key: Some(key),
            reason,
            ..
        } => {
            assert_eq!(key, k);
            assert!(reason.contains("needs 12 bytes"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn header_that_is_not_json_is_a_bad_header() {
    let err = load_bytes(&config(), &raw("{not json", &[])).unwrap_err();
    assert!(
        matches!(err, LoraError::BadHeader { key: None, .. }),
        "{err:?}"
    );
}

#[test]
fn unknown_dtypes_are_rejected_naming_key_and_dtype() {
    for (dtype, size) in [("F8_E4M3", 1), ("I64", 8), ("F64", 8)] {
        let mut b = AdapterBuilder::new(ConfigSpec::new(1, 1.0, &["q_proj"]));
        let key = format!("base_model.model.{Q}.lora_A.weight");
        b.raw_tensor(&key, dtype, vec![1, 2], vec![0; 2 * size]);
        match load(&b).unwrap_err() {
            LoraError::UnsupportedDType {
                key: k, dtype: d, ..
            } => {
                assert_eq!((k.as_str(), d.as_str()), (key.as_str(), dtype));
            }
            e => panic!("{dtype}: {e:?}"),
        }
    }
    // A dtype the safetensors format itself does not know.
    let k = format!("base_model.model.{Q}.lora_A.weight");
    let header = format!(r#"{{"{k}":{{"dtype":"Q4","shape":[1,2],"data_offsets":[0,1]}}}}"#);
    match load_bytes(&config(), &raw(&header, &[0u8; 1])).unwrap_err() {
        LoraError::UnsupportedDType { key, dtype, .. } => {
            assert_eq!((key, dtype), (k, "Q4".into()))
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn nan_and_inf_weights_are_rejected_unless_allowed() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let mut b = AdapterBuilder::new(ConfigSpec::new(1, 1.0, &["q_proj"])).with_dtype(dt);
            b.lora(Q, 2, 2, 1, &[0.5, 0.25], &[1.0, bad]);
            match load(&b).unwrap_err() {
                LoraError::NonFinite { key, index: 1, .. } => {
                    assert_eq!(key, format!("base_model.model.{Q}.lora_B.weight"));
                }
                e => panic!("{bad} {dt}: {e:?}"),
            }
            let opts = LoadOptions {
                allow_non_finite: true,
            };
            assert!(b.build(&opts).is_ok());
        }
    }
}

#[test]
fn malformed_config_json_is_invalid_config() {
    let w = good().safetensors_bytes().unwrap();
    match load_bytes(r#"{"peft_type": "LORA", "r": 4,"#, &w).unwrap_err() {
        LoraError::InvalidConfig { file, .. } => assert_eq!(file, "adapter_config.json"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn rank_zero_is_rejected_naming_the_field() {
    let mut b = good();
    b.config_override(
        r#"{"peft_type": "LORA", "r": 0, "lora_alpha": 8, "target_modules": ["q_proj"]}"#,
    );
    match load(&b).unwrap_err() {
        LoraError::InvalidField { field, .. } => assert_eq!(field, "r"),
        e => panic!("{e:?}"),
    }
    b.config_override(r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": 0}}"#);
    match load(&b).unwrap_err() {
        LoraError::InvalidField { field, .. } => assert_eq!(field, "rank_pattern.q_proj"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn non_numeric_alpha_is_rejected_naming_the_field() {
    let mut b = good();
    b.config_override(
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": "8", "target_modules": ["q_proj"]}"#,
    );
    match load(&b).unwrap_err() {
        LoraError::InvalidField { field, .. } => assert_eq!(field, "lora_alpha"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn unknown_peft_type_is_typed() {
    let mut b = good();
    b.config_override(r#"{"peft_type": "IA3", "target_modules": ["q_proj"]}"#);
    match load(&b).unwrap_err() {
        LoraError::UnsupportedPeftType { found, .. } => assert_eq!(found, "IA3"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn lora_a_without_lora_b_names_the_module() {
    let mut b = AdapterBuilder::new(ConfigSpec::new(1, 1.0, &["q_proj"]));
    let key = format!("base_model.model.{Q}.lora_A.weight");
    b.raw_tensor(&key, "F32", vec![1, 2], DType::F32.encode_le(&[1.0, 2.0]));
    match load(&b).unwrap_err() {
        LoraError::MissingFactor {
            module,
            present,
            missing,
        } => {
            assert_eq!(
                (module.as_str(), present.as_str(), missing.as_str()),
                (Q, "lora_A", "lora_B")
            );
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn rank_in_config_differing_from_tensors_is_a_rank_mismatch() {
    let mut b = AdapterBuilder::new(ConfigSpec::new(8, 8.0, &["q_proj"]));
    b.random_lora(Q, 64, 64, 4, 1);
    match load(&b).unwrap_err() {
        LoraError::RankMismatch {
            module,
            config_rank: 8,
            tensor_rank: 4,
            key,
        } => {
            assert_eq!(module, Q);
            assert!(key.ends_with("lora_A.weight"));
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn three_dimensional_factor_is_a_bad_shape() {
    let mut b = AdapterBuilder::new(ConfigSpec::new(1, 1.0, &["q_proj"]));
    b.raw_tensor(
        &format!("base_model.model.{Q}.lora_A.weight"),
        "F32",
        vec![1, 2, 2],
        vec![0; 16],
    );
    b.raw_tensor(
        &format!("base_model.model.{Q}.lora_B.weight"),
        "F32",
        vec![2, 1],
        vec![0; 8],
    );
    match load(&b).unwrap_err() {
        LoraError::BadShape { key, found, .. } => {
            assert!(key.ends_with("lora_A.weight"));
            assert_eq!(found, vec![1, 2, 2]);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn key_outside_the_peft_prefix_is_named() {
    let mut b = AdapterBuilder::new(ConfigSpec::new(1, 1.0, &["q_proj"]));
    b.raw_tensor(
        "model.layers.0.self_attn.q_proj.lora_A.weight",
        "F32",
        vec![1, 1],
        vec![0; 4],
    );
    match load(&b).unwrap_err() {
        LoraError::KeyOutsidePrefix { key } => {
            assert_eq!(key, "model.layers.0.self_attn.q_proj.lora_A.weight")
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn dora_magnitude_of_wrong_length_is_a_bad_shape() {
    let mut spec = ConfigSpec::new(2, 4.0, &["q_proj"]);
    spec.use_dora = true;
    let mut b = AdapterBuilder::new(spec);
    b.random_lora(Q, 8, 6, 2, 3).magnitude(Q, &[1.0; 5]);
    match load(&b).unwrap_err() {
        LoraError::BadShape {
            key,
            found,
            expected,
        } => {
            assert!(key.ends_with("lora_magnitude_vector.weight"));
            assert_eq!(found, vec![5]);
            assert!(expected.contains('6'));
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn dora_without_magnitude_is_a_missing_factor() {
    let mut spec = ConfigSpec::new(2, 4.0, &["q_proj"]);
    spec.use_dora = true;
    let mut b = AdapterBuilder::new(spec);
    b.random_lora(Q, 8, 6, 2, 3);
    match load(&b).unwrap_err() {
        LoraError::MissingFactor {
            module, missing, ..
        } => {
            assert_eq!(
                (module.as_str(), missing.as_str()),
                (Q, "lora_magnitude_vector")
            );
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn magnitude_without_use_dora_is_unexpected() {
    let mut b = AdapterBuilder::new(ConfigSpec::new(2, 4.0, &["q_proj"]));
    b.random_lora(Q, 8, 6, 2, 3).magnitude(Q, &[1.0; 6]);
    assert!(
        matches!(load(&b).unwrap_err(), LoraError::UnexpectedTensor { key, .. } if key.contains("lora_magnitude_vector"))
    );
}

#[test]
fn weights_for_a_module_the_config_does_not_target_are_rejected() {
    let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["v_proj"]));
    b.random_lora(Q, 64, 64, 4, 1);
    match load(&b).unwrap_err() {
        LoraError::UntargetedModule { module } => assert_eq!(module, Q),
        e => panic!("{e:?}"),
    }
}

#[test]
fn invalid_regex_in_target_modules_is_named() {
    let mut b = good();
    b.config_override(r#"{"peft_type": "LORA", "r": 4, "target_modules": "q_proj(("}"#);
    match load(&b).unwrap_err() {
        LoraError::InvalidRegex { field, pattern, .. } => {
            assert_eq!(
                (field.as_str(), pattern.as_str()),
                ("target_modules", "q_proj((")
            );
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn hostile_patterns_are_refused_quickly() {
    // A pattern whose compiled form would take hundreds of megabytes, and one past the length
    // limit: typed errors (the size limit stops the compile early).
    let huge = r#"{"peft_type": "LORA", "r": 4, "target_modules": "(((a{100}){100}){100})"}"#;
    let long = format!(
        r#"{{"peft_type": "LORA", "r": 4, "target_modules": "{}"}}"#,
        "a|".repeat(600)
    );
    for config in [huge.to_string(), long] {
        match LoraConfig::from_json(config.as_bytes()).unwrap_err() {
            LoraError::InvalidRegex { field, .. } => assert_eq!(field, "target_modules"),
            e => panic!("{e:?}"),
        }
    }
    // Plain names need no regex and keep PEFT's meaning.
    let c = LoraConfig::from_json(
        br#"{"peft_type": "LORA", "r": 4, "target_modules": "model.layers.0.self_attn.q_proj",
             "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"layers.1.self_attn.v_proj": 3}}"#,
    )
    .unwrap();
    assert!(c.targets("model.layers.0.self_attn.q_proj"));
    assert!(!c.targets("model.layers.1.self_attn.q_proj"));
    assert_eq!(c.rank_for("model.layers.0.self_attn.v_proj"), 2);
    assert_eq!(c.rank_for("model.layers.0.self_attn.xv_proj"), 4);
    assert_eq!(c.alpha_for("model.layers.1.self_attn.v_proj"), 3.0);
    assert_eq!(c.alpha_for("model.layers.0.self_attn.v_proj"), 8.0);
}

#[test]
fn adapter_without_tensors_is_empty() {
    let b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["q_proj"]));
    assert!(matches!(
        load(&b).unwrap_err(),
        LoraError::EmptyAdapter { .. }
    ));
}

#[test]
fn missing_weights_file_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("adapter_config.json"), config()).unwrap();
    match LoraAdapter::from_dir(dir.path(), &LoadOptions::default()).unwrap_err() {
        LoraError::Io { path, source } => {
            assert_eq!(path, dir.path().join("adapter_model.safetensors"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn target_module_absent_from_the_base_is_named() {
    let base = BaseModel::from_dir(&fixture()).unwrap();
    let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["q_proj"]));
    b.random_lora("model.layers.7.self_attn.q_proj", 64, 64, 4, 1);
    match base.validate(&load(&b).unwrap()).unwrap_err() {
        LoraError::TargetModuleAbsent { module } => {
            assert_eq!(module, "model.layers.7.self_attn.q_proj")
        }
        e => panic!("{e:?}"),
    }
    // Targets that match nothing at all are named too.
    let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["c_attn"]));
    b.random_lora("transformer.h.0.attn.c_attn", 64, 64, 4, 1);
    match base.validate(&load(&b).unwrap()).unwrap_err() {
        LoraError::TargetModuleAbsent { module } => assert!(module.contains("c_attn")),
        e => panic!("{e:?}"),
    }
}

#[test]
fn shape_mismatch_with_the_base_names_module_and_both_shapes() {
    let base = BaseModel::from_dir(&fixture()).unwrap();
    let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["k_proj"]));
    // k_proj is [32, 64] in the base; this adapter claims [64, 64].
    b.random_lora("model.layers.0.self_attn.k_proj", 64, 64, 4, 1);
    match base.validate(&load(&b).unwrap()).unwrap_err() {
        LoraError::ShapeMismatch {
            module,
            adapter_out: 64,
            adapter_in: 64,
            base_shape,
        } => {
            assert_eq!(module, "model.layers.0.self_attn.k_proj");
            assert_eq!(base_shape, vec![32, 64]);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn lora_on_a_norm_is_an_unsupported_target() {
    let base = BaseModel::from_dir(&fixture()).unwrap();
    let mut b = AdapterBuilder::new(ConfigSpec::new(1, 1.0, &["norm"]));
    b.random_lora("model.norm", 64, 64, 1, 1);
    assert!(matches!(
        base.validate(&load(&b).unwrap()).unwrap_err(),
        LoraError::UnsupportedTarget { module, .. } if module == "model.norm"
    ));
}

#[test]
fn sharded_index_naming_a_path_outside_the_folder_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"lm_head.weight": "../../etc/passwd"}}"#,
    )
    .unwrap();
    match BaseModel::from_dir(dir.path()).unwrap_err() {
        LoraError::InvalidConfig { reason, .. } => {
            assert!(reason.contains("lm_head.weight"), "{reason}")
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn failed_merge_leaves_the_weights_untouched() {
    let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["q_proj", "k_proj"]));
    b.random_lora(Q, 64, 64, 4, 1)
        .random_lora("model.layers.0.self_attn.k_proj", 64, 64, 4, 2);
    let ad = load(&b).unwrap();
    let mut w = BTreeMap::new();
    w.insert(
        format!("{Q}.weight"),
        DenseTensor::new(vec![64, 64], vec![0.5; 64 * 64]),
    );
    w.insert(
        "model.layers.0.self_attn.k_proj.weight".to_string(),
        DenseTensor::new(vec![32, 64], vec![0.5; 32 * 64]),
    );
    let before = w.clone();
    assert!(matches!(
        merge(&ad, &mut w).unwrap_err(),
        LoraError::ShapeMismatch { .. }
    ));
    assert_eq!(w, before);
}
