//! The training loop: LoRA initialisation as PEFT, micro-batches with gradient accumulation,
//! clipping, AdamW and the schedule, progress events, evaluation and checkpoints, the grant
//! check before training and the training log after every step.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use openledger_core::grant::Grants;
use openledger_core::trainlog::{TrainLog, TrainStep};
use openledger_core::{Address, B256, ContentId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::TrainConfig;
use crate::data::{Example, Source, validate};
use crate::error::TrainError;
use crate::net::{BaseNet, LoraParam, Mode, Net, PROJECTIONS, Rows, module_name};
use crate::optim::{AdamW, clip_grad_norm, lr_at};
use openledger_lora::adapter::config::{ConfigSpec, LoraConfig};
use openledger_lora::model::Model;

/// One optimizer step, as reported to the progress callback.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// 1-based optimizer step.
    pub step: usize,
    /// Steps of the run.
    pub total_steps: usize,
    /// Mean loss per target token over the step's micro-batches.
    pub loss: f64,
    /// Learning rate the update used.
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (every position, prompts included) the step processed.
    pub tokens: usize,
    /// Tokens per second of this step.
    pub tokens_per_sec: f64,
    /// Estimated seconds left (mean step time so far × steps left).
    pub eta_secs: f64,
    /// The records the step trained on, in batch order (examples without a source are
    /// skipped).
    pub records: Vec<Source>,
    /// Head of the training log after this step's entry, when a log is kept
    /// ([`Trainer::start_log`]).
    pub log_head: Option<B256>,
}

/// An evaluation on the held-out split.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// Optimizer steps taken when it ran.
    pub step: usize,
    /// Mean loss per target token.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Target tokens evaluated.
    pub tokens: usize,
}

/// The adapter at a chosen step, serialised as PEFT saves it.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Optimizer steps taken.
    pub step: usize,
    /// `adapter_config.json`.
    pub config_json: String,
    /// `adapter_model.safetensors`.
    pub safetensors: Vec<u8>,
    /// keccak-256 of the safetensors bytes.
    pub id: ContentId,
}

/// What the progress callback of [`Trainer::train`] receives.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainEvent {
    /// An optimizer step finished.
    Step(StepReport),
    /// An evaluation finished.
    Eval(EvalReport),
    /// A checkpoint was taken.
    Checkpoint(Checkpoint),
}

/// The outcome of [`Trainer::train`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    /// Optimizer steps taken.
    pub steps: usize,
    /// Loss of each step.
    pub losses: Vec<f64>,
    /// The last evaluation, if any ran.
    pub last_eval: Option<EvalReport>,
}

/// One trainable tensor in the flattened gradient (and parameter) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSlice {
    /// The PEFT key without its prefix (`model.layers.0.self_attn.q_proj.lora_A.weight`).
    pub name: String,
    /// Its shape (`[r, in]`, `[out, r]` or `[out]`).
    pub shape: Vec<usize>,
    /// Offset of its first value in the flattened vector.
    pub offset: usize,
}

/// The training-set order: a permutation per epoch, drawn from the seed.
struct Order {
    perm: Vec<usize>,
    pos: usize,
    epoch: u64,
    seed: u64,
    shuffle: bool,
}

impl Order {
    fn new(n: usize, seed: u64, shuffle: bool) -> Self {
        let mut o = Order {
            perm: (0..n).collect(),
            pos: 0,
            epoch: 0,
            seed,
            shuffle,
        };
        o.reshuffle();
        o
    }

    fn reshuffle(&mut self) {
        if !self.shuffle {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x5eed_0000 ^ (self.epoch << 32));
        for i in (1..self.perm.len()).rev() {
            let j = rng.random_range(0..=i);
            self.perm.swap(i, j);
        }
    }

    fn next(&mut self) -> usize {
        if self.pos == self.perm.len() {
            self.pos = 0;
            self.epoch += 1;
            self.reshuffle();
        }
        self.pos += 1;
        self.perm[self.pos - 1]
    }
}

/// A LoRA (or DoRA) fine-tuning run on a frozen base model.
pub struct Trainer {
    pub(crate) base: BaseNet,
    pub(crate) config: TrainConfig,
    pub(crate) lora: Vec<LoraParam>,
    opt: AdamW,
    dropout_rng: ChaCha8Rng,
    step: usize,
    access: Option<(Grants, Address)>,
    log: Option<TrainLog>,
}

/// The largest magnitude a LoRA parameter may reach (f16's largest finite value): an adapter past
/// it cannot be stored or served in f16, and no converging run comes near it.
pub const MAX_PARAMETER: f32 = 65_504.0;

