//! What a training run does: which projections get LoRA factors and how they are scaled,
//! and the optimizer, schedule, batching and reporting settings.

use crate::error::TrainError;
use crate::net::PROJECTIONS;
use crate::optim::Schedule;

/// Which projections of every decoder layer are adapted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// Projection names from [`PROJECTIONS`] (`"q_proj"`, `"v_proj"`, ...).
    Names(Vec<String>),
    /// Every linear layer except the output head (PEFT's `"all-linear"`).
    AllLinear,
}

impl Targets {
    /// Names, or `"all-linear"`, as PEFT's `target_modules` accepts them.
    pub fn parse(names: &[&str]) -> Self {
        if names == ["all-linear"] {
            Targets::AllLinear
        } else {
            Targets::Names(names.iter().map(|s| s.to_string()).collect())
        }
    }

    /// Indices into [`PROJECTIONS`] of the adapted projections, in [`PROJECTIONS`] order.
    pub fn resolve(&self) -> Result<Vec<usize>, TrainError> {
        match self {
            Targets::AllLinear => Ok((0..PROJECTIONS.len()).collect()),
            Targets::Names(names) => {
                if names.is_empty() {
                    return Err(TrainError::InvalidConfig {
                        field: "targets",
                        reason: "no target module".into(),
                    });
                }
                let mut out = Vec::new();
                for n in names {
                    if n == "all-linear" {
                        return Ok((0..PROJECTIONS.len()).collect());
                    }
                    let Some(i) = PROJECTIONS.iter().position(|p| p == n) else {
                        return Err(TrainError::UnknownTargetModule {
                            name: n.clone(),
                            known: PROJECTIONS.to_vec(),
                        });
                    };
                    out.push(i);
                }
                out.sort_unstable();
                out.dedup();
                Ok(out)
            }
        }
    }
}

/// The adapter being trained.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSettings {
    /// Adapted projections.
    pub targets: Targets,
    /// Rank `r` (at least 1).
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// Scale by `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Dropout probability on the LoRA input path (PEFT's `lora_dropout`), training only.
    pub dropout: f32,
    /// Weight-decomposed LoRA (a trained magnitude per output row).
    pub use_dora: bool,
    /// Ranks other than `r` for some modules, as PEFT's `rank_pattern`: the first key (a regex)
    /// that matches the end of a module's name (`model.layers.1.self_attn.v_proj`, after a
    /// `.`, or the whole name) gives its rank (default none).
    pub rank_pattern: Vec<(String, usize)>,
    /// `lora_alpha` values other than `alpha` for some modules, as PEFT's `alpha_pattern`,
    /// matched as `rank_pattern` (default none).
    pub alpha_pattern: Vec<(String, f64)>,
}

impl LoraSettings {
    /// LoRA of rank `r` with `alpha` on `targets`; no rsLoRA, dropout or DoRA.
    pub fn new(targets: &[&str], r: usize, alpha: f64) -> Self {
        LoraSettings {
            targets: Targets::parse(targets),
            r,
            alpha,
            use_rslora: false,
            dropout: 0.0,
            use_dora: false,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
        }
    }

    /// The LoRA scale of a module no pattern names: `alpha / r`, or `alpha / √r` with rsLoRA
    /// (a module's own is [`LoraConfig::scale_for`](openledger_lora::adapter::config::LoraConfig::scale_for) of
    /// the trainer's [`adapter_spec`](crate::Trainer::adapter_spec)).
    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            (self.alpha / (self.r as f64).sqrt()) as f32
        } else {
            (self.alpha / self.r as f64) as f32
        }
    }
}

