//! JavaScript face of `openledger_poa::quality`: near-duplicate clusters of a datanet's records
//! (MinHash + LSH over character or word shingles, plus exact duplicates), rewards where each
//! cluster counts once and belongs to its first committed record, flags for copies and for
//! records whose influence is harmful, and penalty policies.

use napi_derive::napi;
use openledger_core::Address;
use openledger_poa::quality::{
    ClusterShare, Clusters, ExcludeAfter, Flag as RustFlag, ForfeitNegative, MinHashConfig,
    PenaltyPolicy, Shingle, apply_penalties as rust_apply, cluster_near_duplicates as rust_cluster,
    cluster_rewards as rust_rewards, flag_copies as rust_flag_copies, flag_negative as rust_flag,
};

use crate::error::{JsResult, Result, invalid_arg};
use crate::task::count;
use crate::types::{Bytes, address, address_str};

/// How records are compared.
#[napi(object)]
pub struct ClusterOptions {
    /// `"chars"` (default: runs of `n` characters, after lower-casing and collapsing
    /// whitespace) or `"words"`.
    pub shingle: Option<String>,
    /// Shingle length (default 5).
    pub n: Option<f64>,
    /// LSH bands (default 16).
    pub bands: Option<f64>,
    /// Minhashes per band (default 4).
    pub rows: Option<f64>,
    /// Estimated Jaccard similarity needed to join (default 0.7).
    pub threshold: Option<f64>,
    /// Seed of the hash family.
    pub seed: Option<f64>,
}

/// The near-duplicate clusters of `texts`: element `i` is the smallest index of record `i`'s
/// cluster.
#[napi(catch_unwind)]
pub fn cluster_near_duplicates(
    texts: Vec<String>,
    options: Option<ClusterOptions>,
) -> Result<Vec<f64>> {
    let mut cfg = MinHashConfig::default();
    if let Some(o) = options {
        let n = o.n.map_or(Ok(5), |n| count("n", n))?;
        if n == 0 {
            return Err(invalid_arg(
                "n",
                "a shingle needs at least one character or word",
            ));
        }
        cfg.shingle = match o.shingle.as_deref() {
            None | Some("chars") => Shingle::Chars(n),
            Some("words") => Shingle::Words(n),
            Some(other) => {
                return Err(invalid_arg(
                    "shingle",
                    format!("expected \"chars\" or \"words\", found {other:?}"),
                ));
            }
        };
        if let Some(b) = o.bands {
            cfg.bands = count("bands", b)?;
        }
        if let Some(r) = o.rows {
            cfg.rows = count("rows", r)?;
        }
        if let Some(t) = o.threshold {
            cfg.threshold = t;
        }
        if let Some(s) = o.seed {
            cfg.seed = count("seed", s)? as u64;
        }
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let c = rust_cluster(&refs, &cfg).js()?;
    Ok(c.cluster_of.into_iter().map(|i| i as f64).collect())
}

/// An account and its reward weight.
#[napi(object)]
pub struct ContributorWeight {
    /// The account (checksummed when it comes out).
    pub account: String,
    /// Its weight.
    pub weight: f64,
}

fn addresses(name: &str, v: &[Bytes]) -> Result<Vec<Address>> {
    v.iter()
        .enumerate()
        .map(|(i, a)| address(&format!("{name}[{i}]"), a))
        .collect()
}

fn weights_out(ws: Vec<(Address, f64)>) -> Vec<ContributorWeight> {
    ws.into_iter()
        .map(|(a, weight)| ContributorWeight {
            account: address_str(&a),
            weight,
        })
        .collect()
}

/// Per-contributor reward weights where each cluster counts once with the score of its best
/// member (near-duplicate copies add nothing), shared by `share`: `"first_committed"` (the
/// default: all to the contributor of its first committed record, the lowest index, so copies
/// earn nothing whoever submitted them) or `"per_contributor"` (equally among the cluster's
/// distinct contributors; copying pays under it, so it is there to measure that). Sorted by
/// address.
#[napi(catch_unwind)]
pub fn cluster_rewards(
    cluster_of: Vec<f64>,
    contributors: Vec<Bytes>,
    scores: Vec<f64>,
    share: Option<String>,
) -> Result<Vec<ContributorWeight>> {
    let n = cluster_of.len();
    let cluster_of = cluster_of
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let c = count(&format!("clusterOf[{i}]"), c)?;
            if c >= n {
                return Err(invalid_arg(
                    &format!("clusterOf[{i}]"),
                    format!("{c} is not a record index (there are {n})"),
                ));
            }
            Ok(c)
        })
        .collect::<Result<Vec<_>>>()?;
    let share: ClusterShare = share.as_deref().unwrap_or("first_committed").parse().js()?;
    let contributors = addresses("contributors", &contributors)?;
    let w = rust_rewards(&Clusters { cluster_of }, &contributors, &scores, share).js()?;
    Ok(weights_out(w))
}

