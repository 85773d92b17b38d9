//! Python face of `openledger_poa::split`: exact reward splits in wei. Amounts are Python
//! `int`s (up to 2²⁵⁶ − 1) and every split sums exactly to its input.

use numpy::PyReadonlyArray1;
use numpy::PyUntypedArrayMethods;
use openledger_core::{Address, U256};
use openledger_poa::split::{
    FeeSplit, NegativePolicy, Payout, SplitPolicy, ZeroWeightPolicy, split_bps, split_scores,
    split_weights,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::error::{Result, invalid_arg};
use crate::types::{address, address_str, py_u256, u256};

pub(crate) fn payouts<'py>(py: Python<'py>, ps: &[Payout]) -> PyResult<Bound<'py, PyList>> {
    let items = ps
        .iter()
        .map(|p| payout(py, p))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

fn payout<'py>(py: Python<'py>, p: &Payout) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            address_str(&p.account).into_pyobject(py)?.into_any(),
            py_u256(py, p.amount)?,
        ],
    )
}

pub(crate) fn pairs<'py>(
    name: &str,
    obj: &Bound<'py, PyAny>,
) -> Result<Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
    let mut out = Vec::new();
    for (i, item) in obj.try_iter()?.enumerate() {
        let item = item?;
        let pair: (Bound<'py, PyAny>, Bound<'py, PyAny>) = item.extract().map_err(|_| {
            invalid_arg(&format!("{name}[{i}]"), "expected an (account, value) pair")
        })?;
        out.push(pair);
    }
    Ok(out)
}

pub(crate) fn zero_policy(fallback: Option<&Bound<'_, PyAny>>) -> Result<ZeroWeightPolicy> {
    Ok(match fallback {
        Some(f) => ZeroWeightPolicy::Fallback(address("fallback", f)?),
        None => ZeroWeightPolicy::Reject,
    })
}

pub(crate) fn negative_policy(negative: &str) -> Result<NegativePolicy> {
    match negative {
        "clip" => Ok(NegativePolicy::Clip),
        "reject" => Ok(NegativePolicy::Reject),
        other => Err(invalid_arg(
            "negative",
            format!("expected \"clip\" or \"reject\", found {other:?}"),
        )),
    }
}

/// Accounts (a sequence of addresses) and scores (a 1-D float64 numpy array, read in place, or
/// any sequence of floats) of the same length.
pub(crate) fn scored(
    accounts: &Bound<'_, PyAny>,
    scores: &Bound<'_, PyAny>,
) -> Result<Vec<(Address, f64)>> {
    let accounts = accounts
        .try_iter()?
        .enumerate()
        .map(|(i, a)| address(&format!("accounts[{i}]"), &a?))
        .collect::<Result<Vec<_>>>()?;
    let values: Vec<f64> = if let Ok(arr) = scores.cast::<numpy::PyUntypedArray>() {
        let dtype = arr.dtype().to_string();
        let arr: PyReadonlyArray1<'_, f64> = scores.extract().map_err(|_| {
            invalid_arg(
                "scores",
                format!(
                    "expected a 1-D float64 array, found {}-D {dtype} of shape {:?}",
                    arr.ndim(),
                    arr.shape()
                ),
            )
        })?;
        crate::types::aligned("scores", &arr)?;
        arr.as_array().iter().copied().collect()
    } else {
        scores.extract().map_err(|_| {
            invalid_arg("scores", "expected a float64 array or a sequence of floats")
        })?
    };
    if values.len() != accounts.len() {
        return Err(invalid_arg(
            "scores",
            format!("{} scores for {} accounts", values.len(), accounts.len()),
        ));
    }
    Ok(accounts.into_iter().zip(values).collect())
}

/// Splits `amount` wei by integer `weights` (`[(account, int), …]`) with largest-remainder
/// rounding; returns `[(account, wei), …]` sorted by address, summing exactly to `amount`.
/// With every weight zero, the whole amount goes to `fallback` if given, else `SplitError`.
#[pyfunction(name = "split_weights")]
#[pyo3(signature = (amount, weights, *, fallback = None))]
fn py_split_weights<'py>(
    py: Python<'py>,
    amount: &Bound<'py, PyAny>,
    weights: &Bound<'py, PyAny>,
    fallback: Option<&Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyList>> {
    let amount = u256("amount", amount)?;
    let ws = pairs("weights", weights)?
        .iter()
        .enumerate()
        .map(|(i, (a, w))| {
            Ok((
                address(&format!("weights[{i}]"), a)?,
                u256(&format!("weights[{i}]"), w)?,
            ))
        })
        .collect::<Result<Vec<(Address, U256)>>>()?;
    let zero = zero_policy(fallback)?;
    let out = py.detach(|| split_weights(amount, &ws, zero))?;
    Ok(payouts(py, &out)?)
}

