//! Stage 2: fine-tuning, influence features and model registration.

use super::*;

impl PayableAi {
    /// `owner`'s grants on the datanet, as the chain records them (the trainer checks them).
    fn grants_of(&mut self, owner: Address) -> Result<openledger_core::grant::Grants> {
        Ok(grants_from_chain(
            &mut *self.chain,
            self.deployment.datanets,
            &[self.datanet_id],
            &[owner],
        )?)
    }

    fn base_id(&self) -> B256 {
        self.base.id()
    }

    /// Trains `plan` on the datanet records `records` (indices), with the owner's grant, and
    /// builds the influence index of those records.
    fn train_one(
        &self,
        plan: &AdapterPlan,
        owner: Address,
        grants: openledger_core::grant::Grants,
        records: &[usize],
        tag: &str,
        on: &mut dyn FnMut(&LoopEvent),
    ) -> Result<(Tuned, Vec<f64>)> {
        let c = &self.config;
        let base = self.base.model()?;
        let examples: Vec<Example> = records
            .iter()
            .map(|&i| {
                let it = &self.items[i];
                Ok(Example::prompt_response(
                    &self.base.prompt(&it.prompt)?,
                    &self.base.answer(&it.response)?,
                )
                .with_source(self.datanet_id, self.datanet.records()[i].hash))
            })
            .collect::<Result<_>>()?;
        let mut lora = LoraSettings::new(
            &plan.targets.iter().map(String::as_str).collect::<Vec<_>>(),
            plan.rank,
            plan.alpha,
        );
        lora.use_dora = plan.use_dora;
        let mut tc = TrainConfig::new(lora);
        tc.steps = c.steps;
        tc.batch_size = c.batch_size;
        tc.learning_rate = c.learning_rate;
        tc.warmup_steps = c.steps / 10;
        tc.seed = plan.seed;
        tc.checkpoint_steps = (1..=c.checkpoints)
            .map(|k| c.steps * k / c.checkpoints)
            .collect();
        let steps = tc.checkpoint_steps.clone();
        let mut trainer = Trainer::new(&base, tc)?;
        trainer.require_grants(grants, owner);
        trainer.start_log(self.base_id());
        let mut kept = CheckpointCollector::new(&trainer);
        let item = format!("{}{tag}", plan.name);
        let summary = trainer.train(&examples, &[], &mut |e| {
            kept.observe(e);
            if let TrainEvent::Step(s) = e {
                on(&LoopEvent::Progress {
                    stage: "fine-tune".into(),
                    item: item.clone(),
                    done: s.step,
                    total: s.total_steps,
                    loss: Some(s.loss),
                });
            }
        })?;
        let checkpoints = kept.finish()?;
        let log = trainer
            .training_log()
            .ok_or(LoopError::Config("the training log was not started".into()))?;
        log.verify()?;
        let weights = tracin_weights(log, &steps)?;
        std::fs::create_dir_all(&c.work_dir).map_err(io(&c.work_dir))?;
        let path = c.work_dir.join(format!("{item}.features"));
        let total = examples.len() * steps.len();
        let index = AdapterInfluence::build(
            &path,
            &mut trainer,
            &examples,
            &self.datanet,
            checkpoints.into_iter().zip(weights).collect(),
            FeatureSpace::Exact,
            &mut |p| {
                on(&LoopEvent::Progress {
                    stage: "fine-tune".into(),
                    item: format!("{item}: influence features"),
                    done: p.done,
                    total,
                    loss: None,
                })
            },
        )?;
        Ok((
            Tuned {
                trainer,
                index,
                records: records.to_vec(),
            },
            summary.losses,
        ))
    }

