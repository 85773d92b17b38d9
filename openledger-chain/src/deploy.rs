//! Deploys the whole contract suite (token, registries, payments, rewards) on any [`Chain`]
//! and wires the roles between them.
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

use std::path::Path;

use alloy_primitives::{Address, B256};
use alloy_sol_types::SolConstructor;
use serde::{Deserialize, Serialize};

use crate::ChainError;
use crate::bindings::{
    AttributionRewards, DatanetRegistry, InferencePayments, ModelRegistry, TestToken,
};
use crate::chain::{Chain, ChainExt, TxRequest};
use crate::evm::EmbeddedChain;
use crate::evm::TxOutcome;
use crate::receipt::{AttributionReceipt, receipt_domain};

/// Who runs what, and the fee split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployConfig {
    /// Deployer and admin of the role-gated contracts.
    pub admin: Address,
    /// Receiver of the protocol share.
    pub treasury: Address,
    /// Operator whose receipts are accepted.
    pub operator: Address,
    /// Account allowed to post epoch roots.
    pub poster: Address,
    /// Account that may veto a posted root in its challenge window and pause payments and claims.
    pub guardian: Address,
    /// Seconds a transfer of the admin role waits (OpenZeppelin's `AccessControlDefaultAdminRules`),
    /// which is also how long a proposed split waits before it can be applied.
    pub admin_delay: u64,
    /// Seconds after a root is posted during which the guardian may veto it; claims open after.
    pub challenge_window: u64,
    /// Seconds, from the end of the challenge window, during which rewards can be claimed.
    pub claim_period: u64,
    /// Where an expired epoch's unclaimed rewards are swept.
    pub unclaimed_recipient: Address,
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
    /// one-day epochs, a fresh test token (the rest as [`with_accounts`](Self::with_accounts)).
    pub fn dev(chain: &EmbeddedChain) -> Self {
        let a = |i| chain.dev_account(i).address;
        Self::with_accounts([a(0), a(1), a(2), a(3)])
    }

    /// `[admin, treasury, operator, poster]` with [`dev`](Self::dev)'s split, epochs and token;
    /// the admin is the guardian, admin changes wait two days, roots can be vetoed for an hour
    /// and claimed for 90 days after, and the treasury receives what is left unclaimed.
    pub fn with_accounts(accounts: [Address; 4]) -> Self {
        let [admin, treasury, operator, poster] = accounts;
        Self {
            admin,
            treasury,
            operator,
            poster,
            guardian: admin,
            admin_delay: 2 * 86_400,
            challenge_window: 3_600,
            claim_period: 90 * 86_400,
            unclaimed_recipient: treasury,
            protocol_bps: 500,
            data_pool_bps: 2000,
            epoch_duration: 86_400,
            token: None,
        }
    }
}

/// Addresses of a deployed suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub fn deploy<C: Chain + ?Sized>(
        chain: &mut C,
        config: &DeployConfig,
    ) -> Result<Self, ChainError> {
        Ok(Self::deploy_recorded(chain, config)?.contracts)
    }

    /// [`deploy`](Self::deploy), keeping what a [`DeploymentFile`] records: the chain id, the
    /// configuration and each transaction's hash and block.
    pub fn deploy_recorded<C: Chain + ?Sized>(
        chain: &mut C,
        config: &DeployConfig,
    ) -> Result<DeploymentFile, ChainError> {
        let admin = config.admin;
        let admin_delay =
            alloy_primitives::aliases::U48::try_from(config.admin_delay).map_err(|_| {
                ChainError::Deployment(format!(
                    "admin_delay {} s does not fit the contracts' 48 bits",
                    config.admin_delay
                ))
            })?;
        let mut transactions = Vec::new();
        let mut record = |what: &str, out: TxOutcome| -> Result<TxOutcome, ChainError> {
            if out.status == crate::evm::TxStatus::Revert {
                return Err(ChainError::Deployment(format!(
                    "{what} reverted: {}",
                    crate::abi::decode_revert_any(&out.output)
                )));
            }
            let out = out.into_success()?;
            transactions.push(DeployTx {
                what: what.to_string(),
                hash: out.tx_hash,
                block: out.block_number,
            });
            Ok(out)
        };
        let create = |chain: &mut C,
                      what: &str,
                      code: &[u8],
                      args: &[u8],
                      record: &mut dyn FnMut(&str, TxOutcome) -> Result<TxOutcome, ChainError>|
         -> Result<Address, ChainError> {
            let out = record(
                what,
                chain.send_transaction(TxRequest::create(admin, code, args))?,
            )?;
            out.created
                .ok_or_else(|| ChainError::Decode(format!("deploying {what} returned no address")))
        };
        let token = match config.token {
            Some(t) => t,
            None => create(chain, "TestToken", &TestToken::BYTECODE, &[], &mut record)?,
        };
        let datanets = create(
            chain,
            "DatanetRegistry",
            &DatanetRegistry::BYTECODE,
            &[],
            &mut record,
        )?;
        let models = create(
            chain,
            "ModelRegistry",
            &ModelRegistry::BYTECODE,
            &ModelRegistry::constructorCall {
                datanets_: datanets,
            }
            .abi_encode(),
            &mut record,
        )?;
        let payments = create(
            chain,
            "InferencePayments",
            &InferencePayments::BYTECODE,
            &InferencePayments::constructorCall {
                token_: token,
                models_: models,
                admin,
                adminDelay: admin_delay,
                guardian: config.guardian,
                treasury_: config.treasury,
                protocolBps_: config.protocol_bps,
                dataPoolBps_: config.data_pool_bps,
                epochDuration_: config.epoch_duration,
            }
            .abi_encode(),
            &mut record,
        )?;
        let rewards = create(
            chain,
            "AttributionRewards",
            &AttributionRewards::BYTECODE,
            &AttributionRewards::constructorCall {
                token_: token,
                payments_: payments,
                admin,
                adminDelay: admin_delay,
                poster: config.poster,
                guardian: config.guardian,
                challengeWindow_: config.challenge_window,
                claimPeriod_: config.claim_period,
                unclaimedRecipient_: config.unclaimed_recipient,
            }
            .abi_encode(),
            &mut record,
        )?;
        let operator_role = chain.view(payments, &InferencePayments::OPERATOR_ROLECall {})?;
        let pool_role = chain.view(payments, &InferencePayments::POOL_ROLECall {})?;
        for (what, role, account) in [
            ("grant OPERATOR_ROLE", operator_role, config.operator),
            ("grant POOL_ROLE", pool_role, rewards),
        ] {
            let call = InferencePayments::grantRoleCall { role, account };
            record(what, chain.send(admin, payments, &call)?)?;
        }
        Ok(DeploymentFile {
            format: DEPLOYMENT_FORMAT.to_string(),
            chain_id: chain.chain_id(),
            contracts: Self {
                token,
                datanets,
                models,
                payments,
                rewards,
            },
            config: DeployConfig {
                token: Some(token),
                ..config.clone()
            },
            transactions,
        })
    }

    /// The EIP-712 domain of this deployment's `InferencePayments`.
    pub fn receipt_domain<C: Chain + ?Sized>(&self, chain: &C) -> alloy_sol_types::Eip712Domain {
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

/// The `format` of a [`DeploymentFile`].
pub const DEPLOYMENT_FORMAT: &str = "openledger-deployment-v2";

/// One transaction of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployTx {
    /// What it did (`TestToken`, `grant OPERATOR_ROLE`, ...).
    pub what: String,
    /// Its hash (`None` on the embedded chain, whose transactions are not signed).
    pub hash: Option<B256>,
    /// Its block.
    pub block: u64,
}

