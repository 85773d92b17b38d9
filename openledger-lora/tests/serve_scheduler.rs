//! The continuous-batching scheduler end to end, driving a toy model that genuinely stores and
//! reads its K/V through the paged cache.

mod serve_support;

use std::collections::HashMap;

use openledger_lora::serve::{
    AllReady, Engine, EngineError, Event, FinishReason, Preemption, Request, RequestError,
    RequestHandle, SampleError, SamplingParams,
};
use proptest::prelude::*;
use serve_support::*;

fn greedy(prompt: Vec<u32>, adapter: Option<&str>, n: usize) -> Request {
    Request {
        prompt,
        adapter: adapter.map(id),
        sampling: SamplingParams {
            max_new_tokens: n,
            ..Default::default()
        },
    }
}

/// Output tokens and terminal event of a finished handle.
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

/// A greedy request: prompt, adapter, new tokens.
type Greedy<'a> = (Vec<u32>, Option<&'a str>, usize);

/// Each request run to the end: its tokens and terminal event, beside what was asked.
fn run_all<'a, M: openledger_lora::serve::StepModel>(
    e: &mut Engine<M>,
    reqs: &'a [Greedy<'a>],
) -> Vec<(Vec<u32>, Event, &'a Greedy<'a>)> {
    let handles: Vec<_> = reqs
        .iter()
        .map(|(p, a, n)| e.submit(greedy(p.clone(), *a, *n)))
        .collect();
    e.run_until_idle().unwrap();
    handles
        .into_iter()
        .zip(reqs)
        .map(|(h, r)| {
            let (toks, end) = collect(h);
            (toks, end, r)
        })
        .collect()
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (seed * 5 + i * 3) % VOCAB as u32)
        .collect()
}

#[test]
fn no_step_runs_more_adapters_than_the_model_takes() {
    let model = ToyModel {
        max_adapters: Some(2),
        ..ToyModel::default()
    };
    let mut e = Engine::new(
        model,
        AllReady,
        config(4, 64, 64, 64, Preemption::Recompute),
    )
    .unwrap();
    let reqs = [
        (prompt(1, 5), Some("alpha"), 6),
        (prompt(2, 9), Some("beta"), 3),
        (prompt(3, 1), Some("gamma"), 8),
        (prompt(4, 2), None, 4),
        (prompt(5, 3), Some("alpha"), 5),
        (prompt(6, 4), Some("gamma"), 2),
    ];
    for (toks, end, (p, a, n)) in run_all(&mut e, &reqs) {
        assert_eq!(toks, reference_greedy(p, *a, *n), "{a:?}");
        assert!(matches!(end, Event::Finished { .. }), "{end:?}");
    }
    // gamma waited for a place while the base request and alpha's second ran beside alpha
    // and beta.
    let first = &e.model().log[0];
    let ids: Vec<u64> = first.iter().map(|(r, _, _)| r.0).collect();
    assert_eq!(
        ids,
        vec![0, 1, 3, 4],
        "the first step skips gamma, not what follows it"
    );
}

/// An adapter the model is still copying (to a device, say) keeps its request waiting while
/// the others decode; it is admitted at the first step after the copy has landed, and never
/// runs before.
#[test]
fn a_request_waits_for_its_adapters_copy_while_the_others_decode() {
    let model = ToyModel {
        copying: HashMap::from([("alpha".to_string(), 3)]),
        ..ToyModel::default()
    };
    let mut e = Engine::new(
        model,
        AllReady,
        config(4, 64, 64, 64, Preemption::Recompute),
    )
    .unwrap();
    let reqs = [(prompt(1, 5), None, 8), (prompt(2, 9), Some("alpha"), 3)];
    for (toks, end, (p, a, n)) in run_all(&mut e, &reqs) {
        assert_eq!(toks, reference_greedy(p, *a, *n), "{a:?}");
        assert!(matches!(end, Event::Finished { .. }), "{end:?}");
    }
    let log = &e.model().log;
    let steps_with = |r: u64| -> Vec<usize> {
        (0..log.len())
            .filter(|&i| log[i].iter().any(|(id, _, _)| id.0 == r))
            .collect()
    };
    // Asked once per step: three "not yet", then admitted at the fourth step.
    assert_eq!(steps_with(1).first(), Some(&3), "{log:?}");
    assert_eq!(
        steps_with(0)[..4],
        [0, 1, 2, 3],
        "the base request decodes meanwhile"
    );
}

