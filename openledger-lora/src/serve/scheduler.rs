//! Continuous batching: requests join a waiting queue at any time; every [`Engine::step`] builds
//! one batch under a token budget — one decode token for each running sequence, prompt chunks
//! for the rest (chunked prefill) — allocates its KV blocks, runs the [`StepModel`], samples, and
//! streams tokens; finished sequences leave at once and free their blocks.
//!
//! When blocks run out, the newest running sequence (by arrival) is preempted: by recompute (its
//! blocks are freed and it goes back to the queue ahead of every later request, its output so
//! far appended to its prompt, so no token is lost and its sampler's state carries on) or by
//! swapping its blocks out to host memory (new requests wait while a swapped-out one cannot come
//! back, so later arrivals cannot keep it out). A request whose adapter is still loading waits without holding up the others
//! ([`AdapterReadiness`]); only the first `max_running` waiting requests start loads, so a long
//! queue does not load (and evict) far ahead of what can run. When a request is admitted its
//! adapter is *held* ([`AdapterReadiness::acquire`]: the pool pins it) and prepared by the model
//! ([`StepModel::prepare_adapter`]); it is released when the last request holding it ends. Bad
//! input — an empty or too long prompt, a token outside the vocabulary, an unknown adapter, one
//! the model refuses — fails only its own request.
//!
//! The engine's context limit must fit in the block pool, so the oldest running sequence can
//! always proceed once the others are preempted: the engine never deadlocks on blocks.

use super::engine::{
    Engine, EngineError, Logits, Preemption, StepBatch, StepModel, StepReport, StepSeq,
};
use super::kv::{KvError, SeqId};
use super::readiness::{AdapterReadiness, Readiness};
use super::request::{CancelHandle, Event, Request, RequestError, RequestId, Sink, StatsClock};
use super::sampling::{Detokenize, FinishReason, Sampler, StopChecker, TokenLogprobs};
use crate::pool::AdapterId;

/// What `adapter` standing at `r` means for a request naming it: ready (`Ok(true)`), loading
/// (`Ok(false)`), or the request's error.
fn ready_or_error(adapter: &AdapterId, r: Readiness) -> Result<bool, RequestError> {
    match r {
        Readiness::Ready => Ok(true),
        Readiness::Loading => Ok(false),
        Readiness::Unknown => Err(RequestError::UnknownAdapter {
            adapter: adapter.clone(),
        }),
        Readiness::Failed(reason) => Err(RequestError::AdapterFailed {
            adapter: adapter.clone(),
            reason,
        }),
    }
}

pub(super) enum Terminal {
    Finished(FinishReason),
    Failed(RequestError),
}

pub(super) struct Active {
    pub(super) id: RequestId,
    seq: SeqId,
    pub(super) adapter: Option<AdapterId>,
    sampler: Sampler,
    stop: StopChecker,
    /// Prompt then output.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Positions held in the KV cache (or swapped out).
    computed: usize,
    sink: Sink,
    pub(super) cancel: CancelHandle,
    clock: StatsClock,
    terminal: Option<Terminal>,
    /// Its adapter was reported ready (always true without an adapter).
    adapter_ready: bool,
    /// It counts among the holders of its adapter (from admission to its end).
    holds_adapter: bool,
}

impl Active {
    pub(super) fn end(mut self, t: Terminal) {
        let stats = self.clock.stats.clone();
        let e = match t {
            Terminal::Finished(reason) => Event::Finished { reason, stats },
            Terminal::Failed(error) => Event::Failed { error, stats },
        };
        self.sink.send(e);
    }
}

impl<M: StepModel, R: AdapterReadiness> Engine<M, R> {
    fn validate(&self, req: &Request) -> Result<(Sampler, StopChecker), RequestError> {
        if req.prompt.is_empty() {
            return Err(RequestError::EmptyPrompt);
        }
        if req.prompt.len() >= self.config.max_context {
            return Err(RequestError::PromptTooLong {
                len: req.prompt.len(),
                max_context: self.config.max_context,
            });
        }
        let vocab_size = self.model.vocab_size();
        if let Some((index, &token)) = req
            .prompt
            .iter()
            .enumerate()
            .find(|(_, t)| **t as usize >= vocab_size)
        {
            return Err(RequestError::TokenOutOfVocab {
                index,
                token,
                vocab_size,
            });
        }
        let sampler = Sampler::new(&req.sampling)?;
        let stop = StopChecker::new(&req.sampling);
        if stop.needs_text() && self.detok.is_none() {
            return Err(RequestError::NeedsDetokenizer);
        }
        Ok((sampler, stop))
    }

