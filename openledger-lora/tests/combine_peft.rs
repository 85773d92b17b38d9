//! Adapters combined by `add_weighted_adapter` against PEFT's own `add_weighted_adapter`
//! (fixtures/peft/tiny-llama/combined, made by `scripts/make_peft_combined_fixtures.py` with
//! torch 2.15.0 / transformers 5.25.0 / peft 0.21.2, float32 CPU): `cat` of adapters of
//! different ranks, targets, rsLoRA and rank/alpha patterns, and `linear` of two equal-rank
//! adapters with different scales. Each combined adapter, attached and served through SGMV like
//! any other, reproduces PEFT's logits to 1e-4 absolute (the tolerance of the single-adapter
//! parity tests: float32 sums in another order), alone and in one mixed batch with
//! single-adapter requests, and its 8 greedy tokens.

mod tiny_llama;

use std::collections::BTreeMap;

use openledger_lora::adapter::combine::{Combination, CombineOptions, add_weighted_adapter};
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{AdapterSlot, Model, SeqInput};
use tiny_llama::{fixture, max_logit_diff as max_diff, reference_logits, u32s};

const TOL: f32 = 1e-4;

type Logits = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

struct Setup {
    model: Model,
    slots: BTreeMap<String, AdapterSlot>,
    combos: Vec<String>,
    seqs: Vec<Vec<u32>>,
    json: serde_json::Value,
    /// The combinations' logits, then the single adapters'.
    reference: Logits,
}

