//! Deploys the whole contract suite (token, registries, payments, rewards) on an
//! [`EmbeddedChain`] and wires the roles between them.
//!
//! ```
//! use openledger_chain::deploy::{DeployConfig, Deployment};
//! use openledger_chain::evm::EmbeddedChain;
//!
//! let mut chain = EmbeddedChain::new(31337);
//! let config = DeployConfig::dev(&chain);
//! let d = Deployment::deploy(&mut chain, &config)?;
//! assert!(!chain.code(d.payments).is_empty());
//! # Ok::<(), openledger_chain::ChainError>(())
//! ```

use alloy_primitives::Address;
use alloy_sol_types::{SolCall, SolConstructor};

use crate::ChainError;
use crate::bindings::{
    AttributionRewards, DatanetRegistry, InferencePayments, ModelRegistry, TestToken,
};
use crate::evm::EmbeddedChain;
use crate::receipt::{AttributionReceipt, receipt_domain};

/// Who runs what, and the fee split.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    /// Deployer and admin of the role-gated contracts.
    pub admin: Address,
    /// Receiver of the protocol share.
    pub treasury: Address,
    /// Operator whose receipts are accepted.
    pub operator: Address,
    /// Account allowed to post epoch roots.
    pub poster: Address,
    /// Protocol share, basis points.
    pub protocol_bps: u16,
    /// Data pool share, basis points.
    pub data_pool_bps: u16,
    /// Epoch length in seconds.
    pub epoch_duration: u64,
    /// An existing ERC-20 to pay in; `None` deploys a mintable `TestToken`.
    pub token: Option<Address>,
}

impl DeployConfig {
    /// Dev accounts 0..=3 as admin, treasury, operator and poster; 5 % protocol, 20 % data pool,
    /// one-day epochs, a fresh test token.
    pub fn dev(chain: &EmbeddedChain) -> Self {
        Self {
            admin: chain.dev_account(0).address,
            treasury: chain.dev_account(1).address,
            operator: chain.dev_account(2).address,
            poster: chain.dev_account(3).address,
            protocol_bps: 500,
            data_pool_bps: 2000,
            epoch_duration: 86_400,
            token: None,
        }
    }
}

/// Addresses of a deployed suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deployment {
    /// The payment token.
    pub token: Address,
    /// `DatanetRegistry`.
    pub datanets: Address,
    /// `ModelRegistry`.
    pub models: Address,
    /// `InferencePayments`.
    pub payments: Address,
    /// `AttributionRewards`.
    pub rewards: Address,
}

impl Deployment {
    /// Deploys every contract from `config.admin`, grants the operator role and lets the rewards
    /// contract take closed epochs' data pools.
    pub fn deploy(chain: &mut EmbeddedChain, config: &DeployConfig) -> Result<Self, ChainError> {
        let admin = config.admin;
        let token = match config.token {
            Some(t) => t,
            None => chain.deploy(admin, &TestToken::BYTECODE, &[])?,
        };
        let datanets = chain.deploy(admin, &DatanetRegistry::BYTECODE, &[])?;
        let models = chain.deploy(
            admin,
            &ModelRegistry::BYTECODE,
            &ModelRegistry::constructorCall {
                datanets_: datanets,
            }
            .abi_encode(),
        )?;
        let payments = chain.deploy(
            admin,
            &InferencePayments::BYTECODE,
            &InferencePayments::constructorCall {
                token_: token,
                models_: models,
                admin,
                treasury_: config.treasury,
                protocolBps_: config.protocol_bps,
                dataPoolBps_: config.data_pool_bps,
                epochDuration_: config.epoch_duration,
            }
            .abi_encode(),
        )?;
        let rewards = chain.deploy(
            admin,
            &AttributionRewards::BYTECODE,
            &AttributionRewards::constructorCall {
                token_: token,
                payments_: payments,
                admin,
                poster: config.poster,
            }
            .abi_encode(),
        )?;
        let operator_role = chain.view(payments, &InferencePayments::OPERATOR_ROLECall {})?;
        let pool_role = chain.view(payments, &InferencePayments::POOL_ROLECall {})?;
        for (role, account) in [(operator_role, config.operator), (pool_role, rewards)] {
            chain
                .transact(
                    admin,
                    payments,
                    InferencePayments::grantRoleCall { role, account }
                        .abi_encode()
                        .into(),
                )?
                .into_success()?;
        }
        Ok(Self {
            token,
            datanets,
            models,
            payments,
            rewards,
        })
    }

    /// The EIP-712 domain of this deployment's `InferencePayments`.
    pub fn receipt_domain(&self, chain: &EmbeddedChain) -> alloy_sol_types::Eip712Domain {
        receipt_domain(chain.chain_id(), self.payments)
    }

    /// The `payForInference` call for `receipt` and its signature.
    pub fn pay_call(
        receipt: AttributionReceipt,
        signature: &alloy_primitives::Signature,
    ) -> InferencePayments::payForInferenceCall {
        InferencePayments::payForInferenceCall {
            receipt,
            signature: signature.as_bytes().to_vec().into(),
        }
    }
}
