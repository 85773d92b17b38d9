//! JavaScript face of `openledger_chain::evm`, `rpc` and `deploy`: the in-process EVM that runs
//! the real compiled contracts and a node over JSON-RPC, with the same methods (calls, return
//! values, events and reverts by contract and function name, `openledger_chain::abi`).
//!
//! Solidity values come back in canonical JSON form: integers as decimal strings, addresses
//! checksummed, bytes as `0x` hex, arrays and tuples as arrays.

use std::sync::{Arc, Mutex};

use k256::ecdsa::SigningKey;
use napi::bindgen_prelude::{AsyncTask, BigInt, Unknown};
use napi_derive::napi;
use openledger_chain::abi::{self, ContractAbi, DecodedRevert};
use openledger_chain::chain::{Chain, ChainExt, TxRequest};
use openledger_chain::deploy::{DeployConfig, Deployment};
use openledger_chain::evm::{EmbeddedChain as RustChain, TxOutcome};
use openledger_chain::rpc::{RpcChain as RpcChain_, anvil_dev_keys, parse_keys};
use openledger_chain::{ChainError, DynSolValue};
use openledger_core::{Address, U256};
use serde_json::{Map, Value};

use crate::error::{ErrorCode, JsResult, Result, busy, error, invalid_arg};
use crate::json;
use crate::task::{StringTask, count, task};
use crate::types::{Amount, Bytes, address, address_str, bigint, hex_bytes, u256};

fn contract(name: &str) -> Result<&'static ContractAbi> {
    ContractAbi::named(name).js()
}

fn args_json(args: Option<Vec<Unknown<'_>>>) -> Result<Vec<Value>> {
    args.unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, a)| json::to_json(&format!("args[{i}]"), a))
        .collect()
}