/// A training run's settings. [`TrainConfig::new`] gives the defaults listed on each field.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// The adapter.
    pub lora: LoraSettings,
    /// Optimizer steps to run (default 100).
    pub steps: usize,
    /// Examples per micro-batch (default 4).
    pub batch_size: usize,
    /// Micro-batches per optimizer step (default 1).
    pub grad_accum: usize,
    /// Peak learning rate (default 2e-4).
    pub learning_rate: f64,
    /// Warm-up steps (default 0).
    pub warmup_steps: usize,
    /// Decay after warm-up (default cosine).
    pub schedule: Schedule,
    /// AdamW decoupled weight decay (default 0).
    pub weight_decay: f64,
    /// AdamW β₁ (default 0.9).
    pub beta1: f64,
    /// AdamW β₂ (default 0.999).
    pub beta2: f64,
    /// AdamW ε (default 1e-8).
    pub eps: f64,
    /// Clip the global gradient norm to this value (default 1.0, as `transformers`).
    pub max_grad_norm: Option<f64>,
    /// Longest example allowed, in tokens (default 2048).
    pub max_seq_len: usize,
    /// Seed of the LoRA initialisation, data order and dropout (default 0).
    pub seed: u64,
    /// Shuffle the training set every epoch (default true).
    pub shuffle: bool,
    /// Evaluate on the held-out split every this many optimizer steps (default none).
    pub eval_every: Option<usize>,
    /// Optimizer steps (1-based) after which a checkpoint is reported (default none).
    pub checkpoint_steps: Vec<usize>,
    /// The most memory one micro-batch's activations (and their gradients) may take, as
    /// [`crate::Trainer`] estimates it from the batch size, the longest example and the model's
    /// shape (default 8 GiB): a batch that would need more is refused before it is built.
    pub max_activation_bytes: usize,
}

impl TrainConfig {
    /// The defaults for `lora`.
    pub fn new(lora: LoraSettings) -> Self {
        TrainConfig {
            lora,
            steps: 100,
            batch_size: 4,
            grad_accum: 1,
            learning_rate: 2e-4,
            warmup_steps: 0,
            schedule: Schedule::Cosine,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: Some(1.0),
            max_seq_len: 2048,
            seed: 0,
            shuffle: true,
            eval_every: None,
            checkpoint_steps: Vec::new(),
            max_activation_bytes: 8 << 30,
        }
    }

    /// Optimizer steps of one pass over `examples` examples.
    pub fn steps_per_epoch(&self, examples: usize) -> usize {
        examples.div_ceil((self.batch_size * self.grad_accum).max(1))
    }

    /// Refuses values the trainer cannot use.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad =
            |field: &'static str, reason: String| Err(TrainError::InvalidConfig { field, reason });
        if self.lora.r == 0 {
            return Err(TrainError::ZeroRank);
        }
        self.lora.targets.resolve()?;
        if !(self.lora.alpha.is_finite() && self.lora.alpha > 0.0) {
            return bad(
                "lora.alpha",
                format!("{} is not a positive number", self.lora.alpha),
            );
        }
        if let Some((k, _)) = self.lora.rank_pattern.iter().find(|(_, r)| *r == 0) {
            return bad(
                "lora.rank_pattern",
                format!("{k:?}: a rank must be at least 1"),
            );
        }
        if let Some((k, a)) = self
            .lora
            .alpha_pattern
            .iter()
            .find(|(_, a)| !(a.is_finite() && *a > 0.0))
        {
            return bad(
                "lora.alpha_pattern",
                format!("{k:?}: {a} is not a positive number"),
            );
        }
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return bad(
                "lora.dropout",
                format!("{} is not in [0, 1)", self.lora.dropout),
            );
        }
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1".into());
        }
        if self.max_seq_len == 0 {
            return bad("max_seq_len", "must be at least 1".into());
        }
        // AdamW moves each parameter by about the learning rate every step: past 1 a run
        // cannot converge.
        if !(self.learning_rate.is_finite() && (0.0..=1.0).contains(&self.learning_rate)) {
            return bad(
                "learning_rate",
                format!("{} is not in [0, 1]", self.learning_rate),
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                format!("{} is not a non-negative number", self.weight_decay),
            );
        }
        for (field, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(field, format!("{b} is not in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", format!("{} is not a positive number", self.eps));
        }
        if let Some(m) = self.max_grad_norm
            && !(m.is_finite() && m > 0.0)
        {
            return bad("max_grad_norm", format!("{m} is not a positive number"));
        }
        if self.max_activation_bytes == 0 {
            return bad("max_activation_bytes", "must be at least 1".into());
        }
        if self.eval_every == Some(0) {
            return bad("eval_every", "must be at least 1".into());
        }
        if let Some(&s) = self
            .checkpoint_steps
            .iter()
            .find(|&&s| s == 0 || s > self.steps)
        {
            return bad(
                "checkpoint_steps",
                format!("step {s} is outside 1..={}", self.steps),
            );
        }
        Ok(())
    }
}
