//! The contracts' ABIs at run time: calldata, return values, events and reverts encoded and
//! decoded from the committed solc artifacts by function, event and error *name*, for callers that
//! have no `sol!` types (the Python, Node and mobile bindings, scripts, other chains' tooling).
//!
//! Arguments are given in the canonical JSON form the Merkle dumps use: integers as decimal strings (or
//! JSON numbers), addresses and bytes as `0x` hex, tuples (structs) and arrays as JSON arrays.
//! What this module encodes is byte-identical to the `sol!` bindings of [`crate::bindings`] and
//! therefore to solc's ABI.
//!
//! ```
//! use openledger_chain::abi::ContractAbi;
//! use serde_json::json;
//!
//! let registry = ContractAbi::named("DatanetRegistry")?;
//! let data = registry.encode_call(
//!     "publishVersion",
//!     &[json!("1"), json!(format!("0x{}", "07".repeat(32))), json!(42)],
//! )?;
//! assert_eq!(&data[..4], registry.function("publishVersion")?.selector().as_slice());
//! assert_eq!(data.len(), 4 + 3 * 32);
//! let (name, args) = registry.decode_call(&data)?;
//! assert_eq!(name, "publishVersion");
//! assert_eq!(openledger_chain::abi::value_to_json(&args[2]), json!("42"));
//! # Ok::<(), openledger_chain::ChainError>(())
//! ```

use std::sync::OnceLock;

use alloy_dyn_abi::{DynSolType, DynSolValue, EventExt, FunctionExt, JsonAbiExt, Specifier};
use alloy_json_abi::{Function, JsonAbi, Param};
use alloy_primitives::{Bytes, Log, hex};
use alloy_sol_types::{Panic, Revert, SolError};
use serde_json::Value;

use crate::ChainError;
use crate::bindings::ARTIFACTS;
use crate::standard::value;

/// One contract's ABI and creation bytecode, read from its solc artifact.
#[derive(Debug, Clone)]
pub struct ContractAbi {
    name: String,
    abi: JsonAbi,
    bytecode: Bytes,
}

/// An event log decoded against the contract that emitted it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedLog {
    /// The contract whose ABI decoded it.
    pub contract: String,
    /// The event's name.
    pub event: String,
    /// The emitting address, EIP-55 checksummed.
    pub address: String,
    /// Every field (indexed and not) by name, in declaration order (see [`value_to_json`]).
    pub fields: Vec<(String, DynSolValue)>,
}

/// Why a call reverted, decoded against a contract's custom errors.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodedRevert {
    /// A custom error of the contract: its name and arguments by name.
    Custom {
        /// The error's name.
        name: String,
        /// Its arguments, by name.
        args: Vec<(String, DynSolValue)>,
    },
    /// A `require`/`revert` message.
    Message(String),
    /// A Solidity panic code (0x11 overflow, 0x12 division by zero, …).
    Panic(u64),
    /// Revert data that matches none of these (hex).
    Unknown(String),
}

impl std::fmt::Display for DecodedRevert {
    /// `Name(arg=value, …)`, the message, `panic 0x11`, or the raw data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodedRevert::Custom { name, args } => {
                let args: Vec<String> = args
                    .iter()
                    .map(|(k, v)| format!("{k}={}", value_to_json(v)))
                    .collect();
                write!(f, "{name}({})", args.join(", "))
            }
            DecodedRevert::Message(m) => write!(f, "{m:?}"),
            DecodedRevert::Panic(code) => write!(f, "panic {code:#x}"),
            DecodedRevert::Unknown(data) => write!(f, "revert data {data}"),
        }
    }
}

fn artifact_err(name: &str, reason: impl Into<String>) -> ChainError {
    ChainError::Artifact {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// Every shipped contract, in [`ARTIFACTS`] order (the order `decode_*_any` tries them in).
fn all() -> &'static Result<Vec<ContractAbi>, ChainError> {
    static ALL: OnceLock<Result<Vec<ContractAbi>, ChainError>> = OnceLock::new();
    ALL.get_or_init(|| {
        ARTIFACTS
            .iter()
            .map(|(name, json)| ContractAbi::from_artifact(name, json))
            .collect()
    })
}

/// Names of the contracts whose artifacts ship with the crate.
pub fn contract_names() -> Vec<&'static str> {
    ARTIFACTS.iter().map(|(n, _)| *n).collect()
}