/// A step whose loss passes this many times the loss of guessing uniformly over the vocabulary
/// (`ln vocab`) has diverged.
pub const DIVERGENCE_FACTOR: f64 = 10.0;

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("step", &self.step)
            .field("parameters", &self.num_parameters())
            .finish()
    }
}

pub(super) fn host(t: &Tensor) -> Result<Vec<f32>, TrainError> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

impl Trainer {
    /// A run on `model`'s base weights (shared, frozen) with fresh LoRA factors initialised as
    /// PEFT does: `A` kaiming-uniform with `a = √5` (uniform in `±1/√in`), `B` zero, and for
    /// DoRA the magnitude set to the row norms of `W`. Draws come from `config.seed`, module by
    /// module in [`Trainer::gradient_layout`] order. Each module's rank and scale follow
    /// `rank_pattern` / `alpha_pattern` as PEFT resolves them.
    pub fn new(model: &Model, config: TrainConfig) -> Result<Self, TrainError> {
        config.validate()?;
        let base = BaseNet::from_model(model)?;
        let projs = config.lora.targets.resolve()?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let names: Vec<&str> = projs.iter().map(|&p| PROJECTIONS[p]).collect();
        let mut spec = ConfigSpec::new(config.lora.r, config.lora.alpha, &names);
        spec.use_rslora = config.lora.use_rslora;
        spec.rank_pattern = config.lora.rank_pattern.clone();
        spec.alpha_pattern = config.lora.alpha_pattern.clone();
        let resolved = LoraConfig::new(spec)?;
        let mut lora = Vec::new();
        for (l, layer) in base.layers.iter().enumerate() {
            for &p in &projs {
                let module = module_name(l, p);
                let (r, scale) = (resolved.rank_for(&module), resolved.scale_for(&module));
                let f = &layer.proj[p];
                let full = f.in_features.min(f.out_features);
                if r > full {
                    return Err(TrainError::InvalidConfig {
                        field: "lora.r",
                        reason: format!(
                            "rank {r} of {module} exceeds its full rank {full} ([{}, {}])",
                            f.out_features, f.in_features
                        ),
                    });
                }
                if !scale.is_finite() {
                    return Err(TrainError::InvalidConfig {
                        field: "lora.alpha",
                        reason: format!("the scale of {module} is not finite ({scale})"),
                    });
                }
                let bound = 1.0 / (f.in_features as f32).sqrt();
                let a: Vec<f32> = (0..r * f.in_features)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (r, f.in_features), &Device::Cpu)?)?;
                let b = Var::zeros((f.out_features, r), candle_core::DType::F32, &Device::Cpu)?;
                let m = if config.lora.use_dora {
                    Some(Var::from_tensor(&f.wt.sqr()?.sum(0)?.sqrt()?)?)
                } else {
                    None
                };
                lora.push(LoraParam {
                    module,
                    layer: l,
                    proj: p,
                    scale,
                    a,
                    b,
                    m,
                });
            }
        }
        let sizes: Vec<usize> = lora
            .iter()
            .flat_map(|p| p.vars().into_iter().map(|v| v.elem_count()))
            .collect();
        let opt = AdamW::new(
            config.beta1,
            config.beta2,
            config.eps,
            config.weight_decay,
            &sizes,
        );
        Ok(Trainer {
            dropout_rng: ChaCha8Rng::seed_from_u64(config.seed ^ 0xd20_9047),
            base,
            config,
            lora,
            opt,
            step: 0,
            access: None,
            log: None,
        })
    }

    /// Requires an approved training grant of `requester` for the datanet of every training
    /// example that names one ([`Example::source`]); [`Trainer::train`] then refuses a set
    /// with any other record ([`TrainError::AccessDenied`]) before the first step. Examples
    /// without a source are the caller's own data and are not checked.
    pub fn require_grants(&mut self, grants: Grants, requester: Address) {
        self.access = Some((grants, requester));
    }

    /// Starts a hash-chained training log ([`TrainLog`]) for `base_model` (the base's id) and
    /// this run's adapter config (keccak-256 of `adapter_config.json`); every optimizer step
    /// from now on appends an entry: the batch's record ids (an example without a source is
    /// identified by the keccak-256 of its token ids, little-endian u32), the loss, the
    /// learning rate and the checkpoint hash when one is taken. Returns the log's genesis.
    pub fn start_log(&mut self, base_model: B256) -> B256 {
        let config = self.adapter_spec().to_json();
        let log = TrainLog::new(base_model, ContentId::of(config.as_bytes()).0);
        let genesis = log.genesis();
        self.log = Some(log);
        genesis
    }

    /// The training log, when one is kept; its [`TrainLog::head`] is what a model registry
    /// commits to.
    pub fn training_log(&self) -> Option<&TrainLog> {
        self.log.as_ref()
    }

    fn check_access(&self, train: &[Example]) -> Result<(), TrainError> {
        let Some((grants, requester)) = &self.access else {
            return Ok(());
        };
        for (index, ex) in train.iter().enumerate() {
            if let Some(src) = &ex.source {
                grants.check(src.datanet, *requester).map_err(|source| {
                    TrainError::AccessDenied {
                        index,
                        datanet: src.datanet,
                        requester: *requester,
                        record: src.record,
                        source: Box::new(source),
                    }
                })?;
            }
        }
        Ok(())
    }

    /// The run's settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Optimizer steps taken.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// Names of the adapted modules, in gradient order.
    pub fn modules(&self) -> Vec<&str> {
        self.lora.iter().map(|p| p.module.as_str()).collect()
    }

    pub(super) fn net(&self) -> Net<'_> {
        Net {
            base: &self.base,
            lora: &self.lora,
        }
    }

    pub(super) fn check_tokens(&self, seqs: &[&[u32]]) -> Result<(), TrainError> {
        let vocab = self.base.cfg.vocab_size;
        for (index, s) in seqs.iter().enumerate() {
            if s.is_empty() {
                return Err(TrainError::NoTargets {
                    split: "forward",
                    index,
                });
            }
            if let Some((position, &token)) =
                s.iter().enumerate().find(|(_, t)| **t as usize >= vocab)
            {
                return Err(TrainError::TokenOutOfVocab {
                    index,
                    position,
                    token,
                    vocab,
                });
            }
        }
        Ok(())
    }

    /// Logits (`[len, vocab]` row-major per sequence) of the base with the current adapter,
    /// in inference mode (no dropout, no graph).
    pub fn forward(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, TrainError> {
        self.check_tokens(seqs)?;
        let rows = Rows {
            seqs: seqs.to_vec(),
        };
        let mut mode = Mode {
            grad: false,
            dropout: None,
            capture: None,
        };
        let net = self.net();
        let logits = host(&net.head(&net.hidden(&rows, &mut mode)?)?)?;
        let vocab = self.base.cfg.vocab_size;
        let mut out = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for s in seqs {
            out.push(logits[start * vocab..(start + s.len()) * vocab].to_vec());
            start += s.len();
        }
        Ok(out)
    }

    /// Summed target NLL of `examples` as one graph (tracked when `mode.grad`).
    pub(super) fn batch_nll(
        &self,
        examples: &[&Example],
        mode: &mut Mode<'_>,
    ) -> Result<Tensor, TrainError> {
        let (rows, targets) = pack(examples);
        let net = self.net();
        let hidden = net.hidden(&rows, mode)?;
        Ok(net.nll(&hidden, &targets)?)
    }

    /// Gradients of `loss` for every parameter, flattened per tensor (zeros where untouched).
    pub(super) fn grads_of(&self, loss: &Tensor) -> Result<Vec<Vec<f32>>, TrainError> {
        let store = loss.backward()?;
        let mut out = Vec::new();
        for p in &self.lora {
            for v in p.vars() {
                out.push(match store.get(v.as_tensor()) {
                    Some(g) => host(g)?,
                    None => vec![0.0; v.elem_count()],
                });
            }
        }
        Ok(out)
    }

    /// The longest example the model and the run allow.
    fn max_len(&self) -> usize {
        self.config
            .max_seq_len
            .min(self.base.cfg.max_position_embeddings)
    }

    /// Bytes the activations of a micro-batch of `batch` sequences of `longest` tokens take in
    /// the differentiable forward pass and its backward pass, as estimated from the model's
    /// shape: per token and layer the norms, projections and MLP values (`10·hidden +
    /// 4·intermediate`) and the attention scores (`heads · longest`), and per token the logits
    /// three times (logits, softmax, gradient), all f32, doubled for the gradients.
    pub fn activation_bytes(&self, batch: usize, longest: usize) -> usize {
        let c = &self.base.cfg;
        let per_layer = 10 * c.hidden_size + 4 * c.intermediate_size + c.num_heads * longest;
        let per_token = c.num_layers * per_layer + 3 * c.vocab_size;
        batch
            .saturating_mul(longest)
            .saturating_mul(per_token)
            .saturating_mul(4 * 2)
    }

    /// Refuses micro-batches of `batch` of `examples` whose activations would pass
    /// [`TrainConfig::max_activation_bytes`].
    fn check_activations(&self, examples: &[Example], batch: usize) -> Result<(), TrainError> {
        let longest = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
        let need = self.activation_bytes(batch, longest);
        if need > self.config.max_activation_bytes {
            return Err(TrainError::InvalidConfig {
                field: "batch_size",
                reason: format!(
                    "{batch} sequences of up to {longest} tokens need about {need} bytes of activations, more than max_activation_bytes {}",
                    self.config.max_activation_bytes
                ),
            });
        }
        Ok(())
    }

    /// Mean loss and perplexity of `examples` at the current parameters.
    pub fn evaluate(&self, examples: &[Example]) -> Result<EvalReport, TrainError> {
        validate("eval", examples, self.max_len(), self.base.cfg.vocab_size)?;
        self.check_activations(examples, self.config.batch_size.min(examples.len()))?;
        let mut sum = 0.0f64;
        let mut tokens = 0;
        for chunk in examples.chunks(self.config.batch_size) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let mut mode = Mode {
                grad: false,
                dropout: None,
                capture: None,
            };
            sum += self.batch_nll(&refs, &mut mode)?.to_scalar::<f32>()? as f64;
            tokens += chunk.iter().map(Example::targets).sum::<usize>();
        }
        let loss = sum / tokens as f64;
        Ok(EvalReport {
            step: self.step,
            loss,
            perplexity: loss.exp(),
            tokens,
        })
    }

    /// Runs the optimizer steps left of [`TrainConfig::steps`] over `train` (in micro-batches of
    /// `batch_size`, `grad_accum` per step, the loss normalised by the step's target tokens),
    /// reporting every step, every evaluation on `eval` (needs `eval_every`) and every
    /// checkpoint to `on_event`. A non-finite loss or gradient norm stops the run with
    /// [`TrainError::NonFinite`] before that step's update.
    pub fn train(
        &mut self,
        train: &[Example],
        eval: &[Example],
        on_event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<TrainSummary, TrainError> {
        let cfg = self.config.clone();
        let vocab = self.base.cfg.vocab_size;
        validate("train", train, self.max_len(), vocab)?;
        self.check_activations(train, cfg.batch_size)?;
        if cfg.eval_every.is_some() {
            validate("eval", eval, self.max_len(), vocab)?;
            self.check_activations(eval, cfg.batch_size.min(eval.len()))?;
        }
        self.check_access(train)?;
        let mut order = Order::new(train.len(), cfg.seed, cfg.shuffle);
        // Resume the data stream where earlier calls left it.
        for _ in 0..self.step * cfg.batch_size * cfg.grad_accum {
            order.next();
        }
        let mut params: Vec<Vec<f32>> = Vec::new();
        for p in &self.lora {
            for v in p.vars() {
                params.push(host(v.as_tensor())?);
            }
        }
        let started = Instant::now();
        let first = self.step;
        let mut losses = Vec::new();
        let mut last_eval = None;
        while self.step < cfg.steps {
            let t0 = Instant::now();
            let micro: Vec<Vec<&Example>> = (0..cfg.grad_accum)
                .map(|_| (0..cfg.batch_size).map(|_| &train[order.next()]).collect())
                .collect();
            let denom: usize = micro.iter().flatten().map(|e| e.targets()).sum();
            let tokens: usize = micro.iter().flatten().map(|e| e.tokens.len()).sum();
            let mut grads: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
            let mut nll = 0.0f64;
            let mut rng = self.dropout_rng.clone();
            for batch in &micro {
                let mut mode = Mode {
                    grad: true,
                    dropout: Some((cfg.lora.dropout, &mut rng)),
                    capture: None,
                };
                let sum = self.batch_nll(batch, &mut mode)?;
                nll += sum.to_scalar::<f32>()? as f64;
                let loss = sum.affine(1.0 / denom as f64, 0.0)?;
                for (acc, g) in grads.iter_mut().zip(self.grads_of(&loss)?) {
                    acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
                }
            }
            let loss = nll / denom as f64;
            let step = self.step + 1;
            self.dropout_rng = rng;
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    what: "loss",
                    step,
                    value: loss,
                });
            }
            // A loss far above what guessing uniformly over the vocabulary costs means the run
            // has diverged: stop before the update.
            let ceiling = DIVERGENCE_FACTOR * (vocab as f64).ln();
            if loss > ceiling {
                return Err(TrainError::Diverged {
                    step,
                    what: format!("the loss {loss} is above {ceiling}"),
                });
            }
            let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm);
            if !grad_norm.is_finite() {
                return Err(TrainError::NonFinite {
                    what: "gradient norm",
                    step,
                    value: grad_norm,
                });
            }
            let lr = lr_at(
                cfg.schedule,
                cfg.learning_rate,
                cfg.warmup_steps,
                cfg.steps,
                self.step,
            );
            let before = self.opt.clone();
            {
                let mut ps: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
                let gs: Vec<&[f32]> = grads.iter().map(|g| &g[..]).collect();
                self.opt.step(lr, &mut ps, &gs);
            }
            if let Some(value) = params.iter().flatten().find(|v| !v.is_finite()) {
                self.opt = before;
                return Err(TrainError::NonFinite {
                    what: "parameter after the update",
                    step,
                    value: f64::from(*value),
                });
            }
            if let Some(value) = params.iter().flatten().find(|v| v.abs() > MAX_PARAMETER) {
                self.opt = before;
                return Err(TrainError::Diverged {
                    step,
                    what: format!("the update took a parameter to {value}, past ±{MAX_PARAMETER}"),
                });
            }
            let mut k = 0;
            for p in &self.lora {
                for v in p.vars() {
                    v.set(&Tensor::from_slice(&params[k], v.dims(), &Device::Cpu)?)?;
                    k += 1;
                }
            }
            self.step = step;
            losses.push(loss);
            let dt = t0.elapsed().as_secs_f64();
            let mean = started.elapsed().as_secs_f64() / (step - first) as f64;
            let checkpoint = if cfg.checkpoint_steps.contains(&step) {
                Some(self.checkpoint()?)
            } else {
                None
            };
            let log_head = match &mut self.log {
                None => None,
                Some(log) => {
                    let ids: Vec<ContentId> =
                        micro.iter().flatten().map(|e| record_id(e)).collect();
                    let mut entry = TrainStep::new(step as u64, ids, loss, lr);
                    if let Some(c) = &checkpoint {
                        entry = entry.with_checkpoint(c.id.0);
                    }
                    Some(log.append(entry)?)
                }
            };
            on_event(&TrainEvent::Step(StepReport {
                step,
                total_steps: cfg.steps,
                loss,
                learning_rate: lr,
                grad_norm,
                tokens,
                tokens_per_sec: tokens as f64 / dt.max(1e-9),
                eta_secs: mean * (cfg.steps - step) as f64,
                records: micro
                    .iter()
                    .flatten()
                    .filter_map(|e| e.source.clone())
                    .collect(),
                log_head,
            }));
            if let Some(every) = cfg.eval_every
                && step.is_multiple_of(every)
            {
                let report = self.evaluate(eval)?;
                on_event(&TrainEvent::Eval(report.clone()));
                last_eval = Some(report);
            }
            if let Some(c) = checkpoint {
                on_event(&TrainEvent::Checkpoint(c));
            }
        }
        Ok(TrainSummary {
            steps: self.step,
            losses,
            last_eval,
        })
    }

    /// The adapter now, as a [`Checkpoint`].
    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        let b = self.adapter_builder()?;
        let safetensors = b.safetensors_bytes()?;
        Ok(Checkpoint {
            step: self.step,
            config_json: b.config_json(),
            id: ContentId::of(&safetensors),
            safetensors,
        })
    }

    /// Names of the adapted projections, for the adapter config.
    pub(crate) fn target_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.lora.iter().map(|p| PROJECTIONS[p.proj]).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// The id an example has in the training log: its record's, or the keccak-256 of its token ids.
fn record_id(e: &Example) -> ContentId {
    match &e.source {
        Some(s) => s.record,
        None => {
            let bytes: Vec<u8> = e.tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
            ContentId::of(bytes)
        }
    }
}

/// `examples` packed as one batch: their token rows concatenated, and every target as `(row,
/// token)` (the token that row predicts) in that concatenation.
pub(super) fn pack<'e>(examples: &[&'e Example]) -> (Rows<'e>, Vec<(u32, u32)>) {
    let rows = Rows {
        seqs: examples.iter().map(|e| &e.tokens[..]).collect(),
    };
    let mut targets = Vec::new();
    let mut start = 0u32;
    for e in examples {
        targets.extend(e.target_pairs().map(|(p, t)| (start + p as u32, t)));
        start += e.tokens.len() as u32;
    }
    (rows, targets)
}
