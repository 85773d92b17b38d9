//! Python face of `openledger_chain::abi`, `evm` and `deploy`: contract calldata, return values,
//! events and reverts by name, and the in-process EVM that runs the real compiled contracts.
//!
//! Solidity values map to Python as: `uintN`/`intN` ↔ `int` (exact), `address` ↔ checksummed
//! `str`, `bytesN` ↔ `0x` hex `str` (bytes accepted going in), `bytes` ↔ `bytes`, `string` ↔
//! `str`, `bool` ↔ `bool`, arrays ↔ `list`, structs and tuples ↔ `tuple` (any sequence going in).

use std::sync::Mutex;

use openledger_chain::abi::{self, ContractAbi, DecodedRevert};
use openledger_chain::deploy::{DeployConfig, Deployment};
use openledger_chain::evm::{EmbeddedChain, TxOutcome};
use openledger_chain::{ChainError, DynSolValue};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use serde_json::Value;

use crate::error::{Error, Result, TransactionError, busy, invalid_arg};
use crate::merkle::to_json;
use crate::types::{address, address_str, py_u256, u256};

fn contract(name: &str) -> Result<&'static ContractAbi> {
    Ok(ContractAbi::named(name)?)
}

fn args_json(args: &Bound<'_, PyAny>) -> Result<Vec<Value>> {
    if args.is_none() {
        return Ok(Vec::new());
    }
    args.try_iter()
        .map_err(|_| invalid_arg("args", "expected a list of arguments"))?
        .enumerate()
        .map(|(i, a)| to_json(&format!("args[{i}]"), &a?))
        .collect()
}

/// A decoded Solidity value as the matching Python object.
fn py_value<'py>(py: Python<'py>, v: &DynSolValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        DynSolValue::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        DynSolValue::Uint(u, _) => py_u256(py, *u)?,
        DynSolValue::Int(i, _) => {
            let int = py.get_type::<pyo3::types::PyInt>();
            int.call1((i.to_string(),))?
        }
        DynSolValue::Address(a) => address_str(a).into_pyobject(py)?.into_any(),
        DynSolValue::Bytes(b) => PyBytes::new(py, b).into_any(),
        DynSolValue::String(s) => s.into_pyobject(py)?.into_any(),
        DynSolValue::FixedBytes(..) | DynSolValue::Function(_) => {
            let j = abi::value_to_json(v);
            j.as_str().unwrap_or_default().into_pyobject(py)?.into_any()
        }
        DynSolValue::Array(items) | DynSolValue::FixedArray(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(py_value(py, item)?)?;
            }
            list.into_any()
        }
        DynSolValue::Tuple(items) => {
            let objs = items
                .iter()
                .map(|i| py_value(py, i))
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, objs)?.into_any()
        }
    })
}

fn py_values<'py>(py: Python<'py>, vs: &[DynSolValue]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for v in vs {
        list.append(py_value(py, v)?)?;
    }
    Ok(list)
}

fn py_fields<'py>(
    py: Python<'py>,
    fields: &[(String, DynSolValue)],
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in fields {
        d.set_item(k, py_value(py, v)?)?;
    }
    Ok(d)
}

fn py_revert<'py>(py: Python<'py>, r: &DecodedRevert) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match r {
        DecodedRevert::Custom { name, args } => {
            d.set_item("kind", "custom")?;
            d.set_item("name", name)?;
            d.set_item("args", py_fields(py, args)?)?;
        }
        DecodedRevert::Message(m) => {
            d.set_item("kind", "message")?;
            d.set_item("message", m)?;
        }
        DecodedRevert::Panic(code) => {
            d.set_item("kind", "panic")?;
            d.set_item("code", code)?;
        }
        DecodedRevert::Unknown(data) => {
            d.set_item("kind", "unknown")?;
            d.set_item("data", data)?;
        }
    }
    Ok(d)
}

/// The calldata (selector + ABI-encoded arguments) of `function` of the shipped `contract` with `args`.
#[pyfunction]
#[pyo3(signature = (contract, function, args = None))]
fn encode_call<'py>(
    py: Python<'py>,
    contract: &str,
    function: &str,
    args: Option<&Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyBytes>> {
    let c = self::contract(contract)?;
    let args = match args {
        Some(a) => args_json(a)?,
        None => Vec::new(),
    };
    let data = py
        .detach(|| c.encode_call(function, &args))
        .map_err(Error::from)?;
    Ok(PyBytes::new(py, &data))
}

