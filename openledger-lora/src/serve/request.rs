//! What a request is, what it can fail with, and what it streams back: its tokens as they are
//! produced, then one terminal event carrying its statistics; through a channel (the
//! [`RequestHandle`] iterates over it) or a callback; and a [`CancelHandle`] to stop it.
//!
//! ```
//! use std::time::Duration;
//! use openledger_lora::serve::RequestStats;
//!
//! let ms = Duration::from_millis;
//! let stats = RequestStats {
//!     time_to_first_token: Some(ms(40)),
//!     inter_token_latencies: vec![ms(20), ms(22), ms(90), ms(21)],
//!     tokens_generated: 5,
//!     preemptions: 0,
//! };
//! assert_eq!(stats.inter_token_p50(), Some(ms(21)));
//! assert_eq!(stats.inter_token_p99(), Some(ms(90)));
//! ```

use openledger_core::error::{Classify, ErrorKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::sampling::{FinishReason, SampleError, SamplingParams, TokenLogprobs};
use crate::pool::AdapterId;

/// Identifies a request within one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A generation request: a prompt, the adapter to run it with (or the base model) and how to
/// sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// The adapter, or `None` for the base model.
    pub adapter: Option<AdapterId>,
    /// Sampling and stop conditions.
    pub sampling: SamplingParams,
}

/// Why one request failed; other requests are not affected.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The prompt has no token.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The prompt leaves no room for output within the context limit.
    #[error(
        "prompt of {len} tokens does not fit the context of {max_context} (one output token needs room)"
    )]
    PromptTooLong {
        /// Prompt tokens.
        len: usize,
        /// The engine's context limit.
        max_context: usize,
    },
    /// A prompt token is not in the vocabulary.
    #[error("prompt token {token} at index {index} is outside the vocabulary of {vocab_size}")]
    TokenOutOfVocab {
        /// Its index in the prompt.
        index: usize,
        /// The token.
        token: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// The adapter is not known to the adapter store.
    #[error("unknown adapter {adapter:?}")]
    UnknownAdapter {
        /// The adapter named.
        adapter: AdapterId,
    },
    /// The adapter could not be loaded.
    #[error("adapter {adapter:?} failed to load: {reason}")]
    AdapterFailed {
        /// The adapter named.
        adapter: AdapterId,
        /// The load error, as text.
        reason: String,
    },
    /// The model refused the adapter when it was attached (made for another base model, a
    /// layer the model does not run), or the pool could not provide it to the model.
    #[error("adapter {adapter:?} cannot run on this model: {reason}")]
    AdapterRejected {
        /// The adapter named.
        adapter: AdapterId,
        /// The model's error, as text.
        reason: String,
    },
    /// The sampling parameters are invalid, or the model's logits for this request could not be
    /// sampled (NaN, all masked).
    #[error("sampling failed: {0}")]
    Sampling(#[from] SampleError),
    /// Stop strings were given but the engine has no detokenizer.
    #[error("stop strings need a detokenizer and the engine has none")]
    NeedsDetokenizer,
    /// The model's forward pass failed for the batch this request was in.
    #[error("the model failed: {reason}")]
    Model {
        /// The model's error, as text.
        reason: String,
    },
}

impl Classify for RequestError {
    fn kind(&self) -> ErrorKind {
        match self {
            RequestError::EmptyPrompt
            | RequestError::PromptTooLong { .. }
            | RequestError::TokenOutOfVocab { .. }
            | RequestError::NeedsDetokenizer => ErrorKind::InvalidArgument,
            RequestError::Sampling(e) => e.kind(),
            RequestError::UnknownAdapter { .. } => ErrorKind::UnknownId,
            RequestError::AdapterFailed { .. } => ErrorKind::AdapterFormat,
            RequestError::AdapterRejected { .. } => ErrorKind::BaseMismatch,
            RequestError::Model { .. } => ErrorKind::Generation,
        }
    }
}

/// Statistics of one request, final in its terminal event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestStats {
    /// From submission to the first output token.
    pub time_to_first_token: Option<Duration>,
    /// Gaps between consecutive output tokens.
    pub inter_token_latencies: Vec<Duration>,
    /// Output tokens produced (stop tokens excluded).
    pub tokens_generated: usize,
    /// Times the request was preempted (by recompute or swap).
    pub preemptions: usize,
}

