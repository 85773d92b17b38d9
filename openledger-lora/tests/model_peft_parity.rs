//! The multi-LoRA forward pass against transformers + PEFT (fixtures/peft/tiny-llama, float32
//! CPU logits from torch 2.15.0 / transformers 5.24.0 / peft 0.21.2): every adapter applied
//! through SGMV, never merged, reproduces the reference logits to 1e-4 absolute, one sequence at
//! a time and all 12 (adapter, sequence) pairs in one mixed batch, and the 8 greedy tokens.

mod tiny_llama;

use std::collections::BTreeMap;
use std::path::PathBuf;

use openledger_lora::adapter::tensors::read_safetensors;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{AdapterSlot, Model, SeqInput, greedy_token};
use tiny_llama::max_logit_diff as max_diff;

const TOL: f32 = 1e-4;
const NAMES: [&str; 4] = ["base", "qv-r4", "all-r8-rslora", "attn-patterns"];

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

struct Setup {
    model: Model,
    ids: BTreeMap<&'static str, Option<AdapterSlot>>,
    seqs: Vec<Vec<u32>>,
    json: serde_json::Value,
    reference: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

fn setup() -> Setup {
    let mut model = Model::from_dir(&fixture()).unwrap();
    let mut ids = BTreeMap::new();
    for name in NAMES {
        let id = if name == "base" {
            None
        } else {
            let dir = fixture().join("adapters").join(name);
            let adapter = LoraAdapter::from_dir(&dir, &LoadOptions::default()).unwrap();
            Some(model.attach_adapter(name, &adapter).unwrap())
        };
        ids.insert(name, id);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap();
    let seqs = json["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let reference = read_safetensors(&fixture().join("reference.safetensors"), false)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, (t.shape().to_vec(), t.to_f32().into_owned())))
        .collect();
    Setup {
        model,
        ids,
        seqs,
        json,
        reference,
    }
}

#[test]
fn each_adapter_alone_matches_peft_logits_to_1e_4() {
    let s = setup();
    let vocab = s.model.config().vocab_size;
    let mut worst = 0f32;
    for name in NAMES {
        for (i, seq) in s.seqs.iter().enumerate() {
            let got = s
                .model
                .forward(&[SeqInput {
                    adapter: s.ids[name],
                    tokens: seq,
                }])
                .unwrap();
            let err = max_diff(
                &got[0],
                &s.reference[&format!("logits.{name}.{i}")],
                seq.len(),
                vocab,
            );
            assert!(err <= TOL, "{name}.{i}: max abs logit diff {err}");
            worst = worst.max(err);
        }
    }
    eprintln!("worst max abs diff, one sequence per batch: {worst}");
}

#[test]
fn all_twelve_pairs_in_one_mixed_batch_match_peft_logits_to_1e_4() {
    let s = setup();
    let vocab = s.model.config().vocab_size;
    // interleave adapters so that segments of the same adapter are not adjacent
    let mut pairs = Vec::new();
    for (i, seq) in s.seqs.iter().enumerate() {
        for name in NAMES {
            pairs.push((name, i, seq));
        }
    }
    let batch: Vec<SeqInput<'_>> = pairs
        .iter()
        .map(|(name, _, seq)| SeqInput {
            adapter: s.ids[name],
            tokens: seq,
        })
        .collect();
    let got = s.model.forward(&batch).unwrap();
    assert_eq!(got.len(), 12);
    let mut worst = 0f32;
    for ((name, i, seq), logits) in pairs.iter().zip(&got) {
        let err = max_diff(
            logits,
            &s.reference[&format!("logits.{name}.{i}")],
            seq.len(),
            vocab,
        );
        assert!(
            err <= TOL,
            "{name}.{i} in the mixed batch: max abs logit diff {err}"
        );
        worst = worst.max(err);
    }
    eprintln!("worst max abs diff, mixed batch of 12: {worst}");
}

#[test]
fn greedy_continuations_equal_the_reference_tokens() {
    let s = setup();
    for name in NAMES {
        for (i, seq) in s.seqs.iter().enumerate() {
            let want: Vec<u32> = s.json["greedy"][format!("{name}.{i}")]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(want.len(), 8);
            assert_eq!(
                s.model.greedy(s.ids[name], seq, 8).unwrap(),
                want,
                "{name}.{i}"
            );
        }
    }
}

#[test]
fn cached_incremental_decode_of_a_mixed_batch_equals_full_recompute() {
    let s = setup();
    let vocab = s.model.config().vocab_size;
    let mut caches: Vec<_> = NAMES
        .iter()
        .map(|n| s.model.new_cache(s.ids[n]).unwrap())
        .collect();
    // prefill: every adapter with sequence 2, as one batch
    let prompt = &s.seqs[2];
    let mut batch: Vec<(&[u32], &mut _)> = caches.iter_mut().map(|c| (&prompt[..], c)).collect();
    let first = s.model.forward_cached(&mut batch).unwrap();
    for (name, logits) in NAMES.iter().zip(&first) {
        let want = &s.reference[&format!("logits.{name}.2")];
        assert!(max_diff(logits, want, prompt.len(), vocab) <= TOL, "{name}");
    }
    // then the greedy tokens one at a time, all four sequences in one batch per step
    let want: Vec<Vec<u32>> = NAMES
        .iter()
        .map(|n| {
            s.json["greedy"][format!("{n}.2")]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    for step in 0..8 {
        let toks: Vec<[u32; 1]> = want.iter().map(|w| [w[step]]).collect();
        let mut batch: Vec<(&[u32], &mut _)> = toks
            .iter()
            .zip(caches.iter_mut())
            .map(|(t, c)| (&t[..], c))
            .collect();
        let got = s.model.forward_cached(&mut batch).unwrap();
        for (n, (name, logits)) in NAMES.iter().zip(&got).enumerate() {
            let mut full = prompt.clone();
            full.extend_from_slice(&want[n][..=step]);
            let all = s
                .model
                .forward(&[SeqInput {
                    adapter: s.ids[name],
                    tokens: &full,
                }])
                .unwrap();
            let last = &all[0][(full.len() - 1) * vocab..];
            let err = logits
                .iter()
                .zip(last)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err <= 1e-5, "{name} step {step}: {err}");
            if step < 7 {
                let best = (0..vocab)
                    .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                    .unwrap();
                assert_eq!(best as u32, want[n][step + 1], "{name} step {step}");
            }
        }
    }
    assert!(caches.iter().all(|c| c.len() == prompt.len() + 8));
}

/// Greedy decoding the plain way: a pass over the whole prefix for every token.
fn greedy_recomputed(
    model: &Model,
    adapter: Option<AdapterSlot>,
    prompt: &[u32],
    n: usize,
) -> Vec<u32> {
    let vocab = model.config().vocab_size;
    let mut tokens = prompt.to_vec();
    for _ in 0..n {
        let logits = model
            .forward(&[SeqInput {
                adapter,
                tokens: &tokens,
            }])
            .unwrap();
        tokens.push(greedy_token(&logits[0][(tokens.len() - 1) * vocab..]));
    }
    tokens.split_off(prompt.len())
}

#[test]
fn cached_greedy_equals_recomputing_the_prefix_and_streams_each_token() {
    let s = setup();
    for name in NAMES {
        let prompt = &s.seqs[1];
        let want = greedy_recomputed(&s.model, s.ids[name], prompt, 24);
        assert_eq!(
            s.model.greedy(s.ids[name], prompt, 24).unwrap(),
            want,
            "{name}"
        );
        // Each token is handed over as it is chosen; `false` stops after it.
        let mut seen = Vec::new();
        let got = s
            .model
            .greedy_streaming(s.ids[name], prompt, 24, &mut |i, t| {
                seen.push((i, t));
                i < 4
            })
            .unwrap();
        assert_eq!(got, want[..5], "{name}");
        assert_eq!(seen, got.iter().copied().enumerate().collect::<Vec<_>>());
    }
    assert!(s.model.greedy(None, &s.seqs[0], 0).unwrap().is_empty());
    assert!(s.model.greedy(None, &[], 2).is_err());
}
