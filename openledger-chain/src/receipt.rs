//! EIP-712 attribution receipts: what the serving operator signs for each inference, and what
//! `InferencePayments` checks before it takes the fee. Digests, signing and recovery are done
//! here with k256; the contract computes the same digest.
//!
//! ```
//! use openledger_chain::receipt::{AttributionReceipt, OperatorSigner, receipt_domain};
//! use openledger_core::{Address, B256, U256};
//!
//! let signer = OperatorSigner::from_bytes(&B256::repeat_byte(0x11))?;
//! let domain = receipt_domain(31337, Address::repeat_byte(0xcc));
//! let receipt = AttributionReceipt {
//!     inferenceId: B256::repeat_byte(1),
//!     modelId: B256::repeat_byte(2),
//!     adapterIds: vec![],
//!     payer: Address::repeat_byte(3),
//!     amount: U256::from(1000),
//!     epoch: 0,
//!     weightsHash: B256::ZERO,
//! };
//! let sig = signer.sign(&receipt, &domain)?;
//! assert_eq!(openledger_chain::receipt::recover_signer(&receipt, &domain, &sig)?, signer.address());
//! # Ok::<(), openledger_chain::ChainError>(())
//! ```

use alloy_primitives::{Address, B256, Signature, U256, keccak256};
use alloy_sol_types::{Eip712Domain, SolStruct, SolValue, eip712_domain};
use k256::ecdsa::SigningKey;

use crate::ChainError;
pub use crate::bindings::InferencePayments::{AttributionReceipt, EnsembleReceipt};

/// Most models one ensemble payment may name (the contract's `MAX_ENSEMBLE`).
pub const MAX_ENSEMBLE: usize = 16;

/// Shares of an ensemble's members as receipts commit to them: each weight in millionths,
/// rounded to the nearest (`0.7` → 700 000). A weight that is not finite or gives a share of
/// zero (below 5·10⁻⁷) is refused.
pub fn ensemble_shares(weights: &[f32]) -> Result<Vec<U256>, ChainError> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let millionths = (f64::from(w) * 1e6).round();
            if !(1.0..1e30).contains(&millionths) {
                return Err(ChainError::InvalidEnsemble {
                    reason: format!("member {i} has weight {w}, which gives no share"),
                });
            }
            Ok(U256::from(millionths as u128))
        })
        .collect()
}

/// Checks an ensemble's models and shares as `InferencePayments.ensembleFee` does; returns
/// `Σ shares`.
fn check_ensemble(model_ids: &[B256], shares: &[U256]) -> Result<U256, ChainError> {
    let bad = |reason: String| Err(ChainError::InvalidEnsemble { reason });
    let n = model_ids.len();
    if n == 0 || n > MAX_ENSEMBLE || shares.len() != n {
        return bad(format!(
            "{n} models and {} shares (1 to {MAX_ENSEMBLE} models, one share each)",
            shares.len()
        ));
    }
    let mut total = U256::ZERO;
    for (i, share) in shares.iter().enumerate() {
        if share.is_zero() {
            return bad(format!("model {i} has a zero share"));
        }
        if model_ids[..i].contains(&model_ids[i]) {
            return bad(format!("model {} is named twice", model_ids[i]));
        }
        total = total
            .checked_add(*share)
            .ok_or_else(|| ChainError::Overflow {
                what: "the sum of the shares".into(),
            })?;
    }
    Ok(total)
}

/// The fee of an inference served by an ensemble, as `InferencePayments.ensembleFee` computes
/// it: `⌊Σᵢ feeᵢ·sharesᵢ / Σ shares⌋`, the share-weighted mean of the models' fees rounded
/// down (equal fees give that fee). `fees[i]` is model `i`'s fee.
pub fn ensemble_fee(
    model_ids: &[B256],
    fees: &[U256],
    shares: &[U256],
) -> Result<U256, ChainError> {
    let total = check_ensemble(model_ids, shares)?;
    if fees.len() != model_ids.len() {
        return Err(ChainError::InvalidEnsemble {
            reason: format!("{} models and {} fees", model_ids.len(), fees.len()),
        });
    }
    let overflow = || ChainError::Overflow {
        what: "the ensemble's weighted fee".into(),
    };
    let mut weighted = U256::ZERO;
    for (fee, share) in fees.iter().zip(shares) {
        weighted = fee
            .checked_mul(*share)
            .and_then(|p| weighted.checked_add(p))
            .ok_or_else(overflow)?;
    }
    Ok(weighted / total)
}

/// The owners' part of an ensemble's fee split by share, as `InferencePayments` credits it:
/// model `i > 0` gets `⌊owner_share·sharesᵢ / Σ shares⌋`, the first model the rest, so the parts
/// sum to `owner_share`.
pub fn ensemble_owner_shares(
    model_ids: &[B256],
    owner_share: U256,
    shares: &[U256],
) -> Result<Vec<U256>, ChainError> {
    let total = check_ensemble(model_ids, shares)?;
    let mut parts = vec![U256::ZERO; shares.len()];
    let mut rest = owner_share;
    for (part, share) in parts.iter_mut().zip(shares).skip(1) {
        // owner_share·share may pass 2²⁵⁶: the contract divides with a 512-bit product
        // (`Math.mulDiv`).
        *part = mul_div(owner_share, *share, total);
        rest -= *part;
    }
    parts[0] = rest;
    Ok(parts)
}

/// `⌊a·b / d⌋` for `d > 0` and a quotient that fits (it does when `b ≤ d`).
fn mul_div(a: U256, b: U256, d: U256) -> U256 {
    let wide = alloy_primitives::U512::from(a) * alloy_primitives::U512::from(b)
        / alloy_primitives::U512::from(d);
    U256::from(wide)
}

