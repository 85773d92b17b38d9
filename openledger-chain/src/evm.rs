//! An in-process EVM chain (revm) that deploys the compiled contracts and runs real
//! transactions: nonces, gas paid at the base fee, balances, logs and reverts, one block per
//! transaction. The calldata it runs is the calldata any EVM node accepts.
//!
//! ```
//! use alloy_sol_types::SolCall;
//! use openledger_chain::bindings::TestToken;
//! use openledger_chain::evm::EmbeddedChain;
//! use openledger_core::U256;
//!
//! let mut chain = EmbeddedChain::new(31337);
//! let alice = chain.dev_account(0).address;
//! let token = chain.deploy(alice, &TestToken::BYTECODE, &[])?;
//! chain.send(alice, token, &TestToken::mintCall { to: alice, amount: U256::from(5) })?.into_success()?;
//! let bal = chain.view(token, &TestToken::balanceOfCall { account: alice })?;
//! assert_eq!(bal, U256::from(5));
//! # Ok::<(), openledger_chain::ChainError>(())
//! ```

use alloy_primitives::{Address, B256, Bytes, Log, TxKind, U256, hex, keccak256};
use alloy_sol_types::{Panic, Revert, SolCall, SolError, SolEvent, SolInterface};
use k256::ecdsa::SigningKey;
use revm::context::result::{EVMError, ExecutionResult, Output};
use revm::context::{BlockEnv, TxEnv};
use revm::database::{CacheDB, EmptyDB};
use revm::handler::{MainnetContext, MainnetEvm};
use revm::primitives::hardfork::SpecId;
use revm::state::AccountInfo;
use revm::{Context, DatabaseRef, ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext};

use crate::ChainError;
use crate::chain::{Chain, ChainLog, DevControls, Head, LogFilter, SnapshotId, TxRequest};

/// Base fee of every block, in wei (1 gwei); transactions pay exactly this per gas.
pub const BASE_FEE: u64 = 1_000_000_000;
/// Gas limit of every block and default gas limit of a transaction.
pub const BLOCK_GAS_LIMIT: u64 = 30_000_000;
/// Seconds between blocks.
pub const BLOCK_TIME: u64 = 2;
/// Ether given to each dev account at genesis (10,000 ETH in wei).
pub const DEV_BALANCE: u128 = 10_000 * 10u128.pow(18);
/// Number of dev accounts funded at genesis.
pub const DEV_ACCOUNTS: usize = 10;
/// Timestamp of the genesis block.
pub const GENESIS_TIMESTAMP: u64 = 1_700_000_000;

type Evm = MainnetEvm<MainnetContext<CacheDB<EmptyDB>>>;

/// A funded account whose key the chain knows (for signing receipts in tests and demos).
#[derive(Clone)]
pub struct DevAccount {
    /// Its address.
    pub address: Address,
    /// Its secp256k1 key.
    pub key: SigningKey,
}

impl std::fmt::Debug for DevAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevAccount")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxStatus {
    /// It ran to completion.
    Success,
    /// It reverted (the output holds the revert data).
    Revert,
    /// It halted (out of gas, invalid opcode...), spending all its gas.
    Halt(String),
}

impl std::fmt::Display for TxStatus {
    /// `success`, `revert` or `halt: <why>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxStatus::Success => f.write_str("success"),
            TxStatus::Revert => f.write_str("revert"),
            TxStatus::Halt(why) => write!(f, "halt: {why}"),
        }
    }
}

/// The result of one executed transaction or call.
#[derive(Debug, Clone)]
pub struct TxOutcome {
    /// How it ended.
    pub status: TxStatus,
    /// Gas used, as charged to the sender.
    pub gas_used: u64,
    /// Logs emitted (empty unless it succeeded).
    pub logs: Vec<Log>,
    /// Return data, or revert data. A transaction mined on a node (`rpc::RpcChain`) has no
    /// return data (receipts carry none): read its events.
    pub output: Bytes,
    /// Address of the contract it created, if any.
    pub created: Option<Address>,
    /// Number of the block it was included in (for calls: the current head).
    pub block_number: u64,
    /// Hash of the signed transaction (`None` for calls, for transactions of the embedded
    /// chain, which are not signed, and for transactions a preflight call showed would revert,
    /// which were not sent).
    pub tx_hash: Option<B256>,
}

