//! Choosing the next token from logits: greedy, or temperature sampling narrowed by top-k and
//! top-p (nucleus), with an optional repetition penalty; each request draws from its own ChaCha
//! generator seeded by the request, so a seed always yields the same tokens. And when to stop:
//! stop tokens, stop strings (checked on the detokenized text, so a string may span tokens) and
//! a cap on new tokens.
//!
//! ```
//! use openledger_lora::serve::{Sampler, SamplingParams};
//!
//! let mut greedy = Sampler::new(&SamplingParams::default()).unwrap();
//! assert_eq!(greedy.sample(&[0.1, 2.0, -1.0], &[]).unwrap(), 1);
//!
//! let params = SamplingParams { temperature: 0.8, top_k: Some(2), seed: 7, ..Default::default() };
//! let mut a = Sampler::new(&params).unwrap();
//! let mut b = Sampler::new(&params).unwrap();
//! let logits = [0.5, 1.0, 3.0, -2.0];
//! for _ in 0..10 {
//!     let t = a.sample(&logits, &[]).unwrap();
//!     assert!(t == 1 || t == 2); // only the two largest logits can be drawn
//!     assert_eq!(t, b.sample(&logits, &[]).unwrap());
//! }
//! ```

use openledger_core::error::{Classify, ErrorKind};
use std::borrow::Cow;

use super::text::{IncrementalText, earliest_stop};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

/// How one request chooses its tokens and when it stops.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax, first on ties).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`, in `(0, 1]`.
    pub top_p: Option<f32>,
    /// Divide positive (multiply negative) logits of tokens already in the sequence by this
    /// factor, `> 0` (the CTRL / transformers convention).
    pub repetition_penalty: Option<f32>,
    /// Seeds this request's generator.
    pub seed: u64,
    /// At most this many new tokens (at least 1).
    pub max_new_tokens: usize,
    /// Generating one of these ends the request; the stop token is not part of the output.
    pub stop_tokens: Vec<u32>,
    /// The output text reaching one of these ends the request (needs a detokenizer).
    pub stop_strings: Vec<String>,
    /// Report each output token's log-probability with this many most likely alternatives
    /// (at most [`MAX_TOP_LOGPROBS`]; `Some(0)`: the chosen token's only), in
    /// [`Event::Token`](super::Event::Token). They are the model's own (log-softmax of the raw
    /// logits, before the penalty, temperature, top-k and top-p), as vLLM reports them.
    pub logprobs: Option<usize>,
}

/// The most alternatives a token's log-probabilities may list (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One output token's log-probability and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token's log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, most likely first (ties to the lower
    /// id).
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprobs {
    /// The log-softmax of `logits` at `token`, with the `top` most likely tokens. A logit of −∞
    /// has a log-probability of −∞.
    pub fn of(logits: &[f32], token: u32, top: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
        let lse = max + sum.ln() as f32;
        let lp = |x: f32| x - lse;
        let logprob = logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&x| lp(x));
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        let top = top.min(order.len());
        if top > 0 && top < order.len() {
            order.select_nth_unstable_by(top - 1, by_logit);
        }
        order.truncate(top);
        order.sort_unstable_by(by_logit);
        Self {
            logprob,
            top: order
                .into_iter()
                .map(|t| (t, lp(logits[t as usize])))
                .collect(),
        }
    }
}

impl Default for SamplingParams {
    /// Greedy, 16 new tokens, no stop condition.
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: None,
            seed: 0,
            max_new_tokens: 16,
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
            logprobs: None,
        }
    }
}

/// Why a token could not be chosen.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum SampleError {
    /// A parameter is out of its range.
    #[error("invalid sampling parameter {name} = {value}: {reason}")]
    InvalidParams {
        /// The parameter.
        name: &'static str,
        /// Its value, as text.
        value: String,
        /// The range it must be in.
        reason: &'static str,
    },
    /// A logit is NaN or +∞ (−∞ is allowed: it masks the token).
    #[error("logit {index} is {value}, not a finite number")]
    NonFiniteLogit {
        /// Token whose logit is bad.
        index: usize,
        /// The logit.
        value: f32,
    },
    /// No logits, or every logit is −∞.
    #[error("no token can be chosen: {len} logits, all masked or none")]
    NothingToSample {
        /// Number of logits given.
        len: usize,
    },
}

