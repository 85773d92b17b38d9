//! Python face of `openledger_chain::abi`, `evm` and `deploy`: contract calldata, return values,
//! events and reverts by name, and the in-process EVM that runs the real compiled contracts.
//!
//! Solidity values map to Python as: `uintN`/`intN` ↔ `int` (exact), `address` ↔ checksummed
//! `str`, `bytesN` ↔ `0x` hex `str` (bytes accepted going in), `bytes` ↔ `bytes`, `string` ↔
//! `str`, `bool` ↔ `bool`, arrays ↔ `list`, structs and tuples ↔ `tuple` (any sequence going in).

use std::sync::Mutex;

use k256::ecdsa::SigningKey;
use openledger_chain::abi::{self, ContractAbi, DecodedRevert};
use openledger_chain::chain::{Chain, ChainExt, TxRequest};
use openledger_chain::deploy::{DeployConfig, Deployment};
use openledger_chain::evm::{EmbeddedChain, TxOutcome};
use openledger_chain::rpc::{RpcChain, anvil_dev_keys, parse_keys};
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

/// Any chain the contracts run on: the methods `EmbeddedChain` (an in-process EVM) and
/// `RpcChain` (a node over JSON-RPC) share. Not constructed itself.
#[pyclass(name = "Chain", module = "openledger", subclass, frozen)]
pub struct PyChain {
    inner: Mutex<Box<dyn Chain>>,
    /// The keys the chain acts with (dev accounts, or the keys an `RpcChain` was given).
    keys: Vec<SigningKey>,
    /// The Python class name, for `repr`.
    class: &'static str,
}

impl PyChain {
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut dyn Chain) -> std::result::Result<T, ChainError> + Send,
    ) -> Result<T> {
        py.detach(|| {
            let mut chain = self.inner.try_lock().map_err(|_| busy("the chain"))?;
            f(&mut **chain).map_err(Error::from)
        })
    }

    fn key_address(&self, i: usize) -> Result<openledger_core::Address> {
        self.keys
            .get(i)
            .map(openledger_core::Address::from_private_key)
            .ok_or_else(|| {
                invalid_arg(
                    "index",
                    format!("the chain holds {} keys, not {}", self.keys.len(), i + 1),
                )
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
impl PyChain {
    /// The chain id.
    #[getter]
    fn chain_id(&self, py: Python<'_>) -> Result<u64> {
        self.with(py, |c| Ok(c.chain_id()))
    }

    /// Addresses of the accounts the chain acts with (an `EmbeddedChain`'s funded dev accounts,
    /// an `RpcChain`'s keys).
    #[getter]
    fn dev_accounts(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| address_str(&openledger_core::Address::from_private_key(k)))
            .collect()
    }

    /// The 32-byte secret key of account `index` (`0x` hex), e.g. for an `OperatorSigner`.
    fn dev_key(&self, index: usize) -> Result<String> {
        let key = self.keys.get(index).ok_or_else(|| {
            invalid_arg(
                "index",
                format!("{index} is not a dev account (0..{})", self.keys.len()),
            )
        })?;
        Ok(format!(
            "0x{}",
            alloy_primitives::hex::encode(key.to_bytes())
        ))
    }

    /// The latest block's number.
    #[getter]
    fn block_number(&self, py: Python<'_>) -> Result<u64> {
        self.with(py, |c| Ok(c.head()?.number))
    }

    /// The latest block's timestamp.
    #[getter]
    fn timestamp(&self, py: Python<'_>) -> Result<u64> {
        self.with(py, |c| Ok(c.head()?.timestamp))
    }

    /// Moves the clock forward by `seconds` (one new block); `UnsupportedError` on a chain
    /// without dev controls (a real network).
    fn advance_time(&self, py: Python<'_>, seconds: u64) -> Result<()> {
        self.with(py, |c| c.dev()?.advance_time(seconds))
    }

    /// The ether balance of `account`, in wei.
    fn balance<'py>(
        &self,
        py: Python<'py>,
        account: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyAny>> {
        let a = address("account", account)?;
        let b = self.with(py, |c| c.balance(a))?;
        Ok(py_u256(py, b)?)
    }

    /// Gives `account` `amount` wei (a dev control: `UnsupportedError` on a real network).
    fn fund(
        &self,
        py: Python<'_>,
        account: &Bound<'_, PyAny>,
        amount: &Bound<'_, PyAny>,
    ) -> Result<()> {
        let (a, v) = (address("account", account)?, u256("amount", amount)?);
        self.with(py, |c| c.dev()?.fund(a, v))
    }

    /// Deploys the shipped `contract` with constructor `args` from `sender` (default: account
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
        let from = match opt_address("sender", sender)? {
            Some(a) => a,
            None => self.key_address(0)?,
        };
        let code = c.deploy_data(&args).map_err(Error::from)?;
        let addr = self.with(py, |chain| chain.deploy(from, &code, &[]))?;
        Ok(address_str(&addr))
    }

    /// Deploys the whole suite (token, DatanetRegistry, ModelRegistry, InferencePayments,
    /// AttributionRewards) with accounts 0–3 as admin, treasury, operator and poster, and
    /// returns the addresses and roles by name. `out` also writes a deployment file there
    /// (chain id, addresses, configuration, each transaction), which `PayableAi(...,
    /// deployment=out)` uses instead of deploying.
    #[pyo3(signature = (*, protocol_bps = 500, data_pool_bps = 2000, epoch_duration = 86400, out = None))]
    fn deploy_suite<'py>(
        &self,
        py: Python<'py>,
        protocol_bps: u16,
        data_pool_bps: u16,
        epoch_duration: u64,
        out: Option<std::path::PathBuf>,
    ) -> Result<Bound<'py, PyDict>> {
        let roles = [
            self.key_address(0)?,
            self.key_address(1)?,
            self.key_address(2)?,
            self.key_address(3)?,
        ];
        let mut config = DeployConfig::with_accounts(roles);
        config.protocol_bps = protocol_bps;
        config.data_pool_bps = data_pool_bps;
        config.epoch_duration = epoch_duration;
        let file = self.with(py, |chain| Deployment::deploy_recorded(chain, &config))?;
        if let Some(path) = &out {
            file.write(path).map_err(Error::from)?;
        }
        let d = file.contracts;
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
    /// waits until it is mined and returns its `TxResult` (a revert is a result, not an
    /// exception: on the embedded chain it is mined and costs gas; a node's preflight catches it
    /// and nothing is sent). `value` attaches wei.
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
        let tx = TxRequest {
            from,
            to: Some(to),
            data,
            value,
        };
        let out = self.with(py, |chain| chain.send_transaction(tx))?;
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
        match self.with(py, |c| Ok((c.chain_id(), c.head()?.number))) {
            Ok((id, block)) => format!("{}(chain_id={id}, block_number={block})", self.class),
            Err(_) => format!("{}(<busy or unreachable>)", self.class),
        }
    }
}

