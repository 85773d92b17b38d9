//! Weighted combination of several adapters into a new one, with the semantics of PEFT's
//! `add_weighted_adapter`.
//!
//! For each module, with user weight `wⱼ` and module scale `sⱼ` of adapter `j`:
//! - `cat`: `A = [w₁s₁A₁; w₂s₂A₂; …]` (rows), `B = [B₁ B₂ …]` (columns), so the combined
//!   delta is `Σ wⱼ sⱼ BⱼAⱼ`; new rank = Σ rⱼ.
//! - `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: the operator is applied
//!   to the stack of `A`s and, separately, to the stack of `B`s, each with weight
//!   `√(wⱼ sⱼ)` (all adapters must share `r`; `wⱼ sⱼ < 0` is rejected, as PEFT's `math.sqrt`
//!   rejects it).
//! - `svd` and the `*_svd` variants: the operator is applied in delta space to
//!   `Δⱼ = sⱼ BⱼAⱼ` with weight `wⱼ sⱼ` (PEFT multiplies the already-scaled delta by the
//!   scale again; kept here for parity), then the result is factored by a truncated SVD,
//!   `B = U·S`, `A = Vᴴ`, new rank = `svd_rank` or the largest `r`; `svd_clamp` clamps both
//!   factors to the given quantile of their entries.
//!
//! The new adapter's config is the first adapter's with `r = lora_alpha = new rank` (so its
//! scale is 1, or `√r` with rsLoRA), target modules united, and rank/alpha patterns cleared:
//! modules with fewer rows are zero-padded to the new rank as PEFT does. DARE's random masks
//! come from a ChaCha8 generator seeded with [`CombineOptions::seed`], drawn in module-name
//! order, `A` before `B`, adapters in order.
//!
//! ```
//! use openledger_lora::adapter::LoadOptions;
//! use openledger_lora::adapter::build::AdapterBuilder;
//! use openledger_lora::adapter::combine::{CombineOptions, Combination, add_weighted_adapter};
//! use openledger_lora::adapter::config::ConfigSpec;
//!
//! let mut b = AdapterBuilder::new(ConfigSpec::new(2, 4.0, &["q_proj"]));
//! b.random_lora("m.q_proj", 8, 8, 2, 1);
//! let a = b.build(&LoadOptions::default()).unwrap();
//! let opts = CombineOptions::new(Combination::Cat);
//! let both = add_weighted_adapter(&[&a, &a], &[0.5, 0.5], &opts, None).unwrap();
//! let (d, d0) = (both.module("m.q_proj").unwrap().delta(), a.module("m.q_proj").unwrap().delta());
//! assert!(d.iter().zip(&d0).all(|(x, y)| (x - y).abs() < 1e-6));
//! ```

use std::collections::{BTreeMap, BTreeSet};

use nalgebra::DMatrix;
use openledger_core::DType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::adapter::config::{ConfigSpec, LoraConfig, TargetModules};
use crate::adapter::tensors::HostTensor;
use crate::adapter::{LoraAdapter, LoraModule, ModuleKind};
use crate::error::LoraError;

/// PEFT's `combination_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combination {
    /// Weighted sum of the `A`s and of the `B`s.
    Linear,
    /// Concatenation of the factors (rank adds up).
    Cat,
    /// Weighted sum of deltas, refactored by SVD.
    Svd,
    /// TIES on the factors.
    Ties,
    /// TIES on the deltas, then SVD.
    TiesSvd,
    /// DARE (random drop + rescale) then weighted sum, on the factors.
    DareLinear,
    /// DARE then weighted sum on the deltas, then SVD.
    DareLinearSvd,
    /// DARE then TIES sign election, on the factors.
    DareTies,
    /// DARE then TIES on the deltas, then SVD.
    DareTiesSvd,
    /// Magnitude pruning then weighted sum, on the factors.
    MagnitudePrune,
    /// Magnitude pruning then weighted sum on the deltas, then SVD.
    MagnitudePruneSvd,
}