    /// Stage 2: fine-tunes every planned adapter on the datanet (with the grant read back from
    /// the chain), records the per-example gradients at its checkpoints, saves it as a PEFT
    /// folder, and registers it on chain with its artifact hash, training-log head and fee.
    /// With the counterfactual on, trains each again on every record (no clustering) and, when
    /// the clustering did not keep exactly the datanet before splitting, on that datanet.
    pub fn fine_tune(&mut self, on: &mut dyn FnMut(&LoopEvent)) -> Result<&[AdapterReport]> {
        let t = Instant::now();
        on(&LoopEvent::Stage {
            name: "fine-tune".into(),
        });
        if self.datanet_id == U256::ZERO {
            return Err(LoopError::OutOfOrder {
                stage: "fine_tune",
                needs: "publish_datanet",
            });
        }
        if !self.tuned.is_empty() {
            return Err(LoopError::Config("the adapters are already trained".into()));
        }
        let kept = self.kept.clone();
        let plans = self.config.adapters.clone();
        for (k, plan) in plans.iter().enumerate() {
            let owner = self.accounts.model_owners[k % 3];
            let t0 = Instant::now();
            let grants = self.grants_of(owner)?;
            let (tuned, losses) = self.train_one(plan, owner, grants, &kept, "", on)?;
            let train_secs = t0.elapsed().as_secs_f64();
            let recall = self.recall(&tuned.trainer, &kept)?;
            let dir = self.config.work_dir.join("adapters").join(&plan.name);
            tuned.trainer.save_adapter(&dir)?;
            let (config_json, weights) = tuned.trainer.adapter_files()?;
            let artifact = keccak256((config_json.as_bytes(), &weights[..]).abi_encode_params());
            let salt = keccak256(format!("openledger:model:{}", plan.name));
            let model_id = openledger_chain::bindings::model_id(owner, salt);
            let log = tuned
                .trainer
                .training_log()
                .ok_or(LoopError::Config("the training log was not started".into()))?
                .clone();
            let base_model = self.base_id();
            // Registered by an earlier process on this deployment: found in the registry's
            // logs, and checked below to be these very weights and this training log.
            let found = self
                .events_of::<ModelRegistry::ModelRegistered>(self.deployment.models)?
                .iter()
                .any(|e| e.modelId == model_id);
            let register_gas = if found {
                self.report.resumed.models += 1;
                0
            } else {
                register_model(
                    &mut *self.chain,
                    self.deployment.models,
                    owner,
                    &ModelRegistration {
                        salt,
                        base_model,
                        artifact_hash: artifact,
                        sources: vec![(self.datanet_id, self.version)],
                        fee_per_call: plan.fee,
                    },
                    &log,
                )?
                .gas_used
            };
            let on_chain = self.chain.view(
                self.deployment.models,
                &ModelRegistry::getModelCall { modelId: model_id },
            )?;
            if on_chain.trainingLogHead != log.head() || on_chain.artifactHash != artifact {
                return Err(LoopError::Accounting(format!(
                    "model {} reads back other hashes than were registered",
                    plan.name
                )));
            }
            self.report.adapters.push(AdapterReport {
                name: plan.name.clone(),
                owner,
                model_id,
                targets: plan.targets.clone(),
                rank: plan.rank,
                dora: plan.use_dora,
                parameters: tuned.trainer.num_parameters(),
                steps: self.config.steps,
                first_loss: losses.first().copied().unwrap_or(f64::NAN),
                last_loss: losses.last().copied().unwrap_or(f64::NAN),
                recall,
                train_seconds: train_secs,
                training_log_head: log.head(),
                training_log_entries: log.len(),
                artifact_hash: artifact,
                fee_wei: wei(plan.fee),
                register_gas,
                dir: dir.display().to_string(),
            });
            self.report
                .accounts
                .entry(owner)
                .or_insert_with(|| format!("owner of {}", plan.name));
            self.model_ids.push(model_id);
            self.tuned.push(tuned);
        }
        self.measure_harm(on)?;
        self.update_reputation();
        if self.config.counterfactual {
            let all: Vec<usize> = (0..self.items.len()).collect();
            let before = self.before.clone().filter(|b| *b != kept);
            for (k, plan) in plans.iter().enumerate() {
                let owner = self.accounts.model_owners[k % 3];
                let grants = self.grants_of(owner)?;
                if let Some(b) = &before {
                    let (t, _) =
                        self.train_one(plan, owner, grants.clone(), b, " (before splitting)", on)?;
                    self.before_tuned.push(t);
                }
                let (t, _) = self.train_one(plan, owner, grants, &all, " (no clustering)", on)?;
                self.naive.push(t);
            }
        }
        self.report
            .seconds
            .insert("fine-tune".into(), t.elapsed().as_secs_f64());
        Ok(&self.report.adapters)
    }