fn resolve(params: &[Param], what: &str) -> Result<Vec<DynSolType>, ChainError> {
    params
        .iter()
        .map(|p| {
            p.resolve()
                .map_err(|e| ChainError::Decode(format!("{what}: parameter {}: {e}", p.name)))
        })
        .collect()
}

fn named(params: &[Param], values: &[DynSolValue]) -> Vec<(String, DynSolValue)> {
    params
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (p, v))| {
            let name = if p.name.is_empty() {
                format!("_{i}")
            } else {
                p.name.clone()
            };
            (name, v.clone())
        })
        .collect()
}

impl ContractAbi {
    /// The shipped contract `name` (see [`contract_names`]).
    pub fn named(name: &str) -> Result<&'static ContractAbi, ChainError> {
        let all = all().as_ref().map_err(Clone::clone)?;
        all.iter().find(|c| c.name == name).ok_or_else(|| {
            artifact_err(
                name,
                format!("no such contract (known: {})", contract_names().join(", ")),
            )
        })
    }

    /// Reads a solc / Hardhat-style artifact: a JSON object with `abi` and `bytecode`.
    pub fn from_artifact(name: &str, json: &str) -> Result<Self, ChainError> {
        let v: Value = serde_json::from_str(json).map_err(|e| artifact_err(name, e.to_string()))?;
        let abi_json = v
            .get("abi")
            .ok_or_else(|| artifact_err(name, "no \"abi\" field"))?;
        let abi: JsonAbi = serde_json::from_value(abi_json.clone())
            .map_err(|e| artifact_err(name, format!("abi: {e}")))?;
        let bytecode = match v.get("bytecode") {
            Some(Value::String(s)) => {
                hex::decode(s).map_err(|e| artifact_err(name, format!("bytecode: {e}")))?
            }
            Some(Value::Object(o)) => match o.get("object") {
                Some(Value::String(s)) => {
                    hex::decode(s).map_err(|e| artifact_err(name, format!("bytecode: {e}")))?
                }
                _ => return Err(artifact_err(name, "bytecode.object is not a string")),
            },
            None => Vec::new(),
            Some(_) => return Err(artifact_err(name, "bytecode is not a hex string")),
        };
        Ok(Self {
            name: name.to_string(),
            abi,
            bytecode: bytecode.into(),
        })
    }

    /// The contract's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parsed JSON ABI.
    pub fn abi(&self) -> &JsonAbi {
        &self.abi
    }

    /// Creation bytecode (empty for an interface).
    pub fn bytecode(&self) -> &[u8] {
        &self.bytecode
    }

    /// The function called `name`, or given by its full signature (`"transfer(address,uint256)"`)
    /// when the name is overloaded.
    pub fn function(&self, name: &str) -> Result<&Function, ChainError> {
        if name.contains('(') {
            return self
                .abi
                .functions()
                .find(|f| f.signature() == name)
                .ok_or_else(|| self.unknown("function", name));
        }
        match self.abi.function(name).map(Vec::as_slice) {
            Some([f]) => Ok(f),
            Some(overloads) => Err(artifact_err(
                &self.name,
                format!(
                    "function {name} is overloaded; name one of: {}",
                    overloads
                        .iter()
                        .map(|f| f.signature())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            None => Err(self.unknown("function", name)),
        }
    }

    fn unknown(&self, kind: &str, name: &str) -> ChainError {
        artifact_err(&self.name, format!("no {kind} {name:?}"))
    }

    fn read_args(
        &self,
        what: &str,
        params: &[Param],
        args: &[Value],
    ) -> Result<Vec<DynSolValue>, ChainError> {
        let function = format!("{}.{what}", self.name);
        if params.len() != args.len() {
            return Err(ChainError::ArgumentCount {
                function,
                expected: params.len(),
                found: args.len(),
            });
        }
        let types = resolve(params, what)?;
        types
            .iter()
            .zip(args)
            .enumerate()
            .map(|(i, (ty, v))| {
                value::from_json(ty, v).map_err(|reason| ChainError::Argument {
                    function: function.clone(),
                    index: i,
                    name: params[i].name.clone(),
                    ty: ty.to_string(),
                    reason,
                })
            })
            .collect()
    }

    /// Calldata of `function` with `args` (selector + ABI-encoded arguments).
    pub fn encode_call(&self, function: &str, args: &[Value]) -> Result<Bytes, ChainError> {
        let f = self.function(function)?;
        let values = self.read_args(&f.name, &f.inputs, args)?;
        f.abi_encode_input(&values)
            .map(Into::into)
            .map_err(|e| ChainError::Decode(format!("{}: {e}", f.name)))
    }

    /// The function a calldata calls and its arguments.
    pub fn decode_call(&self, data: &[u8]) -> Result<(String, Vec<DynSolValue>), ChainError> {
        let selector: [u8; 4] = data
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| ChainError::Decode(format!("calldata of {} bytes", data.len())))?;
        let f = self
            .abi
            .function_by_selector(selector.into())
            .ok_or_else(|| {
                self.unknown("function with selector", &hex::encode_prefixed(selector))
            })?;
        let values = f
            .abi_decode_input(&data[4..])
            .map_err(|e| ChainError::Decode(format!("{}: {e}", f.name)))?;
        Ok((f.name.clone(), values))
    }

    /// The values `function` returned in `data`.
    pub fn decode_output(
        &self,
        function: &str,
        data: &[u8],
    ) -> Result<Vec<DynSolValue>, ChainError> {
        let f = self.function(function)?;
        f.abi_decode_output(data)
            .map_err(|e| ChainError::Decode(format!("{} returned: {e}", f.name)))
    }

    /// Creation code followed by the ABI-encoded constructor `args`.
    pub fn deploy_data(&self, args: &[Value]) -> Result<Bytes, ChainError> {
        if self.bytecode.is_empty() {
            return Err(artifact_err(&self.name, "no creation bytecode"));
        }
        let params: &[Param] = self
            .abi
            .constructor
            .as_ref()
            .map(|c| c.inputs.as_slice())
            .unwrap_or(&[]);
        let values = self.read_args("constructor", params, args)?;
        let mut code = self.bytecode.to_vec();
        code.extend_from_slice(&DynSolValue::Tuple(values).abi_encode_params());
        Ok(code.into())
    }

    /// Decodes `log` if one of this contract's events matches its first topic.
    pub fn decode_log(&self, log: &Log) -> Option<DecodedLog> {
        let topic0 = *log.data.topics().first()?;
        let event = self.abi.events().find(|e| e.selector() == topic0)?;
        let decoded = event.decode_log(&log.data).ok()?;
        let (mut indexed, mut body) = (decoded.indexed.iter(), decoded.body.iter());
        let fields = event
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let v = if p.indexed {
                    indexed.next()
                } else {
                    body.next()
                }?;
                let name = if p.name.is_empty() {
                    format!("_{i}")
                } else {
                    p.name.clone()
                };
                Some((name, v.clone()))
            })
            .collect();
        Some(DecodedLog {
            contract: self.name.clone(),
            event: event.name.clone(),
            address: log.address.to_checksum(None),
            fields,
        })
    }

    /// Revert data decoded against this contract's own errors first (two contracts may declare
    /// errors with the same selector), then against every shipped contract.
    pub fn revert_reason(&self, data: &[u8]) -> DecodedRevert {
        match self.decode_revert(data) {
            r @ DecodedRevert::Custom { .. } => r,
            _ => decode_revert_any(data),
        }
    }

    /// Decodes revert data against this contract's custom errors, `Error(string)` and
    /// `Panic(uint256)`.
    pub fn decode_revert(&self, data: &[u8]) -> DecodedRevert {
        if data.len() >= 4 {
            let sel = &data[..4];
            for e in self.abi.errors() {
                if e.selector().as_slice() == sel
                    && let Ok(values) = e.abi_decode_input(&data[4..])
                {
                    return DecodedRevert::Custom {
                        name: e.name.clone(),
                        args: named(&e.inputs, &values),
                    };
                }
            }
        }
        decode_standard(data)
    }
}