impl Combination {
    /// Every combination type.
    pub const ALL: [Combination; 11] = [
        Combination::Linear,
        Combination::Cat,
        Combination::Svd,
        Combination::Ties,
        Combination::TiesSvd,
        Combination::DareLinear,
        Combination::DareLinearSvd,
        Combination::DareTies,
        Combination::DareTiesSvd,
        Combination::MagnitudePrune,
        Combination::MagnitudePruneSvd,
    ];

    /// PEFT's name of the combination type (`combination_type` of `add_weighted_adapter`).
    pub fn name(self) -> &'static str {
        match self {
            Combination::Linear => "linear",
            Combination::Cat => "cat",
            Combination::Svd => "svd",
            Combination::Ties => "ties",
            Combination::TiesSvd => "ties_svd",
            Combination::DareLinear => "dare_linear",
            Combination::DareLinearSvd => "dare_linear_svd",
            Combination::DareTies => "dare_ties",
            Combination::DareTiesSvd => "dare_ties_svd",
            Combination::MagnitudePrune => "magnitude_prune",
            Combination::MagnitudePruneSvd => "magnitude_prune_svd",
        }
    }

    fn is_svd(self) -> bool {
        matches!(
            self,
            Combination::Svd
                | Combination::TiesSvd
                | Combination::DareLinearSvd
                | Combination::DareTiesSvd
                | Combination::MagnitudePruneSvd
        )
    }

    /// The operator applied to a stack of tensors.
    fn operator(self) -> Operator {
        match self {
            Combination::Linear | Combination::Svd | Combination::Cat => Operator::TaskArithmetic,
            Combination::Ties | Combination::TiesSvd => Operator::Ties,
            Combination::DareLinear | Combination::DareLinearSvd => Operator::DareLinear,
            Combination::DareTies | Combination::DareTiesSvd => Operator::DareTies,
            Combination::MagnitudePrune | Combination::MagnitudePruneSvd => {
                Operator::MagnitudePrune
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    TaskArithmetic,
    Ties,
    DareLinear,
    DareTies,
    MagnitudePrune,
}

impl std::str::FromStr for Combination {
    type Err = LoraError;

    /// A combination type by PEFT's name ([`Combination::name`]).
    fn from_str(s: &str) -> Result<Self, LoraError> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                LoraError::arg(
                    "combination_type",
                    format!("{s:?} is not one of {:?}", Self::ALL.map(Combination::name)),
                )
            })
    }
}

impl std::str::FromStr for MajoritySign {
    type Err = LoraError;

    /// PEFT's `majority_sign_method`: `"total"` or `"frequency"`.
    fn from_str(s: &str) -> Result<Self, LoraError> {
        match s {
            "total" => Ok(MajoritySign::Total),
            "frequency" => Ok(MajoritySign::Frequency),
            other => Err(LoraError::arg(
                "majority_sign_method",
                format!("{other:?} is not \"total\" or \"frequency\""),
            )),
        }
    }
}

/// How TIES elects the sign of each entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MajoritySign {
    /// Sign of the sum of the (pruned) values.
    #[default]
    Total,
    /// Sign held by more (pruned) values.
    Frequency,
}

/// Options of [`add_weighted_adapter`].
#[derive(Clone, Debug)]
pub struct CombineOptions {
    /// The combination type.
    pub combination: Combination,
    /// Rank of the SVD result (default: the largest `r`).
    pub svd_rank: Option<usize>,
    /// Quantile in `[0, 1]` at which to clamp the SVD factors.
    pub svd_clamp: Option<f64>,
    /// Fraction of entries kept by TIES / DARE / magnitude pruning (required by them).
    pub density: Option<f32>,
    /// TIES sign election.
    pub majority_sign: MajoritySign,
    /// Seed of DARE's random masks.
    pub seed: u64,
    /// dtype of the new adapter's factors.
    pub dtype: DType,
}