/// A deployed suite as written to disk, so that later runs use it instead of deploying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentFile {
    /// [`DEPLOYMENT_FORMAT`].
    pub format: String,
    /// The chain it lives on.
    pub chain_id: u64,
    /// Its contracts.
    #[serde(rename = "addresses")]
    pub contracts: Deployment,
    /// Who administers, receives the protocol share, signs receipts and posts roots; the split;
    /// the token (always set).
    pub config: DeployConfig,
    /// The transactions that deployed and wired it, in order.
    pub transactions: Vec<DeployTx>,
}

impl DeploymentFile {
    /// Writes it as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<(), ChainError> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| ChainError::Deployment(e.to_string()))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| ChainError::Deployment(format!("{}: {e}", path.display())))
    }

    /// Reads one written by [`write`](Self::write); a file that is not one is a
    /// [`ChainError::Deployment`] naming it and what is wrong.
    pub fn read(path: &Path) -> Result<Self, ChainError> {
        let bad = |why: String| ChainError::Deployment(format!("{}: {why}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: Self = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if file.format != DEPLOYMENT_FORMAT {
            return Err(bad(format!(
                "format {:?}, expected {DEPLOYMENT_FORMAT:?}",
                file.format
            )));
        }
        if file.config.token != Some(file.contracts.token) {
            return Err(bad("config.token is not the deployment's token".into()));
        }
        Ok(file)
    }

    /// Checks it against `chain`: the same chain id, code at every address, the operator and
    /// the rewards contract holding their roles on the payments contract.
    pub fn check<C: Chain + ?Sized>(&self, chain: &mut C) -> Result<(), ChainError> {
        if chain.chain_id() != self.chain_id {
            return Err(ChainError::Deployment(format!(
                "deployed on chain {}, connected to chain {}",
                self.chain_id,
                chain.chain_id()
            )));
        }
        let d = self.contracts;
        for (name, a) in [
            ("token", d.token),
            ("datanets", d.datanets),
            ("models", d.models),
            ("payments", d.payments),
            ("rewards", d.rewards),
        ] {
            if chain.code(a)?.is_empty() {
                return Err(ChainError::Deployment(format!(
                    "no contract at {name} {a} on chain {}",
                    self.chain_id
                )));
            }
        }
        let operator_role = chain.view(d.payments, &InferencePayments::OPERATOR_ROLECall {})?;
        let pool_role = chain.view(d.payments, &InferencePayments::POOL_ROLECall {})?;
        for (what, role, account) in [
            ("operator", operator_role, self.config.operator),
            ("rewards contract", pool_role, d.rewards),
        ] {
            let has = chain.view(
                d.payments,
                &InferencePayments::hasRoleCall { role, account },
            )?;
            if !has {
                return Err(ChainError::Deployment(format!(
                    "the {what} {account} holds no role {role} on the payments contract"
                )));
            }
        }
        Ok(())
    }
}
