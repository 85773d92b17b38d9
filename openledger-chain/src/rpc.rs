//! A [`Chain`] over JSON-RPC on alloy's provider: any EVM node (anvil, a testnet, an L2).
//!
//! - **Signing is local.** The chain holds the keys it sends from; a transaction from any other
//!   account is [`ChainError::NoSigner`]. Transactions are EIP-1559 (`eth_feeHistory` fee
//!   estimate), signed here and sent with `eth_sendRawTransaction`.
//! - **Nonces.** Each sender's next nonce is cached; a send that fails drops the cache entry,
//!   so the next send reads the node's pending count again (a dropped or refused transaction
//!   leaves no gap behind).
//! - **Nothing is paid twice.** A transport error on a send re-sends the *same signed bytes*
//!   (same nonce, same hash), so a retry can at most be refused as already known; a transaction
//!   that vanished from the pool before it was mined is re-broadcast the same way.
//! - **Reverts.** Each transaction is preflighted with `eth_estimateGas`; one that would revert
//!   is not sent and comes back as a [`TxStatus::Revert`] outcome with the node's revert data
//!   (and no hash). One mined as reverted is replayed with `eth_call` on its parent block to
//!   recover the revert data a receipt does not carry.
//! - **Dev controls** ([`DevControls`]) are anvil's `evm_*`/`anvil_*` methods, offered when
//!   `web3_clientVersion` names anvil; elsewhere they are [`ChainError::Unsupported`].
//! - **Logs** are read in pages of [`RpcConfig::log_page_blocks`] blocks (halved when the node
//!   refuses a page as too large).
//!
//! The methods block the calling thread on a runtime of their own (called from inside an async
//! runtime, they run the request on a scoped thread and block the caller until it ends: prefer
//! `spawn_blocking` there).

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Encodable2718;
use alloy_network::{Ethereum, TxSignerSync};
use alloy_primitives::{Address, B256, Bytes, TxKind, U256, hex};
use alloy_provider::{DynProvider, Provider, ProviderBuilder};
use alloy_rpc_types_eth::{BlockNumberOrTag, Filter, TransactionReceipt, TransactionRequest};
use alloy_signer_local::PrivateKeySigner;
use alloy_transport::{RpcError, TransportErrorKind};
use k256::ecdsa::SigningKey;

use crate::ChainError;
use crate::chain::{Chain, ChainLog, DevControls, Head, LogFilter, SnapshotId, TxRequest};
use crate::evm::{TxOutcome, TxStatus};

/// The private keys of anvil's ten default dev accounts (derived from its public test mnemonic
/// `test test test test test test test test test test test junk`, path `m/44'/60'/0'/0/i`).
/// Well known to everyone: never use them outside a local dev node.
pub const ANVIL_DEV_KEYS: [&str; 10] = [
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "dbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
];

/// Anvil's dev keys ([`ANVIL_DEV_KEYS`]) as signing keys.
pub fn anvil_dev_keys() -> Vec<SigningKey> {
    ANVIL_DEV_KEYS
        .iter()
        .map(|k| {
            let bytes = hex::decode(k).expect("a constant hex key");
            SigningKey::from_slice(&bytes).expect("a constant valid key")
        })
        .collect()
}

/// Reads comma-separated hex private keys (`0x` optional), naming the entry that is not one.
pub fn parse_keys(list: &str) -> Result<Vec<SigningKey>, ChainError> {
    list.split(',')
        .enumerate()
        .map(|(i, k)| {
            let bad = |why: String| ChainError::Signature(format!("key {i}: {why}"));
            let bytes = hex::decode(k.trim()).map_err(|e| bad(e.to_string()))?;
            SigningKey::from_slice(&bytes).map_err(|e| bad(e.to_string()))
        })
        .collect()
}

/// The keys in the environment variable `var` ([`parse_keys`]), or anvil's dev keys when it is
/// unset; the flag says which.
pub fn keys_from_env(var: &str) -> Result<(Vec<SigningKey>, bool), ChainError> {
    match std::env::var(var) {
        Ok(list) => Ok((parse_keys(&list)?, false)),
        Err(_) => Ok((anvil_dev_keys(), true)),
    }
}

/// How patient the RPC chain is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcConfig {
    /// Limit of one HTTP request.
    pub request_timeout: Duration,
    /// Retries of a request that failed in transport (not of one the node answered with an
    /// error).
    pub retries: u32,
    /// Pause before the first retry (doubled before each next one).
    pub retry_delay: Duration,
    /// How long a sent transaction is waited for.
    pub receipt_timeout: Duration,
    /// Pause between two receipt polls.
    pub poll_interval: Duration,
    /// Gas limit over the node's estimate, percent.
    pub gas_margin_percent: u64,
    /// Blocks per `eth_getLogs` page.
    pub log_page_blocks: u64,
}