/// A combination's weights.
fn weights(spec: &serde_json::Value) -> Vec<f32> {
    spec["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap() as f32)
        .collect()
}

fn load(name: &str) -> LoraAdapter {
    let dir = if name == "qv-r4-b" {
        fixture().join("combined").join(name)
    } else {
        fixture().join("adapters").join(name)
    };
    LoraAdapter::from_dir(&dir, &LoadOptions::default()).unwrap()
}

fn setup() -> Setup {
    let mut model = Model::from_dir(&fixture()).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("combined/reference.json")).unwrap())
            .unwrap();
    let mut slots = BTreeMap::new();
    let mut combos = Vec::new();
    for (name, spec) in json["combinations"].as_object().unwrap() {
        let adapters: Vec<LoraAdapter> = spec["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| load(a.as_str().unwrap()))
            .collect();
        let weights = weights(spec);
        let kind = match spec["combination_type"].as_str().unwrap() {
            "cat" => Combination::Cat,
            "linear" => Combination::Linear,
            other => panic!("no fixture of {other}"),
        };
        let refs: Vec<&LoraAdapter> = adapters.iter().collect();
        let combined =
            add_weighted_adapter(&refs, &weights, &CombineOptions::new(kind), None).unwrap();
        slots.insert(name.clone(), model.attach_adapter(name, &combined).unwrap());
        combos.push(name.clone());
    }
    for single in ["qv-r4", "all-r8-rslora"] {
        slots.insert(
            single.to_string(),
            model.attach_adapter(single, &load(single)).unwrap(),
        );
    }
    let seqs = tiny_llama::reference_json()["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    let mut reference = reference_logits(&fixture().join("combined/reference.safetensors"));
    reference.extend(reference_logits(&fixture().join("reference.safetensors")));
    Setup {
        model,
        slots,
        combos,
        seqs,
        json,
        reference,
    }
}

/// Each sequence alone under `slot` against the reference logits `logits.<key>.<seq>`, and its
/// 8 greedy tokens against `greedy["<key>.<seq>"]` of the combinations.
fn check_alone(s: &Setup, key: &str, slot: AdapterSlot) {
    let vocab = s.model.config().vocab_size;
    for (i, seq) in s.seqs.iter().enumerate() {
        let got = s
            .model
            .forward(&[SeqInput {
                adapter: Some(slot),
                tokens: seq,
            }])
            .unwrap();
        let err = max_diff(
            &got[0],
            &s.reference[&format!("logits.{key}.{i}")],
            seq.len(),
            vocab,
        );
        assert!(err <= TOL, "{key}.{i}: max abs logit diff {err}");
        let want = u32s(&s.json["greedy"][format!("{key}.{i}")]);
        assert_eq!(want.len(), 8);
        assert_eq!(
            s.model.greedy(Some(slot), seq, 8).unwrap(),
            want,
            "{key}.{i}"
        );
    }
}

/// Every sequence under every `(reference key, adapter)` of `rows`, all in one mixed batch,
/// against the reference logits.
fn check_mixed_batch(s: &Setup, rows: &[(&str, Option<AdapterSlot>)]) {
    let vocab = s.model.config().vocab_size;
    let mut pairs = Vec::new();
    for (i, seq) in s.seqs.iter().enumerate() {
        for &(key, slot) in rows {
            pairs.push((key, slot, i, seq));
        }
    }
    let batch: Vec<SeqInput<'_>> = pairs
        .iter()
        .map(|&(_, adapter, _, seq)| SeqInput {
            adapter,
            tokens: seq,
        })
        .collect();
    let got = s.model.forward(&batch).unwrap();
    assert_eq!(got.len(), pairs.len());
    for ((key, _, i, seq), logits) in pairs.iter().zip(&got) {
        let key = format!("logits.{key}.{i}");
        let err = max_diff(logits, &s.reference[&key], seq.len(), vocab);
        assert!(
            err <= TOL,
            "{key} in the mixed batch: max abs logit diff {err}"
        );
    }
}

#[test]
fn combined_adapters_match_peft_add_weighted_adapter_logits_and_greedy_tokens() {
    let s = setup();
    assert_eq!(s.combos.len(), 3);
    for name in &s.combos {
        check_alone(&s, name, s.slots[name]);
    }
}

#[test]
fn combined_and_single_adapters_in_one_mixed_batch_match_peft() {
    let s = setup();
    // Every sequence under every combination, each next to the single adapters and the base.
    let mut rows = vec![
        ("base", None),
        ("qv-r4", Some(s.slots["qv-r4"])),
        ("all-r8-rslora", Some(s.slots["all-r8-rslora"])),
    ];
    rows.extend(s.combos.iter().map(|c| (c.as_str(), Some(s.slots[c]))));
    check_mixed_batch(&s, &rows);
}

/// The `cat` combinations as ensembles: their members attached as they are, no merged copy.
fn attach_ensembles(s: &mut Setup) -> Vec<(String, AdapterSlot)> {
    let mut out = Vec::new();
    for name in s.combos.clone() {
        let spec = &s.json["combinations"][&name];
        if spec["combination_type"] != "cat" {
            continue;
        }
        let mut members = Vec::new();
        for (a, w) in spec["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .zip(spec["weights"].as_array().unwrap())
        {
            let a = a.as_str().unwrap();
            let slot = match s.slots.get(a) {
                Some(&slot) => slot,
                None => {
                    let slot = s.model.attach_adapter(a, &load(a)).unwrap();
                    s.slots.insert(a.to_string(), slot);
                    slot
                }
            };
            members.push((slot, w.as_f64().unwrap() as f32));
        }
        let before = s.model.attached_bytes();
        let id = s
            .model
            .attach_ensemble(&format!("ensemble-{name}"), &members)
            .unwrap();
        assert_eq!(
            s.model.attached_bytes(),
            before,
            "an ensemble holds no copy"
        );
        assert_eq!(s.model.ensemble_members(id), Some(members));
        out.push((name, id));
    }
    assert_eq!(out.len(), 2);
    out
}

#[test]
fn ensembles_match_peft_cat_logits_alone_and_in_a_mixed_batch() {
    let mut s = setup();
    let ensembles = attach_ensembles(&mut s);
    for (name, slot) in &ensembles {
        check_alone(&s, name, *slot);
    }
    // One mixed batch: ensembles, their members alone, the base and a merged combination.
    let mut rows = vec![
        ("base", None),
        ("qv-r4", Some(s.slots["qv-r4"])),
        ("all-r8-rslora", Some(s.slots["all-r8-rslora"])),
        ("linear-qv", Some(s.slots["linear-qv"])),
    ];
    rows.extend(ensembles.iter().map(|(n, slot)| (n.as_str(), Some(*slot))));
    check_mixed_batch(&s, &rows);
}

/// An adapter with DoRA (or a LoRA bias) in the batch sends every row through the path that
/// adds each row's update after the dense output: an ensemble's rows beside it still get their
/// members' sum, PEFT's `cat` logits to 1e-4, and the DoRA rows what they get alone.
#[test]
fn ensembles_beside_a_dora_adapter_in_one_batch_match_peft() {
    use openledger_lora::adapter::build::AdapterBuilder;
    use openledger_lora::adapter::config::ConfigSpec;
    let mut s = setup();
    let ensembles = attach_ensembles(&mut s);
    let mut spec = ConfigSpec::new(4, 8.0, &["q_proj", "v_proj"]);
    spec.use_dora = true;
    let mut b = AdapterBuilder::new(spec);
    for layer in 0..2 {
        for (proj, out) in [("q_proj", 64), ("v_proj", 32)] {
            let name = format!("model.layers.{layer}.self_attn.{proj}");
            b.random_lora(&name, 64, out, 4, 3 + layer as u64);
            b.magnitude(&name, &vec![0.9; out]);
        }
    }
    let dora = LoraAdapter::from_bytes(
        b.config_json().as_bytes(),
        &b.safetensors_bytes().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let dora = s.model.attach_adapter("dora", &dora).unwrap();
    let vocab = s.model.config().vocab_size;
    for (name, slot) in &ensembles {
        for (i, seq) in s.seqs.iter().enumerate() {
            let alone = s
                .model
                .forward(&[SeqInput {
                    adapter: Some(dora),
                    tokens: seq,
                }])
                .unwrap();
            let both = s
                .model
                .forward(&[
                    SeqInput {
                        adapter: Some(dora),
                        tokens: seq,
                    },
                    SeqInput {
                        adapter: Some(*slot),
                        tokens: seq,
                    },
                ])
                .unwrap();
            let key = format!("logits.{name}.{i}");
            let err = max_diff(&both[1], &s.reference[&key], seq.len(), vocab);
            assert!(
                err <= TOL,
                "{key} beside a DoRA adapter: max abs logit diff {err}"
            );
            let drift = alone[0]
                .iter()
                .zip(&both[0])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                drift <= 1e-5,
                "the DoRA rows moved by {drift} beside {name}"
            );
        }
    }
}

#[test]
fn bad_ensembles_are_typed_errors_and_members_stay_while_an_ensemble_uses_them() {
    use openledger_lora::model::ModelError;
    let mut s = setup();
    let (qv, all) = (s.slots["qv-r4"], s.slots["all-r8-rslora"]);
    let before = s.model.adapter_names().len();
    assert!(matches!(
        s.model.attach_ensemble("none", &[]),
        Err(ModelError::InvalidArgument {
            name: "members",
            ..
        })
    ));
    assert!(matches!(
        s.model.attach_ensemble("nan", &[(qv, 0.5), (all, f32::NAN)]),
        Err(ModelError::InvalidArgument { reason, .. }) if reason.contains("member 1")
    ));
    assert!(matches!(
        s.model
            .attach_ensemble("ghost", &[(qv, 0.5), (AdapterSlot(999), 1.0)]),
        Err(ModelError::UnknownAdapter {
            seq: 1,
            id: 999,
            ..
        })
    ));
    assert_eq!(
        s.model.adapter_names().len(),
        before,
        "nothing attached on error"
    );

    let e = s
        .model
        .attach_ensemble("pair", &[(qv, 0.7), (all, 0.4)])
        .unwrap();
    assert!(matches!(
        s.model.attach_ensemble("nested", &[(e, 1.0)]),
        Err(ModelError::InvalidArgument { reason, .. }) if reason.contains("itself an ensemble")
    ));
    // A member stays attached while the ensemble uses it, then goes.
    assert!(matches!(
        s.model.detach_adapter(all),
        Err(ModelError::InvalidArgument { reason, .. }) if reason.contains("pair")
    ));
    let seq = &s.seqs[0];
    let alone = s
        .model
        .forward(&[SeqInput {
            adapter: Some(all),
            tokens: seq,
        }])
        .unwrap();
    let vocab = s.model.config().vocab_size;
    let want = &s.reference["logits.all-r8-rslora.0"];
    assert!(max_diff(&alone[0], want, seq.len(), vocab) <= TOL);
    s.model.detach_adapter(e).unwrap();
    assert_eq!(s.model.ensemble_members(e), None);
    s.model.detach_adapter(all).unwrap();

    // DoRA and `modules_to_save` members are refused (their updates are not a sum of
    // segments), naming the member.
    use openledger_lora::adapter::build::AdapterBuilder;
    use openledger_lora::adapter::config::ConfigSpec;
    let build = |b: &AdapterBuilder| {
        LoraAdapter::from_bytes(
            b.config_json().as_bytes(),
            &b.safetensors_bytes().unwrap(),
            &LoadOptions::default(),
        )
        .unwrap()
    };
    let mut spec = ConfigSpec::new(4, 8.0, &["q_proj"]);
    spec.use_dora = true;
    let mut b = AdapterBuilder::new(spec);
    b.random_lora("model.layers.0.self_attn.q_proj", 64, 64, 4, 1);
    b.magnitude("model.layers.0.self_attn.q_proj", &[0.7; 64]);
    let dora = s.model.attach_adapter("dora", &build(&b)).unwrap();
    let mut spec = ConfigSpec::new(2, 4.0, &["k_proj"]);
    spec.modules_to_save = vec!["lm_head".into()];
    let mut b = AdapterBuilder::new(spec);
    b.random_lora("model.layers.1.self_attn.k_proj", 64, 32, 2, 5);
    b.saved("lm_head.weight", vec![320, 64], &vec![0.01; 320 * 64]);
    let head = s.model.attach_adapter("head", &build(&b)).unwrap();
    for (bad, member, what) in [(dora, "dora", "DoRA"), (head, "head", "modules_to_save")] {
        let err = s
            .model
            .attach_ensemble("mixed", &[(qv, 0.5), (bad, 0.5)])
            .unwrap_err();
        assert!(
            matches!(&err, ModelError::IncompatibleAdapter { name, .. } if name == member),
            "{err}"
        );
        assert!(format!("{err:?}").contains(what), "{err:?}");
    }
}

#[test]
fn the_engine_serves_an_ensemble_beside_single_adapters_as_peft_does() {
    use openledger_lora::model::PagedModel;
    use openledger_lora::serve::*;
    use tiny_llama::id;
    let s = setup();
    let spec = &s.json["combinations"]["cat-qv-all"];
    let mut paged = PagedModel::new(Model::from_dir(&fixture()).unwrap());
    for n in ["qv-r4", "all-r8-rslora"] {
        paged.attach(id(n), &load(n)).unwrap();
    }
    let weights = weights(spec);
    let ensemble = id("qv-r4.all-r8-rslora");
    paged
        .attach_ensemble(
            ensemble.clone(),
            &[(id("qv-r4"), weights[0]), (id("all-r8-rslora"), weights[1])],
        )
        .unwrap();
    // Members stay while the ensemble is served; unknown members and a taken id are refused.
    assert!(!paged.detach(&id("all-r8-rslora")));
    assert!(paged.attach(id("qv-r4"), &load("qv-r4")).is_err());
    assert!(
        paged
            .attach_ensemble(id("other"), &[(id("attn-patterns"), 1.0)])
            .is_err()
    );
    assert!(
        paged
            .attach_ensemble(ensemble.clone(), &[(id("qv-r4"), 1.0)])
            .is_err()
    );
    let config = engine_config(&paged, 8);
    let mut engine = Engine::new(paged, AllReady, config).unwrap();
    let sampling = SamplingParams {
        max_new_tokens: 8,
        ..Default::default()
    };
    let mut handles = Vec::new();
    for (i, seq) in s.seqs.iter().enumerate() {
        for (adapter, key) in [(&ensemble, "cat-qv-all"), (&id("qv-r4"), "qv-r4")] {
            let h = engine.submit(Request {
                prompt: seq.clone(),
                adapter: Some(adapter.clone()),
                sampling: sampling.clone(),
            });
            handles.push((format!("{key}.{i}"), h));
        }
    }
    engine.run_until_idle().unwrap();
    for (key, h) in handles {
        let tokens = tokens_of(h);
        let want = match s.json["greedy"].get(&key) {
            Some(v) => u32s(v),
            None => tiny_llama::peft_greedy(&key),
        };
        assert_eq!(tokens, want, "{key}");
    }
}

/// An engine over `paged` for up to `running` sequences of 32 positions (blocks of 4).
fn engine_config(
    paged: &openledger_lora::model::PagedModel,
    running: usize,
) -> openledger_lora::serve::EngineConfig {
    use openledger_lora::serve::{EngineConfig, KvDtype, Preemption};
    EngineConfig {
        kv_layout: paged.kv_layout(4),
        num_blocks: running * 8,
        max_tokens_per_step: 64,
        max_running: running,
        max_context: 32,
        preemption: Preemption::Recompute,
        kv_dtype: KvDtype::F32,
    }
}

/// The tokens among a request's events.
fn tokens_of(events: impl IntoIterator<Item = openledger_lora::serve::Event>) -> Vec<u32> {
    events
        .into_iter()
        .filter_map(|e| match e {
            openledger_lora::serve::Event::Token { token, .. } => Some(token),
            _ => None,
        })
        .collect()
}

/// Log-softmax (f64) of the last row of a sequence's reference logits.
fn last_row_logprobs(want: &(Vec<usize>, Vec<f32>)) -> Vec<f64> {
    let vocab = want.0[1];
    let row = &want.1[want.1.len() - vocab..];
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// Requests naming an ensemble by its spelling (`qv-r4*0.7+all-r8-rslora*0.4`) are served from
/// a pool that holds only the members, in one engine run beside single-adapter and base
/// requests: each answer's first-token log-probabilities (the chosen token's and the top 5)
/// equal the log-softmax of PEFT's `cat` logits to 1e-4, and its 8 greedy tokens PEFT's. The
/// pins of the members are all released when the requests end. A member the pool lets go
/// takes the ensemble with it; the next request naming the spelling attaches both again.
#[test]
fn requests_naming_an_ensemble_spelling_are_served_from_the_pool_as_peft_cat() {
    use openledger_lora::model::PagedModel;
    use openledger_lora::pool::{AdapterId, AdapterPool, Source};
    use openledger_lora::serve::*;
    use tiny_llama::id;
    let s = setup();
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    for n in ["qv-r4", "all-r8-rslora", "attn-patterns"] {
        pool.register(id(n), Source::Dir(fixture().join("adapters").join(n)))
            .unwrap();
    }
    let paged = PagedModel::with_pool(Model::from_dir(&fixture()).unwrap(), pool.clone());
    let config = engine_config(&paged, 16);
    let mut engine = Engine::new(paged, pool.clone(), config).unwrap();
    let mut rows: Vec<(String, Option<AdapterId>)> =
        vec![("base".into(), None), ("qv-r4".into(), Some(id("qv-r4")))];
    for name in ["cat-qv-all", "cat-qv-patterns"] {
        let spec = &s.json["combinations"][name];
        let members: Vec<(AdapterId, f32)> = spec["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .zip(weights(spec))
            .map(|(a, w)| (id(a.as_str().unwrap()), w))
            .collect();
        let spelled = AdapterId::ensemble(&members).unwrap();
        assert_eq!(AdapterId::parse(spelled.as_str()).unwrap(), spelled);
        rows.push((name.to_string(), Some(spelled)));
    }
    assert_eq!(
        rows[2].1.as_ref().unwrap().as_str(),
        "qv-r4*0.7+all-r8-rslora*0.4"
    );
    let sampling = SamplingParams {
        max_new_tokens: 8,
        logprobs: Some(5),
        ..Default::default()
    };
    let submit_all = |engine: &mut Engine<PagedModel, AdapterPool>| {
        let mut handles = Vec::new();
        for (i, seq) in s.seqs.iter().enumerate() {
            for (key, adapter) in &rows {
                let h = engine.submit(Request {
                    prompt: seq.clone(),
                    adapter: adapter.clone(),
                    sampling: sampling.clone(),
                });
                handles.push((key.clone(), i, h));
            }
        }
        engine.run_until_idle().unwrap();
        handles
    };
    for (key, i, h) in submit_all(&mut engine) {
        let events: Vec<Event> = h.collect();
        let tokens = tokens_of(events.iter().cloned());
        let name = format!("{key}.{i}");
        let want = match s.json["greedy"].get(&name) {
            Some(v) => u32s(v),
            None => tiny_llama::peft_greedy(&name),
        };
        assert_eq!(tokens, want, "{name}");
        let Some(Event::Token {
            logprobs: Some(first),
            ..
        }) = events.first()
        else {
            panic!("{name}: no first token with log-probabilities: {events:?}");
        };
        let lp = last_row_logprobs(&s.reference[&format!("logits.{name}")]);
        let err = (first.logprob as f64 - lp[tokens[0] as usize]).abs();
        assert!(err <= 1e-4, "{name}: first token logprob off by {err}");
        assert_eq!(first.top.len(), 5);
        for &(t, l) in &first.top {
            let err = (l as f64 - lp[t as usize]).abs();
            assert!(err <= 1e-4, "{name}: top token {t} logprob off by {err}");
        }
    }
    assert_eq!(pool.stats().pinned_count, 0, "the members' pins leaked");
    assert!(engine.held_adapters().is_empty());
    let pair = rows[2].1.clone().unwrap();
    assert!(engine.model().is_attached(&pair));

    // The pool lets a member go (registered again: a new copy): the ensemble goes with it, and
    // the next requests attach the new copy and the ensemble again, with the same answers.
    pool.unregister(&id("all-r8-rslora")).unwrap();
    pool.register(
        id("all-r8-rslora"),
        Source::Dir(fixture().join("adapters/all-r8-rslora")),
    )
    .unwrap();
    engine.model_mut().detach_evicted();
    assert!(!engine.model().is_attached(&pair));
    assert!(!engine.model().is_attached(&id("all-r8-rslora")));
    assert!(engine.model().is_attached(&rows[3].1.clone().unwrap()));
    let again = submit_all(&mut engine);
    for (key, i, h) in again.into_iter().filter(|(k, _, _)| k == "cat-qv-all") {
        let tokens = tokens_of(h);
        assert_eq!(tokens, u32s(&s.json["greedy"][format!("{key}.{i}")]));
    }
    assert!(engine.model().is_attached(&pair));

    // An unknown member fails its request alone, naming the member.
    let bad = AdapterId::parse("qv-r4+nope*2").unwrap();
    let h = engine.submit(Request {
        prompt: s.seqs[0].clone(),
        adapter: Some(bad),
        sampling: sampling.clone(),
    });
    let ok = engine.submit(tiny_llama::request(s.seqs[0].clone(), Some("qv-r4"), 8));
    engine.run_until_idle().unwrap();
    let events: Vec<Event> = h.collect();
    assert!(
        matches!(
            events.last(),
            Some(Event::Failed { error: RequestError::UnknownAdapter { adapter }, .. })
                if adapter.as_str() == "nope"
        ),
        "{events:?}"
    );
    let tokens = tokens_of(ok);
    assert_eq!(tokens, tiny_llama::peft_greedy("qv-r4.0"));
    assert_eq!(pool.stats().pinned_count, 0);
}

/// Merging methods whose update is not a sum of the members' make a merged adapter in the pool
/// ([`AdapterPool::register_combined`]), served by the engine like any other adapter: PEFT's
/// `linear` combination gives PEFT's greedy tokens, and a TIES merge gives the tokens and logits
/// of the same merge made directly (to the bit: the pool holds its bytes). Bad merges are typed
/// errors that register nothing.
#[test]
fn merged_adapters_registered_in_the_pool_are_served_like_any_other() {
    use openledger_lora::adapter::combine::CombineOptions;
    use openledger_lora::model::PagedModel;
    use openledger_lora::pool::{AdapterId, AdapterPool, IdProblem, PoolError, Source};
    use openledger_lora::serve::*;
    use tiny_llama::id;
    let s = setup();
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    for n in ["qv-r4", "all-r8-rslora"] {
        pool.register(id(n), Source::Dir(fixture().join("adapters").join(n)))
            .unwrap();
    }
    pool.register(
        id("qv-r4-b"),
        Source::Dir(fixture().join("combined/qv-r4-b")),
    )
    .unwrap();
    let spec = &s.json["combinations"]["linear-qv"];
    let w = weights(spec);
    let members = [(id("qv-r4"), w[0]), (id("qv-r4-b"), w[1])];
    let mut calls = 0;
    pool.register_combined(
        id("linear-qv"),
        &members,
        &CombineOptions::new(Combination::Linear),
        Some(&mut |_, _| calls += 1),
    )
    .unwrap();
    assert!(calls > 0, "no progress reported");
    let mut ties = CombineOptions::new(Combination::Ties);
    ties.density = Some(0.5);
    pool.register_combined(id("ties-qv"), &members, &ties, None)
        .unwrap();
    let direct =
        add_weighted_adapter(&[&load("qv-r4"), &load("qv-r4-b")], &w, &ties, None).unwrap();

    let mut model = Model::from_dir(&fixture()).unwrap();
    let slot = model.attach_adapter("ties-direct", &direct).unwrap();
    let pooled = pool.get(&id("ties-qv")).unwrap();
    let from_pool = model.attach_adapter("ties-pooled", &pooled).unwrap();
    for seq in &s.seqs {
        let run = |a| {
            model
                .forward(&[SeqInput {
                    adapter: Some(a),
                    tokens: seq,
                }])
                .unwrap()
        };
        assert_eq!(run(slot), run(from_pool), "the pool's copy is the merge");
    }

    let paged = PagedModel::with_pool(Model::from_dir(&fixture()).unwrap(), pool.clone());
    let config = engine_config(&paged, 8);
    let mut engine = Engine::new(paged, pool.clone(), config).unwrap();
    let mut handles = Vec::new();
    for (i, seq) in s.seqs.iter().enumerate() {
        for name in ["linear-qv", "ties-qv", "qv-r4"] {
            let h = engine.submit(tiny_llama::request(seq.clone(), Some(name), 8));
            handles.push((name, i, h));
        }
    }
    engine.run_until_idle().unwrap();
    for (name, i, h) in handles {
        let tokens = tokens_of(h);
        let want = match name {
            "linear-qv" => u32s(&s.json["greedy"][format!("linear-qv.{i}")]),
            "ties-qv" => model.greedy(Some(slot), &s.seqs[i], 8).unwrap(),
            _ => tiny_llama::peft_greedy(&format!("{name}.{i}")),
        };
        assert_eq!(tokens, want, "{name}.{i}");
    }
    assert_eq!(pool.stats().pinned_count, 0);

    // Refused, registering nothing: a taken id, an ensemble spelling, an unknown member, and
    // members `linear` cannot combine (ranks 4 and 8).
    let linear = CombineOptions::new(Combination::Linear);
    assert!(matches!(
        pool.register_combined(id("ties-qv"), &members, &linear, None),
        Err(PoolError::DuplicateId { .. })
    ));
    let spelled = AdapterId::parse("x+y").unwrap();
    assert!(matches!(
        pool.register_combined(spelled, &members, &linear, None),
        Err(PoolError::InvalidId(e)) if e.reason == IdProblem::Ensemble
    ));
    assert!(matches!(
        pool.register_combined(id("m1"), &[(id("qv-r4"), 1.0), (id("nope"), 1.0)], &linear, None),
        Err(PoolError::UnknownId { id }) if id.as_str() == "nope"
    ));
    let err = pool
        .register_combined(
            id("m2"),
            &[(id("qv-r4"), 1.0), (id("all-r8-rslora"), 1.0)],
            &linear,
            None,
        )
        .unwrap_err();
    assert!(
        matches!(&err, PoolError::Load { id, .. } if id.as_str() == "m2"),
        "{err}"
    );
    assert!(!pool.is_registered(&id("m1")) && !pool.is_registered(&id("m2")));
}
