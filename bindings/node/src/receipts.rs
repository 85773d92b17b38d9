//! JavaScript face of `openledger_chain::receipt`: EIP-712 attribution receipts — the digest the
//! serving operator signs for each inference (one model, or an ensemble of models with shares),
//! signing (low-s) and signer recovery, and the contract's ensemble arithmetic — and of
//! `openledger_chain::abi`: contract calldata.

use alloy_primitives::Signature;
use alloy_sol_types::Eip712Domain;
use napi::bindgen_prelude::{Buffer, Unknown};
use napi_derive::napi;
use openledger_chain::abi::{ContractAbi, value_to_json};
use openledger_chain::receipt::{
    AttributionReceipt as RustReceipt, EnsembleReceipt as RustEnsembleReceipt,
    OperatorSigner as RustSigner, ensemble_fee as rust_ensemble_fee,
    ensemble_owner_shares as rust_ensemble_owner_shares, ensemble_shares as rust_ensemble_shares,
    receipt_domain, recover_signer, signing_hash, struct_hash, weights_hash as rust_weights_hash,
};
use openledger_core::{B256, U256};
use serde_json::Value;

use crate::error::{JsResult, Result, invalid_arg};
use crate::json;
use crate::task::count;
use crate::types::{Amount, Bytes, address, address_str, b256, b256_str, bigint, hex_bytes, u256};

fn domain(chain_id: f64, verifying_contract: &Bytes) -> Result<Eip712Domain> {
    Ok(receipt_domain(
        count("chainId", chain_id)? as u64,
        address("verifyingContract", verifying_contract)?,
    ))
}

fn signature(sig: &Bytes) -> Result<Signature> {
    let bytes = hex_bytes("signature", sig)?;
    openledger_chain::receipt::parse_signature(&bytes).js()
}

/// What every receipt class has, in an `#[napi]` block of its own: the inference id, payer,
/// fee, epoch and weights hash, and the EIP-712 struct hash, signing hash and signer recovery.
macro_rules! receipt_methods {
    ($class:ident) => {
        #[napi]
        impl $class {
            /// The inference id.
            #[napi(getter, catch_unwind)]
            pub fn inference_id(&self) -> String {
                b256_str(&self.inner.inferenceId)
            }

            /// The paying account (checksummed).
            #[napi(getter, catch_unwind)]
            pub fn payer(&self) -> String {
                address_str(&self.inner.payer)
            }

            /// The fee in wei.
            #[napi(getter, catch_unwind)]
            pub fn amount(&self) -> napi::bindgen_prelude::BigInt {
                bigint(self.inner.amount)
            }

            /// The settlement epoch.
            #[napi(getter, catch_unwind)]
            pub fn epoch(&self) -> napi::bindgen_prelude::BigInt {
                napi::bindgen_prelude::BigInt::from(self.inner.epoch)
            }

            /// The hash committing the receipt to its attribution weights.
            #[napi(getter, catch_unwind)]
            pub fn weights_hash(&self) -> String {
                b256_str(&self.inner.weightsHash)
            }

            /// The EIP-712 struct hash (`hashStruct`).
            #[napi(catch_unwind)]
            pub fn struct_hash(&self) -> String {
                b256_str(&struct_hash(&self.inner))
            }

            /// The digest an operator signs for the `InferencePayments` contract at
            /// `verifyingContract` on chain `chainId`.
            #[napi(catch_unwind)]
            pub fn signing_hash(&self, chain_id: f64, verifying_contract: Bytes) -> Result<String> {
                crate::error::guard(|| {
                    let d = domain(chain_id, &verifying_contract)?;
                    Ok(b256_str(&signing_hash(&self.inner, &d)))
                })
            }

            /// The address that produced the 65-byte `signature` over this receipt.
            #[napi(catch_unwind)]
            pub fn recover_signer(
                &self,
                signature: Bytes,
                chain_id: f64,
                verifying_contract: Bytes,
            ) -> Result<String> {
                crate::error::guard(|| {
                    let d = domain(chain_id, &verifying_contract)?;
                    let sig = self::signature(&signature)?;
                    Ok(address_str(&recover_signer(&self.inner, &d, &sig).js()?))
                })
            }
        }
    };
}