impl Default for RpcConfig {
    /// 10 s requests, 3 retries from 200 ms, 120 s for a receipt polled every 50 ms, 25 % gas
    /// margin, 5,000-block log pages.
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            retries: 3,
            retry_delay: Duration::from_millis(200),
            receipt_timeout: Duration::from_secs(120),
            poll_interval: Duration::from_millis(50),
            gas_margin_percent: 25,
            log_page_blocks: 5_000,
        }
    }
}

/// A chain behind a JSON-RPC endpoint, sending from local keys.
pub struct RpcChain {
    /// `Some` until dropped (taken then, to shut down without blocking: a chain may be dropped
    /// inside an async runtime).
    rt: Option<tokio::runtime::Runtime>,
    provider: DynProvider<Ethereum>,
    url: String,
    chain_id: u64,
    client_version: String,
    signers: HashMap<Address, PrivateKeySigner>,
    nonces: HashMap<Address, u64>,
    config: RpcConfig,
}

impl std::fmt::Debug for RpcChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcChain")
            .field("url", &self.url)
            .field("chain_id", &self.chain_id)
            .field("client_version", &self.client_version)
            .field("signers", &self.signers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn rpc_err(method: &str, e: impl std::fmt::Display) -> ChainError {
    ChainError::Rpc {
        method: method.into(),
        reason: e.to_string(),
    }
}

/// Whether the node's answer reads as an execution revert, and its revert data if any.
fn as_revert(e: &RpcError<TransportErrorKind>) -> Option<Bytes> {
    let payload = e.as_error_resp()?;
    if let Some(data) = payload.as_revert_data() {
        return Some(data);
    }
    let m = payload.message.to_ascii_lowercase();
    (payload.code == 3 || m.contains("revert")).then(Bytes::new)
}

impl RpcChain {
    /// Connects to `url` (http or https), reads the chain id and the client version, and sends
    /// from `keys`.
    pub fn connect(url: &str, keys: Vec<SigningKey>) -> Result<Self, ChainError> {
        Self::connect_with(url, keys, RpcConfig::default())
    }

    /// [`connect`](Self::connect) with `config`.
    pub fn connect_with(
        url: &str,
        keys: Vec<SigningKey>,
        config: RpcConfig,
    ) -> Result<Self, ChainError> {
        let parsed: reqwest::Url = url
            .parse()
            .map_err(|e| rpc_err("connect", format!("{url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(rpc_err(
                "connect",
                format!("{url:?}: only http and https endpoints are supported"),
            ));
        }
        // https goes through rustls on ring, the provider the workspace already builds (aws-lc,
        // the one with post-quantum key exchange, needs a C toolchain and cmake); a process
        // that chose its provider keeps it.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| rpc_err("connect", e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| rpc_err("connect", e))?;
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_reqwest(client, parsed)
            .erased();
        let signers = keys
            .into_iter()
            .map(|k| {
                let s = PrivateKeySigner::from_signing_key(k);
                (s.address(), s)
            })
            .collect();
        let mut chain = Self {
            rt: Some(rt),
            provider,
            url: url.to_string(),
            chain_id: 0,
            client_version: String::new(),
            signers,
            nonces: HashMap::new(),
            config,
        };
        chain.chain_id =
            chain.retrying("eth_chainId", |p| async move { p.get_chain_id().await })?;
        chain.client_version = chain.retrying("web3_clientVersion", |p| async move {
            p.get_client_version().await
        })?;
        Ok(chain)
    }

    /// The endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What the node calls itself (`web3_clientVersion`).
    pub fn client_version(&self) -> &str {
        &self.client_version
    }

    /// Adds a key to send from.
    pub fn add_signer(&mut self, key: SigningKey) -> Address {
        let s = PrivateKeySigner::from_signing_key(key);
        let a = s.address();
        self.signers.insert(a, s);
        a
    }

    /// Whether the node is anvil (and so has dev controls).
    pub fn is_anvil(&self) -> bool {
        self.client_version
            .to_ascii_lowercase()
            .starts_with("anvil")
    }

    /// Forgets every cached nonce (the next send of each account reads the node's count).
    pub fn reset_nonces(&mut self) {
        self.nonces.clear();
    }

    /// Runs `f` to completion on the chain's runtime (from a thread of its own when the caller
    /// is itself inside an async runtime, which cannot be blocked on from within).
    fn block<F>(&self, f: F) -> Result<F::Output, ChainError>
    where
        F: Future + Send,
        F::Output: Send,
    {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| rpc_err("runtime", "the chain is shutting down"))?;
        if tokio::runtime::Handle::try_current().is_ok() {
            return std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join())
                .map_err(|_| rpc_err("runtime", "the request thread panicked"));
        }
        Ok(rt.block_on(f))
    }

    /// Runs the request `f` and retries it on transport errors, [`RpcConfig::retries`] times.
    fn retrying<T, F, Fut>(&self, method: &str, f: F) -> Result<T, ChainError>
    where
        T: Send,
        F: Fn(DynProvider<Ethereum>) -> Fut,
        Fut: Future<Output = Result<T, RpcError<TransportErrorKind>>> + Send,
    {
        self.attempts(f)?.0.map_err(|e| rpc_err(method, e))
    }

    /// Runs the request `f`, again after each transport error ([`RpcConfig::retries`] times,
    /// the pause doubling); returns the last answer and whether it was retried.
    #[allow(clippy::type_complexity)]
    fn attempts<T, F, Fut>(
        &self,
        f: F,
    ) -> Result<(Result<T, RpcError<TransportErrorKind>>, bool), ChainError>
    where
        T: Send,
        F: Fn(DynProvider<Ethereum>) -> Fut,
        Fut: Future<Output = Result<T, RpcError<TransportErrorKind>>> + Send,
    {
        let mut delay = self.config.retry_delay;
        let mut tries = 0;
        loop {
            match self.block(f(self.provider.clone()))? {
                Err(e) if e.is_transport_error() && tries < self.config.retries => {
                    tries += 1;
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                r => return Ok((r, tries > 0)),
            }
        }
    }

    fn raw<T: serde::de::DeserializeOwned + Send + Sync + Unpin + std::fmt::Debug + 'static>(
        &self,
        method: &'static str,
        params: serde_json::Value,
    ) -> Result<T, ChainError> {
        self.retrying(method, |p| {
            let params = params.clone();
            async move { p.raw_request::<_, T>(method.into(), params).await }
        })
    }

    fn request(&self, tx: &TxRequest) -> TransactionRequest {
        let mut r = TransactionRequest::default()
            .from(tx.from)
            .input(tx.data.clone().into())
            .value(tx.value);
        r.to = Some(match tx.to {
            Some(to) => TxKind::Call(to),
            None => TxKind::Create,
        });
        r
    }

    fn next_nonce(&mut self, from: Address) -> Result<u64, ChainError> {
        if let Some(&n) = self.nonces.get(&from) {
            return Ok(n);
        }
        let n = Chain::nonce(self, from)?;
        self.nonces.insert(from, n);
        Ok(n)
    }

    /// Sends the signed `raw` transaction, re-sending the same bytes on transport errors.
    /// A refusal after a retry that says the transaction is known (or its nonce used), when
    /// the node does hold it, is the earlier attempt having arrived; anything else is an
    /// error.
    fn broadcast(&self, raw: &Bytes, hash: B256) -> Result<(), ChainError> {
        let (r, retried) = self.attempts(|p| async move {
            p.raw_request::<_, B256>("eth_sendRawTransaction".into(), (raw,))
                .await
        })?;
        let Err(e) = r else { return Ok(()) };
        // Each node words it its own way: geth "already known" (older ones "known
        // transaction"), anvil "transaction already imported"; "nonce too low" once mined.
        let known = e.as_error_resp().is_some_and(|p| {
            let m = p.message.to_ascii_lowercase();
            [
                "already known",
                "known transaction",
                "already imported",
                "nonce too low",
            ]
            .iter()
            .any(|w| m.contains(w))
        });
        if retried && known && self.transaction_known(hash)? {
            return Ok(());
        }
        Err(rpc_err("eth_sendRawTransaction", e))
    }

    fn transaction_known(&self, hash: B256) -> Result<bool, ChainError> {
        Ok(self
            .retrying("eth_getTransactionByHash", |p| async move {
                p.get_transaction_by_hash(hash).await
            })?
            .is_some())
    }

    fn receipt(&self, hash: B256) -> Result<Option<TransactionReceipt>, ChainError> {
        self.retrying("eth_getTransactionReceipt", |p| async move {
            p.get_transaction_receipt(hash).await
        })
    }

    /// Polls for `hash`'s receipt; re-broadcasts `raw` when the node has forgotten it.
    fn wait(&self, raw: &Bytes, hash: B256, nonce: u64) -> Result<TransactionReceipt, ChainError> {
        let start = Instant::now();
        loop {
            if let Some(r) = self.receipt(hash)? {
                return Ok(r);
            }
            if !self.transaction_known(hash)? {
                // Dropped from the pool: the same signed bytes again (the nonce cannot be
                // used twice, so this cannot pay twice).
                self.broadcast(raw, hash)?;
            }
            if start.elapsed() > self.config.receipt_timeout {
                return Err(ChainError::NotMined {
                    hash,
                    nonce,
                    seconds: start.elapsed().as_secs(),
                });
            }
            std::thread::sleep(self.config.poll_interval);
        }
    }

    fn outcome(&self, tx: &TxRequest, r: TransactionReceipt) -> Result<TxOutcome, ChainError> {
        let block_number = r.block_number.unwrap_or_default();
        let ok = r.inner.status();
        let logs = r.inner.logs().iter().map(|l| l.inner.clone()).collect();
        let mut out = TxOutcome {
            status: if ok {
                TxStatus::Success
            } else {
                TxStatus::Revert
            },
            gas_used: r.gas_used,
            logs,
            output: Bytes::new(),
            created: r.contract_address,
            block_number,
            tx_hash: Some(r.transaction_hash),
        };
        if !ok {
            out.logs.clear();
            // The receipt carries no revert data: replay the call on the parent block.
            let req = self.request(tx);
            let at = BlockNumberOrTag::Number(block_number.saturating_sub(1));
            let replay = self.block(self.provider.call(req).block(at.into()).into_future())?;
            if let Err(e) = replay
                && let Some(data) = as_revert(&e)
            {
                out.output = data;
            }
        }
        Ok(out)
    }
}