/// `Error(string)`, `Panic(uint256)` or unknown revert data.
fn decode_standard(data: &[u8]) -> DecodedRevert {
    if data.starts_with(&Revert::SELECTOR)
        && let Ok(r) = Revert::abi_decode(data)
    {
        return DecodedRevert::Message(r.reason);
    }
    if data.starts_with(&Panic::SELECTOR)
        && let Ok(p) = Panic::abi_decode(data)
    {
        return DecodedRevert::Panic(p.code.saturating_to());
    }
    DecodedRevert::Unknown(hex::encode_prefixed(data))
}

/// The canonical JSON form of a value: integers as decimal strings, addresses EIP-55
/// checksummed, bytes as lowercase `0x` hex, tuples and arrays as JSON arrays.
pub fn value_to_json(value: &DynSolValue) -> Value {
    value::to_json(value)
}

/// Reads a value of Solidity type `ty` from JSON: integers as JSON numbers or decimal / `0x` hex
/// strings, addresses and bytes as hex strings, tuples and arrays as JSON arrays.
pub fn value_from_json(ty: &DynSolType, json: &Value) -> Result<DynSolValue, ChainError> {
    value::from_json(ty, json).map_err(|reason| ChainError::AbiValue {
        ty: ty.to_string(),
        reason,
    })
}