/// A revert decoded against a contract's error types.
#[derive(Debug, Clone, PartialEq)]
pub enum RevertReason<E> {
    /// One of the contract's custom errors.
    Custom(E),
    /// A Solidity panic (arithmetic overflow, division by zero...).
    Panic(Panic),
    /// A `require` message.
    Message(String),
    /// Revert data that matches none of these.
    Unknown(Bytes),
}

impl TxOutcome {
    /// Whether it succeeded.
    pub fn is_success(&self) -> bool {
        self.status == TxStatus::Success
    }

    /// The outcome itself if it succeeded, else [`ChainError::TransactionFailed`] with the revert data.
    pub fn into_success(self) -> Result<Self, ChainError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(ChainError::TransactionFailed {
                status: format!("{:?}", self.status),
                data: hex::encode_prefixed(&self.output),
            })
        }
    }

    /// The revert decoded against `E` (a `sol!` errors enum such as
    /// `AttributionRewards::AttributionRewardsErrors`); `None` if it did not revert.
    pub fn revert_reason<E: SolInterface>(&self) -> Option<RevertReason<E>> {
        if self.status != TxStatus::Revert {
            return None;
        }
        Some(decode_revert(&self.output))
    }

    /// The return data decoded as `C`'s return type.
    pub fn returns<C: SolCall>(&self) -> Result<C::Return, ChainError> {
        let ok = self.clone().into_success()?;
        if ok.output.is_empty() && ok.tx_hash.is_some() {
            return Err(ChainError::Decode(
                "a transaction mined on a node carries no return data: read its events".into(),
            ));
        }
        C::abi_decode_returns(&ok.output).map_err(|e| ChainError::Decode(e.to_string()))
    }

    /// Every log that decodes as event `E`.
    pub fn events<E: SolEvent>(&self) -> Vec<E> {
        self.logs
            .iter()
            .filter_map(|l| E::decode_log(l).ok())
            .map(|l| l.data)
            .collect()
    }
}

/// Decodes revert data against `E`'s custom errors, `Panic(uint256)` and `Error(string)`.
pub fn decode_revert<E: SolInterface>(data: &[u8]) -> RevertReason<E> {
    if let Ok(e) = E::abi_decode(data) {
        return RevertReason::Custom(e);
    }
    if data.starts_with(&Panic::SELECTOR)
        && let Ok(p) = Panic::abi_decode(data)
    {
        return RevertReason::Panic(p);
    }
    if data.starts_with(&Revert::SELECTOR)
        && let Ok(r) = Revert::abi_decode(data)
    {
        return RevertReason::Message(r.reason);
    }
    RevertReason::Unknown(Bytes::copy_from_slice(data))
}

/// An in-process EVM chain at the Prague hard fork.
///
/// It holds the state and the current block; an EVM is built around them for each transaction,
/// so the chain is `Send` and can move between threads (bindings run it off their event loops).
pub struct EmbeddedChain {
    db: CacheDB<EmptyDB>,
    block: BlockEnv,
    dev: Vec<DevAccount>,
    chain_id: u64,
    /// Every log of every mined transaction.
    logs: Vec<ChainLog>,
    /// Snapshots taken with [`DevControls::snapshot`]: state, block and number of logs.
    snapshots: Vec<(CacheDB<EmptyDB>, BlockEnv, usize)>,
}

impl std::fmt::Debug for EmbeddedChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedChain")
            .field("chain_id", &self.chain_id)
            .field("block_number", &self.block_number())
            .field("timestamp", &self.timestamp())
            .finish_non_exhaustive()
    }
}

impl EmbeddedChain {
    /// A fresh chain with [`DEV_ACCOUNTS`] dev accounts holding [`DEV_BALANCE`] each.
    ///
    /// Dev account `i` has the key `keccak256("openledger dev account {i}")`.
    pub fn new(chain_id: u64) -> Self {
        Self::with_dev_keys(
            chain_id,
            Self::dev_keys().into_iter().map(|a| a.key).collect(),
        )
    }

    /// The dev accounts [`new`](Self::new) funds: account `i` has the key
    /// `keccak256("openledger dev account {i}")`.
    pub fn dev_keys() -> Vec<DevAccount> {
        (0..DEV_ACCOUNTS)
            .map(|i| {
                let seed = keccak256(format!("openledger dev account {i}"));
                let key = SigningKey::from_slice(seed.as_slice())
                    .expect("a keccak digest below the curve order is a valid key");
                DevAccount {
                    address: Address::from_private_key(&key),
                    key,
                }
            })
            .collect()
    }

