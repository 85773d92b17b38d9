//! The `openledger` extension of a response: which datanet records the request drew on, who
//! contributed them, how the inference fee splits to the wei, and the EIP-712 receipt the
//! operator signs for it (what `InferencePayments` checks before it takes the fee).
//!
//! A request asks for it with `"openledger": true` (or `{"payer": "0x…"}`); plain OpenAI
//! clients never see it. The datanet's records are embedded once at start (all-MiniLM-L6-v2 when
//! an embedder folder is given, feature hashing otherwise); each request's question is embedded
//! and the closest records cited. Their relevance weights split the fee's data pool with the
//! same integer rule as the chain (`protocol = ⌊fee·protocol_bps/10⁴⌋`, `pool =
//! ⌊fee·data_pool_bps/10⁴⌋`, the owner the rest); the receipt commits to the pool's split with
//! `weightsHash = keccak256(abi.encode(bytes32[] contributors, uint256[] amounts))`, each
//! contributor's address left-padded to 32 bytes.

use std::path::PathBuf;

use std::collections::BTreeSet;

use openledger::chain::ChainError;
use openledger::chain::bindings::{InferencePayments, ModelRegistry, TestToken};
use openledger::chain::chain::{Chain, ChainExt};
use openledger::chain::deploy::{DeployConfig, Deployment};
use openledger::chain::evm::EmbeddedChain;
use openledger::chain::receipt::{
    AttributionReceipt, EnsembleReceipt, OperatorSigner, ensemble_fee, ensemble_owner_shares,
    ensemble_shares, receipt_domain, weights_hash,
};
use openledger::chain::rpc::RpcChain;
use openledger::core::datanet::Datanet;
use openledger::core::{Address, B256, U256};
use openledger::lora::embed::SentenceEmbedder;
use openledger::payable::HashingEmbedder;
use openledger::poa::rag::{Embedder, RagIndex, RelevanceWeighting, Similarity, relevance_weights};
use openledger::poa::split::{FeeSplit, SplitPolicy};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::ServerError;
use crate::error::ApiError;

/// Dimension of the feature-hashing embedder used without a model.
pub const HASHING_DIM: usize = 512;

/// Where attribution data comes from and how fees split.
#[derive(Debug, Clone)]
pub struct AttributionConfig {
    /// The datanet (JSONL records: `content`, `contributor`, …).
    pub datanet: PathBuf,
    /// A sentence-transformers folder (all-MiniLM-L6-v2); none: feature hashing.
    pub embedder: Option<PathBuf>,
    /// Records cited per answer.
    pub top_k: usize,
    /// The fee of one inference, in wei.
    pub fee_wei: U256,
    /// The model owner's account (gets the rest of the fee).
    pub owner: Address,
    /// The protocol treasury.
    pub protocol: Address,
    /// The protocol's share in basis points.
    pub protocol_bps: u16,
    /// The data contributors' share in basis points.
    pub data_pool_bps: u16,
    /// The operator's secret key, which signs the receipts.
    pub operator_key: B256,
    /// The chain of the receipts' EIP-712 domain.
    pub chain_id: u64,
    /// The `InferencePayments` contract of the domain.
    pub payments_contract: Address,
    /// Pay each attributed inference on a chain: the suite is deployed at start with the
    /// operator's key as the receipts' signer, the base model and every adapter registered at
    /// the fee, and a payer funded. The domain then is the deployment's (`payments_contract`
    /// ignored; on a node, `chain_id` is the node's).
    pub chain: Option<ChainTarget>,
}

/// Where attributed inferences are paid.
#[derive(Debug, Clone)]
pub enum ChainTarget {
    /// An in-process EVM running the contracts (chain `chain_id`, its dev accounts).
    Embedded,
    /// A node over JSON-RPC (`http://` or `https://`), sending from `keys`: at least six, used as
    /// admin (0), treasury (1), model owner (4) and payer (5), like the embedded chain's dev
    /// accounts; each must hold ether for gas.
    Rpc {
        /// The endpoint.
        url: String,
        /// The keys to send from.
        keys: Vec<k256::ecdsa::SigningKey>,
    },
}

