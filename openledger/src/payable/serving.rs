//! Stage 3: the mixed batch, served with streaming.

use super::*;

impl PayableAi {
    /// The kept records nearest to `question` (at most `rag_top_k`, flagged records left
    /// out), as datanet indices, best first.
    pub(super) fn retrieve(&self, question: &str) -> Result<Vec<usize>> {
        let rag = self.rag.as_ref().ok_or(LoopError::OutOfOrder {
            stage: "serve",
            needs: "publish_datanet",
        })?;
        let at: HashMap<ContentId, usize> = self
            .datanet
            .records()
            .iter()
            .enumerate()
            .map(|(i, r)| (r.hash, i))
            .collect();
        Ok(rag
            .search(
                &self.embedder.text(question)?,
                self.config.rag_top_k + self.flagged.len(),
            )?
            .into_iter()
            .map(|c| at[&c.record])
            .filter(|i| !self.flagged.contains(i))
            .take(self.config.rag_top_k)
            .collect())
    }

    /// Stage 3: serves every request in one engine (continuous batching, paged KV cache), the
    /// adapters attached side by side, so the first step is one mixed batch; each token is
    /// reported as it is sampled.
    pub fn serve(&mut self, on: &mut dyn FnMut(&LoopEvent)) -> Result<&[RequestReport]> {
        let t = Instant::now();
        on(&LoopEvent::Stage {
            name: "serve".into(),
        });
        if self.tuned.is_empty() {
            return Err(LoopError::OutOfOrder {
                stage: "serve",
                needs: "fine_tune",
            });
        }
        if !self.served.is_empty() {
            return Err(LoopError::Config("the requests are already served".into()));
        }
        let mut paged = PagedModel::new(self.base.model()?);
        // On a pretrained base, a second copy with every adapter attached scores ContextCite's
        // ablated prompts (slot = adapter index).
        let mut scorer = if self.base.is_pretrained() {
            Some(self.base.model()?)
        } else {
            None
        };
        for (plan, tuned) in self.config.adapters.iter().zip(&self.tuned) {
            let adapter: LoraAdapter = tuned.trainer.adapter()?;
            let id = AdapterId::new(&plan.name).map_err(|e| LoopError::Config(e.to_string()))?;
            paged.attach(id, &adapter)?;
            if let Some(m) = &mut scorer {
                m.attach_adapter(&plan.name, &adapter)?;
            }
        }
        // Each request's adapters; an ensemble is attached to the engine's model by its
        // spelling when a request names it, and to the scorer here (once per spelling).
        let mut members = Vec::with_capacity(self.config.requests.len());
        let mut slots = Vec::with_capacity(self.config.requests.len());
        let mut ids = Vec::with_capacity(self.config.requests.len());
        let mut ensemble = Vec::with_capacity(self.config.requests.len());
        let mut ensembles = HashMap::<&str, usize>::new();
        for r in &self.config.requests {
            let m = self.config.members_of(r)?;
            let id = AdapterId::parse(&r.adapter).map_err(|e| LoopError::Config(e.to_string()))?;
            let slot = match &mut scorer {
                _ if !id.is_ensemble() => m[0].0,
                Some(model) => match ensembles.get(r.adapter.as_str()) {
                    Some(&slot) => slot,
                    None => {
                        let of: Vec<_> = m
                            .iter()
                            .map(|&(a, w)| (openledger_lora::model::AdapterSlot(a), w))
                            .collect();
                        let slot = model.attach_ensemble(&r.adapter, &of)?.0;
                        ensembles.insert(&r.adapter, slot);
                        slot
                    }
                },
                // No scorer on the random base: the slot is not used.
                None => usize::MAX,
            };
            ensemble.push(id.is_ensemble());
            ids.push(id);
            members.push(m);
            slots.push(slot);
        }
        // Each request's prompt: on a pretrained base, the question after the records
        // retrieved for it (flagged records left out), numbered from 1.
        let mut prompts = Vec::with_capacity(self.config.requests.len());
        let mut sources = Vec::with_capacity(self.config.requests.len());
        for r in &self.config.requests {
            let found = if self.base.is_pretrained() {
                self.retrieve(&r.prompt)?
            } else {
                Vec::new()
            };
            let texts: Vec<String> = found
                .iter()
                .map(|&i| {
                    crate::grounded::SourceRecord::from_record(&self.datanet.records()[i]).text
                })
                .collect();
            let numbered: Vec<(usize, &str)> = texts
                .iter()
                .enumerate()
                .map(|(k, t)| (k + 1, t.as_str()))
                .collect();
            prompts.push(self.base.grounded_prompt(&numbered, &r.prompt)?);
            sources.push(found);
        }
        let block = 16;
        let n = self.config.requests.len();
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
        let max_context = (longest + self.config.max_new_tokens).next_multiple_of(block);
        let config = EngineConfig {
            kv_layout: paged.kv_layout(block),
            num_blocks: n * max_context / block,
            max_tokens_per_step: n * longest,
            max_running: n,
            max_context,
            preemption: Preemption::Recompute,
            kv_dtype: KvDtype::F32,
        };
        let mut engine = Engine::new(paged, AllReady, config)?;
        let mut handles = Vec::with_capacity(n);
        for (id, prompt) in ids.into_iter().zip(&prompts) {
            handles.push(engine.submit(Request {
                prompt: prompt.clone(),
                adapter: Some(id),
                sampling: SamplingParams {
                    max_new_tokens: self.config.max_new_tokens,
                    stop_tokens: vec![self.base.eos()],
                    ..SamplingParams::default()
                },
            }));
        }
        let mut answers: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut done = vec![false; n];
        let mut first_batch = 0;
        let mut steps = 0;
        while done.iter().any(|d| !d) {
            let step = engine.step()?;
            if steps == 0 {
                first_batch = step.batch_seqs;
            }
            steps += 1;
            for (i, h) in handles.iter().enumerate() {
                for ev in h.drain() {
                    match ev {
                        Event::Token { token, .. } => {
                            answers[i].push(token);
                            if token != self.base.eos() {
                                on(&LoopEvent::Token {
                                    request: i,
                                    adapter: self.config.requests[i].adapter.clone(),
                                    text: self.base.piece(token),
                                });
                            }
                        }
                        Event::Finished { reason, .. } => {
                            // The stop token is not part of the output, but the model chose
                            // it: the answer attributed is the one it was trained to give.
                            if let FinishReason::StopToken(t) = reason {
                                answers[i].push(t);
                            }
                            done[i] = true;
                        }
                        Event::Failed { error, .. } => {
                            return Err(LoopError::Request {
                                index: i,
                                adapter: self.config.requests[i].adapter.clone(),
                                reason: error.to_string(),
                            });
                        }
                    }
                }
            }
            if steps > 64 * (self.config.max_new_tokens + 1) {
                return Err(LoopError::Config(
                    "the engine stopped making progress".into(),
                ));
            }
        }
        let adapters = self.config.adapters.len();
        for (i, (((r, answer), (members, slot)), ensemble)) in self
            .config
            .requests
            .iter()
            .zip(answers)
            .zip(members.into_iter().zip(slots))
            .zip(ensemble)
            .enumerate()
        {
            self.report.requests.push(RequestReport::served(
                i,
                &r.adapter,
                &r.prompt,
                &self.base.decode(&answer),
                answer.len(),
            ));
            self.served.push(Served {
                members,
                slot,
                ensemble,
                question: r.prompt.clone(),
                prompt: prompts[i].clone(),
                answer,
                sources: sources[i].clone(),
            });
        }
        self.scorer = scorer;
        self.report.serving = Some(ServingReport {
            requests: n,
            adapters,
            engine_steps: steps,
            first_step_sequences: first_batch,
            seconds: t.elapsed().as_secs_f64(),
        });
        self.report
            .seconds
            .insert("serve".into(), t.elapsed().as_secs_f64());
        Ok(&self.report.requests)
    }
}