/// Splits `amount` wei by basis points (`[(account, bps), …]`, summing to exactly 10,000).
#[pyfunction(name = "split_bps")]
fn py_split_bps<'py>(
    py: Python<'py>,
    amount: &Bound<'py, PyAny>,
    bps: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyList>> {
    let amount = u256("amount", amount)?;
    let bs = pairs("bps", bps)?
        .iter()
        .enumerate()
        .map(|(i, (a, b))| {
            let name = format!("bps[{i}]");
            let b: u16 = b
                .extract()
                .map_err(|_| invalid_arg(&name, "expected an int in 0 ..= 65535"))?;
            Ok((address(&name, a)?, b))
        })
        .collect::<Result<Vec<(Address, u16)>>>()?;
    let out = py.detach(|| split_bps(amount, &bs))?;
    Ok(payouts(py, &out)?)
}

/// Splits `amount` wei by float `scores` (one per account; a float64 numpy array is read in
/// place). Negative scores are clipped to zero (`negative="clip"`) or refused
/// (`negative="reject"`); non-finite scores are refused.
#[pyfunction(name = "split_scores")]
#[pyo3(signature = (amount, accounts, scores, *, negative = "clip", fallback = None))]
fn py_split_scores<'py>(
    py: Python<'py>,
    amount: &Bound<'py, PyAny>,
    accounts: &Bound<'py, PyAny>,
    scores: &Bound<'py, PyAny>,
    negative: &str,
    fallback: Option<&Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyList>> {
    let amount = u256("amount", amount)?;
    let scored = scored(accounts, scores)?;
    let policy = SplitPolicy {
        negative: negative_policy(negative)?,
        zero_total: zero_policy(fallback)?,
    };
    let out = py.detach(|| split_scores(amount, &scored, &policy))?;
    Ok(payouts(py, &out)?)
}

/// The three-way split of an inference fee: model owner, protocol, and data contributors (the
/// same rule as the `InferencePayments` contract).
#[pyclass(name = "FeeSplit", module = "openledger", frozen)]
pub struct PyFeeSplit {
    inner: FeeSplit,
}

#[pymethods]
impl PyFeeSplit {
    /// `protocol_bps + data_pool_bps` must not exceed 10,000; the owner gets the rest.
    #[new]
    #[pyo3(signature = (owner, protocol, protocol_bps, data_pool_bps, *, negative = "clip", fallback = None))]
    fn new(
        owner: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        protocol_bps: u16,
        data_pool_bps: u16,
        negative: &str,
        fallback: Option<&Bound<'_, PyAny>>,
    ) -> Result<Self> {
        Ok(Self {
            inner: FeeSplit {
                owner: address("owner", owner)?,
                protocol: address("protocol", protocol)?,
                protocol_bps,
                data_pool_bps,
                policy: SplitPolicy {
                    negative: negative_policy(negative)?,
                    zero_total: zero_policy(fallback)?,
                },
            },
        })
    }

    /// Splits `fee` wei; the contributors' pool is split by `scores` over `accounts`. Returns
    /// `{"owner": (account, wei), "protocol": (account, wei), "contributors": [(account, wei), …]}`
    /// whose amounts sum exactly to `fee`.
    fn split<'py>(
        &self,
        py: Python<'py>,
        fee: &Bound<'py, PyAny>,
        accounts: &Bound<'py, PyAny>,
        scores: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyDict>> {
        let fee = u256("fee", fee)?;
        let scored = scored(accounts, scores)?;
        let r = py.detach(|| self.inner.split(fee, &scored))?;
        let d = PyDict::new(py);
        d.set_item("owner", payout(py, &r.owner)?)?;
        d.set_item("protocol", payout(py, &r.protocol)?)?;
        d.set_item("contributors", payouts(py, &r.contributors)?)?;
        Ok(d)
    }
}

/// Adds the split functions and classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_split_weights, m)?)?;
    m.add_function(wrap_pyfunction!(py_split_bps, m)?)?;
    m.add_function(wrap_pyfunction!(py_split_scores, m)?)?;
    m.add_class::<PyFeeSplit>()?;
    Ok(())
}