/// A record that copies an earlier one.
#[napi(object)]
pub struct CopyFlag {
    /// The copy's index.
    pub index: f64,
    /// Who submitted it.
    pub contributor: String,
    /// The index of the cluster's first committed record.
    pub original: f64,
    /// Who submitted that record.
    pub owner: String,
}

/// Flags every record that copies an earlier one: every cluster member but its first committed
/// record, with `clusterOf` over the datanet's records in commit order.
#[napi(catch_unwind)]
pub fn flag_copies(cluster_of: Vec<f64>, contributors: Vec<Bytes>) -> Result<Vec<CopyFlag>> {
    let cluster_of = cluster_of
        .iter()
        .enumerate()
        .map(|(i, &c)| count(&format!("clusterOf[{i}]"), c))
        .collect::<Result<Vec<_>>>()?;
    let contributors = addresses("contributors", &contributors)?;
    let flags = rust_flag_copies(&Clusters { cluster_of }, &contributors).js()?;
    Ok(flags
        .into_iter()
        .map(|f| CopyFlag {
            index: f.index as f64,
            contributor: address_str(&f.contributor),
            original: f.original as f64,
            owner: address_str(&f.owner),
        })
        .collect())
}

/// A record whose influence is below the flagging threshold.
#[napi(object)]
pub struct Flag {
    /// Its index.
    pub index: f64,
    /// Its contributor.
    pub contributor: String,
    /// Its score.
    pub score: f64,
}

/// Flags every record scoring below `threshold` (default 0: harmful on balance).
#[napi(catch_unwind)]
pub fn flag_negative(
    contributors: Vec<Bytes>,
    scores: Vec<f64>,
    threshold: Option<f64>,
) -> Result<Vec<Flag>> {
    let contributors = addresses("contributors", &contributors)?;
    let flags = rust_flag(&contributors, &scores, threshold.unwrap_or(0.0)).js()?;
    Ok(flags
        .into_iter()
        .map(|f| Flag {
            index: f.index as f64,
            contributor: address_str(&f.contributor),
            score: f.score,
        })
        .collect())
}

/// How flags change a contributor's weight.
#[napi(object)]
pub struct PenaltyOptions {
    /// `"forfeit"` (default: flagged scores count against the weight `factor` times, floored
    /// at 0) or `"exclude"` (nothing for a contributor with at least `maxFlags` flags).
    pub policy: Option<String>,
    /// Multiplier of the flagged scores (default 1).
    pub factor: Option<f64>,
    /// Flags tolerated before exclusion (default 1).
    pub max_flags: Option<f64>,
}

/// Applies a penalty policy to per-contributor `weights` given the `flags` of `flagNegative`.
#[napi(catch_unwind)]
pub fn apply_penalties(
    weights: Vec<ContributorWeight>,
    flags: Vec<Flag>,
    options: Option<PenaltyOptions>,
) -> Result<Vec<ContributorWeight>> {
    let weights = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let a = address(
                &format!("weights[{i}]"),
                &napi::Either::A(w.account.clone()),
            )?;
            Ok((a, w.weight))
        })
        .collect::<Result<Vec<_>>>()?;
    let flags = flags
        .iter()
        .enumerate()
        .map(|(i, f)| {
            Ok(RustFlag {
                index: count(&format!("flags[{i}].index"), f.index)?,
                contributor: address(
                    &format!("flags[{i}].contributor"),
                    &napi::Either::A(f.contributor.clone()),
                )?,
                score: f.score,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let o = options.unwrap_or(PenaltyOptions {
        policy: None,
        factor: None,
        max_flags: None,
    });
    let factor = o.factor.unwrap_or(1.0);
    if !factor.is_finite() || factor < 0.0 {
        return Err(invalid_arg(
            "factor",
            format!("{factor} is not a finite number ≥ 0"),
        ));
    }
    let policy: Box<dyn PenaltyPolicy> = match o.policy.as_deref() {
        None | Some("forfeit") => Box::new(ForfeitNegative { factor }),
        Some("exclude") => Box::new(ExcludeAfter {
            max_flags: o.max_flags.map_or(Ok(1), |m| count("maxFlags", m))?,
        }),
        Some(other) => {
            return Err(invalid_arg(
                "policy",
                format!("expected \"forfeit\" or \"exclude\", found {other:?}"),
            ));
        }
    };
    Ok(weights_out(rust_apply(&weights, &flags, policy.as_ref())))
}
