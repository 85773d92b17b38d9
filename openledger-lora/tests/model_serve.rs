//! The llama model served by the continuous-batching engine over the paged KV cache
//! (fixtures/peft/tiny-llama, references from transformers + PEFT): 12 requests — the three
//! reference sequences × {base, qv-r4, all-r8-rslora, attn-patterns} — served together with
//! chunked prefill, and again through a block pool so small that sequences are preempted, each
//! reproduce PEFT's 8 greedy tokens; the step's logits equal PEFT's to 1e-4 absolute.

mod tiny_llama;

use std::collections::BTreeMap;

use openledger_lora::adapter::tensors::read_safetensors;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{Model, PagedError, PagedModel};
use openledger_lora::pool::{AdapterId, AdapterPool, Source};
use openledger_lora::serve::{
    AllReady, Engine, EngineConfig, Event, FinishReason, KvDtype, PagedKvCache, Preemption,
    Request, RequestError, RequestHandle, RequestId, SamplingParams, SeqId, StepBatch, StepSeq,
};
use tiny_llama::{fixture, reference_json, u32s};

const TOL: f32 = 1e-4;
const NAMES: [&str; 4] = ["base", "qv-r4", "all-r8-rslora", "attn-patterns"];
const NEW_TOKENS: usize = 8;

fn adapter_id(name: &str) -> Option<AdapterId> {
    (name != "base").then(|| AdapterId::new(name).unwrap())
}

/// The model with the three adapters attached under their names.
fn paged_model() -> PagedModel {
    let mut paged = PagedModel::new(Model::from_dir(&fixture()).unwrap());
    for name in &NAMES[1..] {
        let dir = fixture().join("adapters").join(name);
        let adapter = LoraAdapter::from_dir(&dir, &LoadOptions::default()).unwrap();
        paged.attach(adapter_id(name).unwrap(), &adapter).unwrap();
    }
    paged
}

fn sequences() -> Vec<Vec<u32>> {
    reference_json()["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect()
}

fn config(paged: &PagedModel, num_blocks: usize, preemption: Preemption) -> EngineConfig {
    let block_size = 4;
    EngineConfig {
        kv_layout: paged.kv_layout(block_size),
        num_blocks,
        // 12 prompts of 5..9 tokens: 6 tokens a step splits them into chunks.
        max_tokens_per_step: 6,
        max_running: 16,
        max_context: (num_blocks * block_size).min(32),
        preemption,
        kv_dtype: KvDtype::F32,
    }
}

fn collect(h: RequestHandle) -> (Vec<u32>, Event) {
    let mut toks = Vec::new();
    for e in h {
        match e {
            Event::Token { token, index, .. } => {
                assert_eq!(index, toks.len());
                toks.push(token);
            }
            t => return (toks, t),
        }
    }
    panic!("the stream ended without a terminal event")
}

/// Serves the 12 (adapter, sequence) requests together; returns the preemptions counted.
fn serve_all_and_check(num_blocks: usize, preemption: Preemption) -> usize {
    let paged = paged_model();
    let cfg = config(&paged, num_blocks, preemption);
    let mut engine = Engine::new(paged, AllReady, cfg).unwrap();
    let json = reference_json();
    let mut handles = Vec::new();
    for name in NAMES {
        for (i, prompt) in sequences().into_iter().enumerate() {
            let sampling = SamplingParams {
                max_new_tokens: NEW_TOKENS,
                ..Default::default()
            };
            let h = engine.submit(Request {
                prompt,
                adapter: adapter_id(name),
                sampling,
            });
            handles.push((format!("{name}.{i}"), h));
        }
    }
    let mut preempted = 0;
    let mut max_prefill_chunk = 0;
    while engine.pending() > 0 {
        let r = engine.step().unwrap();
        preempted += r.preempted;
        max_prefill_chunk = max_prefill_chunk.max(r.prefill_tokens);
    }
    assert!(max_prefill_chunk <= 6, "the token budget holds");
    for (key, h) in handles {
        let (toks, end) = collect(h);
        assert_eq!(toks, u32s(&json["greedy"][&key]), "{key}");
        assert!(
            matches!(
                end,
                Event::Finished {
                    reason: FinishReason::MaxNewTokens,
                    ..
                }
            ),
            "{key}: {end:?}"
        );
    }
    assert_eq!(engine.kv().free_blocks(), num_blocks, "every block returns");
    preempted
}

#[test]
fn twelve_mixed_adapter_requests_with_chunked_prefill_match_peft_greedy() {
    let preempted = serve_all_and_check(64, Preemption::Recompute);
    assert_eq!(preempted, 0, "64 blocks hold every sequence");
}

#[test]
fn preemption_by_recompute_keeps_the_peft_greedy_outputs() {
    let preempted = serve_all_and_check(8, Preemption::Recompute);
    assert!(preempted > 0, "8 blocks of 4 cannot hold 12 sequences");
}

#[test]
fn preemption_by_swap_keeps_the_peft_greedy_outputs() {
    let preempted = serve_all_and_check(8, Preemption::Swap);
    assert!(preempted > 0, "8 blocks of 4 cannot hold 12 sequences");
}

/// Runs the 12 (adapter, sequence) pairs straight through [`PagedModel::step`]: the prompt's
/// first `split` tokens in one step, the rest in the next, every sequence needing logits.
/// Checks each step's logits against PEFT's rows `split − 1` and `len − 1`.
fn check_step_logits(split: usize) {
    let mut paged = paged_model();
    let reference: BTreeMap<String, (Vec<usize>, Vec<f32>)> =
        read_safetensors(&fixture().join("reference.safetensors"), false)
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, (t.shape().to_vec(), t.to_f32().into_owned())))
            .collect();
    let vocab = paged.model().config().vocab_size;
    let mut kv = PagedKvCache::new(paged.kv_layout(4), 64).unwrap();
    let mut entries = Vec::new();
    for name in NAMES {
        for (i, prompt) in sequences().into_iter().enumerate() {
            let seq = SeqId(entries.len() as u64);
            kv.add_sequence(seq).unwrap();
            entries.push((format!("{name}.{i}"), seq, adapter_id(name), prompt));
        }
    }
    for chunk in [0..split, split..usize::MAX] {
        let mut batch = StepBatch::default();
        let mut expected = Vec::new();
        for (key, seq, adapter, prompt) in &entries {
            let range = chunk.start.min(prompt.len())..chunk.end.min(prompt.len());
            if range.is_empty() {
                continue;
            }
            kv.append_slots(*seq, range.len()).unwrap();
            batch.seqs.push(StepSeq {
                request: RequestId(seq.0),
                seq: *seq,
                tokens: prompt[range.clone()].to_vec(),
                start_pos: range.start,
                adapter: adapter.clone(),
                block_table: kv.block_table(*seq).unwrap().to_vec(),
                needs_logits: true,
            });
            let (shape, data) = &reference[&format!("logits.{key}")];
            assert_eq!(shape, &[prompt.len(), vocab], "{key}");
            let row = range.end - 1;
            expected.push((key.clone(), data[row * vocab..(row + 1) * vocab].to_vec()));
        }
        if batch.seqs.is_empty() {
            continue;
        }
        let logits = paged.step(&batch, &mut kv).unwrap();
        assert_eq!(logits.data.len(), expected.len() * vocab);
        for ((key, want), got) in expected.iter().zip(logits.data.chunks(vocab)) {
            let diff = want
                .iter()
                .zip(got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff <= TOL, "{key} chunk {chunk:?}: max |Δ| {diff}");
        }
    }
}

