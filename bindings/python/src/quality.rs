//! Python face of `openledger_poa::quality`: near-duplicate clusters of a datanet's records
//! (MinHash + LSH over character or word shingles, plus exact duplicates), rewards where each
//! cluster counts once and belongs to its first committed record, flags for copies and for
//! records whose influence is harmful, and penalty policies.

use openledger_core::Address;
use openledger_poa::quality::{
    ClusterShare, Clusters, ExcludeAfter, Flag, ForfeitNegative, MinHashConfig, PenaltyPolicy,
    Shingle, apply_penalties, cluster_near_duplicates, cluster_rewards, flag_copies, flag_negative,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::error::{Result, invalid_arg};
use crate::types::{address, address_str};

fn addresses(name: &str, obj: &Bound<'_, PyAny>) -> Result<Vec<Address>> {
    obj.try_iter()?
        .enumerate()
        .map(|(i, a)| address(&format!("{name}[{i}]"), &a?))
        .collect()
}

fn weights_out(ws: &[(Address, f64)]) -> Vec<(String, f64)> {
    ws.iter().map(|(a, w)| (address_str(a), *w)).collect()
}

/// The near-duplicate clusters of `texts`: `cluster_of[i]` is the smallest index of record
/// `i`'s cluster. Shingles are runs of `n` characters (`shingle="chars"`, after lower-casing
/// and collapsing whitespace) or words (`"words"`); two records join when `rows` minhashes of
/// one of `bands` bands agree and their estimated Jaccard similarity is at least `threshold`.
#[pyfunction(name = "cluster_near_duplicates")]
#[pyo3(signature = (texts, *, shingle = "chars", n = 5, bands = 16, rows = 4, threshold = 0.7, seed = None))]
#[allow(clippy::too_many_arguments)]
fn py_cluster_near_duplicates(
    py: Python<'_>,
    texts: Vec<String>,
    shingle: &str,
    n: usize,
    bands: usize,
    rows: usize,
    threshold: f64,
    seed: Option<u64>,
) -> Result<Vec<usize>> {
    if n == 0 {
        return Err(invalid_arg(
            "n",
            "a shingle needs at least one character or word",
        ));
    }
    let shingle = match shingle {
        "chars" => Shingle::Chars(n),
        "words" => Shingle::Words(n),
        other => {
            return Err(invalid_arg(
                "shingle",
                format!("expected \"chars\" or \"words\", found {other:?}"),
            ));
        }
    };
    let mut cfg = MinHashConfig {
        shingle,
        bands,
        rows,
        threshold,
        ..MinHashConfig::default()
    };
    if let Some(s) = seed {
        cfg.seed = s;
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let c = py.detach(|| cluster_near_duplicates(&refs, &cfg))?;
    Ok(c.cluster_of)
}

/// Per-contributor reward weights where each cluster counts once with the score of its best
/// member (near-duplicate copies add nothing), shared by `share`: `"first_committed"` (the
/// default: all to the contributor of its first committed record, the lowest index, so copies
/// earn nothing whoever submitted them) or `"per_contributor"` (equally among the cluster's
/// distinct contributors; copying pays under it, so it is there to measure that). Returns
/// `[(account, weight)]` sorted by address.
#[pyfunction(name = "cluster_rewards")]
#[pyo3(signature = (cluster_of, contributors, scores, *, share = "first_committed"))]
fn py_cluster_rewards(
    cluster_of: Vec<usize>,
    contributors: &Bound<'_, PyAny>,
    scores: Vec<f64>,
    share: &str,
) -> Result<Vec<(String, f64)>> {
    let contributors = addresses("contributors", contributors)?;
    let share: ClusterShare = share.parse()?;
    if let Some((i, &c)) = cluster_of
        .iter()
        .enumerate()
        .find(|(_, c)| **c >= cluster_of.len())
    {
        return Err(invalid_arg(
            &format!("cluster_of[{i}]"),
            format!("{c} is not a record index (there are {})", cluster_of.len()),
        ));
    }
    let clusters = Clusters { cluster_of };
    Ok(weights_out(&cluster_rewards(
        &clusters,
        &contributors,
        &scores,
        share,
    )?))
}

/// Flags every record that copies an earlier one (every cluster member but its first committed
/// record, with `cluster_of` over the datanet's records in commit order): dicts `{"index",
/// "contributor", "original", "owner"}` where `owner` submitted record `original`.
#[pyfunction(name = "flag_copies")]
fn py_flag_copies<'py>(
    py: Python<'py>,
    cluster_of: Vec<usize>,
    contributors: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyList>> {
    let contributors = addresses("contributors", contributors)?;
    let flags = flag_copies(&Clusters { cluster_of }, &contributors)?;
    let items = flags
        .iter()
        .map(|f| {
            let d = PyDict::new(py);
            d.set_item("index", f.index)?;
            d.set_item("contributor", address_str(&f.contributor))?;
            d.set_item("original", f.original)?;
            d.set_item("owner", address_str(&f.owner))?;
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyList::new(py, items)?)
}

fn flag_dict<'py>(py: Python<'py>, f: &Flag) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("index", f.index)?;
    d.set_item("contributor", address_str(&f.contributor))?;
    d.set_item("score", f.score)?;
    Ok(d)
}

/// Flags every record scoring below `threshold` (default 0: harmful on balance): dicts
/// `{"index", "contributor", "score"}`.
#[pyfunction(name = "flag_negative")]
#[pyo3(signature = (contributors, scores, *, threshold = 0.0))]
fn py_flag_negative<'py>(
    py: Python<'py>,
    contributors: &Bound<'py, PyAny>,
    scores: Vec<f64>,
    threshold: f64,
) -> Result<Bound<'py, PyList>> {
    let contributors = addresses("contributors", contributors)?;
    let flags = flag_negative(&contributors, &scores, threshold)?;
    let items = flags
        .iter()
        .map(|f| flag_dict(py, f))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyList::new(py, items)?)
}