impl Classify for SampleError {
    fn kind(&self) -> ErrorKind {
        match self {
            SampleError::InvalidParams { .. } => ErrorKind::InvalidArgument,
            SampleError::NonFiniteLogit { .. } | SampleError::NothingToSample { .. } => {
                ErrorKind::Generation
            }
        }
    }
}

/// Anything that turns token ids back into text (a tokenizer); closures work too.
pub trait Detokenize {
    /// The text of `tokens`.
    fn detokenize(&self, tokens: &[u32]) -> String;
}

impl<F: Fn(&[u32]) -> String> Detokenize for F {
    fn detokenize(&self, tokens: &[u32]) -> String {
        self(tokens)
    }
}

/// Chooses tokens for one request (its parameters validated, its own generator).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl SamplingParams {
    /// Checks every range; the error names the parameter and its value.
    pub fn validate(&self) -> Result<(), SampleError> {
        let bad = |name, value: String, reason| {
            Err(SampleError::InvalidParams {
                name,
                value,
                reason,
            })
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(
                "temperature",
                self.temperature.to_string(),
                "must be finite and ≥ 0",
            );
        }
        if self.top_k == Some(0) {
            return bad("top_k", "0".into(), "must be ≥ 1");
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad("top_p", p.to_string(), "must be in (0, 1]");
        }
        if let Some(r) = self.repetition_penalty
            && !(r > 0.0 && r.is_finite())
        {
            return bad(
                "repetition_penalty",
                r.to_string(),
                "must be finite and > 0",
            );
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", "0".into(), "must be ≥ 1");
        }
        if let Some(n) = self.logprobs
            && n > MAX_TOP_LOGPROBS
        {
            return bad("logprobs", n.to_string(), "must be at most 20");
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return bad("stop_strings", "\"\"".into(), "must not be empty");
        }
        Ok(())
    }
}

impl Sampler {
    /// A sampler for `params`, its generator seeded with `params.seed`.
    pub fn new(params: &SamplingParams) -> Result<Self, SampleError> {
        params.validate()?;
        Ok(Self {
            params: params.clone(),
            rng: ChaCha8Rng::seed_from_u64(params.seed),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The tokens that may be drawn from `logits` and their probabilities (summing to 1), after
    /// the penalty, temperature, top-k and top-p: most likely first (ties to the lower id) when
    /// top-k or top-p is set, in id order otherwise. Greedy gives one token.
    pub fn distribution(
        &self,
        logits: &[f32],
        history: &[u32],
    ) -> Result<Vec<(u32, f32)>, SampleError> {
        // One pass: reject NaN / +∞ (−∞ masks a token, and a masked token is never chosen).
        if let Some(index) = logits
            .iter()
            .position(|&x| x.is_nan() || x == f32::INFINITY)
        {
            return Err(SampleError::NonFiniteLogit {
                index,
                value: logits[index],
            });
        }
        let l: Cow<'_, [f32]> = match self.params.repetition_penalty {
            None => Cow::Borrowed(logits),
            Some(r) => {
                let mut l = logits.to_vec();
                let mut seen = vec![false; l.len()];
                for &t in history {
                    if let Some(s) = seen.get_mut(t as usize)
                        && !*s
                    {
                        *s = true;
                        let x = &mut l[t as usize];
                        *x = if *x > 0.0 { *x / r } else { *x * r };
                    }
                }
                // A penalty far below 1 can push a logit past f32::MAX; its softmax would be
                // NaN and the draw no draw at all.
                if let Some(index) = l.iter().position(|&x| x == f32::INFINITY) {
                    return Err(SampleError::NonFiniteLogit {
                        index,
                        value: l[index],
                    });
                }
                Cow::Owned(l)
            }
        };
        let nothing = SampleError::NothingToSample { len: logits.len() };
        // The largest logit, the first on ties (NaN is excluded above).
        let (mut best, mut best_x) = (None, f32::NEG_INFINITY);
        for (i, &x) in l.iter().enumerate() {
            if x > best_x {
                best = Some(i as u32);
                best_x = x;
            }
        }
        let best = best.ok_or(nothing)?;
        if self.params.temperature == 0.0 {
            return Ok(vec![(best, 1.0)]);
        }
        let mut order: Vec<u32> = (0..l.len() as u32)
            .filter(|&i| l[i as usize] > f32::NEG_INFINITY)
            .collect();
        // Most likely first, ties to the lower id; only the top k need sorting.
        let by_logit = |a: &u32, b: &u32| l[*b as usize].total_cmp(&l[*a as usize]).then(a.cmp(b));
        if let Some(k) = self.params.top_k
            && k < order.len()
        {
            order.select_nth_unstable_by(k - 1, by_logit);
            order.truncate(k);
        }
        if self.params.top_k.is_some() || self.params.top_p.is_some() {
            order.sort_unstable_by(by_logit);
        }
        let max = l[best as usize];
        let t = self.params.temperature;
        let mut probs: Vec<f32> = order
            .iter()
            .map(|&i| ((l[i as usize] - max) / t).exp())
            .collect();
        let z: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
        if let Some(top_p) = self.params.top_p {
            let mut acc = 0.0f32;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let z: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= z);
        }
        Ok(order.into_iter().zip(probs).collect())
    }

    /// Chooses the next token given the logits and the sequence so far (prompt and output, for
    /// the repetition penalty). Greedy draws nothing from the generator.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32, SampleError> {
        let dist = self.distribution(logits, history)?;
        if dist.len() == 1 {
            return Ok(dist[0].0);
        }
        let u: f32 = self.rng.random();
        Ok(Self::pick(&dist, u))
    }