impl CombineOptions {
    /// Defaults for `combination`: no density, total majority sign, seed 0, f32 output.
    pub fn new(combination: Combination) -> Self {
        CombineOptions {
            combination,
            svd_rank: None,
            svd_clamp: None,
            density: None,
            majority_sign: MajoritySign::Total,
            seed: 0,
            dtype: DType::F32,
        }
    }
}

/// Combines `adapters` with `weights` into a new adapter (see the module docs).
///
/// `progress`, when given, is called after each module with `(done, total)`.
pub fn add_weighted_adapter(
    adapters: &[&LoraAdapter],
    weights: &[f32],
    opts: &CombineOptions,
    mut progress: Option<&mut dyn FnMut(usize, usize)>,
) -> Result<LoraAdapter, LoraError> {
    if adapters.is_empty() {
        return Err(LoraError::arg("adapters", "at least one adapter is needed"));
    }
    if weights.len() != adapters.len() {
        return Err(LoraError::arg(
            "weights",
            format!("{} weights for {} adapters", weights.len(), adapters.len()),
        ));
    }
    if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite()) {
        return Err(LoraError::arg("weights", format!("weight {i} is {w}")));
    }
    let combination = if adapters.len() == 1 {
        Combination::Linear
    } else {
        opts.combination
    };
    let op = combination.operator();
    if matches!(
        op,
        Operator::Ties | Operator::DareLinear | Operator::DareTies | Operator::MagnitudePrune
    ) {
        match opts.density {
            None => {
                return Err(LoraError::arg(
                    "density",
                    format!("{combination:?} needs a density"),
                ));
            }
            Some(d) if d.is_nan() || d < 0.0 => {
                return Err(LoraError::arg("density", format!("must be ≥ 0, found {d}")));
            }
            _ => {}
        }
    }
    if let Some(c) = opts.svd_clamp
        && !(0.0..=1.0).contains(&c)
    {
        return Err(LoraError::arg(
            "svd_clamp",
            format!("must be in [0, 1], found {c}"),
        ));
    }

    for (i, a) in adapters.iter().enumerate() {
        let spec = a.config().spec();
        let why = if spec.use_dora {
            Some("DoRA magnitudes")
        } else if spec.lora_bias {
            Some("lora_bias")
        } else if a.saved_tensors().len() > 0 {
            Some("saved modules or biases")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(LoraError::Unsupported {
                what: format!("weighted combination of adapter {i}, which has {why}"),
            });
        }
        if spec.fan_in_fan_out != adapters[0].config().spec().fan_in_fan_out {
            return Err(LoraError::arg("adapters", "mixed fan_in_fan_out settings"));
        }
    }
    let ranks: Vec<usize> = adapters.iter().map(|a| a.config().r()).collect();
    let new_rank = if combination == Combination::Cat {
        ranks.iter().sum()
    } else if combination.is_svd() {
        opts.svd_rank
            .unwrap_or_else(|| *ranks.iter().max().unwrap_or(&1))
    } else {
        if ranks.iter().any(|r| *r != ranks[0]) {
            return Err(LoraError::arg(
                "adapters",
                format!("{combination:?} needs every adapter to have the same r, found {ranks:?}"),
            ));
        }
        ranks[0]
    };
    if new_rank == 0 {
        return Err(LoraError::arg("svd_rank", "must be positive"));
    }
    let config = new_config(adapters, new_rank)?;

    let names: BTreeSet<&str> = adapters
        .iter()
        .flat_map(|a| a.modules().map(|(n, _)| n))
        .collect();
    let total = names.len();
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut modules = BTreeMap::new();
    for (done, name) in names.into_iter().enumerate() {
        let present: Vec<(&LoraModule, f32)> = adapters
            .iter()
            .zip(weights)
            .filter_map(|(a, w)| a.module(name).map(|m| (m, *w)))
            .collect();
        let first = present[0].0;
        if let Some((m, _)) = present.iter().find(|(m, _)| {
            m.kind() != first.kind()
                || m.in_features() != first.in_features()
                || m.out_features() != first.out_features()
        }) {
            return Err(LoraError::arg(
                "adapters",
                format!(
                    "module {name:?} is [{}, {}] in one adapter and [{}, {}] in another",
                    first.out_features(),
                    first.in_features(),
                    m.out_features(),
                    m.in_features()
                ),
            ));
        }
        let (n_in, n_out) = (first.in_features(), first.out_features());
        let (a, b, rank) = if combination == Combination::Cat {
            cat(&present, n_in, n_out)
        } else if combination.is_svd() {
            let deltas: Vec<Vec<f32>> = present.iter().map(|(m, _)| m.delta()).collect();
            let w: Vec<f32> = present.iter().map(|(m, w)| w * m.scale()).collect();
            let d = apply_operator(op, &deltas, &w, opts, &mut rng);
            svd_factors(&d, n_out, n_in, new_rank, opts.svd_clamp)
        } else {
            let mut w = Vec::with_capacity(present.len());
            for (m, wj) in &present {
                let ws = wj * m.scale();
                if ws < 0.0 {
                    return Err(LoraError::arg(
                        "weights",
                        format!(
                            "{combination:?} takes √(weight·scale) and module {name:?} gives {ws}"
                        ),
                    ));
                }
                w.push(ws.sqrt());
            }
            let r = first.rank();
            if let Some((m, _)) = present.iter().find(|(m, _)| m.rank() != r) {
                return Err(LoraError::arg(
                    "adapters",
                    format!(
                        "module {name:?} has rank {r} in one adapter and {} in another",
                        m.rank()
                    ),
                ));
            }
            let a_stack: Vec<Vec<f32>> = present
                .iter()
                .map(|(m, _)| m.a_f32().into_owned())
                .collect();
            let b_stack: Vec<Vec<f32>> = present
                .iter()
                .map(|(m, _)| m.b_f32().into_owned())
                .collect();
            let a = apply_operator(op, &a_stack, &w, opts, &mut rng);
            let b = apply_operator(op, &b_stack, &w, opts, &mut rng);
            (a, b, r)
        };
        let (a, b) = pad_rank(a, b, rank, new_rank, n_in, n_out);
        let m = LoraModule::new(
            first.kind(),
            HostTensor::from_f32(opts.dtype, vec![new_rank, n_in], &a),
            HostTensor::from_f32(opts.dtype, vec![n_out, new_rank], &b),
            config.scale_for(name),
            None,
            None,
            first.fan_in_fan_out() && first.kind() == ModuleKind::Linear,
        );
        modules.insert(name.to_string(), m);
        if let Some(p) = progress.as_mut() {
            p(done + 1, total);
        }
    }
    Ok(LoraAdapter::from_parts(config, modules, BTreeMap::new()))
}