/// An in-process EVM chain running the compiled contracts: ten funded dev accounts, one block per
/// transaction, gas paid at a fixed base fee. The calldata it runs is what any EVM node accepts.
#[pyclass(name = "EmbeddedChain", module = "openledger", extends = PyChain, frozen)]
pub struct PyEmbeddedChain;

#[pymethods]
impl PyEmbeddedChain {
    /// A fresh chain with id `chain_id`.
    #[new]
    #[pyo3(signature = (chain_id = 31337))]
    fn new(chain_id: u64) -> PyClassInitializer<Self> {
        let keys = EmbeddedChain::dev_keys()
            .into_iter()
            .map(|a| a.key)
            .collect();
        let chain: Box<dyn Chain> = Box::new(EmbeddedChain::new(chain_id));
        PyClassInitializer::from(PyChain {
            inner: Mutex::new(chain),
            keys,
            class: "EmbeddedChain",
        })
        .add_subclass(Self)
    }
}

/// A node over JSON-RPC (`http://` or `https://`): transactions signed here with `keys`
/// (`0x` hex secret keys; anvil's ten well-known dev keys when omitted, for a local anvil only),
/// EIP-1559 fees, reverts caught by a preflight and decoded; anvil's dev controls where the node
/// is anvil. Connecting reads the chain id, so an unreachable node raises at once.
#[pyclass(name = "RpcChain", module = "openledger", extends = PyChain, frozen)]
pub struct PyRpcChain;

#[pymethods]
impl PyRpcChain {
    /// Connects to `url`, sending from `keys`.
    #[new]
    #[pyo3(signature = (url, keys = None))]
    fn new(
        py: Python<'_>,
        url: &str,
        keys: Option<Vec<String>>,
    ) -> Result<PyClassInitializer<Self>> {
        let keys = match keys {
            Some(list) => parse_keys(&list.join(",")).map_err(Error::from)?,
            None => anvil_dev_keys(),
        };
        let signers = keys.clone();
        let chain = py
            .detach(|| RpcChain::connect(url, signers))
            .map_err(Error::from)?;
        let chain: Box<dyn Chain> = Box::new(chain);
        Ok(PyClassInitializer::from(PyChain {
            inner: Mutex::new(chain),
            keys,
            class: "RpcChain",
        })
        .add_subclass(Self))
    }
}

/// Adds the chain classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyChain>()?;
    m.add_class::<PyEmbeddedChain>()?;
    m.add_class::<PyRpcChain>()?;
    m.add_class::<PyTxResult>()?;
    m.add_class::<PyEvent>()?;
    m.add_function(wrap_pyfunction!(encode_call, m)?)?;
    m.add_function(wrap_pyfunction!(decode_call, m)?)?;
    m.add_function(wrap_pyfunction!(decode_output, m)?)?;
    m.add_function(wrap_pyfunction!(decode_revert, m)?)?;
    m.add_function(wrap_pyfunction!(contract_names, m)?)?;
    Ok(())
}
