//! Loading from folders (memory-mapped) and reading base-model shapes from headers only,
//! including sharded checkpoints.

use std::collections::BTreeMap;
use std::path::PathBuf;

use openledger_core::DType;
use openledger_lora::adapter::base::{BaseKind, BaseModel};
use openledger_lora::adapter::build::AdapterBuilder;
use openledger_lora::adapter::config::{ConfigSpec, TargetModules};
use openledger_lora::adapter::tensors::{read_header, read_safetensors};
use openledger_lora::adapter::{LoadOptions, LoraAdapter};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

#[test]
fn folder_and_bytes_loads_agree_for_every_dtype() {
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let mut b =
            AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["q_proj", "v_proj"])).with_dtype(dt);
        b.random_lora("model.layers.0.self_attn.q_proj", 64, 64, 4, 1)
            .random_lora("model.layers.0.self_attn.v_proj", 64, 32, 4, 2);
        let dir = tempfile::tempdir().unwrap();
        b.write_dir(dir.path()).unwrap();
        let from_dir = LoraAdapter::from_dir(dir.path(), &LoadOptions::default()).unwrap();
        let from_bytes = b.build(&LoadOptions::default()).unwrap();
        assert_eq!(from_dir.num_modules(), 2);
        for ((n1, m1), (n2, m2)) in from_dir.modules().zip(from_bytes.modules()) {
            assert_eq!(n1, n2);
            assert_eq!(m1.a(), m2.a());
            assert_eq!(m1.b(), m2.b());
            assert_eq!(m1.a().dtype(), dt);
        }
        assert_eq!(
            from_dir.resident_bytes(),
            (4 * 64 * 2 + 64 * 4 + 32 * 4) * dt.size_in_bytes()
        );
    }
}

#[test]
fn base_modules_are_classified_from_headers() {
    let base = BaseModel::from_dir(&fixture()).unwrap();
    let m = base.modules();
    assert_eq!(m["model.embed_tokens"].kind, BaseKind::Embedding);
    assert_eq!(m["model.norm"].kind, BaseKind::Other);
    assert_eq!(m["model.layers.1.self_attn.k_proj"].kind, BaseKind::Linear);
    assert_eq!(
        m["model.layers.1.self_attn.k_proj"].weight_shape,
        vec![32, 64]
    );
    assert_eq!(base.linear_modules().len(), 15);
    assert_eq!(base.output_layer(), Some("lm_head"));
    assert_eq!(base.config().unwrap()["hidden_size"], 64);
}

/// A tensor to write into a shard: key, little-endian bytes, shape.
type Entry = (String, Vec<u8>, Vec<usize>);

#[test]
fn sharded_checkpoint_headers_give_the_same_modules() {
    let tensors = read_safetensors(&fixture().join("model.safetensors"), false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let mut shards: [Vec<Entry>; 2] = [Vec::new(), Vec::new()];
    let mut weight_map = BTreeMap::new();
    for (i, (k, t)) in tensors.iter().enumerate() {
        let shard = i % 2;
        shards[shard].push((k.clone(), t.to_le_bytes(), t.shape().to_vec()));
        weight_map.insert(
            k.clone(),
            format!("model-0000{}-of-00002.safetensors", shard + 1),
        );
    }
    for (s, entries) in shards.iter().enumerate() {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
            .iter()
            .map(|(k, bytes, shape)| {
                let v = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    bytes,
                )
                .unwrap();
                (k.clone(), v)
            })
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        std::fs::write(
            dir.path()
                .join(format!("model-0000{}-of-00002.safetensors", s + 1)),
            bytes,
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let sharded = BaseModel::from_dir(dir.path()).unwrap();
    let single = BaseModel::from_dir(&fixture()).unwrap();
    assert_eq!(sharded.modules(), single.modules());
    let ad = LoraAdapter::from_dir(
        &fixture().join("adapters/all-r8-rslora"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(sharded.validate(&ad).unwrap().modules_checked, 14);
}

#[test]
fn header_reading_never_needs_the_data() {
    // A header whose offsets promise more data than the file holds is caught from the size.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let header = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 16]);
    std::fs::write(&path, &bytes).unwrap();
    let h = read_header(&path).unwrap();
    assert_eq!(h[0].0, "w");
    assert_eq!(h[0].1.shape, vec![4]);
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    assert!(read_header(&path).is_err());
}

#[test]
fn all_linear_adapter_validates_and_reports_untouched_targets() {
    let base = BaseModel::from_dir(&fixture()).unwrap();
    let mut spec = ConfigSpec::new(2, 4.0, &[]);
    spec.target_modules = TargetModules::AllLinear;
    let mut b = AdapterBuilder::new(spec);
    b.random_lora("model.layers.0.mlp.down_proj", 128, 64, 2, 1);
    let report = base
        .validate(&b.build(&LoadOptions::default()).unwrap())
        .unwrap();
    assert_eq!(report.modules_checked, 1);
    assert_eq!(report.targeted_without_weights.len(), 13);
    assert!(
        !report
            .targeted_without_weights
            .iter()
            .any(|m| m == "lm_head")
    );
}

#[test]
fn saved_adapters_load_back_identically_including_combined_ones() {
    use openledger_lora::adapter::combine::{Combination, CombineOptions, add_weighted_adapter};
    let opts = LoadOptions::default();
    let dir = tempfile::tempdir().unwrap();
    for name in ["qv-r4", "attn-patterns"] {
        let ad = LoraAdapter::from_dir(&fixture().join("adapters").join(name), &opts).unwrap();
        let out = dir.path().join(name);
        ad.save_dir(&out).unwrap();
        let back = LoraAdapter::from_dir(&out, &opts).unwrap();
        assert_eq!(back.num_modules(), ad.num_modules());
        for ((n1, m1), (n2, m2)) in ad.modules().zip(back.modules()) {
            assert_eq!(
                (n1, m1.a(), m1.b(), m1.scale()),
                (n2, m2.a(), m2.b(), m2.scale())
            );
        }
    }
    let a = LoraAdapter::from_dir(&fixture().join("adapters/qv-r4"), &opts).unwrap();
    let b = LoraAdapter::from_dir(&fixture().join("adapters/attn-patterns"), &opts).unwrap();
    let cat = add_weighted_adapter(
        &[&a, &b],
        &[0.5, 0.5],
        &CombineOptions::new(Combination::Cat),
        None,
    )
    .unwrap();
    let out = dir.path().join("cat");
    cat.save_dir(&out).unwrap();
    let back = LoraAdapter::from_dir(&out, &opts).unwrap();
    assert_eq!(back.config().r(), 12);
    assert_eq!(back.num_modules(), cat.num_modules());
    for ((_, m1), (_, m2)) in cat.modules().zip(back.modules()) {
        assert_eq!(m1.delta(), m2.delta());
    }
}