/// The fields of an attribution receipt.
#[napi(object, object_to_js = false)]
pub struct ReceiptFields {
    /// The inference's 32-byte id.
    pub inference_id: Bytes,
    /// The model's 32-byte id.
    pub model_id: Bytes,
    /// The 32-byte ids of the adapters used.
    pub adapter_ids: Vec<Bytes>,
    /// The paying account.
    pub payer: Bytes,
    /// The fee in wei.
    pub amount: Amount,
    /// The settlement epoch (a uint64).
    pub epoch: Amount,
    /// The hash committing the receipt to its attribution weights (see `weightsHash`).
    pub weights_hash: Bytes,
}

/// What the operator signs for one inference (the `AttributionReceipt` struct of the
/// `InferencePayments` contract).
#[napi]
pub struct AttributionReceipt {
    inner: RustReceipt,
}

#[napi]
impl AttributionReceipt {
    /// A receipt of `fields`.
    #[napi(constructor, catch_unwind)]
    pub fn new(fields: ReceiptFields) -> Result<Self> {
        crate::error::guard(|| {
            let adapter_ids = fields
                .adapter_ids
                .iter()
                .enumerate()
                .map(|(i, a)| b256(&format!("adapterIds[{i}]"), a))
                .collect::<Result<Vec<_>>>()?;
            let epoch = u256("epoch", &fields.epoch)?;
            let epoch = u64::try_from(epoch)
                .map_err(|_| invalid_arg("epoch", format!("{epoch} does not fit a uint64")))?;
            Ok(Self {
                inner: RustReceipt {
                    inferenceId: b256("inferenceId", &fields.inference_id)?,
                    modelId: b256("modelId", &fields.model_id)?,
                    adapterIds: adapter_ids,
                    payer: address("payer", &fields.payer)?,
                    amount: u256("amount", &fields.amount)?,
                    epoch,
                    weightsHash: b256("weightsHash", &fields.weights_hash)?,
                },
            })
        })
    }

    /// The model id.
    #[napi(getter, catch_unwind)]
    pub fn model_id(&self) -> String {
        b256_str(&self.inner.modelId)
    }

    /// The adapter ids.
    #[napi(getter, catch_unwind)]
    pub fn adapter_ids(&self) -> Vec<String> {
        self.inner.adapterIds.iter().map(b256_str).collect()
    }
}

receipt_methods!(AttributionReceipt);

/// The fields of an ensemble's receipt.
#[napi(object, object_to_js = false)]
pub struct EnsembleReceiptFields {
    /// The inference's 32-byte id.
    pub inference_id: Bytes,
    /// The 32-byte ids of the ensemble's models.
    pub model_ids: Vec<Bytes>,
    /// Each model's share (its weight in millionths: `ensembleShares`).
    pub shares: Vec<Amount>,
    /// The paying account.
    pub payer: Bytes,
    /// The fee in wei (`ensembleFee`).
    pub amount: Amount,
    /// The settlement epoch (a uint64).
    pub epoch: Amount,
    /// The hash committing the receipt to its attribution weights (see `weightsHash`).
    pub weights_hash: Bytes,
}

fn b256_list(name: &str, xs: &[Bytes]) -> Result<Vec<B256>> {
    xs.iter()
        .enumerate()
        .map(|(i, x)| b256(&format!("{name}[{i}]"), x))
        .collect()
}

fn u256_list(name: &str, xs: &[Amount]) -> Result<Vec<U256>> {
    xs.iter()
        .enumerate()
        .map(|(i, x)| u256(&format!("{name}[{i}]"), x))
        .collect()
}

/// What the operator signs for one inference served by an ensemble of models (the
/// `EnsembleReceipt` struct of the `InferencePayments` contract, paid with `payForEnsemble`).
#[napi]
pub struct EnsembleReceipt {
    inner: RustEnsembleReceipt,
}

