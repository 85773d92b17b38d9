//! `tokenizer.json` support: encoding / decoding with the `tokenizers` crate (regex
//! pre-tokenizers included, no C library), typed errors for a broken file and unknown ids, and
//! ids fed straight to the model.

use std::path::PathBuf;

use openledger_lora::model::{Model, ModelError, SeqInput, TOKENIZER_FILE, Tokenizer};

fn word_level(pre_tokenizer: &str) -> String {
    format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{{"id": 1, "content": "<s>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}}],
        "normalizer": null, "pre_tokenizer": {pre_tokenizer},
        "post_processor": {{"type": "TemplateProcessing",
            "single": [{{"SpecialToken": {{"id": "<s>", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}}],
            "pair": [{{"Sequence": {{"id": "A", "type_id": 0}}}}, {{"Sequence": {{"id": "B", "type_id": 1}}}}],
            "special_tokens": {{"<s>": {{"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}}}},
        "decoder": null,
        "model": {{"type": "WordLevel", "vocab": {{"<unk>": 0, "<s>": 1, "the": 17, "cat": 42, "sat": 99}},
            "unk_token": "<unk>"}}}}"#
    )
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

#[test]
fn regex_pre_tokenizer_encodes_decodes_and_adds_bos() {
    let split = r#"{"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": false}"#;
    let tok = Tokenizer::from_bytes(word_level(split).as_bytes()).unwrap();
    assert_eq!(
        tok.encode("the  cat\tsat", false).unwrap(),
        vec![17, 42, 99]
    );
    assert_eq!(tok.encode("the dog", true).unwrap(), vec![1, 17, 0]);
    assert_eq!(tok.decode(&[1, 17, 42], true).unwrap(), "the cat");
    assert_eq!(tok.token_to_id("sat"), Some(99));
    assert_eq!(tok.token_to_id("dog"), None);
}

#[test]
fn tokenizer_ids_run_through_the_model() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(TOKENIZER_FILE),
        word_level(r#"{"type": "Whitespace"}"#),
    )
    .unwrap();
    let tok = Tokenizer::from_model_dir(dir.path()).unwrap();
    let ids = tok.encode("the cat sat", true).unwrap();
    assert_eq!(ids, vec![1, 17, 42, 99]);
    let model = Model::from_dir(&fixture()).unwrap();
    let logits = model
        .forward(&[SeqInput {
            adapter: None,
            tokens: &ids,
        }])
        .unwrap();
    assert_eq!(logits[0].len(), 4 * model.config().vocab_size);
}

#[test]
fn broken_file_and_unknown_ids_are_typed_errors() {
    let err = Tokenizer::from_bytes(b"{\"model\": 3").unwrap_err();
    assert!(
        matches!(&err, ModelError::Tokenizer { what, .. } if what == TOKENIZER_FILE),
        "{err:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Tokenizer::from_model_dir(dir.path()),
        Err(ModelError::Io { .. })
    ));
    let tok = Tokenizer::from_bytes(word_level(r#"{"type": "Whitespace"}"#).as_bytes()).unwrap();
    let err = tok.decode(&[17, 5000], false).unwrap_err();
    assert!(err.to_string().contains("5000"), "{err}");
}

#[test]
fn a_model_folder_may_have_a_tokenizer_and_it_detokenizes_for_stop_strings() {
    use openledger_lora::serve::Detokenize;
    assert!(Tokenizer::in_model_dir(&fixture()).unwrap().is_none());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(TOKENIZER_FILE);
    std::fs::write(&path, word_level(r#"{"type": "Whitespace"}"#)).unwrap();
    let tok = Tokenizer::in_model_dir(dir.path()).unwrap().unwrap();
    assert_eq!(tok.detokenize(&[1, 17, 42]), "the cat"); // special tokens left out
    assert_eq!(tok.detokenize(&[17, 5000]), ""); // an id outside the vocabulary: no text
    let shared = std::sync::Arc::new(tok);
    assert_eq!(shared.detokenize(&[42, 99]), "cat sat");
    std::fs::write(&path, "{\"model\": ").unwrap();
    assert!(matches!(
        Tokenizer::in_model_dir(dir.path()),
        Err(ModelError::Tokenizer { .. })
    ));
}