    /// The token a uniform draw `u` in `[0, 1)` picks from `dist`, a distribution as
    /// [`distribution`](Self::distribution) gives it: the first token whose cumulative
    /// probability passes `u`, in the distribution's order. [`sample`](Self::sample) draws `u` from the request's
    /// generator; a device sampler handed the same `u` picks the same token.
    pub fn pick(dist: &[(u32, f32)], u: f32) -> u32 {
        let mut acc = 0.0f32;
        for &(t, p) in dist {
            acc += p;
            if u < acc {
                return t;
            }
        }
        // Rounding left the cumulative sum just below u: the last candidate.
        dist.last().map_or(0, |d| d.0)
    }
}

/// Why a request finished.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinishReason {
    /// It generated this stop token (not part of the output).
    StopToken(u32),
    /// Its output text reached this stop string (the tokens that complete it were delivered).
    StopString(String),
    /// It generated `max_new_tokens` tokens.
    MaxNewTokens,
    /// Its sequence reached the engine's context limit.
    MaxContext,
    /// It was cancelled.
    Cancelled,
}

impl FinishReason {
    /// The reason's name as the bindings give it: `"stop_token"`, `"stop_string"`,
    /// `"max_new_tokens"`, `"max_context"` or `"cancelled"`.
    pub fn name(&self) -> &'static str {
        match self {
            FinishReason::StopToken(_) => "stop_token",
            FinishReason::StopString(_) => "stop_string",
            FinishReason::MaxNewTokens => "max_new_tokens",
            FinishReason::MaxContext => "max_context",
            FinishReason::Cancelled => "cancelled",
        }
    }

    /// The answer a request's output `text` (its detokenized tokens) shows once it finished
    /// for this reason: after a stop string, the text before the string's first occurrence —
    /// the string, and whatever the token completing it carried after it, are not part of the
    /// answer (as with stop strings in vLLM or transformers); any other reason keeps `text`.
    ///
    /// ```
    /// use openledger_lora::serve::FinishReason;
    ///
    /// let stop = FinishReason::StopString("\n\n".into());
    /// assert_eq!(stop.visible_text("Aspirin.\n\nQ:".into()), "Aspirin.");
    /// assert_eq!(FinishReason::MaxNewTokens.visible_text("Aspi".into()), "Aspi");
    /// ```
    pub fn visible_text(&self, mut text: String) -> String {
        if let FinishReason::StopString(stop) = self
            && let Some(at) = text.find(stop.as_str())
        {
            text.truncate(at);
        }
        text
    }
}

