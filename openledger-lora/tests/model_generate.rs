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

/// `continuation_logprobs` gives, for each continuation token, the log-softmax of the full
/// forward pass's logits at the position before it (f64 reference here), in one mixed batch
/// with an adapter and the base; an empty context is refused by index, an empty continuation
/// scores empty. Tolerance 1e-5 (the same f32 pass; only the softmax's summation differs).
#[test]
fn continuation_logprobs_equal_the_log_softmax_of_the_full_forward_pass() {
    use openledger_lora::adapter::{LoadOptions, LoraAdapter};
    use openledger_lora::model::{ScoreInput, SeqInput};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama");
    let mut model = Model::from_dir(&dir).unwrap();
    let adapter =
        LoraAdapter::from_dir(&dir.join("adapters/qv-r4"), &LoadOptions::default()).unwrap();
    let slot = model.attach_adapter("qv", &adapter).unwrap();
    let cases: [(Option<_>, &[u32], &[u32]); 3] = [
        (Some(slot), &[1, 17, 42, 5], &[9, 3, 88]),
        (None, &[1, 2], &[7]),
        (None, &[1, 17, 42, 5], &[9, 3, 88]),
    ];
    let batch: Vec<ScoreInput<'_>> = cases
        .iter()
        .map(|&(adapter, context, continuation)| ScoreInput {
            adapter,
            context,
            continuation,
        })
        .collect();
    let got = model.continuation_logprobs(&batch).unwrap();
    let vocab = model.config().vocab_size;
    for (n, &(adapter, context, continuation)) in cases.iter().enumerate() {
        let tokens = [context, continuation].concat();
        let logits = model
            .forward(&[SeqInput {
                adapter,
                tokens: &tokens,
            }])
            .unwrap();
        assert_eq!(got[n].len(), continuation.len());
        for (i, &t) in continuation.iter().enumerate() {
            let row = &logits[0][(context.len() - 1 + i) * vocab..][..vocab];
            let lse = row.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
            let want = f64::from(row[t as usize]) - lse;
            assert!(
                (f64::from(got[n][i]) - want).abs() < 1e-5,
                "seq {n} token {i}: {} vs {want}",
                got[n][i]
            );
        }
    }
    // The adapter changes the scores (so the test sees which weights ran).
    assert!((got[0][0] - got[2][0]).abs() > 1e-4, "{got:?}");

    let empty = model
        .continuation_logprobs(&[ScoreInput {
            adapter: None,
            context: &[1],
            continuation: &[],
        }])
        .unwrap();
    assert_eq!(empty, vec![Vec::<f32>::new()]);
    let err = model
        .continuation_logprobs(&[
            batch[0],
            ScoreInput {
                adapter: None,
                context: &[],
                continuation: &[3],
            },
        ])
        .unwrap_err();
    assert!(matches!(err, ModelError::EmptySequence { seq: 1 }), "{err}");
}
