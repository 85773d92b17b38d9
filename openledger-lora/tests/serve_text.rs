//! `IncrementalText` and the stop strings it serves: the text released token by token equals
//! the whole output's text for real tokenizer families (byte-level BPE with characters split
//! across tokens, SentencePiece-style metaspace with its stripped leading space, special tokens
//! left out), it waits for unfinished characters, and its cost grows linearly with the output.

use std::cell::Cell;
use std::convert::Infallible;

use openledger_lora::model::Tokenizer;
use openledger_lora::serve::{
    Detokenize, FinishReason, IncrementalText, SamplingParams, StopChecker, TextPieces,
};
use proptest::prelude::*;

/// GPT-2's byte ↔ printable-character table of byte-level BPE.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (u32::from('!')..=u32::from('~'))
        .chain(u32::from('¡')..=u32::from('¬'))
        .chain(u32::from('®')..=u32::from('ÿ'))
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in printable.into_iter().zip(chars) {
        table[b as usize] = char::from_u32(c).unwrap();
    }
    table
}

/// A byte-level BPE tokenizer (byte `b` is token `b`, a few merges, one special token
/// `<|end|>` = 260), as GPT-2, Llama 3 and Qwen use.
fn byte_level() -> Tokenizer {
    let table = byte_chars();
    let mut vocab = Vec::new();
    for (i, c) in table.iter().enumerate() {
        vocab.push(format!("{}: {i}", serde_quote(&c.to_string())));
    }
    let merged = ["th", "the", "Ġthe", "Ã©"];
    for (i, m) in merged.iter().enumerate() {
        vocab.push(format!("{}: {}", serde_quote(m), 256 + i));
    }
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{{"id": 260, "content": "<|end|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}}],
        "normalizer": null,
        "pre_tokenizer": {{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}},
        "post_processor": null,
        "decoder": {{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}},
        "model": {{"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": {{{}}}, "merges": ["t h", "th e", "Ġ the", "Ã ©"]}}}}"#,
        vocab.join(", ")
    );
    Tokenizer::from_bytes(json.as_bytes()).unwrap()
}

/// A SentencePiece-style word tokenizer: `▁` marks a word start and the decoder drops the
/// first word's space, as Llama 2 and Mistral do.
fn metaspace() -> Tokenizer {
    let json = r#"{"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 9, "content": "</s>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
        "post_processor": null,
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
        "model": {"type": "WordLevel", "unk_token": "<unk>", "vocab": {"<unk>": 0, "▁the": 1,
            "▁cat": 2, "▁sat": 3, "▁on": 4, "▁mat": 5, "▁café": 6, "s": 7, ".": 8, "</s>": 9}}}"#;
    Tokenizer::from_bytes(json.as_bytes()).unwrap()
}

fn serde_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The tokenizer's decode with special tokens left out, its error as text.
fn dec(tok: &Tokenizer) -> impl Fn(&[u32]) -> Result<String, String> + Copy + '_ {
    move |t| tok.decode(t, true).map_err(|e| e.to_string())
}

/// Feeds `ids` in batches of the given sizes (cycled; 1 is the engine's token by token) and
/// checks every step against the whole text.
fn check_against_whole(tok: &Tokenizer, ids: &[u32], batches: &[usize]) {
    let whole = tok
        .decode(ids, true)
        .unwrap_or_else(|e| panic!("{ids:?}: {e}"));
    let mut text = IncrementalText::new();
    let mut joined = String::new();
    let mut n = 0;
    for &b in batches.iter().cycle() {
        if n == ids.len() {
            break;
        }
        n = (n + b.max(1)).min(ids.len());
        let piece = text.extend(&ids[..n], dec(tok)).unwrap().to_owned();
        joined.push_str(&piece);
        assert_eq!(joined, text.text());
        let so_far = tok.decode(&ids[..n], true).unwrap();
        // Everything but an unfinished character at the end is out.
        assert_eq!(
            text.text(),
            so_far.trim_end_matches('\u{FFFD}'),
            "after {n} tokens of {ids:?}"
        );
    }
    let rest = text.finish(ids, dec(tok)).unwrap().to_owned();
    joined.push_str(&rest);
    assert_eq!(joined, whole);
    assert_eq!(text.text(), whole);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn byte_level_pieces_join_to_the_whole_text(
        words in proptest::collection::vec(
            prop::sample::select(vec!["the", " the", "a", " ", "é", "café", "中文", "🙂", "\n", "th", "e!"]),
            0..40,
        ),
        end_at in proptest::option::of(0usize..40),
        batches in proptest::collection::vec(1usize..5, 1..4),
    ) {
        let tok = byte_level();
        let mut ids = tok.encode(&words.concat(), false).unwrap();
        if let Some(at) = end_at {
            ids.insert(at.min(ids.len()), 260); // a special token, left out of the text
        }
        check_against_whole(&tok, &ids, &batches);
    }

    #[test]
    fn metaspace_pieces_join_to_the_whole_text(
        ids in proptest::collection::vec(1u32..10, 0..40),
        batches in proptest::collection::vec(1usize..5, 1..4),
    ) {
        check_against_whole(&metaspace(), &ids, &batches);
    }
}