#[test]
fn outputs_equal_the_reference_for_a_mixed_batch() {
    let mut e = Engine::new(
        ToyModel::default(),
        AllReady,
        config(4, 64, 64, 64, Preemption::Recompute),
    )
    .unwrap();
    let reqs = [
        (prompt(1, 5), None, 6),
        (prompt(2, 9), Some("alpha"), 3),
        (prompt(3, 1), Some("beta"), 8),
    ];
    for (toks, end, (p, a, n)) in run_all(&mut e, &reqs) {
        assert_eq!(toks, reference_greedy(p, *a, *n));
        assert!(matches!(
            end,
            Event::Finished {
                reason: FinishReason::MaxNewTokens,
                ..
            }
        ));
    }
    assert_eq!(e.kv().free_blocks(), 64, "every block is returned");
}

#[test]
fn requests_join_mid_run_and_finish_at_different_times() {
    let mut e = Engine::new(
        ToyModel::default(),
        AllReady,
        config(4, 64, 64, 64, Preemption::Recompute),
    )
    .unwrap();
    let long = e.submit(greedy(prompt(1, 4), None, 12));
    let short = e.submit(greedy(prompt(2, 4), Some("x"), 2));
    for _ in 0..3 {
        e.step().unwrap();
    }
    // `short` is done after its prefill step and one decode step; `long` is still running.
    assert!(matches!(short.drain().last(), Some(Event::Finished { .. })));
    assert_eq!(e.pending(), 1);
    let late = e.submit(greedy(prompt(3, 6), Some("y"), 4));
    let report = e.step().unwrap();
    // The newcomer's prefill runs in the same batch as the long request's decode.
    assert_eq!(report.batch_seqs, 2);
    assert_eq!(report.decode_tokens, 1);
    assert_eq!(report.prefill_tokens, 6);
    e.run_until_idle().unwrap();
    assert_eq!(collect(long).0, reference_greedy(&prompt(1, 4), None, 12));
    assert_eq!(
        collect(late).0,
        reference_greedy(&prompt(3, 6), Some("y"), 4)
    );
}

#[test]
fn no_step_exceeds_the_token_budget_and_prefill_is_chunked() {
    let budget = 5;
    let mut e = Engine::new(
        ToyModel::default(),
        AllReady,
        config(2, 64, budget, 40, Preemption::Recompute),
    )
    .unwrap();
    let reqs: Vec<_> = (0..4).map(|i| (prompt(i, 7 + i as usize * 3), 5)).collect();
    let handles: Vec<_> = reqs
        .iter()
        .map(|(p, n)| e.submit(greedy(p.clone(), None, *n)))
        .collect();
    e.run_until_idle().unwrap();
    let log = &e.model().log;
    assert!(
        log.iter()
            .all(|step| step.iter().map(|s| s.1).sum::<usize>() <= budget)
    );
    // some prompt was split across steps: a chunk that asked for no logits
    assert!(log.iter().flatten().any(|s| !s.2));
    for ((p, n), h) in reqs.iter().zip(handles) {
        assert_eq!(collect(h).0, reference_greedy(p, None, *n));
    }
}