    /// A fresh chain whose dev accounts are `keys` (at least one), each holding
    /// [`DEV_BALANCE`] (e.g. anvil's accounts, to replay on it what ran here).
    pub fn with_dev_keys(chain_id: u64, keys: Vec<SigningKey>) -> Self {
        let mut db = CacheDB::new(EmptyDB::default());
        let dev: Vec<DevAccount> = keys
            .into_iter()
            .map(|key| DevAccount {
                address: Address::from_private_key(&key),
                key,
            })
            .collect();
        assert!(!dev.is_empty(), "a chain needs at least one dev account");
        for a in &dev {
            db.insert_account_info(
                a.address,
                AccountInfo {
                    balance: U256::from(DEV_BALANCE),
                    ..Default::default()
                },
            );
        }
        let block = BlockEnv {
            number: U256::ZERO,
            timestamp: U256::from(GENESIS_TIMESTAMP),
            basefee: BASE_FEE,
            gas_limit: BLOCK_GAS_LIMIT,
            prevrandao: Some(B256::ZERO),
            ..Default::default()
        };
        Self {
            db,
            block,
            dev,
            chain_id,
            logs: Vec::new(),
            snapshots: Vec::new(),
        }
    }

    /// Runs `f` on an EVM over the chain's state and current block (with `basefee`), then takes
    /// the state back.
    fn with_evm<T>(&mut self, basefee: u64, f: impl FnOnce(&mut Evm) -> T) -> T {
        let chain_id = self.chain_id;
        let mut block = self.block.clone();
        block.basefee = basefee;
        let mut evm = Context::mainnet()
            .with_db(std::mem::take(&mut self.db))
            .modify_cfg_chained(|c| {
                c.set_spec_and_mainnet_gas_params(SpecId::PRAGUE);
                c.chain_id = chain_id;
            })
            .with_block(block)
            .build_mainnet();
        let out = f(&mut evm);
        self.db = evm.ctx.journaled_state.database;
        out
    }

    /// The chain id (part of every EIP-712 domain on this chain).
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// Dev account `i` (`i < DEV_ACCOUNTS`; later indices wrap around).
    pub fn dev_account(&self, i: usize) -> &DevAccount {
        &self.dev[i % self.dev.len()]
    }

    /// Credits `amount` wei to `address` (a faucet, outside any transaction).
    pub fn fund(&mut self, address: Address, amount: U256) -> Result<(), ChainError> {
        let db = &mut self.db;
        let mut info = db.basic_ref(address).ok().flatten().unwrap_or_default();
        info.balance = info
            .balance
            .checked_add(amount)
            .ok_or_else(|| ChainError::Overflow {
                what: format!("the balance of {address} plus {amount} wei"),
            })?;
        db.insert_account_info(address, info);
        Ok(())
    }

    /// Balance of `address` in wei.
    pub fn balance(&self, address: Address) -> U256 {
        self.account(address).balance
    }

    /// Nonce of `address`.
    pub fn nonce(&self, address: Address) -> u64 {
        self.account(address).nonce
    }

    /// Runtime code of `address` (empty for accounts without code).
    pub fn code(&self, address: Address) -> Bytes {
        self.account(address)
            .code
            .map(|c| c.original_bytes())
            .unwrap_or_default()
    }

    fn account(&self, address: Address) -> AccountInfo {
        let db = &self.db;
        let mut info = db.basic_ref(address).ok().flatten().unwrap_or_default();
        if info.code.is_none() && info.code_hash != revm::primitives::KECCAK_EMPTY {
            info.code = db.code_by_hash_ref(info.code_hash).ok();
        }
        info
    }

    /// Number of the latest block.
    pub fn block_number(&self) -> u64 {
        self.block.number.saturating_to()
    }

    /// Timestamp of the latest block.
    pub fn timestamp(&self) -> u64 {
        self.block.timestamp.saturating_to()
    }

    /// Mines `n` empty blocks ([`BLOCK_TIME`] seconds apart); a block number or time past
    /// `u64` is refused and changes nothing.
    pub fn advance_blocks(&mut self, n: u64) -> Result<(), ChainError> {
        let seconds = n
            .checked_mul(BLOCK_TIME)
            .ok_or_else(|| ChainError::Overflow {
                what: format!("{n} blocks of {BLOCK_TIME} s"),
            })?;
        self.advance(n, seconds)
    }