#[test]
fn a_character_split_across_tokens_is_released_whole() {
    let tok = byte_level();
    // "é" as its two bytes, not the merged token: C3 then A9.
    let id = |b: u8| u32::from(b);
    let ids = [id(b'c'), id(0xC3), id(0xA9), id(b'!')];
    let mut text = IncrementalText::new();
    let decode = dec(&tok);
    assert_eq!(text.extend(&ids[..1], decode).unwrap(), "c");
    assert_eq!(text.extend(&ids[..2], decode).unwrap(), "");
    assert_eq!(text.extend(&ids[..3], decode).unwrap(), "é");
    assert_eq!(text.extend(&ids[..4], decode).unwrap(), "!");
    // An output that ends halfway through a character: `finish` releases it as U+FFFD.
    let mut cut = IncrementalText::new();
    assert_eq!(cut.extend(&ids[..1], decode).unwrap(), "c");
    assert_eq!(cut.extend(&ids[..2], decode).unwrap(), "");
    assert_eq!(cut.finish(&ids[..2], decode).unwrap(), "\u{FFFD}");
    assert_eq!(cut.text(), tok.decode(&ids[..2], true).unwrap());
}

#[test]
fn the_first_words_space_is_dropped_and_later_ones_kept() {
    let tok = metaspace();
    let mut text = IncrementalText::new();
    let decode = dec(&tok);
    assert_eq!(text.extend(&[1], decode).unwrap(), "the");
    assert_eq!(text.extend(&[1, 2], decode).unwrap(), " cat");
    assert_eq!(text.extend(&[1, 2, 7], decode).unwrap(), "s");
    assert_eq!(text.extend(&[1, 2, 7, 9], decode).unwrap(), ""); // special: no text
    assert_eq!(text.extend(&[1, 2, 7, 9, 3], decode).unwrap(), " sat");
    assert_eq!(text.text(), "the cats sat");
}

#[test]
fn a_shorter_output_starts_over_and_an_error_changes_nothing() {
    let vocab = ["a", "b", "c"];
    let decode = |t: &[u32]| -> Result<String, String> {
        t.iter()
            .map(|&i| {
                vocab
                    .get(i as usize)
                    .copied()
                    .ok_or(format!("no token {i}"))
            })
            .collect()
    };
    let mut text = IncrementalText::new();
    assert_eq!(text.extend(&[0, 1], decode).unwrap(), "ab");
    assert_eq!(text.extend(&[0, 1, 7], decode).unwrap_err(), "no token 7");
    assert_eq!((text.text(), text.tokens_seen()), ("ab", 2));
    assert_eq!(text.extend(&[0, 1, 2], decode).unwrap(), "c");
    // A new, shorter output (a request replayed from its start): its text from scratch.
    assert_eq!(text.extend(&[2], decode).unwrap(), "c");
    assert_eq!((text.text(), text.tokens_seen()), ("c", 1));
    assert_eq!(text.extend(&[2, 3], decode).unwrap_err(), "no token 3");
    assert_eq!(text.text(), "c");
    // The same output again adds nothing.
    assert_eq!(text.extend(&[2], decode).unwrap(), "");
}

#[test]
fn a_token_that_rewrites_its_context_cannot_take_released_text_back() {
    // "c" after "b" merges with it into "X": the window "b" + "c" no longer starts with its
    // context's text. "ab" was released and stays; the window's new text follows it, and the
    // text goes on from there.
    let decode = |t: &[u32]| -> Result<String, Infallible> {
        let s: String = t.iter().map(|&i| ["a", "b", "c"][i as usize]).collect();
        Ok(s.replace("bc", "X"))
    };
    let mut text = IncrementalText::new();
    assert_eq!(text.extend(&[0], decode).unwrap(), "a");
    assert_eq!(text.extend(&[0, 1], decode).unwrap(), "b");
    assert_eq!(text.extend(&[0, 1, 2], decode).unwrap(), "X");
    assert_eq!(text.extend(&[0, 1, 2, 0], decode).unwrap(), "a");
    assert_eq!(text.text(), "abXa");
}