    /// Measures every trained record's excess influence on the validation set and flags the
    /// harmful ones. A record's excess influence, for one adapter, is its mean TracIn score
    /// (over the adapter's checkpoints) on the gold answers minus its mean score on the
    /// adapter's training records: how much more it helps the answers it should than the data
    /// it was trained with. Subtracting the second removes what every record shares (the
    /// common push of the softmax that makes raw TracIn scores mostly positive), and a record
    /// that helps itself while hurting the gold answers — poison — comes out clearly negative.
    /// Summed over the adapters; flagged when negative and more than `harm_z` robust standard
    /// deviations below the median. Records whose metadata says `"poisoned": true` (planted
    /// for a demonstration) are used only to report how well that worked.
    fn measure_harm(&mut self, on: &mut dyn FnMut(&LoopEvent)) -> Result<()> {
        if self.validation.is_empty() {
            return Ok(());
        }
        let pair = |it: &Item| -> Result<(Vec<u32>, Vec<u32>)> {
            Ok((
                self.base.prompt(&it.prompt)?,
                self.base.answer(&it.response)?,
            ))
        };
        let gold: Vec<(Vec<u32>, Vec<u32>)> =
            self.validation.iter().map(pair).collect::<Result<_>>()?;
        let mut score: BTreeMap<usize, f64> = self.kept.iter().map(|&i| (i, 0.0)).collect();
        let mut tuned = std::mem::take(&mut self.tuned);
        let total = tuned.len();
        let mut measured = || -> Result<()> {
            for (a, t) in tuned.iter_mut().enumerate() {
                let trained: Vec<(Vec<u32>, Vec<u32>)> = t
                    .records
                    .iter()
                    .map(|&i| pair(&self.items[i]))
                    .collect::<Result<_>>()?;
                for (queries, sign) in [(&gold, 1.0), (&trained, -1.0)] {
                    let features = t.index.featurize(&mut t.trainer, queries, &mut |_| {})?;
                    let rows = t
                        .index
                        .index()
                        .scores(&features, Method::TracIn, &mut |_| {})?;
                    let n = rows.len() as f64;
                    for row in &rows {
                        for (k, &v) in row.iter().enumerate() {
                            if !v.is_finite() {
                                return Err(PoaError::NonFinite {
                                    what: "validation TracIn score".into(),
                                    index: k,
                                    value: v,
                                }
                                .into());
                            }
                            *score.entry(t.records[k]).or_default() += sign * v / n;
                        }
                    }
                }
                on(&LoopEvent::Progress {
                    stage: "fine-tune".into(),
                    item: "validation influence".into(),
                    done: a + 1,
                    total,
                    loss: None,
                });
            }
            Ok(())
        };
        let r = measured();
        self.tuned = tuned;
        r?;
        let values: Vec<f64> = score.values().copied().collect();
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        };
        let m = median(&values);
        let deviations: Vec<f64> = values.iter().map(|v| (v - m).abs()).collect();
        let sigma = 1.4826 * median(&deviations);
        let threshold = (m - self.config.harm_z * sigma).min(0.0);
        let records = self.datanet.records();
        let mut flags = Vec::new();
        for (&i, &v) in &score {
            if v < threshold {
                self.flagged.insert(i);
                flags.push(HarmFlag {
                    record: i,
                    contributor: records[i].contributor,
                    influence: v,
                });
            }
        }
        let poisoned: Vec<bool> = score
            .keys()
            .map(|&i| records[i].metadata.get("poisoned") == Some(&serde_json::Value::Bool(true)))
            .collect();
        let planted = poisoned.iter().filter(|&&p| p).count();
        // Harm ranks records by how little they help: the AUC of −influence against the
        // planted labels (1 = every planted record below every other).
        let harm: Vec<f64> = values.iter().map(|v| -v).collect();
        let check = crate::attribution::metrics::auc(&harm, &poisoned).map(|auc| {
            let caught = score
                .keys()
                .zip(&poisoned)
                .filter(|&(i, &p)| p && self.flagged.contains(i))
                .count();
            PlantedCheck {
                planted,
                caught,
                false_flags: self.flagged.len() - caught,
                auc,
            }
        });
        self.report.validation = Some(ValidationReport {
            answers: self.validation.len(),
            records: score.len(),
            policy: self.config.harm,
            z: self.config.harm_z,
            median: m,
            threshold,
            flagged: flags,
            planted: check,
        });
        Ok(())
    }

    /// Adds every record's outcome to the contributors' reputation: a copy of someone else's
    /// record, harmful (flagged), or accepted (trained on); a copy of the contributor's own
    /// record adds nothing.
    fn update_reputation(&mut self) {
        let Some(rep) = self.reputation.as_mut() else {
            return;
        };
        let records = self.datanet.records();
        for (i, r) in records.iter().enumerate() {
            let first = self.clusters.cluster_of[i];
            let outcome = if first != i {
                if records[first].contributor == r.contributor {
                    continue;
                }
                Outcome::Copy
            } else if self.flagged.contains(&i) {
                Outcome::Harmful
            } else {
                Outcome::Accepted
            };
            rep.record(r.contributor, outcome, 1);
        }
        self.report.reputation = rep
            .contributors()
            .map(|(&account, h)| ReputationReport {
                account,
                name: self.report.name_of(account),
                accepted: h.accepted,
                harmful: h.harmful,
                copies: h.copies,
                score: rep.score(&account),
            })
            .collect();
    }

    /// Share of `records` whose answer the trainer reproduces greedily, word for word.
    fn recall(&self, trainer: &Trainer, records: &[usize]) -> Result<f64> {
        let mut right = 0usize;
        for &i in records {
            let it = &self.items[i];
            let want = self.base.answer(&it.response)?;
            let got = trainer.greedy(&self.base.prompt(&it.prompt)?, want.len())?;
            right += usize::from(got == want);
        }
        Ok(right as f64 / records.len().max(1) as f64)
    }
}
