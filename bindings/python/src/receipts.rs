//! Python face of `openledger_chain::receipt`: EIP-712 attribution receipts — the digest the
//! serving operator signs for each inference (one model, or an ensemble of models with
//! shares), signing (low-s) and signer recovery — and the contract's ensemble arithmetic.

use alloy_primitives::Signature;
use alloy_sol_types::Eip712Domain;
use openledger_chain::receipt::{
    AttributionReceipt, EnsembleReceipt, OperatorSigner, ensemble_fee, ensemble_owner_shares,
    ensemble_shares, receipt_domain, recover_signer, signing_hash, struct_hash, weights_hash,
};
use openledger_core::{B256, U256};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::{Result, invalid_arg};
use crate::types::{address, address_str, b256, b256_str, py_u256, u256};

fn domain(chain_id: u64, verifying_contract: &Bound<'_, PyAny>) -> Result<Eip712Domain> {
    Ok(receipt_domain(
        chain_id,
        address("verifying_contract", verifying_contract)?,
    ))
}

fn signature(obj: &Bound<'_, PyAny>) -> Result<Signature> {
    let bytes: Vec<u8> = obj
        .extract()
        .map_err(|_| invalid_arg("signature", "expected 65 bytes (r, s, v)"))?;
    Ok(openledger_chain::receipt::parse_signature(&bytes)?)
}

/// What the operator signs for one inference (the `AttributionReceipt` struct of the
/// `InferencePayments` contract).
#[pyclass(name = "AttributionReceipt", module = "openledger", frozen)]
pub struct PyAttributionReceipt {
    inner: AttributionReceipt,
}

/// A receipt class's `#[pymethods]`: its own methods (`$own`), then what every receipt has —
/// the inference id, payer, fee, epoch and weights hash, and the EIP-712 struct hash, signing
/// hash and signer recovery.
macro_rules! receipt_methods {
    ($class:ty { $($own:tt)* }) => {
        #[pymethods]
        impl $class {
            $($own)*

            /// The inference id.
            #[getter]
            fn inference_id(&self) -> String {
                b256_str(&self.inner.inferenceId)
            }

            /// The paying account (checksummed).
            #[getter]
            fn payer(&self) -> String {
                address_str(&self.inner.payer)
            }

            /// The fee in wei.
            #[getter]
            fn amount<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                py_u256(py, self.inner.amount)
            }

            /// The settlement epoch.
            #[getter]
            fn epoch(&self) -> u64 {
                self.inner.epoch
            }

            /// The hash committing the receipt to its attribution weights.
            #[getter]
            fn weights_hash(&self) -> String {
                b256_str(&self.inner.weightsHash)
            }

            /// The EIP-712 struct hash (`hashStruct`).
            fn struct_hash(&self) -> String {
                b256_str(&struct_hash(&self.inner))
            }

            /// The digest an operator signs for the `InferencePayments` contract at
            /// `verifying_contract` on chain `chain_id`.
            fn signing_hash(
                &self,
                chain_id: u64,
                verifying_contract: &Bound<'_, PyAny>,
            ) -> Result<String> {
                let d = domain(chain_id, verifying_contract)?;
                Ok(b256_str(&signing_hash(&self.inner, &d)))
            }

            /// The address that produced the 65-byte `signature` over this receipt.
            fn recover_signer(
                &self,
                signature: &Bound<'_, PyAny>,
                chain_id: u64,
                verifying_contract: &Bound<'_, PyAny>,
            ) -> Result<String> {
                let d = domain(chain_id, verifying_contract)?;
                let sig = self::signature(signature)?;
                Ok(address_str(&recover_signer(&self.inner, &d, &sig)?))
            }
        }
    };
}

receipt_methods!(PyAttributionReceipt {
    /// Ids are 32-byte hashes (`0x` hex or bytes), `payer` an address, `amount` an int in wei.
    #[new]
    #[pyo3(signature = (inference_id, model_id, adapter_ids, payer, amount, epoch, weights_hash))]
    fn new(
        inference_id: &Bound<'_, PyAny>,
        model_id: &Bound<'_, PyAny>,
        adapter_ids: &Bound<'_, PyAny>,
        payer: &Bound<'_, PyAny>,
        amount: &Bound<'_, PyAny>,
        epoch: u64,
        weights_hash: &Bound<'_, PyAny>,
    ) -> Result<Self> {
        let adapter_ids = adapter_ids
            .try_iter()?
            .enumerate()
            .map(|(i, a)| b256(&format!("adapter_ids[{i}]"), &a?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            inner: AttributionReceipt {
                inferenceId: b256("inference_id", inference_id)?,
                modelId: b256("model_id", model_id)?,
                adapterIds: adapter_ids,
                payer: address("payer", payer)?,
                amount: u256("amount", amount)?,
                epoch,
                weightsHash: b256("weights_hash", weights_hash)?,
            },
        })
    }

    /// The model id.
    #[getter]
    fn model_id(&self) -> String {
        b256_str(&self.inner.modelId)
    }

    /// The adapter ids.
    #[getter]
    fn adapter_ids(&self) -> Vec<String> {
        self.inner.adapterIds.iter().map(b256_str).collect()
    }
});