/// The function that `data` calls on `contract`, and its arguments.
#[pyfunction]
fn decode_call<'py>(
    py: Python<'py>,
    contract: &str,
    data: Vec<u8>,
) -> Result<(String, Bound<'py, PyList>)> {
    let c = self::contract(contract)?;
    let (name, values) = py.detach(|| c.decode_call(&data)).map_err(Error::from)?;
    Ok((name, py_values(py, &values)?))
}

/// The values `function` of `contract` returned in `data`.
#[pyfunction]
fn decode_output<'py>(
    py: Python<'py>,
    contract: &str,
    function: &str,
    data: Vec<u8>,
) -> Result<Bound<'py, PyList>> {
    let c = self::contract(contract)?;
    let values = py
        .detach(|| c.decode_output(function, &data))
        .map_err(Error::from)?;
    Ok(py_values(py, &values)?)
}

/// Decodes revert data against every shipped contract's errors.
#[pyfunction]
fn decode_revert<'py>(py: Python<'py>, data: Vec<u8>) -> PyResult<Bound<'py, PyDict>> {
    py_revert(py, &abi::decode_revert_any(&data))
}

/// Names of the shipped contracts.
#[pyfunction]
fn contract_names() -> Vec<&'static str> {
    abi::contract_names()
}

/// One decoded event.
#[pyclass(name = "Event", module = "openledger", frozen, get_all)]
pub struct PyEvent {
    /// The contract whose ABI decoded it.
    contract: String,
    /// The event's name.
    name: String,
    /// The emitting address.
    address: String,
    /// Its fields by name.
    args: Py<PyDict>,
}

#[pymethods]
impl PyEvent {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Event({}.{}, {})",
            self.contract,
            self.name,
            self.args
                .bind(py)
                .repr()
                .map(|r| r.to_string())
                .unwrap_or_default()
        )
    }
}

/// The result of one transaction: status, gas, events, and the decoded return value or revert.
#[pyclass(name = "TxResult", module = "openledger", frozen, get_all)]
pub struct PyTxResult {
    /// Whether it succeeded.
    success: bool,
    /// `"success"`, `"revert"` or `"halt: <reason>"`.
    status: String,
    /// Gas used, as charged to the sender at the chain's base fee.
    gas_used: u64,
    /// The block it was mined in.
    block_number: u64,
    /// Raw return or revert data.
    output: Py<PyBytes>,
    /// Events the chain's contracts emitted (logs no shipped ABI decodes are left out).
    events: Py<PyList>,
    /// The decoded return values (success of a named call), else `None`.
    returns: Option<Py<PyList>>,
    /// The decoded revert (`{"kind": "custom" | "message" | "panic" | "unknown", …}`), else `None`.
    revert: Option<Py<PyDict>>,
}

#[pymethods]
impl PyTxResult {
    fn __repr__(&self) -> String {
        format!(
            "TxResult(status={:?}, gas_used={}, block_number={})",
            self.status, self.gas_used, self.block_number
        )
    }
}

fn tx_result(
    py: Python<'_>,
    out: &TxOutcome,
    call: Option<(&ContractAbi, &str)>,
) -> Result<PyTxResult> {
    let decoded = abi::decode_outcome(out, call)?;
    let events = PyList::empty(py);
    for d in decoded.events {
        let ev = PyEvent {
            args: py_fields(py, &d.fields)?.unbind(),
            contract: d.contract,
            name: d.event,
            address: d.address,
        };
        events.append(Py::new(py, ev)?)?;
    }
    Ok(PyTxResult {
        success: out.is_success(),
        status: out.status.to_string(),
        gas_used: out.gas_used,
        block_number: out.block_number,
        output: PyBytes::new(py, &out.output).unbind(),
        events: events.unbind(),
        returns: decoded
            .returns
            .map(|v| py_values(py, &v).map(Bound::unbind))
            .transpose()?,
        revert: decoded
            .revert
            .map(|r| py_revert(py, &r).map(Bound::unbind))
            .transpose()?,
    })
}

/// An in-process EVM chain running the compiled contracts: ten funded dev accounts, one block per
/// transaction, gas paid at a fixed base fee. The calldata it runs is what any EVM node accepts.
#[pyclass(name = "EmbeddedChain", module = "openledger", frozen)]
pub struct PyEmbeddedChain {
    inner: Mutex<EmbeddedChain>,
}

impl PyEmbeddedChain {
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut EmbeddedChain) -> std::result::Result<T, ChainError> + Send,
    ) -> Result<T> {
        py.detach(|| {
            let mut chain = self.inner.try_lock().map_err(|_| busy("the chain"))?;
            f(&mut chain).map_err(Error::from)
        })
    }
}