/// Decodes `log` against every shipped contract, in [`contract_names`] order (the first whose
/// event matches wins: an ERC-20 `Transfer` is named after `TestToken`).
pub fn decode_log_any(log: &Log) -> Option<DecodedLog> {
    let all = all().as_ref().ok()?;
    all.iter().find_map(|c| c.decode_log(log))
}

/// Decodes revert data against every shipped contract's custom errors.
pub fn decode_revert_any(data: &[u8]) -> DecodedRevert {
    if let Ok(all) = all().as_ref() {
        for c in all {
            if let r @ DecodedRevert::Custom { .. } = c.decode_revert(data) {
                return r;
            }
        }
    }
    decode_standard(data)
}

/// A transaction's outcome read through the shipped ABIs: every event a shipped contract
/// declares, and the called function's return values or the revert's reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedOutcome {
    /// Events decoded by some shipped ABI, in emission order (logs none decodes are left out).
    pub events: Vec<DecodedLog>,
    /// The called function's return values, when it succeeded and the call was named (`None`
    /// for a transaction mined on a node, whose receipt carries none).
    pub returns: Option<Vec<DynSolValue>>,
    /// The reason, when it reverted ([`ContractAbi::revert_reason`] when the called contract is
    /// known, else against every shipped contract).
    pub revert: Option<DecodedRevert>,
}

/// Decodes `outcome` of a call to `function` of `contract` (`None` when the call is not one of
/// a shipped contract's functions, e.g. raw calldata). Fails only when a successful call's return
/// data does not decode as the function's outputs.
pub fn decode_outcome(
    outcome: &crate::evm::TxOutcome,
    call: Option<(&ContractAbi, &str)>,
) -> Result<DecodedOutcome, ChainError> {
    use crate::evm::TxStatus;
    let events = outcome.logs.iter().filter_map(decode_log_any).collect();
    let (returns, revert) = match (&outcome.status, call) {
        // A transaction mined on a node carries no return data.
        (TxStatus::Success, Some(_)) if outcome.tx_hash.is_some() && outcome.output.is_empty() => {
            (None, None)
        }
        (TxStatus::Success, Some((c, f))) => (Some(c.decode_output(f, &outcome.output)?), None),
        (TxStatus::Success, None) | (TxStatus::Halt(_), _) => (None, None),
        (TxStatus::Revert, Some((c, _))) => (None, Some(c.revert_reason(&outcome.output))),
        (TxStatus::Revert, None) => (None, Some(decode_revert_any(&outcome.output))),
    };
    Ok(DecodedOutcome {
        events,
        returns,
        revert,
    })
}