#[test]
fn a_token_with_a_finished_and_an_unfinished_character_releases_the_finished_one() {
    // Token 1 is "!" and the first byte of "é"; token 2 its second byte.
    let vocab: [&[u8]; 3] = [b"ab", b"!\xC3", b"\xA9"];
    let decode = |ids: &[u32]| -> Result<String, Infallible> {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| vocab[i as usize].to_vec())
            .collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let mut text = IncrementalText::new();
    assert_eq!(text.extend(&[0], decode).unwrap(), "ab");
    assert_eq!(text.extend(&[0, 1], decode).unwrap(), "!");
    assert_eq!(text.extend(&[0, 1, 2], decode).unwrap(), "é");
    // So a stop string ending at the "!" ends the output at that token, even the last one.
    let p = SamplingParams {
        stop_strings: vec!["b!".into()],
        max_new_tokens: 2,
        ..Default::default()
    };
    let d = |t: &[u32]| decode(t).unwrap();
    let d: &dyn Detokenize = &d;
    let mut c = StopChecker::new(&p);
    assert_eq!(c.check(&[0], Some(d)), None);
    let stop = Some(FinishReason::StopString("b!".into()));
    assert_eq!(c.check(&[0, 1], Some(d)), stop);
    assert_eq!(
        c.check(&[0, 1], Some(d)),
        stop,
        "asked again, the same answer"
    );
    let mut pieces = TextPieces::new(&p.stop_strings);
    assert_eq!(pieces.next_piece(&[0], false, decode).unwrap(), "a");
    assert_eq!(pieces.next_piece(&[0, 1], false, decode).unwrap(), "");
    assert!(pieces.reached_stop());
    assert_eq!(pieces.next_piece(&[0, 1], true, decode).unwrap(), "");
    assert_eq!(pieces.given(), "a");
}

#[test]
fn the_cost_per_token_does_not_grow_with_the_output() {
    let decoded = Cell::new(0usize);
    let decode = |t: &[u32]| -> Result<String, Infallible> {
        decoded.set(decoded.get() + t.len());
        Ok(t.iter()
            .map(|&i| if i % 7 == 0 { " w" } else { "x" })
            .collect())
    };
    let ids: Vec<u32> = (0..2000).collect();
    let mut text = IncrementalText::new();
    for n in 1..=ids.len() {
        text.extend(&ids[..n], decode).unwrap();
    }
    // Each step decodes the last piece, then it and the new token: about 3 tokens, where
    // decoding the whole output each step would take 2,001,000.
    assert!(
        decoded.get() <= 5 * ids.len(),
        "{} tokens decoded",
        decoded.get()
    );
    assert_eq!(text.text(), decode(&ids).unwrap());
}