fn opt_address(
    name: &str,
    obj: Option<&Bound<'_, PyAny>>,
) -> Result<Option<openledger_core::Address>> {
    obj.map(|o| address(name, o)).transpose()
}

#[pymethods]
impl PyEmbeddedChain {
    /// A fresh chain with id `chain_id`.
    #[new]
    #[pyo3(signature = (chain_id = 31337))]
    fn new(chain_id: u64) -> Self {
        Self {
            inner: Mutex::new(EmbeddedChain::new(chain_id)),
        }
    }

    /// The chain id.
    #[getter]
    fn chain_id(&self, py: Python<'_>) -> Result<u64> {
        self.with(py, |c| Ok(c.chain_id()))
    }

    /// Addresses of the funded dev accounts.
    #[getter]
    fn dev_accounts(&self, py: Python<'_>) -> Result<Vec<String>> {
        self.with(py, |c| {
            Ok((0..openledger_chain::evm::DEV_ACCOUNTS)
                .map(|i| address_str(&c.dev_account(i).address))
                .collect())
        })
    }

    /// The 32-byte secret key of dev account `index` (`0x` hex), e.g. for an `OperatorSigner`.
    fn dev_key(&self, py: Python<'_>, index: usize) -> Result<String> {
        if index >= openledger_chain::evm::DEV_ACCOUNTS {
            return Err(invalid_arg(
                "index",
                format!(
                    "{index} is not a dev account (0..{})",
                    openledger_chain::evm::DEV_ACCOUNTS
                ),
            ));
        }
        self.with(py, |c| {
            let bytes = c.dev_account(index).key.to_bytes();
            Ok(format!("0x{}", alloy_primitives::hex::encode(bytes)))
        })
    }

    /// The current block number.
    #[getter]
    fn block_number(&self, py: Python<'_>) -> Result<u64> {
        self.with(py, |c| Ok(c.block_number()))
    }

    /// The current block timestamp.
    #[getter]
    fn timestamp(&self, py: Python<'_>) -> Result<u64> {
        self.with(py, |c| Ok(c.timestamp()))
    }

    /// Moves the clock forward by `seconds` (one new block).
    fn advance_time(&self, py: Python<'_>, seconds: u64) -> Result<()> {
        self.with(py, |c| c.advance_time(seconds))
    }

    /// The ether balance of `account`, in wei.
    fn balance<'py>(
        &self,
        py: Python<'py>,
        account: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyAny>> {
        let a = address("account", account)?;
        let b = self.with(py, |c| Ok(c.balance(a)))?;
        Ok(py_u256(py, b)?)
    }

    /// Gives `account` `amount` wei.
    fn fund(
        &self,
        py: Python<'_>,
        account: &Bound<'_, PyAny>,
        amount: &Bound<'_, PyAny>,
    ) -> Result<()> {
        let (a, v) = (address("account", account)?, u256("amount", amount)?);
        self.with(py, |c| c.fund(a, v))
    }

    /// Deploys the shipped `contract` with constructor `args` from `sender` (default: dev account
    /// 0); returns its address.
    #[pyo3(signature = (contract, args = None, *, sender = None))]
    fn deploy(
        &self,
        py: Python<'_>,
        contract: &str,
        args: Option<&Bound<'_, PyAny>>,
        sender: Option<&Bound<'_, PyAny>>,
    ) -> Result<String> {
        let c = self::contract(contract)?;
        let args = match args {
            Some(a) => args_json(a)?,
            None => Vec::new(),
        };
        let sender = opt_address("sender", sender)?;
        let code = c.deploy_data(&args).map_err(Error::from)?;
        let addr = self.with(py, |chain| {
            let from = sender.unwrap_or(chain.dev_account(0).address);
            chain.deploy(from, &code, &[])
        })?;
        Ok(address_str(&addr))
    }

