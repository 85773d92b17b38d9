//! Token streaming: delivery as produced (channel and callback), cancellation, stop conditions,
//! per-request statistics, and the adapter pool as the scheduler's readiness oracle.

mod serve_support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use openledger_lora::pool::{AdapterPool, Source};
use openledger_lora::serve::{
    AllReady, Engine, Event, FinishReason, Preemption, Request, RequestError, SamplingParams,
};
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

fn engine(num_blocks: usize) -> Engine<ToyModel> {
    Engine::new(
        ToyModel::default(),
        AllReady,
        config(4, num_blocks, 64, 32, Preemption::Recompute),
    )
    .unwrap()
}

#[test]
fn each_token_is_delivered_in_the_step_that_produced_it() {
    let mut e = engine(16);
    let p = vec![1, 2, 3];
    let want = reference_greedy(&p, None, 4);
    let h = e.submit(greedy(p, None, 4));
    for (i, &t) in want.iter().enumerate() {
        e.step().unwrap();
        let got = h.drain();
        assert_eq!(
            got[0],
            Event::Token {
                token: t,
                index: i,
                logprobs: None
            }
        );
        if i + 1 < want.len() {
            assert_eq!(
                got.len(),
                1,
                "only this step's token, no terminal event yet"
            );
        } else {
            assert!(matches!(
                got[1],
                Event::Finished {
                    reason: FinishReason::MaxNewTokens,
                    ..
                }
            ));
        }
    }
}

#[test]
fn a_callback_sees_the_same_events_as_a_channel() {
    let mut e = engine(16);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    e.submit_with_callback(greedy(vec![4, 5], Some("cb"), 5), move |ev| {
        sink.lock().unwrap().push(ev.clone());
    });
    let h = e.submit(greedy(vec![4, 5], Some("cb"), 5));
    e.run_until_idle().unwrap();
    let from_channel: Vec<Event> = h.collect();
    let from_callback = seen.lock().unwrap().clone();
    let tokens = |v: &[Event]| {
        v.iter()
            .filter_map(|e| match e {
                Event::Token { token, .. } => Some(*token),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tokens(&from_callback),
        reference_greedy(&[4, 5], Some("cb"), 5)
    );
    assert_eq!(tokens(&from_callback), tokens(&from_channel));
    assert_eq!(from_callback.len(), 6);
    assert!(from_callback[5].is_terminal());
}

#[test]
fn cancelling_stops_the_request_and_frees_its_blocks() {
    let mut e = engine(16);
    let victim = e.submit(greedy(vec![1; 9], None, 20));
    let other = e.submit(greedy(vec![2; 3], None, 6));
    e.step().unwrap();
    e.step().unwrap();
    assert!(e.kv().free_blocks() < 16);
    victim.cancel.cancel();
    let r = e.step().unwrap();
    assert_eq!(r.ended, 1);
    assert_eq!(r.batch_seqs, 1, "only the other request runs");
    let events = victim.drain();
    assert_eq!(events.len(), 3, "two tokens, then the end");
    assert!(matches!(
        events.last(),
        Some(Event::Finished { reason: FinishReason::Cancelled, stats }) if stats.tokens_generated == 2
    ));
    e.run_until_idle().unwrap();
    assert_eq!(e.kv().free_blocks(), 16);
    let toks: Vec<u32> = other
        .filter_map(|ev| match ev {
            Event::Token { token, .. } => Some(token),
            _ => None,
        })
        .collect();
    assert_eq!(toks, reference_greedy(&[2; 3], None, 6));
}

#[test]
fn cancelling_through_the_engine_ends_a_waiting_request_at_once() {
    let mut e = engine(16);
    let h = e.submit(greedy(vec![1, 2], None, 5));
    assert!(e.cancel(h.id));
    assert!(!e.cancel(h.id));
    assert_eq!(e.pending(), 0);
    assert!(matches!(
        h.try_next(),
        Some(Event::Finished {
            reason: FinishReason::Cancelled,
            ..
        })
    ));
}

#[test]
fn dropping_the_handle_cancels_the_request() {
    let mut e = engine(16);
    let h = e.submit(greedy(vec![1, 2], None, 50));
    e.step().unwrap();
    drop(h);
    e.step().unwrap();
    assert_eq!(e.pending(), 0);
    assert_eq!(e.kv().free_blocks(), 16);
}

#[test]
fn stop_tokens_end_the_output_without_being_delivered() {
    let p = vec![3, 1, 4];
    let free = reference_greedy(&p, None, 6);
    let stop = free[3];
    let cut = free.iter().position(|&t| t == stop).unwrap();
    let mut e = engine(16);
    let h = e.submit(Request {
        sampling: SamplingParams {
            max_new_tokens: 6,
            stop_tokens: vec![stop],
            ..Default::default()
        },
        ..greedy(p, None, 6)
    });
    e.run_until_idle().unwrap();
    let events: Vec<Event> = h.collect();
    let toks: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Token { token, .. } => Some(*token),
            _ => None,
        })
        .collect();
    assert_eq!(toks, free[..cut]);
    assert!(matches!(
        events.last(),
        Some(Event::Finished { reason: FinishReason::StopToken(t), .. }) if *t == stop
    ));
}

