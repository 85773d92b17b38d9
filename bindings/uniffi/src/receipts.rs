//! EIP-712 attribution receipts (`openledger_chain::receipt`) and the contract calls that settle
//! them (`openledger_chain::bindings`, `abi`): digests, signing, signer recovery, and the calldata of
//! `InferencePayments.payForInference` and `AttributionRewards.claim`, ready for any EVM node.

use std::sync::Arc;

use alloy_primitives::{Bytes, Signature};
use alloy_sol_types::{Eip712Domain, SolCall};
use openledger_chain::abi::ContractAbi;
use openledger_chain::bindings::{AttributionRewards, InferencePayments};
use openledger_chain::receipt;

use crate::error::OpenLedgerError;
use crate::types::{address, address_str, b256, b256_str, b256s, bytes, u256};

fn invalid(m: String) -> OpenLedgerError {
    OpenLedgerError::InvalidArgument(m)
}

/// What the serving operator signs for one inference (`InferencePayments.AttributionReceipt`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AttributionReceipt {
    /// The inference's id (32-byte hex).
    pub inference_id: String,
    /// The model's id (32-byte hex).
    pub model_id: String,
    /// The adapters used (32-byte hex each).
    pub adapter_ids: Vec<String>,
    /// Who pays (hex address).
    pub payer: String,
    /// The fee in wei (decimal string).
    pub amount: String,
    /// The settlement epoch.
    pub epoch: u64,
    /// The hash committing to the attribution weights (see [`attribution_weights_hash`]).
    pub weights_hash: String,
}

/// The EIP-712 domain of an `InferencePayments` deployment.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReceiptDomain {
    /// The chain id.
    pub chain_id: u64,
    /// The `InferencePayments` contract (hex address).
    pub verifying_contract: String,
}

/// One attribution weight: a record (or contributor) id and its weight.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AttributionWeight {
    /// The id (32-byte hex).
    pub id: String,
    /// The weight (decimal string).
    pub weight: String,
}

fn rust_receipt(r: &AttributionReceipt) -> Result<receipt::AttributionReceipt, OpenLedgerError> {
    Ok(receipt::AttributionReceipt {
        inferenceId: b256("inference_id", &r.inference_id).map_err(invalid)?,
        modelId: b256("model_id", &r.model_id).map_err(invalid)?,
        adapterIds: b256s("adapter_ids", &r.adapter_ids).map_err(invalid)?,
        payer: address("payer", &r.payer).map_err(invalid)?,
        amount: u256("amount", &r.amount).map_err(invalid)?,
        epoch: r.epoch,
        weightsHash: b256("weights_hash", &r.weights_hash).map_err(invalid)?,
    })
}

fn rust_domain(d: &ReceiptDomain) -> Result<Eip712Domain, OpenLedgerError> {
    let contract = address("verifying_contract", &d.verifying_contract).map_err(invalid)?;
    Ok(receipt::receipt_domain(d.chain_id, contract))
}

fn signature(s: &str) -> Result<Signature, OpenLedgerError> {
    let raw = bytes("signature", s).map_err(invalid)?;
    Ok(receipt::parse_signature(&raw)?)
}

/// The EIP-712 struct hash of a receipt (`hashStruct`).
#[uniffi::export]
pub fn receipt_struct_hash(receipt: AttributionReceipt) -> Result<String, OpenLedgerError> {
    Ok(b256_str(&receipt::struct_hash(&rust_receipt(&receipt)?)))
}

/// The EIP-712 domain separator of `domain`.
#[uniffi::export]
pub fn receipt_domain_separator(domain: ReceiptDomain) -> Result<String, OpenLedgerError> {
    Ok(b256_str(&rust_domain(&domain)?.separator()))
}

/// The digest the operator signs: `keccak256("\x19\x01" || domainSeparator || hashStruct)`.
#[uniffi::export]
pub fn receipt_signing_hash(
    receipt: AttributionReceipt,
    domain: ReceiptDomain,
) -> Result<String, OpenLedgerError> {
    Ok(b256_str(&receipt::signing_hash(
        &rust_receipt(&receipt)?,
        &rust_domain(&domain)?,
    )))
}

/// The address that signed `receipt` in `domain` (65-byte `r || s || v` hex signature).
#[uniffi::export]
pub fn recover_receipt_signer(
    receipt: AttributionReceipt,
    domain: ReceiptDomain,
    signature: String,
) -> Result<String, OpenLedgerError> {
    let sig = self::signature(&signature)?;
    let signer = receipt::recover_signer(&rust_receipt(&receipt)?, &rust_domain(&domain)?, &sig)?;
    Ok(address_str(&signer))
}

