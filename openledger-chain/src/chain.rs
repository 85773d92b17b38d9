//! What the settlement needs from a chain, whatever runs it: the [`Chain`] trait, implemented by
//! the in-process [`EmbeddedChain`](crate::evm::EmbeddedChain) and, with the `rpc` feature, by
//! [`RpcChain`](crate::rpc::RpcChain) over JSON-RPC. Typed calls ([`ChainExt::send`],
//! [`ChainExt::view`], [`ChainExt::deploy`]) work on either, boxed or not.
//!
//! Moving the clock, funding accounts and snapshots are [`DevControls`]: the embedded chain and
//! anvil have them, a real network does not ([`Chain::dev`] answers
//! [`ChainError::Unsupported`] there).
//!
//! ```
//! use openledger_chain::bindings::TestToken;
//! use openledger_chain::chain::{Chain, ChainExt};
//! use openledger_chain::evm::EmbeddedChain;
//! use openledger_core::U256;
//!
//! let mut chain: Box<dyn Chain> = Box::new(EmbeddedChain::new(31337));
//! let alice = EmbeddedChain::dev_keys()[0].address;
//! let token = chain.deploy(alice, &TestToken::BYTECODE, &[])?;
//! chain.send(alice, token, &TestToken::mintCall { to: alice, amount: U256::from(5) })?.into_success()?;
//! assert_eq!(chain.view(token, &TestToken::balanceOfCall { account: alice })?, U256::from(5));
//! let id = chain.dev()?.snapshot()?;
//! chain.send(alice, token, &TestToken::mintCall { to: alice, amount: U256::from(1) })?;
//! chain.dev()?.revert_to(id)?;
//! assert_eq!(chain.view(token, &TestToken::balanceOfCall { account: alice })?, U256::from(5));
//! # Ok::<(), openledger_chain::ChainError>(())
//! ```

use alloy_primitives::{Address, B256, Bytes, Log, U256};
use alloy_sol_types::SolCall;

use crate::ChainError;
use crate::evm::TxOutcome;

/// A transaction to send: a call when `to` is set, a contract creation otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRequest {
    /// The sender; the chain must hold its key (RPC) or be told to act as it (embedded).
    pub from: Address,
    /// The callee, or `None` to create a contract from `data`.
    pub to: Option<Address>,
    /// Calldata, or init code followed by the constructor arguments.
    pub data: Bytes,
    /// Wei attached.
    pub value: U256,
}

impl TxRequest {
    /// A call of `to` with `data` and no value.
    pub fn call(from: Address, to: Address, data: impl Into<Bytes>) -> Self {
        Self {
            from,
            to: Some(to),
            data: data.into(),
            value: U256::ZERO,
        }
    }

    /// The creation of a contract from `bytecode` followed by the ABI-encoded `args`.
    pub fn create(from: Address, bytecode: &[u8], args: &[u8]) -> Self {
        let mut data = bytecode.to_vec();
        data.extend_from_slice(args);
        Self {
            from,
            to: None,
            data: data.into(),
            value: U256::ZERO,
        }
    }
}

/// Which logs to read: emitted by one of `addresses` (any address when empty), with a first
/// topic among `topic0` (any when empty), in blocks `from_block..=to_block` (`None`: the head).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Emitting contracts.
    pub addresses: Vec<Address>,
    /// Event signatures (first topics).
    pub topic0: Vec<B256>,
    /// First block.
    pub from_block: u64,
    /// Last block (`None`: the latest).
    pub to_block: Option<u64>,
}

impl LogFilter {
    /// Whether `log` passes the address and topic parts of the filter.
    pub fn matches(&self, log: &Log) -> bool {
        (self.addresses.is_empty() || self.addresses.contains(&log.address))
            && (self.topic0.is_empty()
                || log
                    .topics()
                    .first()
                    .is_some_and(|t| self.topic0.contains(t)))
    }
}

/// A log with where it was mined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLog {
    /// The log.
    pub log: Log,
    /// Its block.
    pub block_number: u64,
    /// Its transaction's hash (`None` on the embedded chain, whose transactions are not signed).
    pub tx_hash: Option<B256>,
    /// Its position among the block's logs.
    pub log_index: u64,
}

/// The latest block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Its number.
    pub number: u64,
    /// Its timestamp (unix seconds).
    pub timestamp: u64,
}

/// A snapshot of a dev chain's state, to return to with [`DevControls::revert_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnapshotId(pub U256);

/// What the settlement needs from a chain.
///
/// Every method takes `&mut self`: a backend may keep a nonce cache or an in-process state.
/// A transaction that reverts is an `Ok` outcome with [`TxStatus::Revert`](crate::evm::TxStatus)
/// and its revert data; `Err` means it was refused or could not be sent.
pub trait Chain: Send {
    /// The chain id (part of every EIP-712 domain on this chain).
    fn chain_id(&self) -> u64;