impl RequestStats {
    /// The `q`-quantile (0 ≤ q ≤ 1, nearest rank) of the inter-token latencies.
    pub fn inter_token_quantile(&self, q: f64) -> Option<Duration> {
        if self.inter_token_latencies.is_empty() {
            return None;
        }
        let mut v = self.inter_token_latencies.clone();
        v.sort_unstable();
        let rank = (q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.saturating_sub(1).min(v.len() - 1)])
    }

    /// Median inter-token latency.
    pub fn inter_token_p50(&self) -> Option<Duration> {
        self.inter_token_quantile(0.5)
    }

    /// 99th percentile inter-token latency.
    pub fn inter_token_p99(&self) -> Option<Duration> {
        self.inter_token_quantile(0.99)
    }
}

/// What a request streams back.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One output token, as soon as it is sampled; `index` counts from 0.
    Token {
        /// The token.
        token: u32,
        /// Its index in the output.
        index: usize,
        /// Its log-probability and the most likely alternatives, when the request asked for
        /// them ([`SamplingParams::logprobs`](super::SamplingParams::logprobs)).
        logprobs: Option<TokenLogprobs>,
    },
    /// The request finished normally (or was cancelled); the last event.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Its statistics.
        stats: RequestStats,
    },
    /// The request failed; the last event.
    Failed {
        /// Why.
        error: RequestError,
        /// Its statistics up to the failure.
        stats: RequestStats,
    },
}

impl Event {
    /// Whether no event follows this one.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Event::Token { .. })
    }
}

/// Stops a request from any thread; the engine frees its blocks at its next step and ends it
/// with [`FinishReason::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// Asks for the request to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The receiving end of a request submitted with a channel: iterate it for the request's events
/// (the iteration ends after the terminal event).
#[derive(Debug)]
pub struct RequestHandle {
    /// The request's id.
    pub id: RequestId,
    /// Cancels the request.
    pub cancel: CancelHandle,
    pub(crate) events: Receiver<Event>,
}

impl RequestHandle {
    /// The next event if one is ready now.
    pub fn try_next(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Every event delivered so far, without waiting.
    pub fn drain(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }

    /// The next event, waiting at most `timeout`; [`RecvTimeoutError::Disconnected`] once the
    /// request has ended and its events are read (or the engine is gone).
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }
}

impl Iterator for RequestHandle {
    type Item = Event;

    /// Blocks until the next event; `None` once the request has ended and its events are read.
    fn next(&mut self) -> Option<Event> {
        self.events.recv().ok()
    }
}

/// Where a request's events go.
pub(crate) enum Sink {
    Channel(Sender<Event>),
    Callback(Box<dyn FnMut(&Event) + Send>),
}

impl Sink {
    /// Delivers `e`; false when the receiver is gone (the request is then cancelled).
    pub(crate) fn send(&mut self, e: Event) -> bool {
        match self {
            Sink::Channel(tx) => tx.send(e).is_ok(),
            Sink::Callback(f) => {
                f(&e);
                true
            }
        }
    }
}

/// Builds a request's statistics as it runs.
#[derive(Debug, Clone)]
pub(crate) struct StatsClock {
    submitted: Instant,
    last_token: Option<Instant>,
    pub(crate) stats: RequestStats,
}

impl StatsClock {
    pub(crate) fn new() -> Self {
        Self {
            submitted: Instant::now(),
            last_token: None,
            stats: RequestStats::default(),
        }
    }

    pub(crate) fn token(&mut self) {
        let now = Instant::now();
        match self.last_token {
            None => self.stats.time_to_first_token = Some(now - self.submitted),
            Some(t) => self.stats.inter_token_latencies.push(now - t),
        }
        self.last_token = Some(now);
        self.stats.tokens_generated += 1;
    }
}