impl Drop for RpcChain {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Chain for RpcChain {
    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn send_transaction(&mut self, tx: TxRequest) -> Result<TxOutcome, ChainError> {
        let signer = self
            .signers
            .get(&tx.from)
            .cloned()
            .ok_or(ChainError::NoSigner(tx.from))?;
        // Preflight: a transaction that would revert is not sent.
        let req = self.request(&tx);
        let estimate = self.block(self.provider.estimate_gas(req).into_future())?;
        let gas = match estimate {
            Ok(g) => g,
            Err(e) => match as_revert(&e) {
                Some(data) => {
                    let head = self.head()?;
                    return Ok(TxOutcome {
                        status: TxStatus::Revert,
                        gas_used: 0,
                        logs: Vec::new(),
                        output: data,
                        created: None,
                        block_number: head.number,
                        tx_hash: None,
                    });
                }
                None => return Err(rpc_err("eth_estimateGas", e)),
            },
        };
        let fees = self.retrying("eth_feeHistory", |p| async move {
            p.estimate_eip1559_fees().await
        })?;
        let nonce = self.next_nonce(tx.from)?;
        let mut unsigned = TxEip1559 {
            chain_id: self.chain_id,
            nonce,
            gas_limit: gas.saturating_mul(100 + self.config.gas_margin_percent) / 100,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to: match tx.to {
                Some(a) => TxKind::Call(a),
                None => TxKind::Create,
            },
            value: tx.value,
            access_list: Default::default(),
            input: tx.data.clone(),
        };
        let sig = signer
            .sign_transaction_sync(&mut unsigned)
            .map_err(|e| ChainError::Signature(e.to_string()))?;
        let envelope = TxEnvelope::from(unsigned.into_signed(sig));
        let hash = *envelope.tx_hash();
        let raw: Bytes = envelope.encoded_2718().into();
        let sent = self
            .broadcast(&raw, hash)
            .and_then(|()| self.wait(&raw, hash, nonce));
        match sent {
            Ok(receipt) => {
                self.nonces.insert(tx.from, nonce + 1);
                self.outcome(&tx, receipt)
            }
            Err(e) => {
                // Whatever happened to it, the node's count is the truth from here on.
                self.nonces.remove(&tx.from);
                Err(e)
            }
        }
    }

