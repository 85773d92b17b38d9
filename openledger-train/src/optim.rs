//! The optimizer side of training: AdamW with the update of `torch.optim.AdamW` (decoupled
//! weight decay, bias-corrected moments), the learning-rate schedules of `transformers`
//! (linear warm-up, then cosine or linear decay), and global gradient-norm clipping as
//! `torch.nn.utils.clip_grad_norm_` does it.
//!
//! ```
//! use openledger_train::{AdamW, Schedule, lr_at};
//!
//! // warm-up of 2 steps to 1e-3, then cosine to 0 at step 10 (0-based steps, as transformers).
//! assert_eq!(lr_at(Schedule::Cosine, 1e-3, 2, 10, 0), 0.0);
//! assert_eq!(lr_at(Schedule::Cosine, 1e-3, 2, 10, 2), 1e-3);
//! assert!(lr_at(Schedule::Cosine, 1e-3, 2, 10, 10).abs() < 1e-12);
//!
//! let mut opt = AdamW::new(0.9, 0.999, 1e-8, 0.0, &[1]);
//! let mut p = vec![1.0f32];
//! opt.step(0.1, &mut [&mut p[..]], &[&[0.5f32][..]]);
//! assert!((p[0] - 0.9).abs() < 1e-6); // the first Adam step moves by lr (sign of the gradient)
//! ```

/// The decay after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Half a cosine period from the peak to zero (`get_cosine_schedule_with_warmup`).
    Cosine,
    /// Straight line from the peak to zero (`get_linear_schedule_with_warmup`).
    Linear,
    /// The peak rate after warm-up (`get_constant_schedule_with_warmup`).
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = crate::TrainError;

    /// `"cosine"`, `"linear"` or `"constant"` (the names `transformers` uses); anything else
    /// is [`TrainError::InvalidConfig`](crate::TrainError::InvalidConfig) naming `schedule`.
    ///
    /// ```
    /// use openledger_train::Schedule;
    ///
    /// assert_eq!("linear".parse::<Schedule>().unwrap(), Schedule::Linear);
    /// assert!("sawtooth".parse::<Schedule>().unwrap_err().to_string().contains("schedule"));
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "linear" => Ok(Schedule::Linear),
            "constant" => Ok(Schedule::Constant),
            other => Err(crate::TrainError::InvalidConfig {
                field: "schedule",
                reason: format!("{other:?} is not \"cosine\", \"linear\" or \"constant\""),
            }),
        }
    }
}

/// The learning rate of 0-based optimizer step `step` out of `total`, with `warmup` warm-up
/// steps and peak `peak`: `peak · step / warmup` during warm-up, then the schedule's decay over
/// the remaining steps; exactly the `LambdaLR` multipliers of `transformers`, read before the
/// scheduler advances (so the first step of a warm-up runs at rate 0).
pub fn lr_at(schedule: Schedule, peak: f64, warmup: usize, total: usize, step: usize) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let left = total.saturating_sub(warmup).max(1) as f64;
    let factor = match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (total.saturating_sub(step) as f64 / left).max(0.0),
        Schedule::Cosine => {
            let progress = (step - warmup) as f64 / left;
            (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
    };
    peak * factor
}

/// AdamW state for a list of parameter tensors.
#[derive(Clone, Debug)]
pub struct AdamW {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    t: u32,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl AdamW {
    /// Zeroed moments for parameters of the given element counts.
    pub fn new(beta1: f64, beta2: f64, eps: f64, weight_decay: f64, sizes: &[usize]) -> Self {
        AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            t: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u32 {
        self.t
    }

    /// One update at learning rate `lr`, in place, as `torch.optim.AdamW` (non-amsgrad,
    /// single-tensor): `p ← p·(1 − lr·wd)`; `m ← m + (1−β₁)(g − m)`; `v ← β₂v + (1−β₂)g²`;
    /// `p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)`.
    ///
    /// # Panics
    /// When `params` and `grads` do not match the sizes given to [`AdamW::new`].
    pub fn step(&mut self, lr: f64, params: &mut [&mut [f32]], grads: &[&[f32]]) {
        assert_eq!(params.len(), self.m.len(), "parameter count");
        assert_eq!(grads.len(), self.m.len(), "gradient count");
        self.t += 1;
        let t = self.t as i32;
        // Scalars are formed in f64 and rounded once, as torch does with Python floats.
        let b2 = self.beta2 as f32;
        let (w1, w2) = ((1.0 - self.beta1) as f32, (1.0 - self.beta2) as f32);
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt() as f32;
        let step_size = (lr / bc1) as f32;
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let eps = self.eps as f32;
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            assert_eq!(p.len(), self.m[i].len(), "parameter {i} size");
            assert_eq!(g.len(), self.m[i].len(), "gradient {i} size");
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            for j in 0..p.len() {
                let gj = g[j];
                p[j] *= decay;
                m[j] += w1 * (gj - m[j]); // torch: exp_avg.lerp_(grad, 1 - β₁)
                v[j] = b2 * v[j] + w2 * gj * gj;
                let denom = v[j].sqrt() / bc2_sqrt + eps;
                p[j] -= step_size * (m[j] / denom); // torch: addcdiv_(m, denom, -step)
            }
        }
    }
}

/// The global L2 norm of `grads` (accumulated in f64) and, when it exceeds `max_norm`,
/// scales every gradient by `max_norm / (norm + 1e-6)` in place, as
/// `torch.nn.utils.clip_grad_norm_`. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: Option<f64>) -> f64 {
    let norm = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            let c = coef as f32;
            grads
                .iter_mut()
                .flat_map(|g| g.iter_mut())
                .for_each(|x| *x *= c);
        }
    }
    norm
}
