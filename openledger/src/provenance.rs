//! Provenance on chain: the access grants a trainer checks are read from the
//! `DatanetRegistry`, and the trained adapter is registered in the `ModelRegistry` with the head
//! of its training log, so anyone can later check with a [`UsageProof`] against the on-chain
//! head that a record was (or, absent a proof, claim it was not) used in training.
//!
//! [`UsageProof`]: openledger_core::trainlog::UsageProof

use openledger_chain::ChainError;
use openledger_chain::bindings::{DatanetRegistry, ModelRegistry};
use openledger_chain::chain::{Chain, ChainExt};
use openledger_chain::evm::TxOutcome;
use openledger_core::error::{Classify, ErrorKind};
use openledger_core::grant::{AccessStatus, GrantError, Grants};
use openledger_core::trainlog::TrainLog;
use openledger_core::{Address, B256, U256};
use thiserror::Error;

/// Why reading grants or registering a model failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProvenanceError {
    /// The chain refused a call or a transaction reverted.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The grant mirror refused a transition (the chain reported an impossible state).
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The chain returned a status value outside the contract's enum.
    #[error("datanet {datanet_id}: access status {value} of {account} is not a known status")]
    UnknownStatus {
        /// The datanet.
        datanet_id: U256,
        /// Whose status.
        account: Address,
        /// The value read.
        value: u8,
    },
}

impl Classify for ProvenanceError {
    fn kind(&self) -> ErrorKind {
        match self {
            ProvenanceError::Chain(e) => e.kind(),
            ProvenanceError::Grant(e) => e.kind(),
            ProvenanceError::UnknownStatus { .. } => ErrorKind::Abi,
        }
    }
}

/// Reads the owners of `datanets` and the access status of each of `accounts` on them from the
/// `DatanetRegistry` at `registry` into a [`Grants`] mirror (the state is rebuilt through the
/// contract's own transitions; purpose hashes live only in the chain's events and are left
/// zero).
pub fn grants_from_chain(
    chain: &mut dyn Chain,
    registry: Address,
    datanets: &[U256],
    accounts: &[Address],
) -> Result<Grants, ProvenanceError> {
    let mut grants = Grants::new();
    for &id in datanets {
        let owner = chain
            .view(registry, &DatanetRegistry::getDatanetCall { datanetId: id })?
            .owner;
        grants.record_datanet(id, owner)?;
        for &account in accounts {
            let value = chain.view(
                registry,
                &DatanetRegistry::accessStatusCall {
                    datanetId: id,
                    requester: account,
                },
            )?;
            let status = AccessStatus::from_u8(value).ok_or(ProvenanceError::UnknownStatus {
                datanet_id: id,
                account,
                value,
            })?;
            if status != AccessStatus::None {
                grants.request(id, account, B256::ZERO)?;
            }
            match status {
                AccessStatus::Approved => grants.approve(id, owner, account)?,
                AccessStatus::Revoked => grants.revoke(id, owner, account)?,
                AccessStatus::None | AccessStatus::Requested => {}
            }
        }
    }
    Ok(grants)
}

/// What a trained adapter is registered as.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRegistration {
    /// The salt its id is derived from: the id is
    /// [`model_id(owner, salt)`](openledger_chain::bindings::model_id).
    pub salt: B256,
    /// The base model's id.
    pub base_model: B256,
    /// Hash of the adapter artifact (e.g. its safetensors' keccak-256).
    pub artifact_hash: B256,
    /// `(datanet id, version)` of every source it was trained on.
    pub sources: Vec<(U256, u64)>,
    /// Fee per call, in wei of the payment token.
    pub fee_per_call: U256,
}

/// Registers the adapter trained with `log` in the `ModelRegistry` at `models`, from `owner`,
/// committing to `log.head()` as its `trainingLogHead`; a revert is an error carrying its data.
pub fn register_model(
    chain: &mut dyn Chain,
    models: Address,
    owner: Address,
    registration: &ModelRegistration,
    log: &TrainLog,
) -> Result<TxOutcome, ProvenanceError> {
    let call = ModelRegistry::registerModelCall {
        salt: registration.salt,
        baseModel: registration.base_model,
        artifactHash: registration.artifact_hash,
        trainingLogHead: log.head(),
        sources: registration
            .sources
            .iter()
            .map(|&(datanet_id, version)| ModelRegistry::TrainingSource {
                datanetId: datanet_id,
                version,
            })
            .collect(),
        feePerCall: registration.fee_per_call,
    };
    Ok(chain.send(owner, models, &call)?.into_success()?)
}