impl AttributionConfig {
    /// Defaults for `datanet`: 3 citations, a fee of 10¹⁵ wei, 5 % protocol and 30 % data pool,
    /// chain 31337, and `operator_key` as the signer.
    pub fn new(datanet: PathBuf, operator_key: B256) -> Self {
        Self {
            datanet,
            embedder: None,
            top_k: 3,
            fee_wei: U256::from(10u64.pow(15)),
            owner: Address::ZERO,
            protocol: Address::ZERO,
            protocol_bps: 500,
            data_pool_bps: 3000,
            operator_key,
            chain_id: 31337,
            payments_contract: Address::ZERO,
            chain: None,
        }
    }
}

enum Vectors {
    Hashing(HashingEmbedder),
    Sentence(Box<SentenceEmbedder>),
}

impl Vectors {
    fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        match self {
            Self::Hashing(h) => h.embed(text).map_err(|e| e.to_string()),
            Self::Sentence(s) => s.embed(text).map_err(|e| e.to_string()),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Hashing(_) => "feature-hashing",
            Self::Sentence(_) => "all-MiniLM-L6-v2",
        }
    }
}

/// The chain inferences are paid on.
struct OnChain {
    chain: Box<dyn Chain>,
    /// `embedded` or the node's endpoint.
    name: String,
    deployment: Deployment,
    owner: Address,
    treasury: Address,
    payer: Address,
    fee: U256,
    registered: BTreeSet<B256>,
}

fn chain_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("chain: {e}"))
}

impl OnChain {
    /// Deploys the suite with `operator` as the receipts' signer and funds the default payer.
    fn new(
        c: &AttributionConfig,
        target: &ChainTarget,
        operator: Address,
    ) -> Result<Self, ChainError> {
        let (mut chain, keys, name): (Box<dyn Chain>, Vec<Address>, String) = match target {
            ChainTarget::Embedded => {
                let chain = EmbeddedChain::new(c.chain_id);
                let keys = EmbeddedChain::dev_keys()
                    .iter()
                    .map(|a| a.address)
                    .collect();
                (Box::new(chain), keys, "embedded".into())
            }
            ChainTarget::Rpc { url, keys } => {
                if keys.len() < 6 {
                    return Err(ChainError::Unsupported(format!(
                        "paying on {url} needs six keys (admin, treasury, -, -, model owner, payer), {} given",
                        keys.len()
                    )));
                }
                let addresses = keys.iter().map(Address::from_private_key).collect();
                let chain = RpcChain::connect(url, keys.clone())?;
                (Box::new(chain), addresses, url.clone())
            }
        };
        let mut dc = DeployConfig::with_accounts([keys[0], keys[1], keys[2], keys[3]]);
        dc.operator = operator;
        dc.protocol_bps = c.protocol_bps;
        dc.data_pool_bps = c.data_pool_bps;
        if c.protocol != Address::ZERO {
            dc.treasury = c.protocol;
        }
        let deployment = Deployment::deploy(&mut *chain, &dc)?;
        let owner = if c.owner == Address::ZERO {
            keys[4]
        } else {
            c.owner
        };
        let payer = keys[5];
        let mut me = Self {
            chain,
            name,
            deployment,
            owner,
            treasury: dc.treasury,
            payer,
            fee: c.fee_wei,
            registered: BTreeSet::new(),
        };
        me.fund(payer)?;
        Ok(me)
    }

    /// Mints test tokens to `payer` and lets the payments contract take them.
    fn fund(&mut self, payer: Address) -> Result<(), ChainError> {
        let (token, payments) = (self.deployment.token, self.deployment.payments);
        let amount = U256::from(10u64).pow(U256::from(30u64));
        self.chain
            .send(payer, token, &TestToken::mintCall { to: payer, amount })?
            .into_success()?;
        self.chain
            .send(
                payer,
                token,
                &TestToken::approveCall {
                    spender: payments,
                    value: U256::MAX,
                },
            )?
            .into_success()?;
        Ok(())
    }