    fn call(
        &mut self,
        from: Address,
        to: Address,
        calldata: Bytes,
    ) -> Result<TxOutcome, ChainError> {
        let req = self.request(&TxRequest::call(from, to, calldata));
        let (result, _) = self.attempts(|p| p.call(req.clone()).into_future())?;
        let (status, output) = match result {
            Ok(b) => (TxStatus::Success, b),
            Err(e) => match as_revert(&e) {
                Some(data) => (TxStatus::Revert, data),
                None => return Err(rpc_err("eth_call", e)),
            },
        };
        Ok(TxOutcome {
            status,
            gas_used: 0,
            logs: Vec::new(),
            output,
            created: None,
            block_number: 0,
            tx_hash: None,
        })
    }

    fn balance(&mut self, address: Address) -> Result<U256, ChainError> {
        self.retrying(
            "eth_getBalance",
            |p| async move { p.get_balance(address).await },
        )
    }

    fn nonce(&mut self, address: Address) -> Result<u64, ChainError> {
        self.retrying("eth_getTransactionCount", |p| async move {
            p.get_transaction_count(address).pending().await
        })
    }

    fn code(&mut self, address: Address) -> Result<Bytes, ChainError> {
        self.retrying(
            "eth_getCode",
            |p| async move { p.get_code_at(address).await },
        )
    }

