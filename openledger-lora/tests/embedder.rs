//! The sentence embedder against sentence-transformers: token ids equal, vectors equal to 1e-5
//! (reference: `fixtures/minilm/reference.json`, made by `scripts/make_embedder_reference.py`
//! with sentence-transformers 5.1.2 / torch 2.11 on all-MiniLM-L6-v2), plus the refusals of
//! broken model folders.
//!
//! The model comes from `bash scripts/fetch-models.sh` (into `target/models`, or
//! `$OPENLEDGER_MODELS`). Without it these tests say so and pass, unless
//! `OPENLEDGER_REQUIRE_MODELS=1` (as the full test script sets), which makes its absence a failure.

use std::path::{Path, PathBuf};

use openledger_lora::embed::{BATCH, Pooling, SentenceEmbedder, fetched_model_or_skip};
use openledger_lora::model::ModelError;
use serde_json::Value;

fn model_dir() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models");
    fetched_model_or_skip(&root, "all-MiniLM-L6-v2").unwrap_or_else(|e| panic!("{e}"))
}

fn reference() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/minilm/reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Largest |ours − sentence-transformers| over every component of every reference vector.
const TOL: f32 = 1e-5;

#[test]
fn vectors_equal_sentence_transformers() {
    let Some(dir) = model_dir() else { return };
    let e = SentenceEmbedder::from_dir(&dir).unwrap();
    assert_eq!((e.dim(), e.max_seq_len()), (384, 256));
    assert_eq!(e.pooling(), Pooling::Mean);
    assert!(e.normalizes());
    let r = reference();
    let cases = r["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    for (c, t) in cases.iter().zip(&texts) {
        let ids: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(e.tokenize(t).unwrap(), ids, "token ids of {t:?}");
    }
    let mut calls = Vec::new();
    let got = e
        .embed_batch_with_progress(&texts, &mut |done, total| calls.push((done, total)))
        .unwrap();
    assert_eq!(calls.last(), Some(&(texts.len(), texts.len())));
    let mut worst = 0f32;
    for ((c, v), t) in cases.iter().zip(&got).zip(&texts) {
        let want: Vec<f32> = c["vector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(v.len(), want.len());
        let d = v
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= TOL, "{t:?}: max |diff| {d:e} > {TOL:e}");
        worst = worst.max(d);
    }
    eprintln!(
        "{} vectors, max |diff| vs sentence-transformers {worst:e}",
        got.len()
    );
    // One text alone gets the vector it gets inside a batch (packing does not leak across texts).
    let alone = e.embed(texts[3]).unwrap();
    let d = alone
        .iter()
        .zip(&got[3])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-6, "alone vs in a batch: {d:e}");
}

#[test]
fn batches_longer_than_one_pass_keep_their_order() {
    let Some(dir) = model_dir() else { return };
    let e = SentenceEmbedder::from_dir(&dir).unwrap();
    let texts: Vec<String> = (0..BATCH + 5)
        .map(|i| format!("record number {i}"))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let all = e.embed_batch(&refs).unwrap();
    assert_eq!(all.len(), texts.len());
    for i in [0, BATCH - 1, BATCH, BATCH + 4] {
        let one = e.embed(&texts[i]).unwrap();
        let d = one
            .iter()
            .zip(&all[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-6, "text {i}: {d:e}");
    }
}

/// A copy of the model folder (by links to the large file) that a test may break.
fn copy_of(dir: &Path) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let to = t.path().join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir(&to).unwrap();
            for f in std::fs::read_dir(entry.path()).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        } else if entry.file_name() == "model.safetensors" {
            std::os::unix::fs::symlink(entry.path(), &to).unwrap();
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    t
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn broken_model_folders_are_refused_by_name() {
    let Some(dir) = model_dir() else { return };

    let t = copy_of(&dir);
    edit_json(&t.path().join("config.json"), |v| {
        v["num_hidden_layers"] = 7.into()
    });
    let err = SentenceEmbedder::from_dir(t.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingWeight { key } if key.contains("layer.6")),
        "{err}"
    );

    let t = copy_of(&dir);
    edit_json(&t.path().join("config.json"), |v| {
        v["num_hidden_layers"] = 5.into()
    });
    let err = SentenceEmbedder::from_dir(t.path()).unwrap_err();
    assert!(err.to_string().contains("encoder.layer.5"), "{err}");

    let t = copy_of(&dir);
    edit_json(&t.path().join("config.json"), |v| {
        v["hidden_size"] = 390.into()
    });
    let err = SentenceEmbedder::from_dir(t.path()).unwrap_err();
    assert!(err.to_string().contains("not a multiple"), "{err}");

    let t = copy_of(&dir);
    edit_json(&t.path().join("config.json"), |v| {
        v["model_type"] = "llama".into()
    });
    assert!(matches!(
        SentenceEmbedder::from_dir(t.path()).unwrap_err(),
        ModelError::UnsupportedArchitecture { .. }
    ));

    let t = copy_of(&dir);
    edit_json(&t.path().join("modules.json"), |v| {
        v[1]["path"] = "../../etc".into()
    });
    let err = SentenceEmbedder::from_dir(t.path()).unwrap_err();
    assert!(err.to_string().contains("leaves the model folder"), "{err}");

    let t = copy_of(&dir);
    edit_json(&t.path().join("sentence_bert_config.json"), |v| {
        v["max_seq_length"] = 4096.into()
    });
    let err = SentenceEmbedder::from_dir(t.path()).unwrap_err();
    assert!(err.to_string().contains("max_seq_length 4096"), "{err}");

    let t = copy_of(&dir);
    std::fs::write(t.path().join("1_Pooling/config.json"), b"{\"pooling_mode").unwrap();
    let err = SentenceEmbedder::from_dir(t.path()).unwrap_err();
    assert!(err.to_string().contains("1_Pooling/config.json"), "{err}");

    let t = copy_of(&dir);
    std::fs::remove_file(t.path().join("model.safetensors")).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(
        t.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let err = SentenceEmbedder::from_dir(t.path()).unwrap_err();
    assert!(matches!(err, ModelError::Weights(_)), "{err}");

    let t = copy_of(&dir);
    std::fs::remove_file(t.path().join("tokenizer.json")).unwrap();
    let err = SentenceEmbedder::from_dir(t.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::Io { path, .. } if path.ends_with("tokenizer.json")),
        "{err}"
    );
}