/// EIP-712 domain name of `InferencePayments`.
pub const DOMAIN_NAME: &str = "OpenLedger InferencePayments";
/// EIP-712 domain version of `InferencePayments`.
pub const DOMAIN_VERSION: &str = "1";

/// The EIP-712 domain of the `InferencePayments` deployed at `verifying_contract` on `chain_id`.
pub fn receipt_domain(chain_id: u64, verifying_contract: Address) -> Eip712Domain {
    eip712_domain! {
        name: DOMAIN_NAME,
        version: DOMAIN_VERSION,
        chain_id: chain_id,
        verifying_contract: verifying_contract,
    }
}

/// The EIP-712 struct hash of a receipt (`hashStruct`): an [`AttributionReceipt`] or an
/// [`EnsembleReceipt`].
pub fn struct_hash<R: SolStruct>(receipt: &R) -> B256 {
    receipt.eip712_hash_struct()
}

/// The digest the operator signs: `keccak256("\x19\x01" || domainSeparator || hashStruct)`.
pub fn signing_hash<R: SolStruct>(receipt: &R, domain: &Eip712Domain) -> B256 {
    receipt.eip712_signing_hash(domain)
}

/// The hash that commits a receipt to its attribution weights:
/// `keccak256(abi.encode(bytes32[] ids, uint256[] weights))`, ids and weights in the same order.
/// An id listed twice is refused (a split names each party once).
pub fn weights_hash(weights: &[(B256, U256)]) -> Result<B256, ChainError> {
    let mut seen = std::collections::HashSet::with_capacity(weights.len());
    if let Some((id, _)) = weights.iter().find(|(id, _)| !seen.insert(*id)) {
        return Err(ChainError::DuplicateWeight { id: *id });
    }
    let ids: Vec<B256> = weights.iter().map(|w| w.0).collect();
    let ws: Vec<U256> = weights.iter().map(|w| w.1).collect();
    Ok(keccak256((ids, ws).abi_encode_params()))
}

/// Half the secp256k1 group order: `ECDSA.sol` refuses an `s` above it (a high-s signature is
/// the malleated twin of a low-s one).
const HALF_ORDER: U256 = U256::from_be_slice(&[
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
]);

/// Refuses what `ECDSA.sol` refuses, so that off chain and on chain agree: a zero `r` or `s`, or
/// an `s` above half the group order.
fn check_canonical(signature: &Signature) -> Result<(), ChainError> {
    if signature.r().is_zero() || signature.s().is_zero() {
        return Err(ChainError::Signature("r and s must be non-zero".into()));
    }
    if signature.s() > HALF_ORDER {
        return Err(ChainError::Signature(
            "s is in the upper half of the curve order (a malleable high-s signature, which ECDSA.sol refuses)"
                .into(),
        ));
    }
    Ok(())
}

/// Reads a 65-byte `r ‖ s ‖ v` signature as `ECDSA.sol` does: `v` must be 27 or 28 and `s` in
/// the lower half of the curve order (both refused on chain otherwise).
pub fn parse_signature(bytes: &[u8]) -> Result<Signature, ChainError> {
    let [rs @ .., v] = bytes else {
        return Err(ChainError::Signature("an empty signature".into()));
    };
    if bytes.len() != 65 {
        return Err(ChainError::Signature(format!(
            "{} bytes, expected 65 (r ‖ s ‖ v)",
            bytes.len()
        )));
    }
    let parity = match v {
        27 => false,
        28 => true,
        other => {
            return Err(ChainError::Signature(format!(
                "v is {other}, expected 27 or 28"
            )));
        }
    };
    let sig = Signature::from_bytes_and_parity(rs, parity);
    check_canonical(&sig)?;
    Ok(sig)
}

/// Who recovered from `signature` over `receipt` in `domain`; a high-s signature is refused, as
/// `ECDSA.sol` refuses it.
pub fn recover_signer<R: SolStruct>(
    receipt: &R,
    domain: &Eip712Domain,
    signature: &Signature,
) -> Result<Address, ChainError> {
    check_canonical(signature)?;
    signature
        .recover_address_from_prehash(&signing_hash(receipt, domain))
        .map_err(|e| ChainError::Signature(format!("recovery failed: {e}")))
}

/// An operator's signing key.
#[derive(Clone)]
pub struct OperatorSigner {
    key: SigningKey,
    address: Address,
}

impl std::fmt::Debug for OperatorSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorSigner")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl OperatorSigner {
    /// Wraps a k256 key.
    pub fn new(key: SigningKey) -> Self {
        let address = Address::from_private_key(&key);
        Self { key, address }
    }

    /// A key from its 32 secret bytes (refused when zero or not below the curve order).
    pub fn from_bytes(secret: &B256) -> Result<Self, ChainError> {
        SigningKey::from_slice(secret.as_slice())
            .map(Self::new)
            .map_err(|_| {
                ChainError::Signature(
                    "the secret key is not a valid secp256k1 scalar (zero, or not below the curve order)"
                        .into(),
                )
            })
    }

    /// The operator's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Signs the receipt's EIP-712 digest (low-s, as `ECDSA.sol` requires).
    pub fn sign<R: SolStruct>(
        &self,
        receipt: &R,
        domain: &Eip712Domain,
    ) -> Result<Signature, ChainError> {
        let digest = signing_hash(receipt, domain);
        let (sig, recid) = self
            .key
            .sign_prehash_recoverable(digest.as_slice())
            .map_err(|e| ChainError::Signature(e.to_string()))?;
        let (sig, recid) = match sig.normalize_s() {
            Some(low) => (
                low,
                k256::ecdsa::RecoveryId::new(!recid.is_y_odd(), recid.is_x_reduced()),
            ),
            None => (sig, recid),
        };
        Ok(Signature::from((sig, recid)))
    }
}
