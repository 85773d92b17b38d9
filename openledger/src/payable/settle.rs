//! Stages 4 and 5: attribution, receipts and payments; the epoch, its root and the claims.

use super::*;
use openledger_chain::receipt::{
    EnsembleReceipt, ensemble_fee, ensemble_owner_shares, ensemble_shares,
};
use openledger_poa::split::{DebtLedger, ZeroWeightPolicy, split_weights};

/// The RAG part of one answer: per-contributor weights, and each cited record's share.
type RagWeights = (Vec<(Address, f64)>, Vec<Share>);

/// A payment found in the payments contract's logs.
struct Paid {
    epoch: u64,
    /// The owners' shares (one per model of an ensemble).
    owners: Vec<U256>,
    protocol: U256,
    data: U256,
}

/// A signed receipt of one answer, for one adapter or an ensemble.
enum Receipt {
    One(AttributionReceipt),
    Ensemble(EnsembleReceipt),
}

impl Receipt {
    fn inference_id(&self) -> B256 {
        match self {
            Receipt::One(r) => r.inferenceId,
            Receipt::Ensemble(r) => r.inferenceId,
        }
    }

    fn amount(&self) -> U256 {
        match self {
            Receipt::One(r) => r.amount,
            Receipt::Ensemble(r) => r.amount,
        }
    }
}

/// One member adapter's part of an answer's weights: TracIn over its own training records.
struct MemberWeights {
    /// Per-contributor influence weights (helpful, unflagged records).
    influence: Vec<(Address, f64)>,
    /// The top training influences, for the report (shares of this member's helpful total).
    top: Vec<Share>,
    /// The harm flagged records did to the answer: `(contributor, |score|)` for every flagged
    /// record whose score is negative.
    harm: Vec<(Address, f64)>,
    /// The helpful records' total score (what this member's influence part is split by).
    helpful: f64,
}

/// One member adapter of an answer as its pool is split: its model, its receipt share, its
/// influence weights.
struct MemberPart<'a> {
    model: B256,
    share: U256,
    influence: &'a [(Address, f64)],
}

/// One answer's weights.
struct Weighed {
    /// Each member adapter's influence weights, in the order of the answer's members.
    members: Vec<MemberWeights>,
    /// Per-contributor RAG weights.
    rag: Vec<(Address, f64)>,
    /// The citations, for the report.
    citations: Vec<Share>,
}

impl PayableAi {
    /// The weights of one answer: each of its adapters' influence (`tuned` holds every
    /// planned adapter), the RAG index's citations, over the clusters of the records. Records
    /// flagged as harmful are neither paid for their influence nor cited.
    fn weigh(
        &self,
        tuned: &mut [Tuned],
        rag: &RagIndex,
        clusters: &Clusters,
        served: &Served,
    ) -> Result<Weighed> {
        let mut members = Vec::with_capacity(served.members.len());
        for &(a, _) in &served.members {
            members.push(self.influence_of(&mut tuned[a], clusters, served)?);
        }
        let (rag_w, citations) = match &self.scorer {
            Some(scorer) if !served.sources.is_empty() => self.context_cite(scorer, served)?,
            _ => self.relevance(rag, served)?,
        };
        // Each contributor's weights count as much as its reputation.
        let rag_w = match &self.reputation {
            Some(r) => r.weigh(&rag_w),
            None => rag_w,
        };
        Ok(Weighed {
            members,
            rag: rag_w,
            citations,
        })
    }