    /// Moves the clock forward by `seconds` (and mines one block); a time past `u64` is
    /// refused and changes nothing.
    pub fn advance_time(&mut self, seconds: u64) -> Result<(), ChainError> {
        self.advance(1, seconds)
    }

    fn advance(&mut self, blocks: u64, seconds: u64) -> Result<(), ChainError> {
        let number =
            self.block_number()
                .checked_add(blocks)
                .ok_or_else(|| ChainError::Overflow {
                    what: format!("block number {} + {blocks}", self.block_number()),
                })?;
        let timestamp =
            self.timestamp()
                .checked_add(seconds)
                .ok_or_else(|| ChainError::Overflow {
                    what: format!("block time {} + {seconds} s", self.timestamp()),
                })?;
        self.block.number = U256::from(number);
        self.block.timestamp = U256::from(timestamp);
        Ok(())
    }

    fn tx(&self, from: Address, kind: TxKind, data: Bytes, value: U256) -> TxEnv {
        TxEnv {
            caller: from,
            kind,
            data,
            value,
            gas_limit: BLOCK_GAS_LIMIT,
            gas_price: u128::from(BASE_FEE),
            nonce: self.nonce(from),
            chain_id: Some(self.chain_id),
            ..Default::default()
        }
    }

    fn outcome(result: ExecutionResult, block_number: u64) -> TxOutcome {
        let gas_used = result.tx_gas_used();
        let created = result.created_address();
        match result {
            ExecutionResult::Success { logs, output, .. } => TxOutcome {
                status: TxStatus::Success,
                gas_used,
                logs,
                output: match output {
                    Output::Call(b) | Output::Create(b, _) => b,
                },
                created,
                block_number,
                tx_hash: None,
            },
            ExecutionResult::Revert { output, .. } => TxOutcome {
                status: TxStatus::Revert,
                gas_used,
                logs: Vec::new(),
                output,
                created: None,
                block_number,
                tx_hash: None,
            },
            ExecutionResult::Halt { reason, .. } => TxOutcome {
                status: TxStatus::Halt(format!("{reason:?}")),
                gas_used,
                logs: Vec::new(),
                output: Bytes::new(),
                created: None,
                block_number,
                tx_hash: None,
            },
        }
    }

    fn execute(&mut self, tx: TxEnv) -> Result<TxOutcome, ChainError> {
        // Each transaction is mined in a block of its own.
        self.advance_blocks(1)?;
        let block = self.block_number();
        match self.with_evm(BASE_FEE, |evm| evm.transact_commit(tx)) {
            Ok(result) => {
                let out = Self::outcome(result, block);
                self.logs
                    .extend(out.logs.iter().enumerate().map(|(i, log)| ChainLog {
                        log: log.clone(),
                        block_number: block,
                        tx_hash: None,
                        log_index: i as u64,
                    }));
                Ok(out)
            }
            Err(e) => {
                // A rejected transaction is not mined.
                let b = &mut self.block;
                b.number -= U256::from(1);
                b.timestamp -= U256::from(BLOCK_TIME);
                Err(evm_error(e))
            }
        }
    }

    /// Sends a transaction from `from` to `to` with raw `calldata`, mines it and commits its
    /// effects. A revert is an `Ok` outcome with [`TxStatus::Revert`] (it still costs gas);
    /// `Err` means the EVM refused the transaction itself.
    pub fn transact(
        &mut self,
        from: Address,
        to: Address,
        calldata: Bytes,
    ) -> Result<TxOutcome, ChainError> {
        self.transact_value(from, to, calldata, U256::ZERO)
    }

    /// [`transact`](Self::transact) with `value` wei attached.
    pub fn transact_value(
        &mut self,
        from: Address,
        to: Address,
        calldata: Bytes,
        value: U256,
    ) -> Result<TxOutcome, ChainError> {
        let tx = self.tx(from, TxKind::Call(to), calldata, value);
        self.execute(tx)
    }

    /// Sends the typed call `call` (see [`transact`](Self::transact)).
    pub fn send<C: SolCall>(
        &mut self,
        from: Address,
        to: Address,
        call: &C,
    ) -> Result<TxOutcome, ChainError> {
        self.transact(from, to, call.abi_encode().into())
    }

    /// Deploys `bytecode` followed by the ABI-encoded constructor arguments `args` and returns the
    /// new contract's address; a reverting constructor is [`ChainError::TransactionFailed`].
    pub fn deploy(
        &mut self,
        from: Address,
        bytecode: &[u8],
        args: &[u8],
    ) -> Result<Address, ChainError> {
        let mut code = bytecode.to_vec();
        code.extend_from_slice(args);
        let tx = self.tx(from, TxKind::Create, code.into(), U256::ZERO);
        let out = self.execute(tx)?.into_success()?;
        out.created
            .ok_or_else(|| ChainError::Evm("creation returned no address".into()))
    }