    pub(super) fn enqueue(
        &mut self,
        req: Request,
        mut sink: Sink,
        cancel: CancelHandle,
    ) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let adapter_ready = req.adapter.is_none();
        match self.validate(&req) {
            Err(error) => {
                sink.send(Event::Failed {
                    error,
                    stats: Default::default(),
                });
            }
            Ok((sampler, stop)) => self.waiting.push_back(Active {
                id,
                seq: SeqId(id.0),
                adapter: req.adapter,
                sampler,
                stop,
                prompt_len: req.prompt.len(),
                tokens: req.prompt,
                computed: 0,
                sink,
                cancel,
                clock: StatsClock::new(),
                terminal: None,
                adapter_ready,
                holds_adapter: false,
            }),
        }
        id
    }

    pub(super) fn release(&mut self, a: &mut Active) {
        // Waiting requests hold no blocks; the others do.
        if self.kv.contains(a.seq) || self.kv.is_swapped(a.seq) {
            let _ = self.kv.free(a.seq);
        }
        if std::mem::take(&mut a.holds_adapter)
            && let Some(id) = &a.adapter
        {
            self.unhold(id);
        }
    }

    /// Adds a holder to `id`, acquiring and preparing it for the first one: `Ok(false)` when it
    /// is not resident (any more), or the model is still copying it: the request waits for it
    /// again. An ensemble acquires each of
    /// its members (all or none).
    fn hold(&mut self, id: &AdapterId) -> Result<bool, RequestError> {
        if let Some(n) = self.held.get_mut(id) {
            *n += 1;
            return Ok(true);
        }
        let adapters = id.adapters();
        for (j, member) in adapters.iter().enumerate() {
            let ready = ready_or_error(member, self.readiness.acquire(member));
            if ready != Ok(true) {
                for held in &adapters[..j] {
                    self.readiness.release(held);
                }
                return ready;
            }
        }
        let prepared = self.model.prepare_adapter(id);
        if prepared != Ok(true) {
            for member in &adapters {
                self.readiness.release(member);
            }
            return prepared;
        }
        self.held.insert(id.clone(), 1);
        Ok(true)
    }

    fn unhold(&mut self, id: &AdapterId) {
        if let Some(n) = self.held.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(id);
                for member in id.adapters() {
                    self.readiness.release(&member);
                }
            }
        }
    }

    /// Whether `id` is ready (`Ok(false)`: loading); an ensemble is ready once every member is,
    /// and fails naming the first member that is unknown or failed to load.
    fn readiness_of(&mut self, id: &AdapterId) -> Result<bool, RequestError> {
        let mut ready = true;
        for member in id.adapters() {
            let r = self.readiness.readiness(&member);
            ready &= ready_or_error(&member, r)?;
        }
        Ok(ready)
    }

    pub(super) fn reap_cancelled(&mut self) -> usize {
        let mut ended = Vec::new();
        for q in [&mut self.waiting, &mut self.swapped] {
            let (gone, keep): (Vec<_>, Vec<_>) = q.drain(..).partition(|a| a.cancel.is_cancelled());
            q.extend(keep);
            ended.extend(gone);
        }
        let (gone, keep): (Vec<_>, Vec<_>) = self
            .running
            .drain(..)
            .partition(|a| a.cancel.is_cancelled());
        self.running = keep;
        ended.extend(gone);
        let n = ended.len();
        for mut a in ended {
            self.release(&mut a);
            a.end(Terminal::Finished(FinishReason::Cancelled));
        }
        n
    }

    /// Preempts the newest running request (`running` is in arrival order). It goes back to
    /// its queue in arrival order too, so it runs again before any request that came after it.
    fn preempt_last(&mut self) -> Result<(), EngineError> {
        let Some(mut a) = self.running.pop() else {
            return Ok(());
        };
        a.clock.stats.preemptions += 1;
        let queue = match self.config.preemption {
            Preemption::Recompute => {
                self.kv.free(a.seq)?;
                a.computed = 0;
                &mut self.waiting
            }
            Preemption::Swap => {
                self.kv.swap_out(a.seq)?;
                &mut self.swapped
            }
        };
        let at = queue.partition_point(|q| q.id < a.id);
        queue.insert(at, a);
        Ok(())
    }

    /// Puts `a` among the running requests in arrival order (so the last is always the newest,
    /// the one preemption takes) and plans `n` of its tokens; planned requests after it move
    /// up one place.
    fn run_in_order(&mut self, a: Active, n: usize, plan: &mut Vec<(usize, usize)>) {
        let at = self.running.partition_point(|r| r.id < a.id);
        for p in plan.iter_mut().filter(|p| p.0 >= at) {
            p.0 += 1;
        }
        plan.push((at, n));
        self.running.insert(at, a);
    }

    /// Runs one step: schedules, runs the model on the batch, samples and streams. An empty
    /// report (no sequence) means there was nothing runnable.
    pub fn step(&mut self) -> Result<StepReport, EngineError> {
        let mut report = StepReport {
            ended: self.reap_cancelled(),
            ..Default::default()
        };
        report.ended += self.poll_adapters();
        let mut budget = self.config.max_tokens_per_step;
        // (index in running, tokens to run)
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let a = &self.running[i];
            let n = (a.tokens.len() - a.computed).min(budget);
            match self.kv.append_slots(a.seq, n) {
                Ok(_) => {
                    plan.push((i, n));
                    budget -= n;
                    i += 1;
                }
                Err(KvError::OutOfBlocks { .. }) => {
                    // The newest goes (possibly this very sequence); older ones keep their place.
                    self.preempt_last()?;
                    report.preempted += 1;
                    self.totals.preemptions += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if report.preempted == 0 {
            self.swap_in(&mut plan, &mut budget)?;
            // New requests wait while a swapped-out one cannot come back: their prompts would
            // take the blocks it needs, again and again.
            if self.swapped.is_empty() {
                self.admit(&mut plan, &mut budget, &mut report.ended)?;
            }
        }
        if plan.is_empty() {
            return Ok(report);
        }
        let batch = self.build_batch(&plan)?;
        report.batch_seqs = batch.seqs.len();
        for (s, &(idx, _)) in batch.seqs.iter().zip(&plan) {
            if s.tokens.len() == 1 && s.start_pos >= self.running[idx].prompt_len {
                report.decode_tokens += 1;
            } else {
                report.prefill_tokens += s.tokens.len();
            }
        }
        self.totals.steps += 1;
        let outcome = self.model.forward(&batch, &mut self.kv).and_then(|l| {
            let rows = batch.seqs.iter().filter(|s| s.needs_logits).count();
            let want = rows * self.model.vocab_size();
            if l.data.len() == want {
                Ok(l)
            } else {
                Err(format!("logits hold {} floats, expected {want}", l.data.len()).into())
            }
        });
        let logits = match outcome {
            Ok(l) => l,
            Err(e) => {
                for &(idx, _) in &plan {
                    self.running[idx].terminal = Some(Terminal::Failed(RequestError::Model {
                        reason: e.to_string(),
                    }));
                }
                self.retire();
                return Err(EngineError::Model(e));
            }
        };
        self.totals.prefill_tokens += report.prefill_tokens as u64;
        self.totals.decode_tokens += report.decode_tokens as u64;
        self.absorb(&plan, &logits);
        report.ended += self.retire();
        Ok(report)
    }

    /// Whether a request for `adapter` may join the running requests within the model's
    /// [`max_adapters`](StepModel::max_adapters).
    fn adapter_fits(&self, adapter: Option<&AdapterId>) -> bool {
        let (Some(id), Some(max)) = (adapter, self.model.max_adapters()) else {
            return true;
        };
        let running: std::collections::HashSet<&AdapterId> = self
            .running
            .iter()
            .filter_map(|a| a.adapter.as_ref())
            .collect();
        running.contains(id) || running.len() < max
    }

    fn swap_in(
        &mut self,
        plan: &mut Vec<(usize, usize)>,
        budget: &mut usize,
    ) -> Result<(), EngineError> {
        while let Some(a) = self.swapped.front() {
            if self.running.len() >= self.config.max_running
                || *budget == 0
                || !self.adapter_fits(a.adapter.as_ref())
            {
                break;
            }
            let n = (a.tokens.len() - a.computed).min(*budget);
            let after = a.computed + n;
            let needed = self.config.kv_layout.blocks_for(after);
            if needed > self.kv.free_blocks() {
                break;
            }
            let Some(a) = self.swapped.pop_front() else {
                break;
            };
            self.kv.swap_in(a.seq)?;
            self.kv.append_slots(a.seq, n)?;
            *budget -= n;
            self.run_in_order(a, n, plan);
        }
        Ok(())
    }

    /// Asks about the adapter of every waiting request not yet known to be ready, so loads start
    /// (and overlap with decoding) even while the batch is full; unknown or failed adapters fail
    /// their requests. Returns how many failed.
    fn poll_adapters(&mut self) -> usize {
        let mut failed = 0;
        let mut j = 0;
        // Only requests that could run soon start loads.
        let window = self.config.max_running;
        while j < self.waiting.len().min(window) {
            let a = &self.waiting[j];
            let failure = match (a.adapter.clone(), a.adapter_ready) {
                (None, _) | (_, true) => None,
                (Some(id), false) => match self.readiness_of(&id) {
                    Ok(ready) => {
                        self.waiting[j].adapter_ready = ready;
                        None
                    }
                    Err(e) => Some(e),
                },
            };
            match failure.and_then(|e| Some((e, self.waiting.remove(j)?))) {
                Some((e, a)) => {
                    a.end(Terminal::Failed(e));
                    failed += 1;
                }
                None => j += 1,
            }
        }
        failed
    }

    fn admit(
        &mut self,
        plan: &mut Vec<(usize, usize)>,
        budget: &mut usize,
        failed: &mut usize,
    ) -> Result<(), EngineError> {
        let mut j = 0;
        while j < self.waiting.len() {
            if self.running.len() >= self.config.max_running || *budget == 0 {
                break;
            }
            let a = &self.waiting[j];
            if !a.adapter_ready || !self.adapter_fits(a.adapter.as_ref()) {
                j += 1;
                continue;
            }
            if let (Some(id), false) = (&a.adapter, a.holds_adapter) {
                let id = id.clone();
                match self.hold(&id) {
                    Ok(true) => self.waiting[j].holds_adapter = true,
                    Ok(false) => {
                        // Evicted since it was reported ready (its load has started again),
                        // or its copy to the device is still in flight: asked again next step.
                        self.waiting[j].adapter_ready = false;
                        j += 1;
                        continue;
                    }
                    Err(e) => {
                        if let Some(a) = self.waiting.remove(j) {
                            a.end(Terminal::Failed(e));
                        }
                        *failed += 1;
                        continue;
                    }
                }
            }
            let a = &self.waiting[j];
            let n = a.tokens.len().min(*budget);
            let seq = a.seq;
            self.kv.add_sequence(seq)?;
            match self.kv.append_slots(seq, n) {
                Ok(_) => {}
                Err(KvError::OutOfBlocks { .. }) => {
                    self.kv.free(seq)?;
                    // First come, first served: no later request jumps the queue for blocks.
                    break;
                }
                Err(e) => return Err(e.into()),
            }
            let a = self
                .waiting
                .remove(j)
                .ok_or(KvError::UnknownSequence { seq })?;
            *budget -= n;
            self.run_in_order(a, n, plan);
        }
        Ok(())
    }

    fn build_batch(&self, plan: &[(usize, usize)]) -> Result<StepBatch, EngineError> {
        let mut seqs = Vec::with_capacity(plan.len());
        for &(idx, n) in plan {
            let a = &self.running[idx];
            seqs.push(StepSeq {
                request: a.id,
                seq: a.seq,
                tokens: a.tokens[a.computed..a.computed + n].to_vec(),
                start_pos: a.computed,
                adapter: a.adapter.clone(),
                block_table: self.kv.block_table(a.seq)?.to_vec(),
                needs_logits: a.computed + n == a.tokens.len(),
            });
        }
        Ok(StepBatch { seqs })
    }

    /// Advances every planned sequence, sampling where the batch produced logits.
    fn absorb(&mut self, plan: &[(usize, usize)], logits: &Logits) {
        let vocab = self.model.vocab_size();
        let mut row = 0;
        for &(idx, n) in plan {
            let a = &mut self.running[idx];
            a.computed += n;
            if a.computed < a.tokens.len() {
                continue;
            }
            let l = &logits.data[row * vocab..(row + 1) * vocab];
            row += 1;
            let token = match a.sampler.sample(l, &a.tokens) {
                Ok(t) => t,
                Err(e) => {
                    a.terminal = Some(Terminal::Failed(e.into()));
                    continue;
                }
            };
            if a.stop.is_stop_token(token) {
                a.terminal = Some(Terminal::Finished(FinishReason::StopToken(token)));
                continue;
            }
            a.tokens.push(token);
            a.clock.token();
            let index = a.tokens.len() - a.prompt_len - 1;
            let logprobs = a
                .sampler
                .params()
                .logprobs
                .map(|top| TokenLogprobs::of(l, token, top));
            if !a.sink.send(Event::Token {
                token,
                index,
                logprobs,
            }) {
                // Nobody listens any more: stop as if cancelled.
                a.terminal = Some(Terminal::Finished(FinishReason::Cancelled));
                continue;
            }
            let detok = self.detok.as_deref().map(|d| d as &dyn Detokenize);
            if let Some(r) = a.stop.check(&a.tokens[a.prompt_len..], detok) {
                a.terminal = Some(Terminal::Finished(r));
            } else if a.tokens.len() >= self.config.max_context {
                a.terminal = Some(Terminal::Finished(FinishReason::MaxContext));
            }
        }
    }

    /// Removes ended running sequences, freeing their blocks; returns how many.
    fn retire(&mut self) -> usize {
        let (ended, keep): (Vec<_>, Vec<_>) =
            self.running.drain(..).partition(|a| a.terminal.is_some());
        self.running = keep;
        let n = ended.len();
        for mut a in ended {
            self.release(&mut a);
            if let Some(t) = a.terminal.take() {
                a.end(t);
            }
        }
        n
    }
}