    /// Deploys the whole suite (token, DatanetRegistry, ModelRegistry, InferencePayments,
    /// AttributionRewards) with dev accounts 0–3 as admin, treasury, operator and poster, and
    /// returns the addresses and roles by name.
    #[pyo3(signature = (*, protocol_bps = 500, data_pool_bps = 2000, epoch_duration = 86400))]
    fn deploy_suite<'py>(
        &self,
        py: Python<'py>,
        protocol_bps: u16,
        data_pool_bps: u16,
        epoch_duration: u64,
    ) -> Result<Bound<'py, PyDict>> {
        let (d, config) = self.with(py, |chain| {
            let mut config = DeployConfig::dev(chain);
            config.protocol_bps = protocol_bps;
            config.data_pool_bps = data_pool_bps;
            config.epoch_duration = epoch_duration;
            Ok((Deployment::deploy(chain, &config)?, config))
        })?;
        let out = PyDict::new(py);
        for (k, a) in [
            ("token", d.token),
            ("datanets", d.datanets),
            ("models", d.models),
            ("payments", d.payments),
            ("rewards", d.rewards),
            ("admin", config.admin),
            ("treasury", config.treasury),
            ("operator", config.operator),
            ("poster", config.poster),
        ] {
            out.set_item(k, address_str(&a))?;
        }
        Ok(out)
    }

    /// Sends a transaction calling `function` of `contract` at `to` with `args` from `sender`,
    /// mines it and returns its `TxResult` (a revert is a result, not an exception; it still
    /// costs gas). `value` attaches wei.
    #[pyo3(signature = (sender, to, contract, function, args = None, *, value = None))]
    #[allow(clippy::too_many_arguments)]
    fn transact(
        &self,
        py: Python<'_>,
        sender: &Bound<'_, PyAny>,
        to: &Bound<'_, PyAny>,
        contract: &str,
        function: &str,
        args: Option<&Bound<'_, PyAny>>,
        value: Option<&Bound<'_, PyAny>>,
    ) -> Result<PyTxResult> {
        let (from, to) = (address("sender", sender)?, address("to", to)?);
        let c = self::contract(contract)?;
        let args = match args {
            Some(a) => args_json(a)?,
            None => Vec::new(),
        };
        let value = match value {
            Some(v) => u256("value", v)?,
            None => openledger_core::U256::ZERO,
        };
        let data = c.encode_call(function, &args).map_err(Error::from)?;
        let out = self.with(py, |chain| chain.transact_value(from, to, data, value))?;
        tx_result(py, &out, Some((c, function)))
    }

    /// Sends raw `calldata` from `sender` to `to` (see `transact`).
    fn transact_raw(
        &self,
        py: Python<'_>,
        sender: &Bound<'_, PyAny>,
        to: &Bound<'_, PyAny>,
        calldata: Vec<u8>,
    ) -> Result<PyTxResult> {
        let (from, to) = (address("sender", sender)?, address("to", to)?);
        let out = self.with(py, |chain| chain.transact(from, to, calldata.into()))?;
        tx_result(py, &out, None)
    }

    /// Runs `function` of `contract` at `to` without committing anything (an `eth_call`) and
    /// returns its decoded values; a revert raises `TransactionError` whose `revert` attribute
    /// holds the decoded reason.
    #[pyo3(signature = (to, contract, function, args = None, *, sender = None))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        to: &Bound<'py, PyAny>,
        contract: &str,
        function: &str,
        args: Option<&Bound<'py, PyAny>>,
        sender: Option<&Bound<'py, PyAny>>,
    ) -> Result<Bound<'py, PyList>> {
        let to = address("to", to)?;
        let from = opt_address("sender", sender)?.unwrap_or_default();
        let c = self::contract(contract)?;
        let args = match args {
            Some(a) => args_json(a)?,
            None => Vec::new(),
        };
        let data = c.encode_call(function, &args).map_err(Error::from)?;
        let out = self.with(py, |chain| chain.call(from, to, data))?;
        if !out.is_success() {
            let r = c.revert_reason(&out.output);
            let err = TransactionError::new_err(format!("{contract}.{function} reverted: {r:?}"));
            err.value(py).setattr("revert", py_revert(py, &r)?)?;
            return Err(Error::from(err));
        }
        let values = c
            .decode_output(function, &out.output)
            .map_err(Error::from)?;
        Ok(py_values(py, &values)?)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match self.with(py, |c| Ok((c.chain_id(), c.block_number()))) {
            Ok((id, block)) => format!("EmbeddedChain(chain_id={id}, block_number={block})"),
            Err(_) => "EmbeddedChain(<busy>)".to_string(),
        }
    }
}

/// Adds the chain classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEmbeddedChain>()?;
    m.add_class::<PyTxResult>()?;
    m.add_class::<PyEvent>()?;
    m.add_function(wrap_pyfunction!(encode_call, m)?)?;
    m.add_function(wrap_pyfunction!(decode_call, m)?)?;
    m.add_function(wrap_pyfunction!(decode_output, m)?)?;
    m.add_function(wrap_pyfunction!(decode_revert, m)?)?;
    m.add_function(wrap_pyfunction!(contract_names, m)?)?;
    Ok(())
}
