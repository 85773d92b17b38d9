//! Python face of `openledger_chain::receipt`: EIP-712 attribution receipts — the digest the
//! serving operator signs for each inference, signing (low-s) and signer recovery.

use alloy_primitives::Signature;
use alloy_sol_types::Eip712Domain;
use openledger_chain::receipt::{
    AttributionReceipt, OperatorSigner, receipt_domain, recover_signer, signing_hash, struct_hash,
    weights_hash,
};
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

#[pymethods]
impl PyAttributionReceipt {
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

    /// The inference id.
    #[getter]
    fn inference_id(&self) -> String {
        b256_str(&self.inner.inferenceId)
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
    fn signing_hash(&self, chain_id: u64, verifying_contract: &Bound<'_, PyAny>) -> Result<String> {
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

    /// Signs `receipt`'s EIP-712 digest (low-s); returns 65 bytes `r ‖ s ‖ v` with `v` 27/28.
    fn sign<'py>(
        &self,
        py: Python<'py>,
        receipt: &PyAttributionReceipt,
        chain_id: u64,
        verifying_contract: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyBytes>> {
        let d = domain(chain_id, verifying_contract)?;
        let sig = py.detach(|| self.inner.sign(&receipt.inner, &d))?;
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

/// Adds the receipt classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAttributionReceipt>()?;
    m.add_class::<PyOperatorSigner>()?;
    m.add_function(wrap_pyfunction!(py_weights_hash, m)?)?;
    Ok(())
}