    /// Registers the model named by `salt` (the base model, or an adapter on `base`) at the fee,
    /// once; its id is `id`, derived from the owner and the salt.
    fn register(&mut self, salt: B256, id: B256, base: B256) -> Result<(), ChainError> {
        if !self.registered.insert(id) {
            return Ok(());
        }
        let call = ModelRegistry::registerModelCall {
            salt,
            baseModel: base,
            artifactHash: id,
            trainingLogHead: B256::ZERO,
            sources: Vec::new(),
            feePerCall: self.fee,
        };
        let out = self.chain.send(self.owner, self.deployment.models, &call)?;
        if !out.is_success() {
            self.registered.remove(&id);
            return Err(ChainError::Evm(format!(
                "registerModel reverted: {:?}",
                openledger::chain::abi::decode_revert_any(&out.output)
            )));
        }
        Ok(())
    }

    fn epoch(&mut self) -> Result<u64, ChainError> {
        self.chain.view(
            self.deployment.payments,
            &InferencePayments::currentEpochCall {},
        )
    }

    /// Sends a payment `call` from `payer`: the outcome, or (`Err`) what the response reports
    /// when the node refused the transaction (a payer without gas money, say) or the contract
    /// reverted it.
    fn send_payment<C: alloy_sol_types::SolCall>(
        &mut self,
        payer: Address,
        call: &C,
    ) -> Result<openledger::chain::evm::TxOutcome, Value> {
        let out = self
            .chain
            .send(payer, self.deployment.payments, call)
            .map_err(|e| json!({"status": "refused", "error": e.to_string()}))?;
        if !out.is_success() {
            return Err(json!({
                "status": "reverted",
                "error": format!("{:?}", openledger::chain::abi::decode_revert_any(&out.output)),
                "block": out.block_number,
            }));
        }
        Ok(out)
    }

    /// Pays `receipt` from its payer; the outcome as the response reports it.
    fn pay(
        &mut self,
        receipt: &AttributionReceipt,
        signature: &alloy_primitives::Signature,
    ) -> Result<Value, ApiError> {
        let call = Deployment::pay_call(receipt.clone(), signature);
        let out = match self.send_payment(receipt.payer, &call) {
            Ok(out) => out,
            Err(outcome) => return Ok(outcome),
        };
        let paid = out
            .events::<InferencePayments::InferencePaid>()
            .into_iter()
            .next()
            .ok_or_else(|| chain_err("payForInference emitted no InferencePaid"))?;
        Ok(json!({
            "status": "paid",
            "block": out.block_number,
            "gas_used": out.gas_used,
            "contract": self.deployment.payments.to_string(),
            "owner_share_wei": paid.ownerShare.to_string(),
            "protocol_share_wei": paid.protocolShare.to_string(),
            "data_pool_wei": paid.dataShare.to_string(),
        }))
    }

    /// Pays an ensemble's `receipt` from its payer; the outcome as the response reports it
    /// (`owner_share_wei` the owners' part, `owner_shares_wei` each member's).
    fn pay_ensemble(
        &mut self,
        receipt: &EnsembleReceipt,
        signature: &alloy_primitives::Signature,
    ) -> Result<Value, ApiError> {
        let call = InferencePayments::payForEnsembleCall {
            receipt: receipt.clone(),
            signature: signature.as_bytes().to_vec().into(),
        };
        let out = match self.send_payment(receipt.payer, &call) {
            Ok(out) => out,
            Err(outcome) => return Ok(outcome),
        };
        let paid = out
            .events::<InferencePayments::EnsemblePaid>()
            .into_iter()
            .next()
            .ok_or_else(|| chain_err("payForEnsemble emitted no EnsemblePaid"))?;
        let owners: U256 = paid.ownerShares.iter().copied().sum();
        Ok(json!({
            "status": "paid",
            "block": out.block_number,
            "gas_used": out.gas_used,
            "contract": self.deployment.payments.to_string(),
            "owner_share_wei": owners.to_string(),
            "owner_shares_wei": paid.ownerShares.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "protocol_share_wei": paid.protocolShare.to_string(),
            "data_pool_wei": paid.dataShare.to_string(),
        }))
    }
}