/// Runs a workload of sampled and greedy requests; returns each request's outputs, the total
/// preemptions reported by steps, and the preemptions in the requests' stats.
fn workload(num_blocks: usize, preemption: Preemption) -> (Vec<Vec<u32>>, usize, usize) {
    let mut e = Engine::new(
        ToyModel::default(),
        AllReady,
        config(2, num_blocks, 16, 24, preemption),
    )
    .unwrap();
    let mut handles = Vec::new();
    let mut preempted = 0;
    for i in 0..8u32 {
        let sampling = SamplingParams {
            temperature: if i % 2 == 0 { 0.0 } else { 0.9 },
            top_p: Some(0.9),
            seed: 100 + u64::from(i),
            max_new_tokens: 6 + i as usize,
            ..Default::default()
        };
        let adapter = ["a", "b", "c"][i as usize % 3];
        handles.push(e.submit(Request {
            prompt: prompt(i, 3 + i as usize % 4),
            adapter: Some(id(adapter)),
            sampling,
        }));
        // requests arrive while others run
        preempted += e.step().unwrap().preempted;
    }
    while e.pending() > 0 {
        preempted += e.step().unwrap().preempted;
    }
    assert_eq!(e.kv().free_blocks(), num_blocks);
    let load = e.load();
    assert_eq!((load.waiting, load.running, load.swapped), (0, 0, 0));
    assert_eq!(
        (load.kv_blocks, load.kv_blocks_free),
        (num_blocks, num_blocks)
    );
    assert_eq!(load.kv_usage(), 0.0);
    assert_eq!(load.preemptions, preempted as u64);
    let mut stats_preemptions = 0;
    let outs: Vec<Vec<u32>> = handles
        .into_iter()
        .map(|h| {
            let (toks, end) = collect(h);
            match end {
                Event::Finished { stats, .. } => {
                    stats_preemptions += stats.preemptions;
                    assert_eq!(stats.tokens_generated, toks.len());
                }
                other => panic!("{other:?}"),
            }
            toks
        })
        .collect();
    // Every prompt token ran once, and every output token but each request's last; recompute
    // runs a preempted request's prompt and output again.
    let prompts: usize = (0..8).map(|i| 3 + i % 4).sum();
    let generated: usize = outs.iter().map(Vec::len).sum();
    let once = (prompts + generated - outs.len()) as u64;
    let run = load.prefill_tokens + load.decode_tokens;
    if preempted == 0 || preemption == Preemption::Swap {
        assert_eq!(run, once);
    } else {
        assert!(run > once, "{run} tokens run for {once}");
    }
    assert!(load.steps > 0 && load.decode_tokens > 0);
    (outs, preempted, stats_preemptions)
}

#[test]
fn preemption_by_recompute_under_a_tiny_pool_gives_the_same_outputs() {
    let (free_run, p0, _) = workload(256, Preemption::Recompute);
    assert_eq!(p0, 0);
    let (tight, p1, s1) = workload(12, Preemption::Recompute);
    assert!(p1 > 0, "the tiny pool must force preemption");
    assert_eq!(p1, s1);
    assert_eq!(free_run, tight);
}

#[test]
fn preemption_by_swap_under_a_tiny_pool_gives_the_same_outputs() {
    let (free_run, _, _) = workload(256, Preemption::Swap);
    let (tight, p1, s1) = workload(12, Preemption::Swap);
    assert!(p1 > 0, "the tiny pool must force preemption");
    assert_eq!(p1, s1);
    assert_eq!(free_run, tight);
}

#[test]
fn a_greedy_request_matches_the_reference_after_preemption() {
    // Two long requests in a pool that holds only one of them.
    let mut e = Engine::new(
        ToyModel::default(),
        AllReady,
        config(2, 10, 32, 20, Preemption::Recompute),
    )
    .unwrap();
    let a = e.submit(greedy(prompt(1, 6), None, 13));
    let b = e.submit(greedy(prompt(2, 6), Some("z"), 13));
    e.run_until_idle().unwrap();
    let (ta, ea) = collect(a);
    let (tb, eb) = collect(b);
    assert_eq!(ta, reference_greedy(&prompt(1, 6), None, 13));
    assert_eq!(tb, reference_greedy(&prompt(2, 6), Some("z"), 13));
    let pre = |e: &Event| match e {
        Event::Finished { stats, .. } => stats.preemptions,
        _ => panic!("{e:?}"),
    };
    assert!(pre(&eb) > 0 && pre(&ea) == 0, "the newer one is preempted");
}

#[test]
fn a_preempted_request_is_not_overtaken_for_ever_by_newer_ones() {
    for preemption in [Preemption::Swap, Preemption::Recompute] {
        // The pool holds one long request; short ones keep arriving, one every step.
        let mut e = Engine::new(
            ToyModel::default(),
            AllReady,
            config(2, 10, 32, 20, preemption),
        )
        .unwrap();
        let a = e.submit(greedy(prompt(1, 6), None, 13));
        let b = e.submit(greedy(prompt(2, 6), None, 13));
        let mut preempted = 0;
        let mut b_end = None;
        let mut later = Vec::new();
        for step in 0..300u32 {
            later.push(e.submit(greedy(prompt(10 + step, 3), None, 4)));
            preempted += e.step().unwrap().preempted;
            while let Some(ev) = b.try_next() {
                if ev.is_terminal() {
                    b_end = Some((step, ev));
                }
            }
            if b_end.is_some() {
                break;
            }
        }
        assert!(
            preempted > 0,
            "{preemption:?}: the pool must force preemption"
        );
        let (step, end) = b_end.unwrap_or_else(|| panic!("{preemption:?}: b starved"));
        assert!(matches!(end, Event::Finished { .. }), "{end:?}");
        assert!(step < 100, "{preemption:?}: b finished only at step {step}");
        e.run_until_idle().unwrap();
        assert_eq!(collect(a).0, reference_greedy(&prompt(1, 6), None, 13));
        assert_eq!(e.kv().free_blocks(), 10);
    }
}

