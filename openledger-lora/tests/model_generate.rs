//! Text generation without the engine (`Model::greedy_text_streaming`) on the tiny llama, with
//! a word-level tokenizer over its vocabulary.

use std::path::PathBuf;

use openledger_lora::model::{Model, ModelError, RandomLlama, Tokenizer};

fn model_and_tokenizer() -> (Model, Tokenizer) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama");
    let model = Model::from_dir(&dir).unwrap();
    let words = RandomLlama {
        vocab: model.config().vocab_size,
        hidden: 4,
        intermediate: 4,
        layers: 1,
        heads: 1,
        kv_heads: 1,
    };
    let tok = Tokenizer::from_bytes(words.tokenizer_json().as_bytes()).unwrap();
    (model, tok)
}

#[test]
fn text_streams_in_pieces_that_end_before_the_first_stop_string() {
    let (model, tok) = model_and_tokenizer();
    let prompt = [1, 17, 42];
    let tokens = model.greedy(None, &prompt, 8).unwrap();
    let full = tok.decode(&tokens, true).unwrap();
    let words: Vec<&str> = full.split(' ').collect();
    assert!(words.len() >= 4, "{full:?}");

    // No stop string: the pieces join to the whole decode.
    let mut pieces = Vec::new();
    let answer = model
        .greedy_text_streaming(&tok, None, &prompt, 8, &[], &mut |p| {
            pieces.push(p.to_owned());
            true
        })
        .unwrap();
    assert_eq!(answer, full);
    assert_eq!(pieces.concat(), full);
    assert!(pieces.len() > 1, "streamed in one piece: {pieces:?}");

    // A stop string: the answer ends before its first occurrence, and nothing after it is sent.
    let stop = words[2].to_string();
    let at = full.find(&stop).unwrap();
    let mut pieces = Vec::new();
    let answer = model
        .greedy_text_streaming(
            &tok,
            None,
            &prompt,
            8,
            std::slice::from_ref(&stop),
            &mut |p| {
                pieces.push(p.to_owned());
                true
            },
        )
        .unwrap();
    assert_eq!(answer, full[..at]);
    assert_eq!(pieces.concat(), answer);

    // A listener that stops after the first piece gets no more; the answer holds what waited.
    let mut calls = 0;
    let answer = model
        .greedy_text_streaming(&tok, None, &prompt, 8, &[], &mut |_| {
            calls += 1;
            false
        })
        .unwrap();
    assert_eq!(calls, 1);
    assert!(full.starts_with(&answer), "{answer:?} vs {full:?}");
    assert!(answer.len() < full.len());
}

#[test]
fn an_empty_stop_string_is_an_invalid_argument() {
    let (model, tok) = model_and_tokenizer();
    let e = model
        .greedy_text_streaming(&tok, None, &[1, 2], 4, &["".into()], &mut |_| true)
        .unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::InvalidArgument {
                name: "stop_strings",
                ..
            }
        ),
        "{e}"
    );
}