#[napi]
impl EnsembleReceipt {
    /// A receipt of `fields`; as many shares as models.
    #[napi(constructor, catch_unwind)]
    pub fn new(fields: EnsembleReceiptFields) -> Result<Self> {
        crate::error::guard(|| {
            let model_ids = b256_list("modelIds", &fields.model_ids)?;
            let shares = u256_list("shares", &fields.shares)?;
            if shares.len() != model_ids.len() {
                return Err(invalid_arg(
                    "shares",
                    format!("{} shares for {} models", shares.len(), model_ids.len()),
                ));
            }
            let epoch = u256("epoch", &fields.epoch)?;
            let epoch = u64::try_from(epoch)
                .map_err(|_| invalid_arg("epoch", format!("{epoch} does not fit a uint64")))?;
            Ok(Self {
                inner: RustEnsembleReceipt {
                    inferenceId: b256("inferenceId", &fields.inference_id)?,
                    modelIds: model_ids,
                    shares,
                    payer: address("payer", &fields.payer)?,
                    amount: u256("amount", &fields.amount)?,
                    epoch,
                    weightsHash: b256("weightsHash", &fields.weights_hash)?,
                },
            })
        })
    }

    /// The models' ids.
    #[napi(getter, catch_unwind)]
    pub fn model_ids(&self) -> Vec<String> {
        self.inner.modelIds.iter().map(b256_str).collect()
    }

    /// The models' shares.
    #[napi(getter, catch_unwind)]
    pub fn shares(&self) -> Vec<napi::bindgen_prelude::BigInt> {
        self.inner.shares.iter().map(|&s| bigint(s)).collect()
    }
}

receipt_methods!(EnsembleReceipt);

/// The shares an `EnsembleReceipt` commits to for member weights: each in millionths, rounded
/// (`0.7` → `700000n`); a weight that is not finite or rounds to no share throws `InvalidArg`.
#[napi(catch_unwind)]
pub fn ensemble_shares(weights: Vec<f64>) -> Result<Vec<napi::bindgen_prelude::BigInt>> {
    crate::error::guard(|| {
        let weights: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
        Ok(rust_ensemble_shares(&weights)
            .js()?
            .into_iter()
            .map(bigint)
            .collect())
    })
}

/// An ensemble's fee as `InferencePayments.ensembleFee` computes it: the share-weighted mean of
/// the models' `fees`, rounded down.
#[napi(catch_unwind)]
pub fn ensemble_fee(
    model_ids: Vec<Bytes>,
    fees: Vec<Amount>,
    shares: Vec<Amount>,
) -> Result<napi::bindgen_prelude::BigInt> {
    crate::error::guard(|| {
        let fee = rust_ensemble_fee(
            &b256_list("modelIds", &model_ids)?,
            &u256_list("fees", &fees)?,
            &u256_list("shares", &shares)?,
        )
        .js()?;
        Ok(bigint(fee))
    })
}

/// The owners' part of an ensemble's fee split by share as the contract credits it: model
/// `i > 0` gets `ownerShare · shares[i] / Σ shares` rounded down, the first model the rest.
#[napi(catch_unwind)]
pub fn ensemble_owner_shares(
    model_ids: Vec<Bytes>,
    owner_share: Amount,
    shares: Vec<Amount>,
) -> Result<Vec<napi::bindgen_prelude::BigInt>> {
    crate::error::guard(|| {
        let parts = rust_ensemble_owner_shares(
            &b256_list("modelIds", &model_ids)?,
            u256("ownerShare", &owner_share)?,
            &u256_list("shares", &shares)?,
        )
        .js()?;
        Ok(parts.into_iter().map(bigint).collect())
    })
}

/// The EIP-712 domain separator of the `InferencePayments` contract at `verifyingContract` on
/// chain `chainId`.
#[napi(catch_unwind)]
pub fn receipt_domain_separator(chain_id: f64, verifying_contract: Bytes) -> Result<String> {
    crate::error::guard(|| {
        Ok(b256_str(
            &domain(chain_id, &verifying_contract)?.separator(),
        ))
    })
}

/// An operator's secp256k1 signing key.
#[napi]
pub struct OperatorSigner {
    inner: RustSigner,
}

impl OperatorSigner {
    /// Signs any receipt struct's EIP-712 digest for the contract at `verifying_contract`.
    fn sign_struct<R: alloy_sol_types::SolStruct>(
        &self,
        receipt: &R,
        chain_id: f64,
        verifying_contract: &Bytes,
    ) -> Result<Buffer> {
        crate::error::guard(|| {
            let d = domain(chain_id, verifying_contract)?;
            let sig = self.inner.sign(receipt, &d).js()?;
            Ok(Buffer::from(sig.as_bytes().to_vec()))
        })
    }
}