fn new_config(adapters: &[&LoraAdapter], new_rank: usize) -> Result<LoraConfig, LoraError> {
    let specs: Vec<&ConfigSpec> = adapters.iter().map(|a| a.config().spec()).collect();
    let target_modules = match &specs[0].target_modules {
        TargetModules::Names(_) => {
            let mut all = BTreeSet::new();
            for s in &specs {
                match &s.target_modules {
                    TargetModules::Names(n) => all.extend(n.iter().cloned()),
                    _ => return Err(mixed_targets()),
                }
            }
            TargetModules::Names(all.into_iter().collect())
        }
        TargetModules::Regex(_) => {
            let mut parts = Vec::new();
            for s in &specs {
                match &s.target_modules {
                    TargetModules::Regex(r) => parts.push(format!("({r})")),
                    _ => return Err(mixed_targets()),
                }
            }
            TargetModules::Regex(parts.join("|"))
        }
        TargetModules::AllLinear => {
            if specs
                .iter()
                .any(|s| s.target_modules != TargetModules::AllLinear)
            {
                return Err(mixed_targets());
            }
            TargetModules::AllLinear
        }
    };
    let mut spec = specs[0].clone();
    spec.r = new_rank;
    spec.lora_alpha = new_rank as f64;
    spec.target_modules = target_modules;
    spec.rank_pattern.clear();
    spec.alpha_pattern.clear();
    // Layer restrictions and exclusions of different adapters cannot be united in one config;
    // the combined adapter lists exactly the modules it has, so drop them.
    spec.layers_to_transform = None;
    spec.layers_pattern = None;
    spec.exclude_modules = None;
    LoraConfig::new(spec)
}