fn fields(fs: &[(String, DynSolValue)]) -> Value {
    Value::Object(
        fs.iter()
            .map(|(k, v)| (k.clone(), abi::value_to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

fn revert(r: &DecodedRevert) -> Value {
    let mut m = Map::new();
    match r {
        DecodedRevert::Custom { name, args } => {
            m.insert("kind".into(), "custom".into());
            m.insert("name".into(), name.clone().into());
            m.insert("args".into(), fields(args));
        }
        DecodedRevert::Message(s) => {
            m.insert("kind".into(), "message".into());
            m.insert("message".into(), s.clone().into());
        }
        DecodedRevert::Panic(code) => {
            m.insert("kind".into(), "panic".into());
            m.insert("code".into(), (*code).into());
        }
        DecodedRevert::Unknown(data) => {
            m.insert("kind".into(), "unknown".into());
            m.insert("data".into(), data.clone().into());
        }
    }
    Value::Object(m)
}

/// An event emitted by a transaction, decoded against the contract that emitted it.
#[napi(object)]
pub struct ChainEvent {
    /// The contract whose ABI decoded it.
    pub contract: String,
    /// The event's name.
    pub name: String,
    /// The emitting address (checksummed).
    pub address: String,
    /// Every field by name.
    pub args: Value,
}

/// What a transaction did.
#[napi(object)]
pub struct TxResult {
    /// Whether it ran to completion.
    pub success: bool,
    /// `"success"`, `"revert"` or `"halt: <why>"`.
    pub status: String,
    /// Gas charged to the sender.
    pub gas_used: f64,
    /// The block it was included in.
    pub block_number: f64,
    /// Return or revert data, `0x` hex.
    pub output: String,
    /// Events it emitted, decoded.
    pub events: Vec<ChainEvent>,
    /// The function's return values, when it succeeded.
    pub returns: Option<Vec<Value>>,
    /// Why it reverted: `{ kind: "custom", name, args }`, `{ kind: "message", message }`,
    /// `{ kind: "panic", code }` or `{ kind: "unknown", data }`.
    pub revert: Option<Value>,
}

fn tx_result(out: &TxOutcome, c: &ContractAbi, function: &str) -> Result<TxResult> {
    let decoded = abi::decode_outcome(out, Some((c, function))).js()?;
    Ok(TxResult {
        success: out.is_success(),
        status: out.status.to_string(),
        gas_used: out.gas_used as f64,
        block_number: out.block_number as f64,
        output: out.output.to_string(),
        events: decoded
            .events
            .into_iter()
            .map(|d| ChainEvent {
                args: fields(&d.fields),
                contract: d.contract,
                name: d.event,
                address: d.address,
            })
            .collect(),
        returns: decoded
            .returns
            .map(|v| v.iter().map(abi::value_to_json).collect()),
        revert: decoded.revert.as_ref().map(revert),
    })
}

task!(
    /// Resolves to a `TxResult`.
    TxTask => TxResult
);
task!(
    /// Resolves to the return values of a call.
    ValuesTask => Vec<Value>
);
task!(
    /// Resolves to the addresses of a deployed suite.
    SuiteTask => SuiteAddresses
);

/// The contracts of a deployed suite and the accounts holding its roles.
#[napi(object)]
pub struct SuiteAddresses {
    /// The ERC-20 token fees are paid in.
    pub token: String,
    /// `DatanetRegistry`.
    pub datanets: String,
    /// `ModelRegistry`.
    pub models: String,
    /// `InferencePayments`.
    pub payments: String,
    /// `AttributionRewards`.
    pub rewards: String,
    /// The admin account.
    pub admin: String,
    /// The protocol treasury.
    pub treasury: String,
    /// The serving operator.
    pub operator: String,
    /// The account posting epoch roots.
    pub poster: String,
}

/// How `deploySuite` configures the contracts; every field is optional.
#[napi(object)]
pub struct SuiteOptions {
    /// Protocol share of each fee, in basis points (default 500).
    pub protocol_bps: Option<u32>,
    /// Data contributors' share, in basis points (default 2000).
    pub data_pool_bps: Option<u32>,
    /// Seconds per settlement epoch (default 86400).
    pub epoch_duration: Option<f64>,
    /// Also write a deployment file here (chain id, addresses, configuration, each
    /// transaction), which `new PayableAi({ rpc, deployment })` uses instead of deploying.
    pub out: Option<String>,
}

/// The chain behind a JavaScript chain object, and the accounts it acts with.
#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Box<dyn Chain>>>,
    /// `(address, 0x secret key)` of each account: the embedded chain's dev accounts, or the
    /// keys an `RpcChain` was given.
    accounts: Arc<Vec<(Address, String)>>,
}

impl Shared {
    fn new(chain: Box<dyn Chain>, keys: &[SigningKey]) -> Self {
        let accounts = keys
            .iter()
            .map(|k| {
                (
                    Address::from_private_key(k),
                    format!("0x{}", alloy_primitives::hex::encode(k.to_bytes())),
                )
            })
            .collect();
        Self {
            inner: Arc::new(Mutex::new(chain)),
            accounts: Arc::new(accounts),
        }
    }

    /// Runs `f` on the chain (one call at a time: a call made while another runs is `Busy`).
    fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn Chain) -> std::result::Result<T, ChainError>,
    ) -> Result<T> {
        let mut chain = self.inner.try_lock().map_err(|_| busy("the chain"))?;
        f(&mut **chain).js()
    }

    fn account(&self, i: usize) -> Result<&(Address, String)> {
        self.accounts.get(i).ok_or_else(|| {
            invalid_arg(
                "index",
                format!(
                    "{i} is not an account of this chain (0..{})",
                    self.accounts.len()
                ),
            )
        })
    }
}

/// The methods `EmbeddedChain` and `RpcChain` share (napi classes have no inheritance).
macro_rules! chain_methods {
    ($class:ident) => {
        #[napi]
        impl $class {
            /// The chain id.
            #[napi(getter, catch_unwind)]
            pub fn chain_id(&self) -> Result<f64> {
                crate::error::guard(|| self.shared.with(|c| Ok(c.chain_id() as f64)))
            }

            /// The addresses of the accounts the chain acts with (the embedded chain's funded
            /// dev accounts, an `RpcChain`'s keys).
            #[napi(getter, catch_unwind)]
            pub fn dev_accounts(&self) -> Vec<String> {
                self.shared
                    .accounts
                    .iter()
                    .map(|(a, _)| address_str(a))
                    .collect()
            }

            /// The secret key of account `index` (`0x` hex), e.g. for an `OperatorSigner`.
            #[napi(catch_unwind)]
            pub fn dev_key(&self, index: f64) -> Result<String> {
                crate::error::guard(|| {
                    let i = count("index", index)?;
                    Ok(self.shared.account(i)?.1.clone())
                })
            }

            /// The latest block number.
            #[napi(getter, catch_unwind)]
            pub fn block_number(&self) -> Result<f64> {
                crate::error::guard(|| self.shared.with(|c| Ok(c.head()?.number as f64)))
            }

            /// The latest block's timestamp (seconds).
            #[napi(getter, catch_unwind)]
            pub fn timestamp(&self) -> Result<f64> {
                crate::error::guard(|| self.shared.with(|c| Ok(c.head()?.timestamp as f64)))
            }

            /// Moves the clock forward by `seconds` (a dev chain only: the embedded chain or
            /// anvil; elsewhere an `Unsupported` error).
            #[napi(catch_unwind)]
            pub fn advance_time(&self, seconds: f64) -> Result<()> {
                crate::error::guard(|| {
                    let s = count("seconds", seconds)? as u64;
                    self.shared.with(|c| c.dev()?.advance_time(s))
                })
            }

            /// The ether balance of `account`, in wei.
            #[napi(catch_unwind)]
            pub fn balance(&self, account: Bytes) -> Result<BigInt> {
                crate::error::guard(|| {
                    let a = address("account", &account)?;
                    self.shared.with(|c| c.balance(a)).map(bigint)
                })
            }

            /// Credits `amount` wei to `account` (a dev chain's faucet, outside any
            /// transaction).
            #[napi(catch_unwind)]
            pub fn fund(&self, account: Bytes, amount: Amount) -> Result<()> {
                crate::error::guard(|| {
                    let (a, v) = (address("account", &account)?, u256("amount", &amount)?);
                    self.shared.with(|c| c.dev()?.fund(a, v))
                })
            }

            /// Deploys the openledger contract `contract` with constructor `args`, from
            /// `sender` (account 0 by default); resolves to its address.
            #[napi(catch_unwind)]
            pub fn deploy(
                &self,
                contract: String,
                args: Option<Vec<Unknown<'_>>>,
                sender: Option<Bytes>,
            ) -> Result<AsyncTask<StringTask>> {
                crate::error::guard(|| {
                    let c = self::contract(&contract)?;
                    let code = c.deploy_data(&args_json(args)?).js()?;
                    let from = match sender {
                        Some(s) => address("sender", &s)?,
                        None => self.shared.account(0)?.0,
                    };
                    let shared = self.shared.clone();
                    Ok(StringTask::spawn(move || {
                        let addr = shared.with(|chain| chain.deploy(from, &code, &[]))?;
                        Ok(address_str(&addr))
                    }))
                })
            }

            /// Deploys the whole suite (token, registries, payments, rewards) with accounts
            /// 0–3 as admin, treasury, operator and poster; resolves to the addresses.
            #[napi(catch_unwind)]
            pub fn deploy_suite(
                &self,
                options: Option<SuiteOptions>,
            ) -> Result<AsyncTask<SuiteTask>> {
                crate::error::guard(|| {
                    let mut config = DeployConfig::with_accounts([
                        self.shared.account(0)?.0,
                        self.shared.account(1)?.0,
                        self.shared.account(2)?.0,
                        self.shared.account(3)?.0,
                    ]);
                    let out = suite_options(&mut config, options)?;
                    let shared = self.shared.clone();
                    Ok(SuiteTask::spawn(move || {
                        let file =
                            shared.with(|chain| Deployment::deploy_recorded(chain, &config))?;
                        if let Some(path) = out {
                            file.write(std::path::Path::new(&path)).js()?;
                        }
                        Ok(suite_addresses(&file.contracts, &config))
                    }))
                })
            }

            /// Sends a transaction from `sender` calling `func` of `contract` at `to` with
            /// `args` (and `value` wei); resolves to what it did, reverts included.
            #[napi(catch_unwind)]
            pub fn transact(
                &self,
                sender: Bytes,
                to: Bytes,
                contract: String,
                func: String,
                args: Option<Vec<Unknown<'_>>>,
                value: Option<Amount>,
            ) -> Result<AsyncTask<TxTask>> {
                crate::error::guard(|| {
                    let (from, to) = (address("sender", &sender)?, address("to", &to)?);
                    let c = self::contract(&contract)?;
                    let data = c.encode_call(&func, &args_json(args)?).js()?;
                    let value = value.map_or(Ok(U256::ZERO), |v| u256("value", &v))?;
                    let shared = self.shared.clone();
                    Ok(TxTask::spawn(move || {
                        let tx = TxRequest {
                            value,
                            ..TxRequest::call(from, to, data)
                        };
                        let out = shared.with(|chain| chain.send_transaction(tx))?;
                        tx_result(&out, c, &func)
                    }))
                })
            }

            /// Calls the view `func` of `contract` at `to` without a transaction; resolves to
            /// its return values, or rejects with a `Transaction` error whose `revert`
            /// property says why.
            #[napi(catch_unwind)]
            pub fn call(
                &self,
                to: Bytes,
                contract: String,
                func: String,
                args: Option<Vec<Unknown<'_>>>,
            ) -> Result<AsyncTask<ValuesTask>> {
                crate::error::guard(|| {
                    let to = address("to", &to)?;
                    let c = self::contract(&contract)?;
                    let data = c.encode_call(&func, &args_json(args)?).js()?;
                    let shared = self.shared.clone();
                    Ok(ValuesTask::spawn(move || {
                        let out =
                            shared.with(|chain| chain.call(Address::ZERO, to, data.into()))?;
                        view_values(&out, c, &contract, &func)
                    }))
                })
            }
        }
    };
}

/// Applies `options` to `config`; returns where to write the deployment file, if anywhere.
fn suite_options(
    config: &mut DeployConfig,
    options: Option<SuiteOptions>,
) -> Result<Option<String>> {
    let bps = |name: &str, v: Option<u32>, d: u16| -> Result<u16> {
        v.map_or(Ok(d), |v| {
            u16::try_from(v).map_err(|_| invalid_arg(name, format!("{v} is out of range")))
        })
    };
    let o = options.unwrap_or(SuiteOptions {
        protocol_bps: None,
        data_pool_bps: None,
        epoch_duration: None,
        out: None,
    });
    config.protocol_bps = bps("protocolBps", o.protocol_bps, config.protocol_bps)?;
    config.data_pool_bps = bps("dataPoolBps", o.data_pool_bps, config.data_pool_bps)?;
    if let Some(e) = o.epoch_duration {
        config.epoch_duration = count("epochDuration", e)? as u64;
    }
    Ok(o.out)
}

fn suite_addresses(d: &Deployment, config: &DeployConfig) -> SuiteAddresses {
    SuiteAddresses {
        token: address_str(&d.token),
        datanets: address_str(&d.datanets),
        models: address_str(&d.models),
        payments: address_str(&d.payments),
        rewards: address_str(&d.rewards),
        admin: address_str(&config.admin),
        treasury: address_str(&config.treasury),
        operator: address_str(&config.operator),
        poster: address_str(&config.poster),
    }
}

fn view_values(out: &TxOutcome, c: &ContractAbi, contract: &str, func: &str) -> Result<Vec<Value>> {
    if !out.is_success() {
        let r = c.revert_reason(&out.output);
        return Err(error(
            ErrorCode::Transaction,
            format!("{contract}.{func} reverted: {}", revert(&r)),
            None,
        ));
    }
    let values = c.decode_output(func, &out.output).js()?;
    Ok(values.iter().map(abi::value_to_json).collect())
}

/// The in-process EVM running the real compiled contracts, with ten funded dev accounts. One
/// call at a time: a call made while a transaction runs throws `Busy`.
#[napi]
pub struct EmbeddedChain {
    shared: Shared,
}

#[napi]
impl EmbeddedChain {
    /// A fresh chain with id `chainId` (default 31337).
    #[napi(constructor, catch_unwind)]
    pub fn new(chain_id: Option<f64>) -> Result<Self> {
        crate::error::guard(|| {
            let id = chain_id.map_or(Ok(31337), |c| count("chainId", c))? as u64;
            let keys: Vec<_> = RustChain::dev_keys().into_iter().map(|a| a.key).collect();
            Ok(Self {
                shared: Shared::new(Box::new(RustChain::new(id)), &keys),
            })
        })
    }
}

chain_methods!(EmbeddedChain);

/// A node over JSON-RPC (`http://` or `https://`), with the methods of `EmbeddedChain`:
/// transactions signed here with `keys` (`0x` hex secret keys; anvil's ten well-known dev keys
/// when omitted, for a local anvil only), EIP-1559 fees, reverts caught by a preflight and
/// decoded, anvil's dev controls where the node is anvil (elsewhere `advanceTime` and `fund`
/// throw `Unsupported`). Connecting reads the chain id, so an unreachable node throws at once.
#[napi]
pub struct RpcChain {
    shared: Shared,
}

#[napi]
impl RpcChain {
    /// Connects to `url`, sending from `keys`.
    #[napi(constructor, catch_unwind)]
    pub fn new(url: String, keys: Option<Vec<String>>) -> Result<Self> {
        crate::error::guard(|| {
            let keys = match keys {
                Some(list) => parse_keys(&list.join(",")).js()?,
                None => anvil_dev_keys(),
            };
            let chain = RpcChain_::connect(&url, keys.clone()).js()?;
            Ok(Self {
                shared: Shared::new(Box::new(chain), &keys),
            })
        })
    }
}

chain_methods!(RpcChain);

/// Names of the contracts whose ABIs ship with the SDK.
#[napi(catch_unwind)]
pub fn contract_names() -> Vec<String> {
    abi::contract_names()
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// The return values of `func` of `contract` decoded from `data` (hex or a Buffer).
#[napi(catch_unwind)]
pub fn decode_output(contract: String, func: String, data: Bytes) -> Result<Vec<Value>> {
    crate::error::guard(|| {
        let bytes = hex_bytes("data", &data)?;
        let values = self::contract(&contract)?
            .decode_output(&func, &bytes)
            .js()?;
        Ok(values.iter().map(abi::value_to_json).collect())
    })
}