/// Decides, token by token, whether a request's output is finished. It keeps the output's text
/// (for stop strings) up to date a few tokens at a time, so one checker follows one output.
#[derive(Debug, Clone)]
pub struct StopChecker {
    stop_tokens: Vec<u32>,
    stop_strings: Vec<String>,
    /// Bytes of the longest stop string.
    longest_stop: usize,
    max_new_tokens: usize,
    text: IncrementalText,
    /// The stop string found, once one is.
    found: Option<String>,
}

impl StopChecker {
    /// The stop conditions of `params`.
    pub fn new(params: &SamplingParams) -> Self {
        Self {
            stop_tokens: params.stop_tokens.clone(),
            stop_strings: params.stop_strings.clone(),
            longest_stop: params
                .stop_strings
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(0),
            max_new_tokens: params.max_new_tokens,
            text: IncrementalText::new(),
            found: None,
        }
    }

    /// Whether stop strings need a detokenizer.
    pub fn needs_text(&self) -> bool {
        !self.stop_strings.is_empty()
    }

    /// Whether `token` is a stop token (checked before it joins the output).
    pub fn is_stop_token(&self, token: u32) -> bool {
        self.stop_tokens.contains(&token)
    }

    /// After `output` (the whole output so far) grew: the reason to stop, if any. Stop strings
    /// are searched in the output's text, kept by an [`IncrementalText`]: only the text the new
    /// tokens add is searched, with the end of the earlier text a stop string could begin in, so
    /// one spanning several tokens is found once its last piece arrives, and one ending just
    /// before an unfinished character as soon as it is there. When several appear at once, the
    /// reason names the one that begins first (the answer ends before it). Once a stop string
    /// is found, every later call names it again; an output shorter than the last one starts
    /// over.
    pub fn check(
        &mut self,
        output: &[u32],
        detok: Option<&dyn Detokenize>,
    ) -> Option<FinishReason> {
        if let Some(d) = detok
            && !self.stop_strings.is_empty()
        {
            if output.len() < self.text.tokens_seen() {
                self.text = IncrementalText::new();
                self.found = None;
            }
            if self.found.is_none() {
                let before = self.text.text().len();
                let Ok(_) = self.text.extend(output, |t| {
                    Ok::<_, std::convert::Infallible>(d.detokenize(t))
                });
                let text = self.text.text();
                if text.len() > before {
                    let mut from = before.saturating_sub(self.longest_stop.saturating_sub(1));
                    while !text.is_char_boundary(from) {
                        from -= 1;
                    }
                    self.found =
                        earliest_stop(&text[from..], &self.stop_strings).map(|(_, s)| s.to_owned());
                }
            }
            if let Some(s) = &self.found {
                return Some(FinishReason::StopString(s.clone()));
            }
        }
        (output.len() >= self.max_new_tokens).then_some(FinishReason::MaxNewTokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_the_log_softmax_with_the_most_likely_first() {
        let logits = [1.0f32, 3.0, f32::NEG_INFINITY, 3.0, -2.0];
        let z: f64 = logits.iter().map(|&x| f64::from(x).exp()).sum();
        let want = |x: f32| (f64::from(x) - z.ln()) as f32;
        let lp = TokenLogprobs::of(&logits, 4, 3);
        assert!((lp.logprob - want(-2.0)).abs() < 1e-6);
        // Ties go to the lower id; the masked token is −∞ and never among the top.
        let ids: Vec<u32> = lp.top.iter().map(|&(t, _)| t).collect();
        assert_eq!(ids, [1, 3, 0]);
        for &(t, l) in &lp.top {
            assert!((l - want(logits[t as usize])).abs() < 1e-6);
        }
        assert_eq!(TokenLogprobs::of(&logits, 2, 0).logprob, f32::NEG_INFINITY);
        assert!(TokenLogprobs::of(&logits, 2, 0).top.is_empty());
        assert_eq!(TokenLogprobs::of(&logits, 0, 9).top.len(), 5);
        let p = SamplingParams {
            logprobs: Some(21),
            ..Default::default()
        };
        assert!(matches!(
            p.validate(),
            Err(SampleError::InvalidParams {
                name: "logprobs",
                ..
            })
        ));
    }
}