#[test]
fn stop_strings_are_found_across_split_characters_and_pieces() {
    let tok = byte_level();
    let id = |b: u8| u32::from(b);
    let p = SamplingParams {
        stop_strings: vec!["é!".into(), "xyz".into()],
        max_new_tokens: 1000,
        ..Default::default()
    };
    let d: &dyn Detokenize = &tok;
    let mut c = StopChecker::new(&p);
    let mut out = Vec::new();
    for &b in b"a long preamble without the stop string, then x".iter() {
        out.push(id(b));
        assert_eq!(c.check(&out, Some(d)), None);
    }
    out.push(id(b'y'));
    assert_eq!(c.check(&out, Some(d)), None);
    out.push(id(b'z')); // "xyz" spans three checks
    assert_eq!(
        c.check(&out, Some(d)),
        Some(FinishReason::StopString("xyz".into()))
    );
    // "é!" with "é" split over two tokens: found once both bytes and "!" are in.
    let mut c = StopChecker::new(&p);
    let out = [id(b'o'), id(0xC3), id(0xA9), id(b'!')];
    assert_eq!(c.check(&out[..2], Some(d)), None);
    assert_eq!(c.check(&out[..3], Some(d)), None);
    assert_eq!(
        c.check(&out, Some(d)),
        Some(FinishReason::StopString("é!".into()))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Pieces handed out while an output grows are never taken back, and joined they are the
    /// answer the engine ends with: the text before the earliest stop string once one appears,
    /// however the stop strings fall across tokens, where the engine's token limit cuts the
    /// output (in the middle of a character too), and in whatever batches the stream's tokens
    /// are read.
    #[test]
    fn text_pieces_join_to_the_answer_before_the_first_stop_string(
        words in proptest::collection::vec(
            prop::sample::select(vec!["the", " the", "a", " ", "é", "café", "中文", "🙂", "\n", "e!"]),
            1..30,
        ),
        stops in proptest::collection::vec((0usize..200, 1usize..6), 0..3),
        limit in 1usize..200,
        batches in proptest::collection::vec(1usize..5, 1..4),
    ) {
        let tok = byte_level();
        let whole_text = words.concat();
        let ids = tok.encode(&whole_text, false).unwrap();
        // Stop strings cut from the text itself (so they occur), on character boundaries.
        let chars: Vec<char> = whole_text.chars().collect();
        let stop_strings: Vec<String> = stops
            .iter()
            .map(|&(at, len)| {
                let at = at % chars.len();
                chars[at..(at + len).min(chars.len())].iter().collect()
            })
            .collect();
        let params = SamplingParams {
            stop_strings: stop_strings.clone(),
            max_new_tokens: 1 + limit % ids.len(),
            ..Default::default()
        };
        // The engine: token by token until a stop string or the token limit.
        let d: &dyn Detokenize = &tok;
        let mut checker = StopChecker::new(&params);
        let (last, reason) = (1..=ids.len())
            .find_map(|n| checker.check(&ids[..n], Some(d)).map(|r| (n, r)))
            .unwrap();
        // The stream: the tokens read in batches.
        let out = &ids[..last];
        let mut pieces = TextPieces::new(&stop_strings);
        let mut joined = String::new();
        let mut n = 0;
        for &b in batches.iter().cycle() {
            if n == out.len() {
                break;
            }
            n = (n + b).min(out.len());
            joined += pieces.next_piece(&out[..n], false, dec(&tok)).unwrap();
            prop_assert_eq!(joined.as_str(), pieces.given());
        }
        joined += pieces.next_piece(out, true, dec(&tok)).unwrap();
        let text = tok.decode(out, true).unwrap();
        let earliest = stop_strings.iter().filter_map(|s| text.find(s.as_str())).min();
        let answer = &text[..earliest.unwrap_or(text.len())];
        prop_assert_eq!(joined.as_str(), answer);
        // The engine's reason names that earliest stop string, so the stream's `text` agrees.
        prop_assert_eq!(earliest.is_some(), matches!(reason, FinishReason::StopString(_)));
        prop_assert_eq!(reason.visible_text(text.clone()), answer);
    }
}

/// The piece `pieces` hands out after each token of `ids`, read one at a time.
fn pieces_token_by_token(
    pieces: &mut TextPieces,
    ids: &[u32],
    decode: impl Fn(&[u32]) -> Result<String, Infallible> + Copy,
) -> Vec<String> {
    (1..=ids.len())
        .map(|n| {
            let piece = pieces.next_piece(&ids[..n], false, decode);
            piece.unwrap().to_owned()
        })
        .collect()
}

#[test]
fn text_pieces_hold_back_only_what_may_begin_a_stop_string() {
    let words = ["Take", " one", " tablet", ".", "\n", "\n", "Q", ":"];
    let decode = |ids: &[u32]| -> Result<String, Infallible> {
        Ok(ids.iter().map(|&i| words[i as usize]).collect())
    };
    let ids: Vec<u32> = (0..words.len() as u32).collect();
    let mut pieces = TextPieces::new(&["\n\nQ:".to_string(), "one tablet".to_string()]);
    let got = pieces_token_by_token(&mut pieces, &ids, decode);
    // "one" could begin "one tablet" and is held; " tablet" completes it, so the answer ends
    // before it. Nothing after a stop string is handed out.
    assert_eq!(got, ["Take", " ", "", "", "", "", "", ""]);
    assert!(pieces.reached_stop());
    assert_eq!(pieces.next_piece(&ids, true, decode).unwrap(), "");
    assert_eq!(pieces.given(), "Take ");
    assert_eq!(pieces.text(), "Take one tablet.\n\nQ:");
    // Only "\n\nQ:": the newlines wait until "Q" then ":" complete it.
    let mut pieces = TextPieces::new(&["\n\nQ:".to_string()]);
    let got = pieces_token_by_token(&mut pieces, &ids, decode);
    assert_eq!(got, ["Take", " one", " tablet", ".", "", "", "", ""]);
    assert_eq!(pieces.given(), "Take one tablet.");
    // "\n\nQ" then something else: the held text comes out once it cannot begin one.
    let mut pieces = TextPieces::new(&["\n\nQ:".to_string()]);
    let other = [0, 4, 4, 6, 0];
    let got = pieces_token_by_token(&mut pieces, &other, decode);
    assert_eq!(got, ["Take", "", "", "", "\n\nQTake"]);
    // Without stop strings nothing is held back.
    let mut all = TextPieces::new(&[]);
    assert_eq!(
        all.next_piece(&ids[..2], false, decode).unwrap(),
        "Take one"
    );
    assert_eq!(
        all.next_piece(&ids, true, decode).unwrap(),
        " tablet.\n\nQ:"
    );
    assert!(!all.reached_stop());
}