/// Applies a penalty policy to per-contributor `weights` (`[(account, weight)]`) given the
/// `flags` of `flag_negative`: `"forfeit"` counts flagged scores against the contributor's
/// weight `factor` times (floored at 0); `"exclude"` gives nothing to a contributor with at
/// least `max_flags` flags.
#[pyfunction(name = "apply_penalties")]
#[pyo3(signature = (weights, flags, *, policy = "forfeit", factor = 1.0, max_flags = 1))]
fn py_apply_penalties(
    weights: &Bound<'_, PyAny>,
    flags: &Bound<'_, PyAny>,
    policy: &str,
    factor: f64,
    max_flags: usize,
) -> Result<Vec<(String, f64)>> {
    let weights = weights
        .try_iter()?
        .enumerate()
        .map(|(i, p)| {
            let p = p?;
            let name = format!("weights[{i}]");
            let (a, w): (Bound<'_, PyAny>, f64) = p
                .extract()
                .map_err(|_| invalid_arg(&name, "expected an (account, weight) pair"))?;
            Ok((address(&name, &a)?, w))
        })
        .collect::<Result<Vec<_>>>()?;
    let flags = flags
        .try_iter()?
        .enumerate()
        .map(|(i, f)| {
            let f = f?;
            let name = format!("flags[{i}]");
            let get = |k: &str| {
                f.get_item(k)
                    .map_err(|_| invalid_arg(&name, format!("expected a dict with {k:?}")))
            };
            Ok(Flag {
                index: get("index")?
                    .extract()
                    .map_err(|_| invalid_arg(&name, "index is not an int"))?,
                contributor: address(&name, &get("contributor")?)?,
                score: get("score")?
                    .extract()
                    .map_err(|_| invalid_arg(&name, "score is not a float"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if !factor.is_finite() || factor < 0.0 {
        return Err(invalid_arg(
            "factor",
            format!("{factor} is not a finite number ≥ 0"),
        ));
    }
    let policy: Box<dyn PenaltyPolicy> = match policy {
        "forfeit" => Box::new(ForfeitNegative { factor }),
        "exclude" => Box::new(ExcludeAfter { max_flags }),
        other => {
            return Err(invalid_arg(
                "policy",
                format!("expected \"forfeit\" or \"exclude\", found {other:?}"),
            ));
        }
    };
    Ok(weights_out(&apply_penalties(
        &weights,
        &flags,
        policy.as_ref(),
    )))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_cluster_near_duplicates, m)?)?;
    m.add_function(wrap_pyfunction!(py_cluster_rewards, m)?)?;
    m.add_function(wrap_pyfunction!(py_flag_copies, m)?)?;
    m.add_function(wrap_pyfunction!(py_flag_negative, m)?)?;
    m.add_function(wrap_pyfunction!(py_apply_penalties, m)?)?;
    Ok(())
}