#[napi]
impl OperatorSigner {
    /// A key from its 32 secret bytes (`0x` hex or a Buffer); zero or out-of-range keys throw a
    /// `Signature` error.
    #[napi(constructor, catch_unwind)]
    pub fn new(secret: Bytes) -> Result<Self> {
        crate::error::guard(|| {
            let secret = b256("secret", &secret)?;
            Ok(Self {
                inner: RustSigner::from_bytes(&secret).js()?,
            })
        })
    }

    /// The operator's address (checksummed).
    #[napi(getter, catch_unwind)]
    pub fn address(&self) -> String {
        address_str(&self.inner.address())
    }

    /// Signs `receipt`'s EIP-712 digest (low-s, RFC 6979); returns 65 bytes `r ‖ s ‖ v` with
    /// `v` 27 or 28.
    #[napi(catch_unwind)]
    pub fn sign(
        &self,
        receipt: &AttributionReceipt,
        chain_id: f64,
        verifying_contract: Bytes,
    ) -> Result<Buffer> {
        self.sign_struct(&receipt.inner, chain_id, &verifying_contract)
    }

    /// Signs an ensemble's `receipt` (its EIP-712 digest, low-s, RFC 6979); returns 65 bytes
    /// `r ‖ s ‖ v` with `v` 27 or 28.
    #[napi(catch_unwind)]
    pub fn sign_ensemble(
        &self,
        receipt: &EnsembleReceipt,
        chain_id: f64,
        verifying_contract: Bytes,
    ) -> Result<Buffer> {
        self.sign_struct(&receipt.inner, chain_id, &verifying_contract)
    }
}

/// One attribution weight: a 32-byte id and its integer weight.
#[napi(object, object_to_js = false)]
pub struct IdWeight {
    /// The 32-byte id.
    pub id: Bytes,
    /// The weight.
    pub weight: Amount,
}

/// `keccak256(abi.encode(bytes32[] ids, uint256[] weights))` of `weights`, the commitment a
/// receipt carries in `weightsHash`.
#[napi(catch_unwind)]
pub fn weights_hash(weights: Vec<IdWeight>) -> Result<String> {
    crate::error::guard(|| {
        let ws = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let name = format!("weights[{i}]");
                Ok((b256(&name, &w.id)?, u256(&name, &w.weight)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(b256_str(&rust_weights_hash(&ws).js()?))
    })
}

/// Calldata (`0x` hex: selector ‖ ABI-encoded arguments) calling `func` (a name, or the full
/// signature when it is overloaded) of the openledger contract `contract` with `args` (integers
/// as `bigint`s or decimal strings, bytes as hex or Buffers, tuples and arrays as arrays).
#[napi(catch_unwind)]
pub fn encode_call(contract: String, func: String, args: Vec<Unknown<'_>>) -> Result<String> {
    crate::error::guard(|| {
        let args = args
            .iter()
            .enumerate()
            .map(|(i, a)| json::to_json(&format!("args[{i}]"), a))
            .collect::<Result<Vec<_>>>()?;
        let abi = ContractAbi::named(&contract).js()?;
        let data = abi.encode_call(&func, &args).js()?;
        Ok(data.to_string())
    })
}

/// A decoded contract call: the function's name and its arguments in canonical JSON form.
#[napi(object)]
pub struct DecodedCall {
    /// The function called.
    pub function: String,
    /// Its arguments (integers as decimal strings, addresses checksummed, bytes as hex).
    pub args: Vec<Value>,
}

/// The function that calldata `data` (hex or a Buffer) calls on `contract`, and its arguments.
#[napi(catch_unwind)]
pub fn decode_call(contract: String, data: Bytes) -> Result<DecodedCall> {
    crate::error::guard(|| {
        let bytes = hex_bytes("data", &data)?;
        let abi = ContractAbi::named(&contract).js()?;
        let (function, values) = abi.decode_call(&bytes).js()?;
        Ok(DecodedCall {
            function,
            args: values.iter().map(value_to_json).collect(),
        })
    })
}