fn mixed_targets() -> LoraError {
    LoraError::arg(
        "adapters",
        "target_modules mix a list, a regex and \"all-linear\"; PEFT cannot combine them",
    )
}

fn cat(present: &[(&LoraModule, f32)], n_in: usize, n_out: usize) -> (Vec<f32>, Vec<f32>, usize) {
    let rank: usize = present.iter().map(|(m, _)| m.rank()).sum();
    let mut a = Vec::with_capacity(rank * n_in);
    let mut b = vec![0f32; n_out * rank];
    let mut col = 0;
    for (m, w) in present {
        let f = w * m.scale();
        a.extend(m.a_f32().iter().map(|x| x * f));
        let (r, bm) = (m.rank(), m.b_f32());
        for o in 0..n_out {
            b[o * rank + col..o * rank + col + r].copy_from_slice(&bm[o * r..(o + 1) * r]);
        }
        col += r;
    }
    (a, b, rank)
}

/// Zero-pads `A` `[rank, in]` / `B` `[out, rank]` to `new_rank` (or cuts extra zero rank).
fn pad_rank(
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    new_rank: usize,
    n_in: usize,
    n_out: usize,
) -> (Vec<f32>, Vec<f32>) {
    if rank == new_rank {
        return (a, b);
    }
    let keep = rank.min(new_rank);
    let mut a2 = vec![0f32; new_rank * n_in];
    a2[..keep * n_in].copy_from_slice(&a[..keep * n_in]);
    let mut b2 = vec![0f32; n_out * new_rank];
    for o in 0..n_out {
        b2[o * new_rank..o * new_rank + keep].copy_from_slice(&b[o * rank..o * rank + keep]);
    }
    (a2, b2)
}

/// Keeps the `⌊density·n⌋` entries of largest magnitude (ties broken by position); density
/// ≥ 1 keeps everything.
pub fn magnitude_prune_one(t: &[f32], density: f32) -> Vec<f32> {
    if density >= 1.0 {
        return t.to_vec();
    }
    let k = (density as f64 * t.len() as f64) as usize;
    let mut idx: Vec<usize> = (0..t.len()).collect();
    idx.sort_by(|&i, &j| t[j].abs().total_cmp(&t[i].abs()).then(i.cmp(&j)));
    let mut out = vec![0f32; t.len()];
    for &i in &idx[..k] {
        out[i] = t[i];
    }
    out
}

/// DARE's random drop: keeps each entry with probability `density` and divides kept ones by
/// `density`; density ≥ 1 keeps everything.
pub fn dare_prune_one(t: &[f32], density: f32, rng: &mut impl Rng) -> Vec<f32> {
    if density >= 1.0 {
        return t.to_vec();
    }
    t.iter()
        .map(|x| {
            if rng.random::<f32>() < density {
                x / density
            } else {
                0.0
            }
        })
        .collect()
}

fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// TIES's sign election and disjoint mean over pruned tensors with weights.
fn ties_merge(pruned: &[Vec<f32>], w: &[f32], method: MajoritySign) -> Vec<f32> {
    let n = pruned[0].len();
    (0..n)
        .map(|e| {
            let mag: f32 = match method {
                MajoritySign::Total => pruned.iter().map(|t| t[e]).sum(),
                MajoritySign::Frequency => pruned.iter().map(|t| sign(t[e])).sum(),
            };
            let majority = if mag >= 0.0 { 1.0 } else { -1.0 };
            let (mut sum, mut count) = (0f32, 0f32);
            for (t, wj) in pruned.iter().zip(w) {
                if sign(t[e]) == majority {
                    sum += t[e] * wj;
                    count += 1.0;
                }
            }
            sum / count.max(1.0)
        })
        .collect()
}

fn weighted_sum(ts: &[Vec<f32>], w: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; ts[0].len()];
    for (t, wj) in ts.iter().zip(w) {
        out.iter_mut().zip(t).for_each(|(o, x)| *o += wj * x);
    }
    out
}

fn apply_operator(
    op: Operator,
    ts: &[Vec<f32>],
    w: &[f32],
    opts: &CombineOptions,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let density = opts.density.unwrap_or(1.0);
    match op {
        Operator::TaskArithmetic => weighted_sum(ts, w),
        Operator::MagnitudePrune => {
            let p: Vec<Vec<f32>> = ts.iter().map(|t| magnitude_prune_one(t, density)).collect();
            weighted_sum(&p, w)
        }
        Operator::Ties => {
            let p: Vec<Vec<f32>> = ts.iter().map(|t| magnitude_prune_one(t, density)).collect();
            ties_merge(&p, w, opts.majority_sign)
        }
        Operator::DareLinear => {
            let p: Vec<Vec<f32>> = ts.iter().map(|t| dare_prune_one(t, density, rng)).collect();
            weighted_sum(&p, w)
        }
        Operator::DareTies => {
            let p: Vec<Vec<f32>> = ts.iter().map(|t| dare_prune_one(t, density, rng)).collect();
            ties_merge(&p, w, opts.majority_sign)
        }
    }
}

/// Truncated SVD of `d` (`[out, in]`): returns `A = Vᴴ[:k]`, `B = U[:, :k]·S[:k]` and `k`
/// (at most `min(out, in)`), optionally clamped at a quantile of their entries.
fn svd_factors(
    d: &[f32],
    n_out: usize,
    n_in: usize,
    rank: usize,
    clamp: Option<f64>,
) -> (Vec<f32>, Vec<f32>, usize) {
    let m = DMatrix::<f64>::from_row_slice(
        n_out,
        n_in,
        &d.iter().map(|x| f64::from(*x)).collect::<Vec<_>>(),
    );
    let svd = m.svd(true, true);
    let (u, vt) = (
        svd.u.expect("u was requested"),
        svd.v_t.expect("v_t was requested"),
    );
    let s = svd.singular_values;
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&i, &j| s[j].total_cmp(&s[i]));
    let k = rank.min(s.len());
    let mut a = vec![0f64; k * n_in];
    let mut b = vec![0f64; n_out * k];
    for (c, &j) in order[..k].iter().enumerate() {
        for i in 0..n_in {
            a[c * n_in + i] = vt[(j, i)];
        }
        for o in 0..n_out {
            b[o * k + c] = u[(o, j)] * s[j];
        }
    }
    if let Some(q) = clamp {
        let mut all: Vec<f64> = b.iter().chain(a.iter()).copied().collect();
        all.sort_by(f64::total_cmp);
        let hi = quantile_sorted(&all, q);
        a.iter_mut().for_each(|x| *x = x.clamp(-hi.abs(), hi.abs()));
        b.iter_mut().for_each(|x| *x = x.clamp(-hi.abs(), hi.abs()));
    }
    (
        a.into_iter().map(|x| x as f32).collect(),
        b.into_iter().map(|x| x as f32).collect(),
        k,
    )
}

/// Linear-interpolated quantile of sorted values (torch.quantile's default).
fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}