    fn head(&mut self) -> Result<Head, ChainError> {
        let block = self
            .retrying("eth_getBlockByNumber", |p| async move {
                p.get_block_by_number(BlockNumberOrTag::Latest).await
            })?
            .ok_or_else(|| rpc_err("eth_getBlockByNumber", "the node has no latest block"))?;
        Ok(Head {
            number: block.header.number,
            timestamp: block.header.timestamp,
        })
    }

    fn logs(&mut self, filter: &LogFilter) -> Result<Vec<ChainLog>, ChainError> {
        let last = match filter.to_block {
            Some(b) => b,
            None => self.head()?.number,
        };
        let mut out = Vec::new();
        let mut from = filter.from_block;
        let mut page = self.config.log_page_blocks.max(1);
        while from <= last {
            let to = from.saturating_add(page - 1).min(last);
            let mut f = Filter::new().from_block(from).to_block(to);
            if !filter.addresses.is_empty() {
                f = f.address(filter.addresses.clone());
            }
            if !filter.topic0.is_empty() {
                f = f.event_signature(filter.topic0.clone());
            }
            let got = self.block(self.provider.get_logs(&f))?;
            match got {
                Ok(logs) => {
                    out.extend(logs.into_iter().map(|l| ChainLog {
                        block_number: l.block_number.unwrap_or_default(),
                        tx_hash: l.transaction_hash,
                        log_index: l.log_index.unwrap_or_default(),
                        log: l.inner,
                    }));
                    if to == u64::MAX {
                        break;
                    }
                    from = to + 1;
                }
                // The node refused the page (too many results or too wide a range): halve it.
                Err(e) if e.as_error_resp().is_some() && page > 1 => page /= 2,
                Err(e) => return Err(rpc_err("eth_getLogs", e)),
            }
        }
        Ok(out)
    }

    fn dev(&mut self) -> Result<&mut dyn DevControls, ChainError> {
        if self.is_anvil() {
            Ok(self)
        } else {
            Err(ChainError::Unsupported(format!(
                "dev controls on {} (only anvil has them)",
                self.client_version
            )))
        }
    }
}

impl DevControls for RpcChain {
    fn advance_time(&mut self, seconds: u64) -> Result<(), ChainError> {
        let _: serde_json::Value = self.raw("evm_increaseTime", serde_json::json!([seconds]))?;
        let _: serde_json::Value = self.raw("evm_mine", serde_json::json!([]))?;
        Ok(())
    }

    fn fund(&mut self, address: Address, amount: U256) -> Result<(), ChainError> {
        let now = Chain::balance(self, address)?;
        let to = now
            .checked_add(amount)
            .ok_or_else(|| ChainError::Overflow {
                what: format!("the balance of {address} plus {amount} wei"),
            })?;
        let _: serde_json::Value =
            self.raw("anvil_setBalance", serde_json::json!([address, to]))?;
        Ok(())
    }

    fn snapshot(&mut self) -> Result<SnapshotId, ChainError> {
        let id: U256 = self.raw("evm_snapshot", serde_json::json!([]))?;
        Ok(SnapshotId(id))
    }

    fn revert_to(&mut self, id: SnapshotId) -> Result<(), ChainError> {
        let ok: bool = self.raw("evm_revert", serde_json::json!([id.0]))?;
        // The state moved back: every cached nonce may be ahead of it.
        self.nonces.clear();
        if ok {
            Ok(())
        } else {
            Err(ChainError::UnknownSnapshot(id.0))
        }
    }
}