#[test]
fn stop_strings_spanning_tokens_end_the_output() {
    let p = vec![7, 7];
    let free = reference_greedy(&p, None, 8);
    // token t reads as the letter 'a' + t; stop on the text of output tokens 2..4
    let text = |t: &[u32]| {
        t.iter()
            .map(|&x| char::from(b'a' + x as u8))
            .collect::<String>()
    };
    let stop = text(&free[2..4]);
    let mut e = engine(16).with_detokenizer(text);
    let h = e.submit(Request {
        sampling: SamplingParams {
            max_new_tokens: 8,
            stop_strings: vec![stop.clone()],
            ..Default::default()
        },
        ..greedy(p, None, 8)
    });
    e.run_until_idle().unwrap();
    let events: Vec<Event> = h.collect();
    let n_tokens = events.iter().filter(|e| !e.is_terminal()).count();
    let first = text(&free).find(&stop).unwrap();
    assert_eq!(n_tokens, first + stop.len());
    assert_eq!(
        events.last(),
        Some(&Event::Finished {
            reason: FinishReason::StopString(stop),
            stats: match events.last() {
                Some(Event::Finished { stats, .. }) => stats.clone(),
                _ => unreachable!(),
            },
        })
    );
}

#[test]
fn statistics_count_tokens_latencies_and_preemptions() {
    // A pool too small for both requests: the newer is preempted at least once.
    let mut e = Engine::new(
        ToyModel::default(),
        AllReady,
        config(2, 10, 32, 20, Preemption::Recompute),
    )
    .unwrap();
    let a = e.submit(greedy(vec![1; 6], None, 13));
    let b = e.submit(greedy(vec![2; 6], None, 13));
    e.run_until_idle().unwrap();
    for (h, preempted) in [(a, false), (b, true)] {
        let events: Vec<Event> = h.collect();
        let Some(Event::Finished { stats, .. }) = events.last() else {
            panic!("{events:?}")
        };
        assert_eq!(stats.tokens_generated, 13);
        assert_eq!(stats.inter_token_latencies.len(), 12);
        assert!(stats.time_to_first_token.is_some());
        let (p50, p99) = (
            stats.inter_token_p50().unwrap(),
            stats.inter_token_p99().unwrap(),
        );
        assert!(p50 <= p99);
        assert_eq!(p99, *stats.inter_token_latencies.iter().max().unwrap());
        assert_eq!(stats.preemptions > 0, preempted);
    }
}

#[test]
fn the_adapter_pool_reports_unknown_and_loads_registered_adapters() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/peft/tiny-llama/adapters/qv-r4");
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    pool.register(id("qv-r4"), Source::Dir(dir)).unwrap();
    let mut e = Engine::new(
        ToyModel::default(),
        pool.clone(),
        config(4, 16, 64, 32, Preemption::Recompute),
    )
    .unwrap();
    let known = e.submit(greedy(vec![1, 2], Some("qv-r4"), 3));
    let unknown = e.submit(greedy(vec![1, 2], Some("missing"), 3));
    e.run_until_idle().unwrap();
    assert!(
        pool.is_resident(&id("qv-r4")),
        "the scheduler's prefetch loaded it"
    );
    let toks: Vec<u32> = known
        .filter_map(|ev| match ev {
            Event::Token { token, .. } => Some(token),
            _ => None,
        })
        .collect();
    assert_eq!(toks, reference_greedy(&[1, 2], Some("qv-r4"), 3));
    assert!(matches!(
        unknown.last(),
        Some(Event::Failed {
            error: RequestError::UnknownAdapter { .. },
            ..
        })
    ));
}

#[test]
fn tokens_stream_to_another_thread_while_the_engine_runs() {
    let mut e = engine(16);
    let handles: Vec<_> = (0..3u32)
        .map(|i| e.submit(greedy(vec![i + 1, 2], None, 6)))
        .collect();
    let runner = std::thread::spawn(move || e.run_until_idle().map(|_| e.kv().free_blocks()));
    for (i, h) in handles.into_iter().enumerate() {
        let toks: Vec<u32> = h
            .filter_map(|ev| match ev {
                Event::Token { token, .. } => Some(token),
                _ => None,
            })
            .collect();
        assert_eq!(toks, reference_greedy(&[i as u32 + 1, 2], None, 6));
    }
    assert_eq!(runner.join().unwrap().unwrap(), 16);
}

#[test]
fn cancelling_a_swapped_out_request_drops_its_host_copy() {
    // Two sequences of 19 positions in a pool of 10 blocks of 2: the newer one is swapped out.
    let mut e = Engine::new(
        ToyModel::default(),
        AllReady,
        config(2, 10, 32, 20, Preemption::Swap),
    )
    .unwrap();
    let a = e.submit(greedy(vec![1; 6], None, 13));
    let b = e.submit(greedy(vec![2; 6], None, 13));
    let mut swapped = false;
    for _ in 0..40 {
        e.step().unwrap();
        if e.kv().is_swapped(openledger_lora::serve::SeqId(b.id.0)) {
            swapped = true;
            break;
        }
    }
    assert!(swapped, "the pool must force a swap");
    b.cancel.cancel();
    e.run_until_idle().unwrap();
    assert!(!e.kv().is_swapped(openledger_lora::serve::SeqId(b.id.0)));
    assert_eq!(e.kv().free_blocks(), 10);
    assert!(matches!(
        b.last(),
        Some(Event::Finished { reason: FinishReason::Cancelled, stats }) if stats.preemptions == 1
    ));
    let toks: Vec<u32> = a
        .filter_map(|ev| match ev {
            Event::Token { token, .. } => Some(token),
            _ => None,
        })
        .collect();
    assert_eq!(toks, reference_greedy(&[1; 6], None, 13));
}