#[test]
fn bad_requests_fail_alone_and_the_others_carry_on() {
    let readiness = FakeReadiness {
        loading_polls: HashMap::from([("ok".to_string(), 0), (NAN_ADAPTER.to_string(), 0)]),
    };
    let mut e = Engine::new(
        ToyModel::default(),
        readiness,
        config(4, 32, 64, 16, Preemption::Recompute),
    )
    .unwrap();
    let good1 = e.submit(greedy(prompt(1, 3), Some("ok"), 4));
    let empty = e.submit(greedy(vec![], None, 4));
    let long = e.submit(greedy(prompt(2, 16), None, 4));
    let oov = e.submit(greedy(vec![1, 2, 99], None, 4));
    let unknown = e.submit(greedy(prompt(3, 3), Some("nope"), 4));
    let nan = e.submit(greedy(prompt(4, 3), Some(NAN_ADAPTER), 4));
    let bad_params = e.submit(Request {
        sampling: SamplingParams {
            top_p: Some(2.0),
            ..Default::default()
        },
        ..greedy(prompt(5, 3), None, 4)
    });
    let no_detok = e.submit(Request {
        sampling: SamplingParams {
            stop_strings: vec!["x".into()],
            ..Default::default()
        },
        ..greedy(prompt(5, 3), None, 4)
    });
    let good2 = e.submit(greedy(prompt(6, 5), None, 4));
    e.run_until_idle().unwrap();
    let failure = |h| match collect(h) {
        (t, Event::Failed { error, .. }) => {
            assert!(t.is_empty());
            error
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(failure(empty), RequestError::EmptyPrompt);
    assert_eq!(
        failure(long),
        RequestError::PromptTooLong {
            len: 16,
            max_context: 16
        }
    );
    assert_eq!(
        failure(oov),
        RequestError::TokenOutOfVocab {
            index: 2,
            token: 99,
            vocab_size: VOCAB
        }
    );
    assert_eq!(
        failure(unknown),
        RequestError::UnknownAdapter {
            adapter: id("nope")
        }
    );
    assert!(matches!(
        failure(nan),
        RequestError::Sampling(SampleError::NonFiniteLogit { index: 0, .. })
    ));
    assert!(matches!(
        failure(bad_params),
        RequestError::Sampling(SampleError::InvalidParams { name: "top_p", .. })
    ));
    assert_eq!(failure(no_detok), RequestError::NeedsDetokenizer);
    assert_eq!(
        collect(good1).0,
        reference_greedy(&prompt(1, 3), Some("ok"), 4)
    );
    assert_eq!(collect(good2).0, reference_greedy(&prompt(6, 5), None, 4));
    assert_eq!(e.kv().free_blocks(), 32);
}

#[test]
fn a_loading_adapter_does_not_stall_the_others() {
    let readiness = FakeReadiness {
        loading_polls: HashMap::from([("slow".to_string(), 5), ("fast".to_string(), 0)]),
    };
    let mut e = Engine::new(
        ToyModel::default(),
        readiness,
        config(4, 32, 64, 32, Preemption::Recompute),
    )
    .unwrap();
    let slow = e.submit(greedy(prompt(1, 4), Some("slow"), 3));
    let fast = e.submit(greedy(prompt(2, 4), Some("fast"), 3));
    let base = e.submit(greedy(prompt(3, 4), None, 3));
    for _ in 0..4 {
        e.step().unwrap();
    }
    // The two others are done while the slow adapter still loads; it has produced nothing.
    assert!(matches!(fast.drain().last(), Some(Event::Finished { .. })));
    assert!(matches!(base.drain().last(), Some(Event::Finished { .. })));
    assert!(slow.try_next().is_none());
    e.run_until_idle().unwrap();
    assert_eq!(
        collect(slow).0,
        reference_greedy(&prompt(1, 4), Some("slow"), 3)
    );
}

#[test]
fn a_sequence_reaching_the_context_limit_finishes_with_max_context() {
    let mut e = Engine::new(
        ToyModel::default(),
        AllReady,
        config(4, 8, 64, 10, Preemption::Recompute),
    )
    .unwrap();
    let h = e.submit(greedy(prompt(1, 7), None, 100));
    e.run_until_idle().unwrap();
    let (t, end) = collect(h);
    assert_eq!(t.len(), 3);
    assert!(matches!(
        end,
        Event::Finished {
            reason: FinishReason::MaxContext,
            ..
        }
    ));
}

#[test]
fn a_context_larger_than_the_pool_is_refused() {
    assert!(matches!(
        Engine::new(
            ToyModel::default(),
            AllReady,
            config(4, 2, 64, 9, Preemption::Recompute)
        ),
        Err(EngineError::Config { .. })
    ));
}

/// Fails its `fail_at`-th forward pass (counting from 0), otherwise the toy model.
struct FlakyModel {
    inner: ToyModel,
    calls: usize,
    fail_at: usize,
}

impl openledger_lora::serve::StepModel for FlakyModel {
    openledger_lora::host_kv_cache!();

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn forward(
        &mut self,
        batch: &openledger_lora::serve::StepBatch,
        kv: &mut openledger_lora::serve::PagedKvCache,
    ) -> Result<openledger_lora::serve::Logits, Box<dyn std::error::Error + Send + Sync>> {
        self.calls += 1;
        if self.calls - 1 == self.fail_at {
            return Err("device lost".into());
        }
        self.inner.forward(batch, kv)
    }
}

#[test]
fn a_failed_forward_pass_fails_its_batch_and_frees_its_blocks() {
    let model = FlakyModel {
        inner: ToyModel::default(),
        calls: 0,
        fail_at: 1,
    };
    let mut e = Engine::new(
        model,
        AllReady,
        config(4, 16, 64, 32, Preemption::Recompute),
    )
    .unwrap();
    let a = e.submit(greedy(prompt(1, 3), None, 5));
    e.step().unwrap();
    assert!(matches!(e.step(), Err(EngineError::Model(_))));
    assert_eq!(e.pending(), 0);
    assert_eq!(e.kv().free_blocks(), 16);
    let (toks, end) = collect(a);
    assert_eq!(toks.len(), 1);
    assert!(matches!(
        end,
        Event::Failed { error: RequestError::Model { reason }, .. } if reason == "device lost"
    ));
    // The engine serves new requests afterwards.
    let b = e.submit(greedy(prompt(2, 3), None, 4));
    e.run_until_idle().unwrap();
    assert_eq!(collect(b).0, reference_greedy(&prompt(2, 3), None, 4));
}

#[test]
fn at_most_max_running_sequences_run_at_once() {
    let mut cfg = config(4, 64, 64, 32, Preemption::Recompute);
    cfg.max_running = 2;
    let mut e = Engine::new(ToyModel::default(), AllReady, cfg).unwrap();
    let hs: Vec<_> = (0..5)
        .map(|i| e.submit(greedy(prompt(i, 3), None, 3)))
        .collect();
    e.run_until_idle().unwrap();
    assert!(e.model().log.iter().all(|step| step.len() <= 2));
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(
            collect(h).0,
            reference_greedy(&prompt(i as u32, 3), None, 3)
        );
    }
}

#[test]
fn adapters_of_queued_requests_load_while_the_batch_is_full() {
    let readiness = FakeReadiness {
        loading_polls: HashMap::from([("queued".to_string(), 2)]),
    };
    let mut cfg = config(4, 64, 64, 32, Preemption::Recompute);
    cfg.max_running = 1;
    let mut e = Engine::new(ToyModel::default(), readiness, cfg).unwrap();
    let first = e.submit(greedy(prompt(1, 3), None, 4));
    let queued = e.submit(greedy(prompt(2, 3), Some("queued"), 2));
    // While `first` holds the only running slot, the queued request's adapter is polled each
    // step, so it is ready by the time the slot frees up: it runs in the very next step.
    for _ in 0..4 {
        e.step().unwrap();
    }
    assert!(matches!(first.drain().last(), Some(Event::Finished { .. })));
    let r = e.step().unwrap();
    assert_eq!(r.batch_seqs, 1);
    let mut events = queued.drain();
    assert_eq!(events.len(), 1, "its first token came at once");
    e.run_until_idle().unwrap();
    events.extend(queued);
    let toks: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Token { token, .. } => Some(*token),
            _ => None,
        })
        .collect();
    assert_eq!(toks, reference_greedy(&prompt(2, 3), Some("queued"), 2));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any pool size, block size, budget, preemption mode and arrival pattern: every request's
    /// output equals the reference, and every block comes back.
    #[test]
    fn any_workload_gives_the_reference_outputs_and_frees_every_block(
        block_size in 1usize..5,
        extra_blocks in 0usize..20,
        budget in 1usize..24,
        swap in any::<bool>(),
        reqs in proptest::collection::vec((1usize..10, 1usize..10, 0usize..4, 0usize..3), 1..8),
    ) {
        let max_context: usize = 20;
        let num_blocks = max_context.div_ceil(block_size) + extra_blocks;
        let preemption = if swap { Preemption::Swap } else { Preemption::Recompute };
        let mut e = Engine::new(
            ToyModel::default(),
            AllReady,
            config(block_size, num_blocks, budget, max_context, preemption),
        )
        .unwrap();
        let adapters = [None, Some("a"), Some("b")];
        let mut pending: Vec<_> = reqs.iter().enumerate().collect();
        let mut handles = Vec::new();
        let mut step = 0;
        while !pending.is_empty() || e.pending() > 0 {
            // requests arrive at their step
            pending.retain(|(i, (plen, n, at, a))| {
                if *at <= step {
                    let p = prompt(*i as u32, *plen);
                    let ad = adapters[*a];
                    handles.push((p.clone(), ad, *n, e.submit(greedy(p, ad, *n))));
                    false
                } else {
                    true
                }
            });
            let r = e.step().unwrap();
            prop_assert!(r.prefill_tokens + r.decode_tokens <= budget);
            step += 1;
            prop_assert!(step < 10_000, "no progress");
        }
        prop_assert_eq!(e.kv().free_blocks(), num_blocks);
        for (p, ad, n, h) in handles {
            let (toks, end) = collect(h);
            let want = reference_greedy(&p, ad, n);
            let room = max_context - p.len();
            prop_assert_eq!(&toks[..], &want[..n.min(room)]);
            let finished = matches!(end, Event::Finished { .. });
            prop_assert!(finished, "ended with {:?}", end);
        }
    }
}