/// Whether `signature` over `receipt` in `domain` was made by `operator`.
#[uniffi::export]
pub fn verify_receipt(
    receipt: AttributionReceipt,
    domain: ReceiptDomain,
    signature: String,
    operator: String,
) -> Result<bool, OpenLedgerError> {
    let operator = address("operator", &operator).map_err(invalid)?;
    let sig = self::signature(&signature)?;
    let signer = receipt::recover_signer(&rust_receipt(&receipt)?, &rust_domain(&domain)?, &sig)?;
    Ok(signer == operator)
}

/// `keccak256(abi.encode(bytes32[] ids, uint256[] weights))`, ids and weights in the order given.
#[uniffi::export]
pub fn attribution_weights_hash(
    weights: Vec<AttributionWeight>,
) -> Result<String, OpenLedgerError> {
    let w = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            Ok((
                b256(&format!("weights[{i}].id"), &w.id).map_err(invalid)?,
                u256(&format!("weights[{i}].weight"), &w.weight).map_err(invalid)?,
            ))
        })
        .collect::<Result<Vec<_>, OpenLedgerError>>()?;
    Ok(b256_str(&receipt::weights_hash(&w)?))
}

/// An operator's signing key (an on-device model signs the receipts of its own inferences).
#[derive(Debug, uniffi::Object)]
pub struct OperatorSigner {
    inner: receipt::OperatorSigner,
}

#[uniffi::export]
impl OperatorSigner {
    /// A key from its 32 secret bytes (hex); zero or a value not below the curve order is
    /// [`OpenLedgerError::Signature`].
    #[uniffi::constructor]
    pub fn new(secret: String) -> Result<Arc<Self>, OpenLedgerError> {
        let secret = b256("secret", &secret).map_err(invalid)?;
        Ok(Arc::new(Self {
            inner: receipt::OperatorSigner::from_bytes(&secret)?,
        }))
    }

    /// The operator's address (checksummed).
    pub fn address(&self) -> String {
        address_str(&self.inner.address())
    }

    /// Signs the receipt's EIP-712 digest: a 65-byte `r || s || v` hex signature (low s).
    pub fn sign(
        &self,
        receipt: AttributionReceipt,
        domain: ReceiptDomain,
    ) -> Result<String, OpenLedgerError> {
        let sig = self
            .inner
            .sign(&rust_receipt(&receipt)?, &rust_domain(&domain)?)?;
        Ok(alloy_primitives::hex::encode_prefixed(sig.as_bytes()))
    }
}

/// The calldata of `InferencePayments.payForInference(receipt, signature)`.
#[uniffi::export]
pub fn pay_for_inference_calldata(
    receipt: AttributionReceipt,
    signature: String,
) -> Result<String, OpenLedgerError> {
    let call = InferencePayments::payForInferenceCall {
        receipt: rust_receipt(&receipt)?,
        signature: Bytes::from(self::signature(&signature)?.as_bytes().to_vec()),
    };
    Ok(alloy_primitives::hex::encode_prefixed(call.abi_encode()))
}

/// The calldata of `AttributionRewards.claim(epoch, index, account, amount, proof)`: a
/// contributor's claim of its reward with the Merkle proof of its leaf.
#[uniffi::export]
pub fn claim_calldata(
    epoch: u64,
    index: String,
    account: String,
    amount: String,
    proof: Vec<String>,
) -> Result<String, OpenLedgerError> {
    let call = AttributionRewards::claimCall {
        epoch,
        index: u256("index", &index).map_err(invalid)?,
        account: address("account", &account).map_err(invalid)?,
        amount: u256("amount", &amount).map_err(invalid)?,
        proof: b256s("proof", &proof).map_err(invalid)?,
    };
    Ok(alloy_primitives::hex::encode_prefixed(call.abi_encode()))
}

/// The calldata of any function of the openledger contracts (`DatanetRegistry`,
/// `ModelRegistry`, `InferencePayments`, `AttributionRewards`, ...) by name or full signature,
/// with `args_json` a JSON array of the arguments in canonical form (integers as decimal strings,
/// addresses and bytes as `0x` hex, tuples and arrays as JSON arrays).
#[uniffi::export]
pub fn encode_contract_call(
    contract: String,
    function: String,
    args_json: String,
) -> Result<String, OpenLedgerError> {
    let args: Vec<serde_json::Value> = serde_json::from_str(&args_json)
        .map_err(|e| invalid(format!("args_json: not a JSON array ({e})")))?;
    let data = ContractAbi::named(&contract)?.encode_call(&function, &args)?;
    Ok(alloy_primitives::hex::encode_prefixed(data))
}