    /// Runs `calldata` against the current state without committing anything (an `eth_call`).
    pub fn call(
        &mut self,
        from: Address,
        to: Address,
        calldata: Bytes,
    ) -> Result<TxOutcome, ChainError> {
        let mut tx = self.tx(from, TxKind::Call(to), calldata, U256::ZERO);
        tx.gas_price = 0;
        let block = self.block_number();
        // Like `eth_call`: no fee (base fee 0 for the call only), and `transact` does not commit
        // (the state it returns is dropped).
        let result = self
            .with_evm(0, |evm| evm.transact(tx))
            .map_err(evm_error)?;
        Ok(Self::outcome(result.result, block))
    }

    /// Runs the typed view `call` from the zero address and decodes what it returns; a revert is
    /// [`ChainError::TransactionFailed`].
    pub fn view<C: SolCall>(&mut self, to: Address, call: &C) -> Result<C::Return, ChainError> {
        self.call(Address::ZERO, to, call.abi_encode().into())?
            .returns::<C>()
    }
}

impl Chain for EmbeddedChain {
    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn send_transaction(&mut self, tx: TxRequest) -> Result<TxOutcome, ChainError> {
        let kind = match tx.to {
            Some(to) => TxKind::Call(to),
            None => TxKind::Create,
        };
        let env = self.tx(tx.from, kind, tx.data, tx.value);
        self.execute(env)
    }

    fn call(
        &mut self,
        from: Address,
        to: Address,
        calldata: Bytes,
    ) -> Result<TxOutcome, ChainError> {
        EmbeddedChain::call(self, from, to, calldata)
    }

    fn balance(&mut self, address: Address) -> Result<U256, ChainError> {
        Ok(EmbeddedChain::balance(self, address))
    }

    fn nonce(&mut self, address: Address) -> Result<u64, ChainError> {
        Ok(EmbeddedChain::nonce(self, address))
    }

    fn code(&mut self, address: Address) -> Result<Bytes, ChainError> {
        Ok(EmbeddedChain::code(self, address))
    }

    fn head(&mut self) -> Result<Head, ChainError> {
        Ok(Head {
            number: self.block_number(),
            timestamp: self.timestamp(),
        })
    }

    fn logs(&mut self, filter: &LogFilter) -> Result<Vec<ChainLog>, ChainError> {
        let to = filter.to_block.unwrap_or(u64::MAX);
        Ok(self
            .logs
            .iter()
            .filter(|l| l.block_number >= filter.from_block && l.block_number <= to)
            .filter(|l| filter.matches(&l.log))
            .cloned()
            .collect())
    }

    fn dev(&mut self) -> Result<&mut dyn DevControls, ChainError> {
        Ok(self)
    }
}

impl DevControls for EmbeddedChain {
    fn advance_time(&mut self, seconds: u64) -> Result<(), ChainError> {
        EmbeddedChain::advance_time(self, seconds)
    }

    fn fund(&mut self, address: Address, amount: U256) -> Result<(), ChainError> {
        EmbeddedChain::fund(self, address, amount)
    }

    fn snapshot(&mut self) -> Result<SnapshotId, ChainError> {
        self.snapshots
            .push((self.db.clone(), self.block.clone(), self.logs.len()));
        Ok(SnapshotId(U256::from(self.snapshots.len() - 1)))
    }

    fn revert_to(&mut self, id: SnapshotId) -> Result<(), ChainError> {
        let i: usize =
            id.0.try_into()
                .ok()
                .filter(|&i: &usize| i < self.snapshots.len())
                .ok_or(ChainError::UnknownSnapshot(id.0))?;
        let (db, block, logs) = self.snapshots.swap_remove(i);
        self.snapshots.truncate(i);
        self.db = db;
        self.block = block;
        self.logs.truncate(logs);
        Ok(())
    }
}

fn evm_error<E: std::fmt::Debug>(e: EVMError<E>) -> ChainError {
    ChainError::Evm(format!("{e:?}"))
}

// The chain moves between threads (bindings run it off their event loops).
const _: fn() = || {
    fn send<T: Send>() {}
    send::<EmbeddedChain>();
};