    /// The influence weights of one answer for one trained adapter (TracIn over its
    /// checkpoints and training records, clustered).
    fn influence_of(
        &self,
        tuned: &mut Tuned,
        clusters: &Clusters,
        served: &Served,
    ) -> Result<MemberWeights> {
        let q = (served.prompt.clone(), served.answer.clone());
        let features = tuned
            .index
            .featurize(&mut tuned.trainer, &[q], &mut |_| {})?;
        let scores = tuned
            .index
            .index()
            .scores(&features, Method::TracIn, &mut |_| {})?;
        let row = &scores[0];
        let records = self.datanet.records();
        // Influence: helpful records only, clustered over the adapter's training records.
        let contributors: Vec<Address> = tuned
            .records
            .iter()
            .map(|&i| records[i].contributor)
            .collect();
        let local = Clusters {
            cluster_of: tuned
                .records
                .iter()
                .map(|&i| clusters.cluster_of[i])
                .collect(),
        };
        // Only helpful records share the pool; a score that is not a number is an error, not
        // a zero (`f64::max` would turn NaN into 0).
        if let Some((index, &value)) = row.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            return Err(PoaError::NonFinite {
                what: "TracIn score of a training record".into(),
                index,
                value,
            }
            .into());
        }
        let flagged = |k: usize| self.flagged.contains(&tuned.records[k]);
        let positive: Vec<f64> = row
            .iter()
            .enumerate()
            .map(|(k, &s)| if flagged(k) { 0.0 } else { s.max(0.0) })
            .collect();
        let harm: Vec<(Address, f64)> = row
            .iter()
            .enumerate()
            .filter(|&(k, &s)| flagged(k) && s < 0.0)
            .map(|(k, &s)| (contributors[k], -s))
            .collect();
        let influence: Vec<(Address, f64)> = cluster_rewards(
            &local,
            &contributors,
            &positive,
            ClusterShare::FirstCommitted,
        )?
        .into_iter()
        .filter(|w| w.1 > 0.0)
        .collect();
        let mut top: Vec<(usize, f64)> = positive.iter().copied().enumerate().collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = positive.iter().sum();
        let top = top
            .iter()
            .take(3)
            .filter(|t| t.1 > 0.0)
            .map(|&(k, s)| {
                let r = &records[tuned.records[k]];
                Share::new(r.hash, r.contributor, &r.content, s / total)
            })
            .collect();
        // Each contributor's weights count as much as its reputation.
        let influence = match &self.reputation {
            Some(r) => r.weigh(&influence),
            None => influence,
        };
        Ok(MemberWeights {
            influence,
            top,
            harm,
            helpful: total,
        })
    }

    /// The RAG weights of an answer by relevance: the records nearest to the prompt and answer,
    /// a softmax over their similarities.
    fn relevance(&self, rag: &RagIndex, served: &Served) -> Result<RagWeights> {
        // RAG: every index holds one record per cluster (the kept records, or singletons), so
        // the top `rag_top_k` hits are `rag_top_k` distinct clusters.
        let text = format!(
            "{} {}",
            self.base.decode(&served.prompt),
            self.base.decode(&served.answer)
        );
        // Flagged records are left out of the citations (the index may hold them).
        let cites: Vec<_> = rag
            .search(
                &self.embedder.text(&text)?,
                self.config.rag_top_k + self.flagged.len(),
            )?
            .into_iter()
            .filter(|c| {
                !self
                    .flagged
                    .iter()
                    .any(|&i| self.datanet.records()[i].hash == c.record)
            })
            .take(self.config.rag_top_k)
            .collect();
        let rag_w = relevance_weights(
            &cites,
            RelevanceWeighting::Softmax {
                temperature: self.config.rag_temperature,
            },
        )?;
        // The same softmax per record, for the report.
        let e: Vec<f64> = cites
            .iter()
            .map(|c| (f64::from(c.score) / self.config.rag_temperature).exp())
            .collect();
        let z: f64 = e.iter().sum();
        let by_record = e.into_iter().map(|v| v / z);
        let citations: Vec<Share> = cites
            .iter()
            .zip(by_record)
            .map(|(c, w)| Share::new(c.record, c.contributor, &c.snippet, w))
            .collect();
        Ok((rag_w, citations))
    }

    /// The RAG weights of a grounded answer by ContextCite: the answer's logit-probability
    /// under random ablations of the records in its prompt (each ablated prompt scored with the
    /// answer's adapter, in batches of 16), a Lasso surrogate's positive weights normalised.
    fn context_cite(
        &self,
        scorer: &openledger_lora::model::Model,
        served: &Served,
    ) -> Result<RagWeights> {
        use openledger_lora::model::{AdapterSlot, ScoreInput};
        use openledger_poa::contextcite::{ContextCiteConfig, context_cite_batched};
        let records = self.datanet.records();
        let texts: Vec<String> = served
            .sources
            .iter()
            .map(|&i| crate::grounded::SourceRecord::from_record(&records[i]).text)
            .collect();
        let cfg = ContextCiteConfig {
            samples: self.config.context_cite_samples,
            ..ContextCiteConfig::default()
        };
        let failed = |e: &dyn std::fmt::Display| PoaError::InvalidConfig {
            what: "ablated prompt".into(),
            reason: e.to_string(),
        };
        let mut score = |masks: &[Vec<bool>]| -> std::result::Result<Vec<f64>, PoaError> {
            let prompts = masks
                .iter()
                .map(|m| {
                    let kept: Vec<(usize, &str)> = texts
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| m[*k])
                        .map(|(k, t)| (k + 1, t.as_str()))
                        .collect();
                    self.base.grounded_prompt(&kept, &served.question)
                })
                .collect::<Result<Vec<_>>>()
                .map_err(|e| failed(&e))?;
            let batch: Vec<ScoreInput<'_>> = prompts
                .iter()
                .map(|p| ScoreInput {
                    adapter: Some(AdapterSlot(served.slot)),
                    context: p,
                    continuation: &served.answer,
                })
                .collect();
            let lp = scorer
                .continuation_logprobs(&batch)
                .map_err(|e| failed(&e))?;
            Ok(lp
                .iter()
                .map(|t| crate::grounded::logit_probability(t.iter().map(|&v| f64::from(v)).sum()))
                .collect())
        };
        let fit = context_cite_batched(texts.len(), 16, &mut score, &cfg, |_, _| {})?;
        let total: f64 = fit.weights.iter().map(|w| w.max(0.0)).sum();
        let mut by_contributor = BTreeMap::<Address, f64>::new();
        let mut citations = Vec::new();
        for (&i, w) in served.sources.iter().zip(&fit.weights) {
            let share = if total > 0.0 { w.max(0.0) / total } else { 0.0 };
            let r = &records[i];
            if share > 0.0 {
                *by_contributor.entry(r.contributor).or_default() += share;
            }
            citations.push(Share::new(r.hash, r.contributor, &r.content, share));
        }
        citations.sort_by(|a, b| b.share.total_cmp(&a.share));
        Ok((by_contributor.into_iter().collect(), citations))
    }

    /// The influence part of a data pool: `influence_bps` of it, rounded down.
    fn influence_part(&self, pool: U256) -> U256 {
        // ⌊pool·bps/10⁴⌋ as ⌊pool/10⁴⌋·bps + ⌊(pool mod 10⁴)·bps/10⁴⌋: the same value, and no
        // product past the pool itself (bps ≤ 10⁴), so a pool near 2²⁵⁶ cannot wrap.
        let (bps, scale) = (U256::from(self.config.influence_bps), U256::from(10_000u64));
        pool / scale * bps + pool % scale * bps / scale
    }

    /// Splits one inference's data pool into influence records, one per member adapter some
    /// record helped, and a RAG record. The influence part is `influence_bps` of the pool (all
    /// of it when no source is credited, nothing when no record helped); it is split among those
    /// members by `shares` as the contract splits an ensemble's owners' part (the first the
    /// rest), and each member's part over its own training records. `members` holds each
    /// member's model id, share and influence weights; `model` is the answer's model (an
    /// ensemble's key), on the RAG record, which names the members' models as its adapters.
    fn pool_parts(
        &self,
        pool: U256,
        id: B256,
        model: B256,
        ensemble: bool,
        members: &[MemberPart<'_>],
        rag: &[(Address, f64)],
    ) -> Result<Vec<(AttributionRecord, U256)>> {
        let mut parts = Vec::new();
        let helped: Vec<_> = members.iter().filter(|m| !m.influence.is_empty()).collect();
        // No source credited (ContextCite found the answer depends on none of them): the
        // influence part takes the whole pool.
        let inf = if helped.is_empty() {
            U256::ZERO
        } else if rag.is_empty() {
            pool
        } else {
            self.influence_part(pool)
        };
        let policy = SplitPolicy::default();
        if !inf.is_zero() {
            let ids: Vec<B256> = helped.iter().map(|m| m.model).collect();
            let shares: Vec<U256> = helped.iter().map(|m| m.share).collect();
            let by_member = ensemble_owner_shares(&ids, inf, &shares)?;
            for (m, amount) in helped.iter().zip(by_member) {
                if amount.is_zero() {
                    continue;
                }
                let r = AttributionRecord::from_scores(
                    id,
                    m.model,
                    Vec::new(),
                    AttributionMethod::TracIn,
                    m.influence,
                    &policy,
                )?;
                parts.push((r, amount));
            }
        }
        let rest = pool - inf;
        if !rest.is_zero() {
            let adapters = if ensemble {
                members.iter().map(|m| m.model).collect()
            } else {
                Vec::new()
            };
            let r = AttributionRecord::from_scores(
                id,
                model,
                adapters,
                if self.base.is_pretrained() {
                    AttributionMethod::ContextCite
                } else {
                    AttributionMethod::RagRelevance
                },
                rag,
                &policy,
            )?;
            parts.push((r, rest));
        }
        Ok(parts)
    }

    /// The model ids and receipt shares of served request `s`'s adapters (one adapter: its id
    /// and a share of 1; an ensemble: its members' ids and weights in millionths).
    fn models_of(&self, s: &Served) -> Result<(Vec<B256>, Vec<U256>)> {
        let ids = s.members.iter().map(|&(a, _)| self.model_ids[a]).collect();
        let shares = if !s.ensemble {
            vec![U256::from(1u64)]
        } else {
            ensemble_shares(&s.members.iter().map(|m| m.1).collect::<Vec<_>>())?
        };
        Ok((ids, shares))
    }

    /// The model an answer is attributed to: its adapter's id, or for an ensemble
    /// `keccak256(abi.encode(bytes32[] modelIds, uint256[] shares))`.
    fn model_key(&self, s: &Served) -> Result<B256> {
        if !s.ensemble {
            return Ok(self.model_ids[s.members[0].0]);
        }
        let (ids, shares) = self.models_of(s)?;
        Ok(keccak256((ids, shares).abi_encode_params()))
    }

    /// Stage 4: attributes every answer (TracIn over the adapter's training checkpoints, RAG
    /// citations), commits the attribution in an EIP-712 receipt the operator signs, and has
    /// the payer pay the inference on chain; the data pool of each payment is split into the
    /// epoch's contributor totals.
    pub fn attribute_and_pay(
        &mut self,
        on: &mut dyn FnMut(&LoopEvent),
    ) -> Result<&[RequestReport]> {
        let t = Instant::now();
        on(&LoopEvent::Stage {
            name: "attribute-and-pay".into(),
        });
        if self.served.is_empty() {
            return Err(LoopError::OutOfOrder {
                stage: "attribute_and_pay",
                needs: "serve",
            });
        }
        if self.epochs.is_some() {
            return Err(LoopError::Config("the requests are already paid".into()));
        }
        let payments = self.deployment.payments;
        let current: u64 = self
            .chain
            .view(payments, &InferencePayments::currentEpochCall {})?;
        // Requests an earlier process (or an earlier call) paid on this deployment are found in
        // the payments contract's logs: they are not paid again, and the epoch they were paid
        // in is this run's epoch.
        let ids: Vec<B256> = (0..self.served.len())
            .map(|i| self.inference_id(i))
            .collect::<Result<_>>()?;
        let mut paid: BTreeMap<B256, Paid> = self
            .events_of::<InferencePayments::InferencePaid>(payments)?
            .into_iter()
            .filter(|e| ids.contains(&e.inferenceId))
            .map(|e| {
                let p = Paid {
                    epoch: e.epoch,
                    owners: vec![e.ownerShare],
                    protocol: e.protocolShare,
                    data: e.dataShare,
                };
                (e.inferenceId, p)
            })
            .collect();
        for e in self.events_of::<InferencePayments::EnsemblePaid>(payments)? {
            if ids.contains(&e.inferenceId) {
                let p = Paid {
                    epoch: e.epoch,
                    owners: e.ownerShares,
                    protocol: e.protocolShare,
                    data: e.dataShare,
                };
                paid.insert(e.inferenceId, p);
            }
        }
        let epoch_no = match paid.values().map(|e| e.epoch).min() {
            None => current,
            Some(first) => {
                if let Some(other) = paid.values().find(|e| e.epoch != first) {
                    return Err(LoopError::Accounting(format!(
                        "this run's requests were paid in epochs {first} and {}",
                        other.epoch
                    )));
                }
                if paid.len() < ids.len() && first != current {
                    return Err(LoopError::Config(format!(
                        "epoch {first} ended with {} of this run's {} requests paid in it: the \
                         rest can no longer be paid in that epoch",
                        paid.len(),
                        ids.len()
                    )));
                }
                first
            }
        };
        self.report.resumed.payments = paid.len();
        let mut tuned = std::mem::take(&mut self.tuned);
        let mut before = std::mem::take(&mut self.before_tuned);
        let mut naive = std::mem::take(&mut self.naive);
        let result = self.pay_all(&mut tuned, &mut before, &mut naive, epoch_no, &paid, on);
        self.tuned = tuned;
        self.before_tuned = before;
        self.naive = naive;
        let (epochs, debts) = result?;
        on(&LoopEvent::Progress {
            stage: "attribute-and-pay".into(),
            item: "done".into(),
            done: self.served.len(),
            total: self.served.len(),
            loss: None,
        });
        self.epochs = Some(epochs);
        self.debts = Some(debts);
        self.report
            .seconds
            .insert("attribute-and-pay".into(), t.elapsed().as_secs_f64());
        Ok(&self.report.requests)
    }

    /// The id of served request `i`'s inference: a hash of its position, model (an ensemble's
    /// key), prompt and answer, so the same run computes the same ids in any process.
    fn inference_id(&self, i: usize) -> Result<B256> {
        let s = &self.served[i];
        Ok(keccak256(
            (
                U256::from(i),
                self.model_key(s)?,
                s.prompt.iter().map(|&t| U256::from(t)).collect::<Vec<_>>(),
                s.answer.iter().map(|&t| U256::from(t)).collect::<Vec<_>>(),
            )
                .abi_encode_params(),
        ))
    }

    /// Attributes and pays every served request not in `paid` (the payments found on the
    /// chain); returns the epoch as paid, as it would be without the near-duplicate copies, and
    /// as it would be without clustering.
    fn pay_all(
        &mut self,
        tuned: &mut [Tuned],
        before: &mut [Tuned],
        naive: &mut [Tuned],
        epoch_no: u64,
        paid: &BTreeMap<B256, Paid>,
        on: &mut dyn FnMut(&LoopEvent),
    ) -> Result<([Epoch; 3], DebtLedger)> {
        let clusters = self.clusters.clone();
        let mut debts = DebtLedger::new();
        let singletons = Clusters {
            cluster_of: (0..self.items.len()).collect(),
        };
        let rag = self.rag.clone().expect("set with the datanet");
        let rag_all = self.rag_all.clone();
        let rag_before = self.rag_before.clone();
        let payments = self.deployment.payments;
        let domain = self.deployment.receipt_domain(&self.chain);
        // [with clustering (what is paid), without copies (before splitting), no clustering].
        let mut epochs = [
            Epoch::new(epoch_no),
            Epoch::new(epoch_no),
            Epoch::new(epoch_no),
        ];
        // Everything that can fail on bad numbers is worked out before the first payment, so a
        // failed call pays nothing.
        let mut planned = Vec::with_capacity(self.served.len());
        for i in 0..self.served.len() {
            let s = &self.served[i];
            on(&LoopEvent::Progress {
                stage: "attribute-and-pay".into(),
                item: self.config.requests[i].prompt.clone(),
                done: i,
                total: self.served.len(),
                loss: None,
            });
            let weighed = self.weigh(tuned, &rag, &clusters, s)?;
            let (models, shares) = self.models_of(s)?;
            let model = self.model_key(s)?;
            let inference_id = self.inference_id(i)?;
            let mut fees = Vec::with_capacity(models.len());
            for &m in &models {
                let serving = self.chain.view(
                    self.deployment.models,
                    &ModelRegistry::servingCall { modelId: m },
                )?;
                fees.push(serving.feePerCall);
            }
            let fee = if !s.ensemble {
                fees[0]
            } else {
                // The contract's share-weighted mean of the members' fees, checked against
                // the Rust mirror.
                let on_chain = self.chain.view(
                    payments,
                    &InferencePayments::ensembleFeeCall {
                        modelIds: models.clone(),
                        shares: shares.clone(),
                    },
                )?;
                let mirror = ensemble_fee(&models, &fees, &shares)?;
                if on_chain.fee != mirror {
                    return Err(LoopError::Accounting(format!(
                        "inference {i}: the contract prices the ensemble at {}, the mirror at {mirror}",
                        on_chain.fee
                    )));
                }
                on_chain.fee
            };
            let split = self
                .chain
                .view(payments, &InferencePayments::splitCall { amount: fee })?;
            let parts_of = |w: &Weighed| {
                let members: Vec<MemberPart<'_>> = w
                    .members
                    .iter()
                    .zip(models.iter().zip(&shares))
                    .map(|(m, (&model, &share))| MemberPart {
                        model,
                        share,
                        influence: &m.influence,
                    })
                    .collect();
                self.pool_parts(
                    split.dataShare,
                    inference_id,
                    model,
                    s.ensemble,
                    &members,
                    &w.rag,
                )
            };
            let parts = parts_of(&weighed)?;
            let weights_hash = weights_hash(
                &parts
                    .iter()
                    .map(|(r, amount)| (r.id().0, *amount))
                    .collect::<Vec<_>>(),
            )?;
            let (receipt, signature) = if !s.ensemble {
                let r = AttributionReceipt {
                    inferenceId: inference_id,
                    modelId: model,
                    adapterIds: Vec::new(),
                    payer: self.accounts.payer,
                    amount: fee,
                    epoch: epoch_no,
                    weightsHash: weights_hash,
                };
                let signature = self.operator.sign(&r, &domain)?;
                (Receipt::One(r), signature)
            } else {
                let r = EnsembleReceipt {
                    inferenceId: inference_id,
                    modelIds: models.clone(),
                    shares: shares.clone(),
                    payer: self.accounts.payer,
                    amount: fee,
                    epoch: epoch_no,
                    weightsHash: weights_hash,
                };
                let signature = self.operator.sign(&r, &domain)?;
                (Receipt::Ensemble(r), signature)
            };
            // The harm flagged records did to this answer, charged at the rate each member's
            // helpful records are paid: the influence part of the pool split, by share, among
            // the members some record helped (as `pool_parts` splits it), at most a member's
            // whole part.
            let mut charged = BTreeMap::<Address, U256>::new();
            let helped: Vec<usize> = (0..weighed.members.len())
                .filter(|&j| !weighed.members[j].influence.is_empty())
                .collect();
            if self.config.harm == HarmPolicy::CarryNegative && !helped.is_empty() {
                let rates = ensemble_owner_shares(
                    &helped.iter().map(|&j| models[j]).collect::<Vec<_>>(),
                    self.influence_part(split.dataShare),
                    &helped.iter().map(|&j| shares[j]).collect::<Vec<_>>(),
                )?;
                for (&j, part) in helped.iter().zip(rates) {
                    let m = &weighed.members[j];
                    if m.helpful <= 0.0 {
                        continue;
                    }
                    for (who, h) in &m.harm {
                        let micro = ((h / m.helpful).min(1.0) * 1e12).floor() as u64;
                        let owed = part * U256::from(micro) / U256::from(1_000_000_000_000u64);
                        debts.charge(*who, owed)?;
                        *charged.entry(*who).or_default() += owed;
                    }
                }
            }
            for (record, amount) in &parts {
                epochs[0].add(record, *amount)?;
            }
            // The same answer, attributed as the datanet before splitting would have it (the
            // same adapters when the clustering kept exactly its records), and with no
            // clustering at all.
            if self.config.counterfactual {
                let add = |e: &mut Epoch, w: &Weighed| {
                    for (record, amount) in parts_of(w)? {
                        e.add(&record, amount)?;
                    }
                    Ok::<(), LoopError>(())
                };
                match (before.is_empty(), &rag_before) {
                    (false, Some(rb)) => {
                        let w = self.weigh(before, rb, &singletons, s)?;
                        add(&mut epochs[1], &w)?;
                    }
                    _ => add(&mut epochs[1], &weighed)?,
                }
                if let (false, Some(ra)) = (naive.is_empty(), &rag_all) {
                    let w = self.weigh(naive, ra, &singletons, s)?;
                    add(&mut epochs[2], &w)?;
                }
            }
            let mut contributors = BTreeMap::<Address, U256>::new();
            for (r, amount) in &parts {
                for p in split_weights(*amount, &r.weights, ZeroWeightPolicy::Reject)? {
                    let e = contributors.entry(p.account).or_default();
                    *e = e.checked_add(p.amount).ok_or_else(|| {
                        LoopError::Accounting(format!("the share of {} overflows", p.account))
                    })?;
                }
            }
            // The top influences over all members, each member's shares scaled by its weight.
            let total_share: f64 = shares.iter().map(|v| f64::from(*v)).sum();
            let mut top: Vec<Share> = weighed
                .members
                .iter()
                .zip(&shares)
                .flat_map(|(m, share)| {
                    let f = f64::from(*share) / total_share;
                    m.top.iter().map(move |t| Share {
                        share: t.share * f,
                        ..t.clone()
                    })
                })
                .collect();
            top.sort_by(|a, b| b.share.total_cmp(&a.share));
            top.truncate(3);
            let rep = &mut self.report.requests[i];
            rep.inference_id = inference_id;
            rep.fee_wei = wei(fee);
            rep.weights_hash = weights_hash;
            rep.pool_parts = parts
                .iter()
                .map(|(r, amount)| PoolPart {
                    record: r.id().0,
                    method: r.method.name().into(),
                    model: r.model_id,
                    amount_wei: wei(*amount),
                })
                .collect();
            rep.signature = alloy_primitives::hex::encode_prefixed(signature.as_bytes());
            rep.top_influence = top;
            rep.citations = weighed.citations;
            rep.contributors = contributors.into_iter().map(|(a, v)| (a, wei(v))).collect();
            rep.harm_charged = charged
                .into_iter()
                .filter(|c| !c.1.is_zero())
                .map(|(a, v)| (a, wei(v)))
                .collect();
            planned.push((receipt, signature, split.dataShare));
        }
        // The payer holds and allows what is still to pay (a test token is minted for it).
        let due = planned
            .iter()
            .filter(|(r, _, _)| !paid.contains_key(&r.inference_id()))
            .try_fold(U256::ZERO, |sum, (r, _, _)| sum.checked_add(r.amount()))
            .ok_or_else(|| LoopError::Config("the requests' fees overflow 256 bits".into()))?;
        let (payer, token) = (self.accounts.payer, self.deployment.token);
        let have = self
            .chain
            .view(token, &TestToken::balanceOfCall { account: payer })?;
        if have < due {
            let mint = TestToken::mintCall {
                to: payer,
                amount: due - have,
            };
            send(&mut *self.chain, payer, token, &mint, "mint")?;
        }
        let allowed = self.chain.view(
            token,
            &TestToken::allowanceCall {
                owner: payer,
                spender: payments,
            },
        )?;
        if allowed < due {
            let approve = TestToken::approveCall {
                spender: payments,
                value: due,
            };
            send(&mut *self.chain, payer, token, &approve, "approve")?;
        }
        // The payments. One found paid is not sent again (the contract would refuse it); its
        // shares are the ones its log records.
        for (i, (receipt, signature, data_share)) in planned.into_iter().enumerate() {
            let (fee, id) = (receipt.amount(), receipt.inference_id());
            let (owners, protocol, data, gas) = if let Some(p) = paid.get(&id) {
                (p.owners.clone(), p.protocol, p.data, 0)
            } else {
                self.send_receipt(receipt, &signature)?
            };
            let owner = owners
                .iter()
                .try_fold(U256::ZERO, |sum, v| sum.checked_add(*v));
            let total = owner
                .and_then(|o| o.checked_add(protocol))
                .and_then(|t| t.checked_add(data));
            let members = &self.served[i].members;
            if data != data_share || total != Some(fee) || owners.len() != members.len() {
                return Err(LoopError::Accounting(format!(
                    "inference {i}: the contract split {fee} as {owners:?} + {protocol} + {data}"
                )));
            }
            let by_adapter = members
                .iter()
                .zip(&owners)
                .map(|(&(a, _), v)| (self.config.adapters[a].name.clone(), wei(*v)))
                .collect();
            let rep = &mut self.report.requests[i];
            rep.owner_share_wei = wei(owner.unwrap_or_default());
            rep.owner_shares_wei = by_adapter;
            rep.protocol_share_wei = wei(protocol);
            rep.data_pool_wei = wei(data);
            rep.pay_gas = gas;
        }
        Ok((epochs, debts))
    }

    /// Sends one signed receipt's payment from the payer: the owners' shares (one per model),
    /// the protocol's and the pool's, and the gas, as the contract's event reports them.
    fn send_receipt(
        &mut self,
        receipt: Receipt,
        signature: &alloy_primitives::Signature,
    ) -> Result<(Vec<U256>, U256, U256, u64)> {
        let (payer, payments) = (self.accounts.payer, self.deployment.payments);
        match receipt {
            Receipt::One(r) => {
                let call = Deployment::pay_call(r, signature);
                let out = send(&mut *self.chain, payer, payments, &call, "payForInference")?;
                let paid = out
                    .events::<InferencePayments::InferencePaid>()
                    .into_iter()
                    .next()
                    .ok_or_else(|| LoopError::Accounting("no InferencePaid event".into()))?;
                Ok((
                    vec![paid.ownerShare],
                    paid.protocolShare,
                    paid.dataShare,
                    out.gas_used,
                ))
            }
            Receipt::Ensemble(r) => {
                let call = InferencePayments::payForEnsembleCall {
                    receipt: r,
                    signature: signature.as_bytes().to_vec().into(),
                };
                let out = send(&mut *self.chain, payer, payments, &call, "payForEnsemble")?;
                let paid = out
                    .events::<InferencePayments::EnsemblePaid>()
                    .into_iter()
                    .next()
                    .ok_or_else(|| LoopError::Accounting("no EnsemblePaid event".into()))?;
                Ok((
                    paid.ownerShares,
                    paid.protocolShare,
                    paid.dataShare,
                    out.gas_used,
                ))
            }
        }
    }

    /// Stage 5: closes the epoch (time moves past its end), checks the contributors' totals
    /// against the contract's data pool, posts their Merkle root, has every contributor's
    /// claim sent with its proof, and checks every balance to the wei; the model owners and
    /// the treasury withdraw their shares.
    pub fn close_epoch(&mut self, on: &mut dyn FnMut(&LoopEvent)) -> Result<&EpochReport> {
        let t = Instant::now();
        on(&LoopEvent::Stage {
            name: "epoch".into(),
        });
        if self.report.epoch.is_some() {
            return Err(LoopError::Config("the epoch is already closed".into()));
        }
        // Kept until the epoch is settled, so a failed close can be looked into.
        let epochs = self.epochs.clone().ok_or(LoopError::OutOfOrder {
            stage: "close_epoch",
            needs: "attribute_and_pay",
        })?;
        let e = &epochs[0];
        let (payments, rewards, token) = (
            self.deployment.payments,
            self.deployment.rewards,
            self.deployment.token,
        );
        // An earlier call may have gone part of the way (it stopped on a failed claim): time
        // has then moved on already, the root is posted and some leaves are claimed. Each step
        // is done only if it is not done yet.
        let current = self
            .chain
            .view(payments, &InferencePayments::currentEpochCall {})?;
        if current <= e.number {
            // A dev chain moves its clock; on a real network the epoch closes when it ends.
            match self.chain.dev() {
                Ok(dev) => dev.advance_time(self.deploy_config.epoch_duration)?,
                Err(ChainError::Unsupported(_)) => {
                    return Err(LoopError::Config(format!(
                        "epoch {} is still open on chain {}: close it after it ends",
                        e.number,
                        self.chain.chain_id()
                    )));
                }
                Err(other) => return Err(other.into()),
            }
        }
        // Debts of flagged records' contributors are taken out of their payouts and shared
        // among those who owe nothing; what cannot be taken is carried.
        let mut ledger = self.debts.clone().unwrap_or_default();
        let charged = ledger.debts();
        let settled = ledger.settle(&e.payouts())?;
        let totals: Vec<(Address, U256)> = settled
            .paid
            .iter()
            .filter(|p| !p.amount.is_zero())
            .map(|p| (p.account, p.amount))
            .collect();
        let claims = EpochClaims::new(e.number, &totals)?;
        let on_chain = self.chain.view(
            rewards,
            &AttributionRewards::getEpochCall { epoch: e.number },
        )?;
        let (pool, post_gas, mut all_match) = if on_chain.root.is_zero() {
            let pool = self.chain.view(
                payments,
                &InferencePayments::dataPoolCall { epoch: e.number },
            )?;
            if pool != e.pooled() {
                return Err(LoopError::Accounting(format!(
                    "the contract pooled {pool} wei in epoch {}, the attribution {}",
                    e.number,
                    e.pooled()
                )));
            }
            let poster = self.deploy_config.poster;
            let post = send(
                &mut *self.chain,
                poster,
                rewards,
                &claims.post_call(),
                "postEpochRoot",
            )?;
            let posted = post
                .events::<AttributionRewards::EpochPosted>()
                .into_iter()
                .next()
                .ok_or_else(|| LoopError::Accounting("no EpochPosted event".into()))?;
            let ok = posted.root == claims.root() && posted.fromPool == pool;
            (pool, post.gas_used, ok)
        } else {
            // Posted by an earlier call or process: it must be this epoch's tree.
            self.report.resumed.root = true;
            let ok = on_chain.root == claims.root() && on_chain.total == claims.total();
            (e.pooled(), 0, ok)
        };
        // Claims open when the root's challenge window (the guardian's chance to veto it) closes:
        // a dev chain moves its clock there; on a real network the claims wait for it.
        let opens = self.chain.view(
            rewards,
            &AttributionRewards::claimableAtCall { epoch: e.number },
        )?;
        let now = self.chain.head()?.timestamp;
        if now < opens {
            match self.chain.dev() {
                Ok(dev) => dev.advance_time(opens - now)?,
                Err(ChainError::Unsupported(_)) => {
                    return Err(LoopError::Config(format!(
                        "the root of epoch {} is in its challenge window until {opens} (unix \
                         seconds) on chain {}: claim after it",
                        e.number,
                        self.chain.chain_id()
                    )));
                }
                Err(other) => return Err(other.into()),
            }
        }
        let balance = |chain: &mut dyn Chain, who: Address| -> Result<U256> {
            Ok(chain.view(token, &TestToken::balanceOfCall { account: who })?)
        };
        let mut contributors = Vec::new();
        let n = claims.claims().len();
        for (i, c) in claims.claims().to_vec().iter().enumerate() {
            let before = balance(&mut *self.chain, c.account)?;
            let claimed = self.chain.view(
                rewards,
                &AttributionRewards::isClaimedCall {
                    epoch: e.number,
                    index: U256::from(i),
                },
            )?;
            // A leaf the earlier call claimed was checked then; the contract holds its proof.
            let gas = if claimed {
                self.report.resumed.claims += 1;
                0
            } else {
                let relayer = self.accounts.relayer;
                let out = send(
                    &mut *self.chain,
                    relayer,
                    rewards,
                    &claims.claim_call(i)?,
                    "claim",
                )?;
                out.gas_used
            };
            let after = balance(&mut *self.chain, c.account)?;
            let ok = claimed || after.checked_sub(before) == Some(c.amount);
            all_match &= ok;
            let who = |ep: &Epoch| {
                ep.payouts()
                    .iter()
                    .find(|p| p.account == c.account)
                    .map_or(U256::ZERO, |p| p.amount)
            };
            contributors.push(ContributorReport {
                account: c.account,
                name: self.report.name_of(c.account),
                records: self
                    .datanet
                    .records()
                    .iter()
                    .filter(|r| r.contributor == c.account)
                    .count(),
                claimed_wei: wei(c.amount),
                balance_wei: wei(after),
                proof_len: claims.proof(i)?.len(),
                claim_gas: gas,
                before_splitting_wei: self.config.counterfactual.then(|| wei(who(&epochs[1]))),
                without_clustering_wei: self.config.counterfactual.then(|| wei(who(&epochs[2]))),
                matches: ok,
            });
            on(&LoopEvent::Progress {
                stage: "epoch".into(),
                item: "claims".into(),
                done: i + 1,
                total: n,
                loss: None,
            });
        }
        let left = balance(&mut *self.chain, rewards)?;
        all_match &= left.is_zero();
        // Owners and the treasury pull their shares.
        let mut withdrawn = Vec::new();
        let mut pullers: Vec<Address> = self.report.adapters.iter().map(|a| a.owner).collect();
        pullers.push(self.deploy_config.treasury);
        pullers.dedup();
        for who in pullers {
            let due = self.chain.view(
                payments,
                &InferencePayments::withdrawableCall { account: who },
            )?;
            if due.is_zero() {
                continue;
            }
            let before = balance(&mut *self.chain, who)?;
            send(
                &mut *self.chain,
                who,
                payments,
                &InferencePayments::withdrawCall {},
                "withdraw",
            )?;
            let got = balance(&mut *self.chain, who)?.saturating_sub(before);
            all_match &= got == due;
            withdrawn.push((who, self.report.name_of(who), wei(got)));
        }
        let held = balance(&mut *self.chain, payments)?;
        all_match &= held.is_zero();
        let near = if self.config.counterfactual {
            let dup = self.report.datanet.as_ref().and_then(|d| d.copier);
            dup.map(|account| {
                let of = |ep: &Epoch| {
                    ep.payouts()
                        .iter()
                        .find(|p| p.account == account)
                        .map_or(U256::ZERO, |p| p.amount)
                };
                NearDuplicateCheck {
                    account,
                    name: self.report.name_of(account),
                    paid_wei: wei(of(&epochs[0])),
                    before_splitting_wei: wei(of(&epochs[1])),
                    without_clustering_wei: wei(of(&epochs[2])),
                    same_training_set: self.before_tuned.is_empty(),
                    holds: of(&epochs[0]) <= of(&epochs[1]),
                }
            })
        } else {
            None
        };
        let amount = |list: &[openledger_poa::split::Payout], who: Address| {
            list.iter()
                .find(|p| p.account == who)
                .map_or(U256::ZERO, |p| p.amount)
        };
        let debts = charged
            .iter()
            .map(|d| DebtReport {
                account: d.account,
                name: self.report.name_of(d.account),
                charged_wei: wei(d.amount),
                taken_wei: wei(amount(&settled.taken, d.account)),
                carried_wei: wei(amount(&settled.owed, d.account)),
            })
            .collect();
        self.epochs = None;
        self.report.epoch = Some(EpochReport {
            number: e.number,
            root: claims.root(),
            pool_wei: wei(pool),
            claimed_total_wei: wei(claims.total()),
            post_gas,
            contributors,
            withdrawn,
            rewards_left_wei: wei(left),
            payments_left_wei: wei(held),
            claims_match: all_match,
            near_duplicates: near,
            debts,
        });
        self.report
            .seconds
            .insert("epoch".into(), t.elapsed().as_secs_f64());
        Ok(self.report.epoch.as_ref().expect("just set"))
    }
}