#[test]
fn step_logits_equal_peft_for_a_whole_prompt() {
    check_step_logits(usize::MAX);
}

#[test]
fn step_logits_equal_peft_after_a_prompt_split_in_two_chunks() {
    check_step_logits(3);
}

#[test]
fn an_adapter_not_attached_fails_its_request_and_the_batch_goes_on() {
    let paged = paged_model();
    let cfg = config(&paged, 64, Preemption::Recompute);
    let mut engine = Engine::new(paged, AllReady, cfg).unwrap();
    let sampling = SamplingParams {
        max_new_tokens: 2,
        ..Default::default()
    };
    let bad = engine.submit(Request {
        prompt: vec![1, 2, 3],
        adapter: Some(AdapterId::new("missing").unwrap()),
        sampling: sampling.clone(),
    });
    let good = engine.submit(Request {
        prompt: sequences()[0].clone(),
        adapter: None,
        sampling,
    });
    engine.run_until_idle().unwrap();
    let (toks, end) = collect(bad);
    assert!(toks.is_empty());
    assert!(
        matches!(
            &end,
            Event::Failed {
                error: RequestError::UnknownAdapter { adapter },
                ..
            } if adapter.as_str() == "missing"
        ),
        "{end:?}"
    );
    let (toks, _) = collect(good);
    assert_eq!(toks, u32s(&reference_json()["greedy"]["base.0"])[..2]);
    assert_eq!(engine.kv().free_blocks(), 64);
}

#[test]
fn a_step_with_an_unknown_adapter_writes_nothing() {
    let mut paged = paged_model();
    let mut kv = PagedKvCache::new(paged.kv_layout(4), 4).unwrap();
    kv.add_sequence(SeqId(0)).unwrap();
    kv.append_slots(SeqId(0), 2).unwrap();
    let batch = StepBatch {
        seqs: vec![StepSeq {
            request: RequestId(0),
            seq: SeqId(0),
            tokens: vec![1, 2],
            start_pos: 0,
            adapter: Some(AdapterId::new("missing").unwrap()),
            block_table: kv.block_table(SeqId(0)).unwrap().to_vec(),
            needs_logits: true,
        }],
    };
    let err = paged.step(&batch, &mut kv).unwrap_err();
    assert!(
        matches!(&err, PagedError::UnknownAdapter { seq: 0, adapter } if adapter == "missing"),
        "{err}"
    );
    assert_eq!(
        kv.key(SeqId(0), 0, 0).unwrap(),
        vec![0.0; kv.layout().kv_dim()]
    );
}

#[test]
fn adapters_from_the_pool_are_attached_on_first_use_and_match_peft() {
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    for name in &NAMES[1..] {
        let dir = fixture().join("adapters").join(name);
        pool.register(adapter_id(name).unwrap(), Source::Dir(dir))
            .unwrap();
    }
    let paged = PagedModel::with_pool(Model::from_dir(&fixture()).unwrap(), pool.clone());
    let cfg = config(&paged, 64, Preemption::Recompute);
    let mut engine = Engine::new(paged, pool, cfg).unwrap();
    let json = reference_json();
    let mut handles = Vec::new();
    for name in NAMES {
        let prompt = sequences()[2].clone();
        let sampling = SamplingParams {
            max_new_tokens: NEW_TOKENS,
            ..Default::default()
        };
        let adapter = adapter_id(name);
        handles.push((
            name,
            engine.submit(Request {
                prompt,
                adapter,
                sampling,
            }),
        ));
    }
    engine.run_until_idle().unwrap();
    for (name, h) in handles {
        let (toks, _) = collect(h);
        assert_eq!(toks, u32s(&json["greedy"][&format!("{name}.2")]), "{name}");
    }
    let mut attached = engine.model().model().adapter_names();
    attached.sort_unstable();
    assert_eq!(attached, ["all-r8-rslora", "attn-patterns", "qv-r4"]);
}
