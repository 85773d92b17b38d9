//! `ServedModel`, the engine on a thread of its own that the Python and Node engines wrap, on
//! the tiny llama (fixtures/peft/tiny-llama, greedy references from transformers + PEFT): tokens
//! equal PEFT's for the base, an adapter attached directly and one drawn from a pool, from
//! several calling threads at once; bad input is refused with the request's error whether the
//! call waits or not; a request cancelled while the engine is held inside a step ends cancelled
//! with no token; a panic on the engine thread reaches every caller and open stream as
//! `Panicked`; closing ends running streams and refuses later calls, and so does dropping the
//! handle; limits that cannot work are refused at load.

mod tiny_llama;

use std::sync::Arc;
use std::sync::mpsc;

use openledger_lora::adapter::build::AdapterBuilder;
use openledger_lora::adapter::config::ConfigSpec;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{ModelError, ServeOptions, ServedError, ServedModel};
use openledger_lora::pool::{AdapterPool, Source};
use openledger_lora::serve::{
    EngineError, Event, FinishReason, Request, RequestError, RequestHandle,
};
use tiny_llama::{fixture, id, peft_greedy, request, sequence};

const NEW_TOKENS: usize = 8;

fn options() -> ServeOptions {
    ServeOptions {
        max_context: 64,
        block_size: 4,
        ..ServeOptions::default()
    }
}

fn collect(h: RequestHandle) -> (Vec<u32>, Option<Event>) {
    let mut toks = Vec::new();
    for e in h {
        match e {
            Event::Token { token, .. } => toks.push(token),
            t => return (toks, Some(t)),
        }
    }
    (toks, None)
}

fn qv_r4() -> Arc<LoraAdapter> {
    let dir = fixture().join("adapters/qv-r4");
    Arc::new(LoraAdapter::from_dir(&dir, &LoadOptions::default()).unwrap())
}

#[test]
fn tokens_equal_peft_for_the_base_an_attached_and_a_pooled_adapter_from_several_threads() {
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    pool.register(
        id("all-r8-rslora"),
        Source::Dir(fixture().join("adapters/all-r8-rslora")),
    )
    .unwrap();
    let mut steps = 0;
    let served = ServedModel::load(&fixture(), Some(pool.clone()), &options(), &mut |_| {
        steps += 1
    })
    .unwrap();
    assert!(steps > 0, "no load progress reported");
    assert_eq!(served.vocab_size(), 320);
    served.attach(id("qv-r4"), qv_r4()).unwrap();
    assert_eq!(served.adapter_names().unwrap(), ["qv-r4"]);

    let cases = [
        (0, None, "base.0"),
        (1, Some("qv-r4"), "qv-r4.1"),
        (2, Some("all-r8-rslora"), "all-r8-rslora.2"),
        (0, Some("all-r8-rslora"), "all-r8-rslora.0"),
    ];
    std::thread::scope(|s| {
        let joins: Vec<_> = cases
            .iter()
            .map(|&(seq, adapter, key)| {
                let served = &served;
                s.spawn(move || {
                    let h = served
                        .submit(request(sequence(seq), adapter, NEW_TOKENS))
                        .unwrap();
                    (key, collect(h))
                })
            })
            .collect();
        for j in joins {
            let (key, (toks, end)) = j.join().unwrap();
            assert_eq!(toks, peft_greedy(key), "{key}");
            assert!(
                matches!(
                    end,
                    Some(Event::Finished {
                        reason: FinishReason::MaxNewTokens,
                        ..
                    })
                ),
                "{key}: {end:?}"
            );
        }
    });
    let mut names = served.adapter_names().unwrap();
    names.sort();
    assert_eq!(names, ["all-r8-rslora", "qv-r4"]);
    // The pooled adapter's requests have ended: the engine holds no pin on it.
    assert_eq!(pool.stats().pinned_count, 0);
}