    /// Sends `tx` from `tx.from`, waits until it is mined and returns what it did.
    fn send_transaction(&mut self, tx: TxRequest) -> Result<TxOutcome, ChainError>;

    /// Runs `calldata` against the latest state without committing anything (an `eth_call`).
    fn call(
        &mut self,
        from: Address,
        to: Address,
        calldata: Bytes,
    ) -> Result<TxOutcome, ChainError>;

    /// Ether balance of `address`, in wei.
    fn balance(&mut self, address: Address) -> Result<U256, ChainError>;

    /// The next nonce of `address` (pending transactions counted).
    fn nonce(&mut self, address: Address) -> Result<u64, ChainError>;

    /// Runtime code of `address` (empty for accounts without code).
    fn code(&mut self, address: Address) -> Result<Bytes, ChainError>;

    /// The latest block.
    fn head(&mut self) -> Result<Head, ChainError>;

    /// The logs `filter` selects, in chain order.
    fn logs(&mut self, filter: &LogFilter) -> Result<Vec<ChainLog>, ChainError>;

    /// The dev controls, or [`ChainError::Unsupported`] on a chain that has none.
    fn dev(&mut self) -> Result<&mut dyn DevControls, ChainError>;
}

/// What a dev chain (the embedded EVM, anvil) lets a test or a demo do and a real network does
/// not.
pub trait DevControls {
    /// Moves the clock forward by `seconds` and mines one block.
    fn advance_time(&mut self, seconds: u64) -> Result<(), ChainError>;

    /// Credits `amount` wei to `address`.
    fn fund(&mut self, address: Address, amount: U256) -> Result<(), ChainError>;

    /// Takes a snapshot of the whole state.
    fn snapshot(&mut self) -> Result<SnapshotId, ChainError>;

    /// Returns to snapshot `id` (the snapshot is used up; later ones are dropped).
    fn revert_to(&mut self, id: SnapshotId) -> Result<(), ChainError>;
}

/// Typed calls on any [`Chain`].
pub trait ChainExt: Chain {
    /// Sends the raw `calldata` to `to` from `from`.
    fn transact(
        &mut self,
        from: Address,
        to: Address,
        calldata: Bytes,
    ) -> Result<TxOutcome, ChainError> {
        self.send_transaction(TxRequest::call(from, to, calldata))
    }

    /// Sends the typed call `call`.
    fn send<C: SolCall>(
        &mut self,
        from: Address,
        to: Address,
        call: &C,
    ) -> Result<TxOutcome, ChainError> {
        self.transact(from, to, call.abi_encode().into())
    }

    /// Runs the typed view `call` from the zero address and decodes what it returns; a revert
    /// is [`ChainError::TransactionFailed`].
    fn view<C: SolCall>(&mut self, to: Address, call: &C) -> Result<C::Return, ChainError> {
        self.call(Address::ZERO, to, call.abi_encode().into())?
            .returns::<C>()
    }

    /// Deploys `bytecode` followed by the ABI-encoded constructor arguments `args` and returns
    /// the new contract's address; a reverting constructor is [`ChainError::TransactionFailed`].
    fn deploy(
        &mut self,
        from: Address,
        bytecode: &[u8],
        args: &[u8],
    ) -> Result<Address, ChainError> {
        let out = self
            .send_transaction(TxRequest::create(from, bytecode, args))?
            .into_success()?;
        out.created
            .ok_or_else(|| ChainError::Decode("the creation returned no address".into()))
    }
}

impl<T: Chain + ?Sized> ChainExt for T {}

impl<T: Chain + ?Sized> Chain for Box<T> {
    fn chain_id(&self) -> u64 {
        (**self).chain_id()
    }

    fn send_transaction(&mut self, tx: TxRequest) -> Result<TxOutcome, ChainError> {
        (**self).send_transaction(tx)
    }

    fn call(
        &mut self,
        from: Address,
        to: Address,
        calldata: Bytes,
    ) -> Result<TxOutcome, ChainError> {
        (**self).call(from, to, calldata)
    }

    fn balance(&mut self, address: Address) -> Result<U256, ChainError> {
        (**self).balance(address)
    }

    fn nonce(&mut self, address: Address) -> Result<u64, ChainError> {
        (**self).nonce(address)
    }

    fn code(&mut self, address: Address) -> Result<Bytes, ChainError> {
        (**self).code(address)
    }

    fn head(&mut self) -> Result<Head, ChainError> {
        (**self).head()
    }

    fn logs(&mut self, filter: &LogFilter) -> Result<Vec<ChainLog>, ChainError> {
        (**self).logs(filter)
    }

    fn dev(&mut self) -> Result<&mut dyn DevControls, ChainError> {
        (**self).dev()
    }
}