/// The loaded datanet index, the split and the signer.
pub(crate) struct Attributor {
    index: RagIndex,
    vectors: Vectors,
    split: FeeSplit,
    fee: U256,
    signer: OperatorSigner,
    domain: alloy_sol_types::Eip712Domain,
    chain_id: u64,
    contract: Address,
    top_k: usize,
    datanet: String,
    chain: Option<Mutex<OnChain>>,
}

fn bad(path: &std::path::Path, reason: impl ToString) -> ServerError {
    ServerError::ModelFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Attributor {
    /// Reads and indexes the datanet.
    pub(crate) fn load(c: &AttributionConfig) -> Result<Self, ServerError> {
        let file = std::fs::File::open(&c.datanet).map_err(|e| bad(&c.datanet, e))?;
        let name = c
            .datanet
            .file_stem()
            .map_or_else(|| "datanet".into(), |s| s.to_string_lossy().into_owned());
        let mut datanet = Datanet::new(name.clone());
        datanet
            .import_jsonl(std::io::BufReader::new(file))
            .map_err(|e| bad(&c.datanet, e))?;
        if datanet.records().is_empty() {
            return Err(bad(&c.datanet, "the datanet has no record"));
        }
        let vectors = match &c.embedder {
            Some(dir) => Vectors::Sentence(Box::new(
                SentenceEmbedder::from_dir(dir).map_err(|e| bad(dir, e))?,
            )),
            None => Vectors::Hashing(HashingEmbedder::new(HASHING_DIM)),
        };
        let dim = match &vectors {
            Vectors::Hashing(h) => h.dim(),
            Vectors::Sentence(s) => s.dim(),
        };
        let mut index = RagIndex::new(dim, Similarity::Cosine).map_err(|e| bad(&c.datanet, e))?;
        for r in datanet.records() {
            let v = vectors.embed(&r.content).map_err(|e| bad(&c.datanet, e))?;
            // A record with no word the hashing embedder keeps has no direction: not citable.
            if v.iter().all(|&x| x == 0.0) {
                continue;
            }
            index
                .add(r.hash, r.contributor, &r.content, &v)
                .map_err(|e| bad(&c.datanet, e))?;
        }
        if u32::from(c.protocol_bps) + u32::from(c.data_pool_bps) > 10_000 {
            return Err(bad(
                &c.datanet,
                "protocol_bps + data_pool_bps exceeds 10000",
            ));
        }
        let signer = OperatorSigner::from_bytes(&c.operator_key).map_err(|e| bad(&c.datanet, e))?;
        let chain = match &c.chain {
            Some(target) => {
                Some(OnChain::new(c, target, signer.address()).map_err(|e| bad(&c.datanet, e))?)
            }
            None => None,
        };
        let (chain_id, contract) = match &chain {
            Some(ch) => (ch.chain.chain_id(), ch.deployment.payments),
            None => (c.chain_id, c.payments_contract),
        };
        // On the chain the owner and the treasury are the accounts the contracts pay.
        let (owner, protocol) = match &chain {
            Some(ch) => (ch.owner, ch.treasury),
            None => (c.owner, c.protocol),
        };
        Ok(Self {
            index,
            vectors,
            split: FeeSplit {
                owner,
                protocol,
                protocol_bps: c.protocol_bps,
                data_pool_bps: c.data_pool_bps,
                policy: SplitPolicy::default(),
            },
            fee: c.fee_wei,
            signer,
            domain: receipt_domain(chain_id, contract),
            chain_id,
            contract,
            top_k: c.top_k.max(1),
            datanet: name,
            chain: chain.map(Mutex::new),
        })
    }

    /// The operator's address.
    pub(crate) fn operator(&self) -> Address {
        self.signer.address()
    }

    /// What the chat page and clients learn of the attribution set-up.
    pub(crate) fn info(&self) -> Value {
        json!({
            "datanet": self.datanet,
            "records": self.index.len(),
            "embedder": self.vectors.name(),
            "fee_wei": self.fee.to_string(),
            "operator": self.operator().to_string(),
            "protocol_bps": self.split.protocol_bps,
            "data_pool_bps": self.split.data_pool_bps,
            "chain_id": self.chain_id,
            "payments_contract": self.contract.to_string(),
            "chain": self.chain.as_ref().map_or_else(|| "none".to_string(), |c| c.lock().name.clone()),
            "default_payer": self.chain.as_ref().map(|c| c.lock().payer.to_string()),
        })
    }

    /// The extension object of one inference: `question` is what retrieval is run on;
    /// `adapter` the adapter or ensemble the request ran with (`None`: the base model). Each
    /// adapter (an ensemble's members) is registered on the base. A single adapter's receipt
    /// names it in `adapterIds` (the base's owner is paid); an ensemble's is an
    /// `EnsembleReceipt` naming the members with their shares (`ensemble_shares`: weights in
    /// millionths), paid with `payForEnsemble`, which splits the owners' part among the
    /// members' owners by share.
    pub(crate) fn attribute(
        &self,
        question: &str,
        inference: &str,
        base: &str,
        adapter: Option<&openledger::lora::pool::AdapterId>,
        payer: Option<Address>,
    ) -> Result<Value, ApiError> {
        let query = self
            .vectors
            .embed(question)
            .map_err(|e| ApiError::internal(format!("embedding the question: {e}")))?;
        let citations = if query.iter().all(|&x| x == 0.0) {
            Vec::new()
        } else {
            self.index
                .search(&query, self.top_k)
                .map_err(|e| ApiError::internal(e.to_string()))?
        };
        let cited: Vec<_> = citations
            .iter()
            .filter(|c| c.score > 0.0)
            .cloned()
            .collect();
        let weights = if cited.is_empty() {
            Vec::new()
        } else {
            relevance_weights(&cited, RelevanceWeighting::Normalised)
                .map_err(|e| ApiError::internal(e.to_string()))?
        };
        // With nothing cited the data pool goes to the owner: the split then has no contributor.
        let split = if weights.is_empty() {
            FeeSplit {
                protocol_bps: self.split.protocol_bps,
                data_pool_bps: 0,
                ..self.split
            }
            .split(self.fee, &[])
        } else {
            self.split.split(self.fee, &weights)
        }
        .map_err(|e| ApiError::internal(e.to_string()))?;
        let pool: Vec<(B256, U256)> = split
            .contributors
            .iter()
            .map(|p| (p.account.into_word(), p.amount))
            .collect();
        // Model ids are derived from their owner and a salt (the model's name), as the registry
        // derives them.
        let salt_of = |name: &str| alloy_primitives::keccak256(name.as_bytes());
        let id_of = |salt: B256| openledger::chain::bindings::model_id(self.split.owner, salt);
        let base_salt = salt_of(base);
        let model_id = id_of(base_salt);
        // An ensemble's members with their weights; a single adapter is its own, at weight 1.
        let adapters = adapter.map_or_else(Vec::new, |a| {
            a.members().unwrap_or_else(|| vec![(a.clone(), 1.0)])
        });
        let ensemble = adapter.is_some_and(|a| a.is_ensemble());
        let adapter_salts: Vec<B256> = adapters.iter().map(|(a, _)| salt_of(a.as_str())).collect();
        let adapter_ids: Vec<B256> = adapter_salts.iter().map(|&s| id_of(s)).collect();
        // On the chain: the models registered, the epoch the contract is in, its funded payer
        // by default. The lock is held through the payment so receipts are paid in order.
        let mut chain = self.chain.as_ref().map(|c| c.lock());
        let (epoch, payer) = match chain.as_deref_mut() {
            Some(ch) => {
                ch.register(base_salt, model_id, B256::ZERO)
                    .map_err(chain_err)?;
                for (&salt, &a) in adapter_salts.iter().zip(&adapter_ids) {
                    ch.register(salt, a, model_id).map_err(chain_err)?;
                }
                (ch.epoch().map_err(chain_err)?, payer.unwrap_or(ch.payer))
            }
            None => (0, payer.unwrap_or(Address::ZERO)),
        };
        let inference_id = alloy_primitives::keccak256(inference.as_bytes());
        let weights_hash = weights_hash(&pool).map_err(|e| ApiError::internal(e.to_string()))?;
        let internal = |e: ChainError| ApiError::internal(e.to_string());
        // An ensemble is paid as one: its members are the models, their weights the shares,
        // and the owners' part of the fee is split among them by share.
        let hex_list = |ids: &[B256]| ids.iter().map(ToString::to_string).collect::<Vec<_>>();
        // The fields that differ between the two receipts, and the amount.
        let (fields, amount, signature, payment, owner_parts) = if ensemble {
            let weights: Vec<f32> = adapters.iter().map(|&(_, w)| w).collect();
            let shares = ensemble_shares(&weights).map_err(internal)?;
            let fees = vec![self.fee; adapter_ids.len()];
            let amount = ensemble_fee(&adapter_ids, &fees, &shares).map_err(internal)?;
            let parts = ensemble_owner_shares(&adapter_ids, split.owner.amount, &shares)
                .map_err(internal)?;
            let fields = json!({
                "modelIds": hex_list(&adapter_ids),
                "shares": shares.iter().map(ToString::to_string).collect::<Vec<_>>(),
            });
            let receipt = EnsembleReceipt {
                inferenceId: inference_id,
                modelIds: adapter_ids.clone(),
                shares,
                payer,
                amount,
                epoch,
                weightsHash: weights_hash,
            };
            let signature = self.signer.sign(&receipt, &self.domain).map_err(internal)?;
            let payment = match chain.as_deref_mut() {
                Some(ch) => ch.pay_ensemble(&receipt, &signature)?,
                None => Value::Null,
            };
            (fields, amount, signature, payment, parts)
        } else {
            let fields = json!({
                "modelId": model_id.to_string(),
                "adapterIds": hex_list(&adapter_ids),
            });
            let receipt = AttributionReceipt {
                inferenceId: inference_id,
                modelId: model_id,
                adapterIds: adapter_ids.clone(),
                payer,
                amount: self.fee,
                epoch,
                weightsHash: weights_hash,
            };
            let signature = self.signer.sign(&receipt, &self.domain).map_err(internal)?;
            let payment = match chain.as_deref_mut() {
                Some(ch) => ch.pay(&receipt, &signature)?,
                None => Value::Null,
            };
            (fields, self.fee, signature, payment, Vec::new())
        };
        let mut receipt_json = json!({
            "inferenceId": inference_id.to_string(),
            "payer": payer.to_string(),
            "amount": amount.to_string(),
            "epoch": epoch,
            "weightsHash": weights_hash.to_string(),
        });
        if let (Value::Object(all), Value::Object(own)) = (&mut receipt_json, fields) {
            all.extend(own);
        }
        let payout = |p: &openledger::poa::split::Payout| json!({"account": p.account.to_string(), "amount_wei": p.amount.to_string()});
        Ok(json!({
            "datanet": self.datanet,
            "embedder": self.vectors.name(),
            "citations": cited.iter().map(|c| json!({
                "record": c.record.to_string(),
                "contributor": c.contributor.to_string(),
                "score": c.score,
                "snippet": c.snippet,
            })).collect::<Vec<_>>(),
            "contributors": weights.iter().map(|(a, w)| json!({"account": a.to_string(), "weight": w}))
                .collect::<Vec<_>>(),
            "adapters": adapters.iter().zip(&adapter_ids).enumerate().map(|(i, ((a, w), id))| json!({
                "name": a.as_str(), "weight": w, "adapterId": id.to_string(),
                "owner_part_wei": owner_parts.get(i).map(ToString::to_string),
            })).collect::<Vec<_>>(),
            "fee_wei": self.fee.to_string(),
            "split": {
                "owner": payout(&split.owner),
                "protocol": payout(&split.protocol),
                "contributors": split.contributors.iter().map(payout).collect::<Vec<_>>(),
            },
            "receipt": receipt_json,
            "domain": {
                "name": openledger::chain::receipt::DOMAIN_NAME,
                "version": openledger::chain::receipt::DOMAIN_VERSION,
                "chainId": self.chain_id,
                "verifyingContract": self.contract.to_string(),
            },
            "signature": alloy_primitives::hex::encode_prefixed(signature.as_bytes()),
            "signer": self.operator().to_string(),
            "payment": payment,
        }))
    }
}