fn b256_list(name: &str, obj: &Bound<'_, PyAny>) -> Result<Vec<B256>> {
    obj.try_iter()
        .map_err(|_| invalid_arg(name, "expected a sequence of 32-byte ids"))?
        .enumerate()
        .map(|(i, a)| b256(&format!("{name}[{i}]"), &a?))
        .collect()
}

fn u256_list(name: &str, obj: &Bound<'_, PyAny>) -> Result<Vec<U256>> {
    obj.try_iter()
        .map_err(|_| invalid_arg(name, "expected a sequence of ints"))?
        .enumerate()
        .map(|(i, a)| u256(&format!("{name}[{i}]"), &a?))
        .collect()
}

fn py_u256_list<'py>(py: Python<'py>, xs: &[U256]) -> PyResult<Vec<Bound<'py, PyAny>>> {
    xs.iter().map(|&x| py_u256(py, x)).collect()
}

/// What the operator signs for one inference served by an ensemble of models (the
/// `EnsembleReceipt` struct of the `InferencePayments` contract, paid with `payForEnsemble`):
/// the models and their shares (each member's weight in millionths, `ensemble_shares`).
#[pyclass(name = "EnsembleReceipt", module = "openledger", frozen)]
pub struct PyEnsembleReceipt {
    inner: EnsembleReceipt,
}

receipt_methods!(PyEnsembleReceipt {
    /// Ids are 32-byte hashes (`0x` hex or bytes), `shares` ints (one per model), `payer` an
    /// address, `amount` an int in wei (the ensemble's fee, `ensemble_fee`).
    #[new]
    #[pyo3(signature = (inference_id, model_ids, shares, payer, amount, epoch, weights_hash))]
    fn new(
        inference_id: &Bound<'_, PyAny>,
        model_ids: &Bound<'_, PyAny>,
        shares: &Bound<'_, PyAny>,
        payer: &Bound<'_, PyAny>,
        amount: &Bound<'_, PyAny>,
        epoch: u64,
        weights_hash: &Bound<'_, PyAny>,
    ) -> Result<Self> {
        let model_ids = b256_list("model_ids", model_ids)?;
        let shares = u256_list("shares", shares)?;
        if model_ids.len() != shares.len() {
            return Err(invalid_arg(
                "shares",
                format!("{} shares for {} models", shares.len(), model_ids.len()),
            ));
        }
        Ok(Self {
            inner: EnsembleReceipt {
                inferenceId: b256("inference_id", inference_id)?,
                modelIds: model_ids,
                shares,
                payer: address("payer", payer)?,
                amount: u256("amount", amount)?,
                epoch,
                weightsHash: b256("weights_hash", weights_hash)?,
            },
        })
    }

    /// The models' ids.
    #[getter]
    fn model_ids(&self) -> Vec<String> {
        self.inner.modelIds.iter().map(b256_str).collect()
    }

    /// The models' shares.
    #[getter]
    fn shares<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        py_u256_list(py, &self.inner.shares)
    }
});

/// An operator's secp256k1 signing key.
#[pyclass(name = "OperatorSigner", module = "openledger", frozen)]
pub struct PyOperatorSigner {
    inner: OperatorSigner,
}

#[pymethods]
impl PyOperatorSigner {
    /// A key from its 32 secret bytes (`0x` hex or bytes); zero or out-of-range keys raise
    /// `SignatureError`.
    #[new]
    fn new(secret: &Bound<'_, PyAny>) -> Result<Self> {
        let secret = b256("secret", secret)?;
        Ok(Self {
            inner: OperatorSigner::from_bytes(&secret)?,
        })
    }

    /// The operator's address (checksummed).
    #[getter]
    fn address(&self) -> String {
        address_str(&self.inner.address())
    }