/// Returns one float too few.
struct ShortLogits;

impl openledger_lora::serve::StepModel for ShortLogits {
    openledger_lora::host_kv_cache!();

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn forward(
        &mut self,
        batch: &openledger_lora::serve::StepBatch,
        _kv: &mut openledger_lora::serve::PagedKvCache,
    ) -> Result<openledger_lora::serve::Logits, Box<dyn std::error::Error + Send + Sync>> {
        let rows = batch.seqs.iter().filter(|s| s.needs_logits).count();
        Ok(openledger_lora::serve::Logits {
            data: vec![0.0; rows * VOCAB - 1],
        })
    }
}

#[test]
fn logits_of_the_wrong_size_are_a_model_error_not_a_panic() {
    let mut e = Engine::new(
        ShortLogits,
        AllReady,
        config(4, 8, 64, 16, Preemption::Recompute),
    )
    .unwrap();
    let h = e.submit(greedy(vec![1, 2], None, 3));
    let err = e.step().unwrap_err();
    assert!(
        err.to_string().contains(&format!("expected {VOCAB}")),
        "{err}"
    );
    assert!(matches!(
        collect(h).1,
        Event::Failed {
            error: RequestError::Model { .. },
            ..
        }
    ));
    assert_eq!(e.kv().free_blocks(), 8);
}

#[test]
fn a_half_precision_kv_cache_serves_the_reference_outputs() {
    // The toy model's values (token ids, positions) are small integers, exact in f16 and bf16.
    for dtype in [
        openledger_lora::serve::KvDtype::F16,
        openledger_lora::serve::KvDtype::Bf16,
    ] {
        let mut cfg = config(2, 12, 16, 24, Preemption::Swap);
        cfg.kv_dtype = dtype;
        let mut e = Engine::new(ToyModel::default(), AllReady, cfg).unwrap();
        assert_eq!(e.kv().dtype(), dtype);
        let hs: Vec<_> = (0..4u32)
            .map(|i| e.submit(greedy(prompt(i, 4 + i as usize), Some("h"), 8)))
            .collect();
        e.run_until_idle().unwrap();
        for (i, h) in hs.into_iter().enumerate() {
            let p = prompt(i as u32, 4 + i);
            assert_eq!(
                collect(h).0,
                reference_greedy(&p, Some("h"), 8),
                "{dtype:?}"
            );
        }
    }
}