#[test]
fn bad_input_is_refused_whether_the_call_waits_or_not() {
    let served = ServedModel::load(&fixture(), None, &options(), &mut |_| {}).unwrap();
    let refused = |req: Request| match served.submit(req) {
        Err(ServedError::Request(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(matches!(
        refused(request(sequence(0), Some("missing"), 4)),
        RequestError::UnknownAdapter { adapter } if adapter.as_str() == "missing"
    ));
    assert_eq!(refused(request(vec![], None, 4)), RequestError::EmptyPrompt);
    assert!(matches!(
        refused(request(vec![1, 320], None, 4)),
        RequestError::TokenOutOfVocab { token: 320, .. }
    ));

    // Without waiting, the same refusals arrive as the request's only event.
    for (req, want) in [
        (
            request(sequence(0), Some("missing"), 4),
            RequestError::UnknownAdapter {
                adapter: id("missing"),
            },
        ),
        (request(vec![], None, 4), RequestError::EmptyPrompt),
    ] {
        let (tx, rx) = mpsc::channel();
        served
            .submit_with_callback(req, move |e| tx.send(e.clone()).unwrap())
            .unwrap();
        let events: Vec<Event> = rx.iter().collect();
        assert!(
            matches!(events.as_slice(), [Event::Failed { error, .. }] if *error == want),
            "{events:?}"
        );
    }

    // An adapter made for another base is refused by attach, and nothing is attached.
    let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["q_proj"]));
    b.random_lora("model.layers.0.self_attn.q_proj", 96, 96, 4, 3);
    let wrong = LoraAdapter::from_bytes(
        b.config_json().as_bytes(),
        &b.safetensors_bytes().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let before = served.adapter_names().unwrap();
    match served.attach(id("wrong"), Arc::new(wrong)) {
        Err(ServedError::Model(e)) if matches!(*e, ModelError::IncompatibleAdapter { .. }) => {}
        other => panic!("expected a base mismatch, got {other:?}"),
    }
    assert_eq!(served.adapter_names().unwrap(), before);

    // Text needs a tokenizer, which this folder lacks: the error names the folder.
    let e = served
        .require_tokenizer("stop strings need it")
        .unwrap_err();
    assert!(e.to_string().contains("tiny-llama"), "{e}");
    assert!(served.tokenizer().is_none());
}

/// A request whose callback forwards its events to the returned receiver and, at its first
/// event, holds the engine thread until `gate` sends (or is dropped).
fn gated(served: &ServedModel, max_new_tokens: usize) -> (mpsc::Receiver<Event>, mpsc::Sender<()>) {
    let (tx, rx) = mpsc::channel();
    let (open, gate) = mpsc::channel::<()>();
    let mut first = true;
    served
        .submit_with_callback(request(sequence(1), None, max_new_tokens), move |e| {
            if std::mem::take(&mut first) {
                let _ = gate.recv();
            }
            let _ = tx.send(e.clone());
        })
        .unwrap();
    (rx, open)
}

#[test]
fn a_request_cancelled_before_the_engine_took_it_ends_cancelled() {
    let served = ServedModel::load(&fixture(), None, &options(), &mut |_| {}).unwrap();
    // The engine thread is held inside a step, so it cannot take the next request yet.
    let (held, open) = gated(&served, 4);
    let (tx, rx) = mpsc::channel();
    let pending = served
        .submit_with_callback(request(sequence(0), None, 40), move |e| {
            tx.send(e.clone()).unwrap()
        })
        .unwrap();
    pending.cancel();
    open.send(()).unwrap();
    let events: Vec<Event> = rx.iter().collect();
    assert!(
        matches!(
            events.as_slice(),
            [Event::Finished {
                reason: FinishReason::Cancelled,
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(
        held.iter().count(),
        5,
        "the held request's 4 tokens and its end"
    );
}

#[test]
fn a_panic_on_the_engine_thread_is_reported_to_every_caller_and_stream() {
    let served = ServedModel::load(&fixture(), None, &options(), &mut |_| {}).unwrap();
    let running = served.submit(request(sequence(0), None, 40)).unwrap();
    let watch = served.fault_watch();
    served
        .submit_with_callback(request(sequence(1), None, 40), |e| {
            if matches!(e, Event::Token { index: 2, .. }) {
                panic!("callback failed on purpose");
            }
        })
        .unwrap();
    // The running request's channel closes without a last event; the stream learns why.
    let (_, end) = collect(running);
    assert!(end.is_none(), "{end:?}");
    match watch.stopped() {
        ServedError::Panicked { message } => assert!(message.contains("on purpose"), "{message}"),
        other => panic!("expected the panic, got {other:?}"),
    }
    assert!(served.is_closed());
    assert!(served.fault().is_some_and(|m| m.contains("on purpose")));
    assert!(matches!(
        served.submit(request(sequence(0), None, 4)),
        Err(ServedError::Panicked { .. })
    ));
    assert!(matches!(
        served.ensure_open(),
        Err(ServedError::Panicked { .. })
    ));
    assert!(matches!(
        served.adapter_names(),
        Err(ServedError::Panicked { .. })
    ));
    assert!(matches!(served.stats(), Err(ServedError::Panicked { .. })));
    served.close().unwrap().join().unwrap();
}

/// Stats are taken between steps: an engine held inside a step makes a bounded call give up
/// with `Busy` (naming its wait) and leaves the engine as it was; once it goes on, the counts
/// say what ran.
#[test]
fn stats_wait_a_bounded_time_for_a_held_engine_and_count_what_ran() {
    use openledger_core::error::{Classify, ErrorKind};
    let served = ServedModel::load(&fixture(), None, &options(), &mut |_| {}).unwrap();
    let idle = served.stats().unwrap();
    assert_eq!((idle.engine.steps, idle.engine.running), (0, 0));
    assert!(
        idle.model.is_empty(),
        "a model on the CPU has no figures of its own"
    );
    let (events, open) = gated(&served, 4);
    let busy = (0..250)
        .find_map(
            |_| match served.stats_within(std::time::Duration::from_millis(20)) {
                Err(e @ ServedError::Busy { .. }) => Some(e),
                Ok(_) => None,
                Err(e) => panic!("{e}"),
            },
        )
        .expect("the held engine keeps answering");
    assert!(busy.to_string().contains("20 ms"), "{busy}");
    assert_eq!(busy.kind(), ErrorKind::Busy);
    open.send(()).unwrap();
    let tokens = events
        .iter()
        .filter(|e| matches!(e, Event::Token { .. }))
        .count();
    assert_eq!(tokens, 4);
    let s = served.stats().unwrap();
    assert_eq!((s.engine.waiting, s.engine.running), (0, 0));
    assert_eq!(s.engine.prefill_tokens, sequence(1).len() as u64);
    assert_eq!(s.engine.decode_tokens, 3);
    assert_eq!(s.engine.kv_blocks_free, s.engine.kv_blocks);
    served.close().unwrap().join().unwrap();
}

#[test]
fn dropping_the_handle_stops_the_engine() {
    let served = ServedModel::load(&fixture(), None, &options(), &mut |_| {}).unwrap();
    let (events, open) = gated(&served, 40);
    drop(served);
    open.send(()).unwrap();
    // The engine finishes its step, sees the channel closed and stops: the request's events
    // end without a last event, long before its 40 tokens.
    let events: Vec<Event> = events.iter().collect();
    assert!(
        events.len() < 40 && events.iter().all(|e| matches!(e, Event::Token { .. })),
        "{events:?}"
    );
}

#[test]
fn closing_ends_running_streams_and_refuses_later_calls() {
    let served = ServedModel::load(&fixture(), None, &options(), &mut |_| {}).unwrap();
    let long = served.submit(request(sequence(0), None, 56)).unwrap();
    let thread = served.close().expect("the engine thread, the first time");
    thread.join().unwrap();
    assert!(served.close().is_none());
    assert!(served.is_closed());
    assert!(served.fault().is_none());
    // The stream ends (its channel closes) however far the request got.
    let (toks, end) = collect(long);
    assert!(toks.len() <= 56);
    assert!(
        end.is_none() || matches!(end, Some(Event::Finished { .. })),
        "{end:?}"
    );
    assert!(matches!(
        served.submit(request(sequence(0), None, 4)),
        Err(ServedError::Closed)
    ));
    assert!(matches!(
        served.submit_with_callback(request(sequence(0), None, 4), |_| {}),
        Err(ServedError::Closed)
    ));
    assert!(matches!(served.adapter_names(), Err(ServedError::Closed)));
    assert!(matches!(
        served.attach(id("qv-r4"), qv_r4()),
        Err(ServedError::Closed)
    ));
}

#[test]
fn limits_that_cannot_work_are_refused_at_load() {
    for (name, o) in [
        (
            "block size 0",
            ServeOptions {
                block_size: 0,
                ..options()
            },
        ),
        (
            "no running sequence",
            ServeOptions {
                max_running: 0,
                ..options()
            },
        ),
        (
            "one block for 64 positions",
            ServeOptions {
                num_blocks: Some(1),
                ..options()
            },
        ),
    ] {
        match ServedModel::load(&fixture(), None, &o, &mut |_| {}) {
            Err(ServedError::Engine(EngineError::Config { .. })) => {}
            other => panic!("{name}: expected a configuration error, got {other:?}"),
        }
    }
    match ServedModel::load(&fixture().join("missing"), None, &options(), &mut |_| {}) {
        Err(ServedError::Model(e)) => assert!(e.to_string().contains("missing"), "{e}"),
        other => panic!("expected a model error, got {other:?}"),
    }
}

#[test]
fn served_model_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ServedModel>();
}