    /// Signs the EIP-712 digest of `receipt` (an `AttributionReceipt` or an `EnsembleReceipt`)
    /// (low-s); returns 65 bytes `r ‖ s ‖ v` with `v` 27/28.
    fn sign<'py>(
        &self,
        py: Python<'py>,
        receipt: &Bound<'py, PyAny>,
        chain_id: u64,
        verifying_contract: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyBytes>> {
        let d = domain(chain_id, verifying_contract)?;
        let sig = if let Ok(r) = receipt.cast::<PyAttributionReceipt>() {
            let r = r.get();
            py.detach(|| self.inner.sign(&r.inner, &d))?
        } else if let Ok(r) = receipt.cast::<PyEnsembleReceipt>() {
            let r = r.get();
            py.detach(|| self.inner.sign(&r.inner, &d))?
        } else {
            return Err(invalid_arg(
                "receipt",
                "expected an AttributionReceipt or an EnsembleReceipt",
            ));
        };
        Ok(PyBytes::new(py, &sig.as_bytes()))
    }

    fn __repr__(&self) -> String {
        format!(
            "OperatorSigner(address={})",
            address_str(&self.inner.address())
        )
    }
}

/// `keccak256(abi.encode(bytes32[] ids, uint256[] weights))` of `[(id, weight), …]`, the
/// commitment a receipt carries in `weights_hash`.
#[pyfunction(name = "weights_hash")]
fn py_weights_hash(weights: &Bound<'_, PyAny>) -> Result<String> {
    let ws = weights
        .try_iter()?
        .enumerate()
        .map(|(i, item)| {
            let name = format!("weights[{i}]");
            let (id, w): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?
                .extract()
                .map_err(|_| invalid_arg(&name, "expected an (id, weight) pair"))?;
            Ok((b256(&name, &id)?, u256(&name, &w)?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(b256_str(&weights_hash(&ws)?))
}

/// The shares an `EnsembleReceipt` commits to for member weights (each in millionths,
/// rounded: `0.7` → 700000); a weight that is not finite or rounds to no share raises
/// `InvalidArgumentError`.
#[pyfunction(name = "ensemble_shares")]
fn py_ensemble_shares<'py>(py: Python<'py>, weights: Vec<f32>) -> Result<Vec<Bound<'py, PyAny>>> {
    Ok(py_u256_list(py, &ensemble_shares(&weights)?)?)
}

/// An ensemble's fee as `InferencePayments.ensembleFee` computes it: the share-weighted mean
/// of the models' `fees`, rounded down.
#[pyfunction(name = "ensemble_fee")]
fn py_ensemble_fee<'py>(
    py: Python<'py>,
    model_ids: &Bound<'py, PyAny>,
    fees: &Bound<'py, PyAny>,
    shares: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    let fee = ensemble_fee(
        &b256_list("model_ids", model_ids)?,
        &u256_list("fees", fees)?,
        &u256_list("shares", shares)?,
    )?;
    Ok(py_u256(py, fee)?)
}

/// The owners' part of an ensemble's fee split by share as the contract credits it: model
/// `i > 0` gets `owner_share · shares[i] // sum(shares)`, the first model the rest.
#[pyfunction(name = "ensemble_owner_shares")]
fn py_ensemble_owner_shares<'py>(
    py: Python<'py>,
    model_ids: &Bound<'py, PyAny>,
    owner_share: &Bound<'py, PyAny>,
    shares: &Bound<'py, PyAny>,
) -> Result<Vec<Bound<'py, PyAny>>> {
    let parts = ensemble_owner_shares(
        &b256_list("model_ids", model_ids)?,
        u256("owner_share", owner_share)?,
        &u256_list("shares", shares)?,
    )?;
    Ok(py_u256_list(py, &parts)?)
}

/// The id the `ModelRegistry` gives the model `registrant` registers under `salt`:
/// `keccak256(abi.encode(registrant, salt))`, what receipts name in `model_id` / `adapter_ids`.
#[pyfunction(name = "model_id")]
fn py_model_id(registrant: &Bound<'_, PyAny>, salt: &Bound<'_, PyAny>) -> Result<String> {
    Ok(b256_str(&openledger_chain::bindings::model_id(
        address("registrant", registrant)?,
        b256("salt", salt)?,
    )))
}

/// Adds the receipt classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAttributionReceipt>()?;
    m.add_class::<PyEnsembleReceipt>()?;
    m.add_function(wrap_pyfunction!(py_ensemble_shares, m)?)?;
    m.add_function(wrap_pyfunction!(py_ensemble_fee, m)?)?;
    m.add_function(wrap_pyfunction!(py_ensemble_owner_shares, m)?)?;
    m.add_class::<PyOperatorSigner>()?;
    m.add_function(wrap_pyfunction!(py_weights_hash, m)?)?;
    m.add_function(wrap_pyfunction!(py_model_id, m)?)?;
    Ok(())
}
