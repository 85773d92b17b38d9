//! Shared set-up of the integration tests: a deployed suite with a datanet, a model trained on
//! it and a funded payer.
#![allow(dead_code)]

use alloy_primitives::{Address, B256, Signature, U256, keccak256};
use alloy_sol_types::{SolCall, SolInterface};
use openledger_chain::bindings::{
    DatanetRegistry, FeeOnTransferToken, InferencePayments, ModelRegistry, ReentrantToken,
    TestToken, model_id,
};
use openledger_chain::deploy::{DeployConfig, Deployment};
use openledger_chain::evm::{EmbeddedChain, RevertReason, TxOutcome};
use openledger_chain::receipt::{AttributionReceipt, OperatorSigner, weights_hash};
use openledger_core::merkle::MerkleTree;

pub const FEE: u128 = 1_000_000_000_000_000_003; // 1 OPEN + 3 wei: the split has remainders
pub const MINTED: u128 = 1_000 * 10u128.pow(18);

pub struct World {
    pub chain: EmbeddedChain,
    pub d: Deployment,
    pub config: DeployConfig,
    pub operator: OperatorSigner,
    pub datanet_owner: Address,
    pub model_owner: Address,
    pub payer: Address,
    pub model_id: B256,
    pub adapter_id: B256,
    pub gas: Vec<(String, u64)>,
}

pub fn u(x: u128) -> U256 {
    U256::from(x)
}

pub fn custom<E: SolInterface + Clone + std::fmt::Debug>(out: &TxOutcome) -> E {
    match out.revert_reason::<E>() {
        Some(RevertReason::Custom(e)) => e,
        other => panic!(
            "expected a custom error, got {other:?} (status {:?})",
            out.status
        ),
    }
}

impl World {
    pub fn new() -> Self {
        Self::build(None)
    }

    /// The same world paying in the hostile `ReentrantToken`.
    pub fn with_reentrant_token() -> Self {
        Self::build(Some(&ReentrantToken::BYTECODE))
    }

    /// The same world paying in `FeeOnTransferToken`, which burns 1 % of every transfer.
    pub fn with_fee_on_transfer_token() -> Self {
        Self::build(Some(&FeeOnTransferToken::BYTECODE))
    }

    /// A world paying in a token deployed from `token_code` (one with `TestToken`'s `mint`), or
    /// in a fresh `TestToken`.
    fn build(token_code: Option<&[u8]>) -> Self {
        let mut chain = EmbeddedChain::new(31337);
        let mut config = DeployConfig::dev(&chain);
        if let Some(code) = token_code {
            config.token = Some(chain.deploy(config.admin, code, &[]).unwrap());
        }
        let d = Deployment::deploy(&mut chain, &config).unwrap();
        let operator = OperatorSigner::new(chain.dev_account(2).key.clone());
        let datanet_owner = chain.dev_account(4).address;
        let model_owner = chain.dev_account(5).address;
        let payer = chain.dev_account(6).address;
        let mut w = World {
            chain,
            d,
            config,
            operator,
            datanet_owner,
            model_owner,
            payer,
            model_id: model_id(model_owner, keccak256("model: legal-qa adapter v1")),
            adapter_id: model_id(model_owner, keccak256("adapter: contracts-ner v3")),
            gas: Vec::new(),
        };
        w.setup_registry();
        w.ok(
            payer,
            w.d.token,
            &TestToken::mintCall {
                to: payer,
                amount: u(MINTED),
            },
            "mint",
        );
        w.ok(
            payer,
            w.d.token,
            &TestToken::approveCall {
                spender: w.d.payments,
                value: U256::MAX,
            },
            "approve",
        );
        w
    }

    /// Sends `call`, requires success and records its gas under `label`.
    pub fn ok<C: SolCall>(
        &mut self,
        from: Address,
        to: Address,
        call: &C,
        label: &str,
    ) -> TxOutcome {
        let out = self.chain.send(from, to, call).unwrap();
        assert!(
            out.is_success(),
            "{label} failed: {:?} {}",
            out.status,
            out.output
        );
        self.gas.push((label.to_string(), out.gas_used));
        out
    }

    pub fn send<C: SolCall>(&mut self, from: Address, to: Address, call: &C) -> TxOutcome {
        self.chain.send(from, to, call).unwrap()
    }

    fn setup_registry(&mut self) {
        let (dn, mo) = (self.datanet_owner, self.model_owner);
        let registry = self.d.datanets;
        self.ok(
            dn,
            registry,
            &DatanetRegistry::registerDatanetCall {
                metadataHash: keccak256("legal contracts datanet"),
                uri: "ipfs://datanet-legal".into(),
            },
            "registerDatanet",
        );
        let records: Vec<B256> = (0..10u8).map(|i| keccak256([i])).collect();
        let tree = MerkleTree::new(&records).unwrap();
        self.ok(
            dn,
            registry,
            &DatanetRegistry::publishVersionCall {
                datanetId: u(1),
                recordsRoot: tree.root(),
                recordCount: records.len() as u64,
            },
            "publishVersion",
        );
        self.ok(
            mo,
            registry,
            &DatanetRegistry::requestAccessCall {
                datanetId: u(1),
                purposeHash: keccak256("fine-tune"),
            },
            "requestAccess",
        );
        self.ok(
            dn,
            registry,
            &DatanetRegistry::approveAccessCall {
                datanetId: u(1),
                requester: mo,
            },
            "approveAccess",
        );
        for (name, id, label) in [
            ("model: legal-qa adapter v1", self.model_id, "registerModel"),
            (
                "adapter: contracts-ner v3",
                self.adapter_id,
                "registerModel (adapter)",
            ),
        ] {
            let models = self.d.models;
            self.ok(
                mo,
                models,
                &ModelRegistry::registerModelCall {
                    salt: keccak256(name),
                    baseModel: keccak256("base: llama-3-8b"),
                    artifactHash: keccak256(id),
                    trainingLogHead: keccak256("training log head"),
                    sources: vec![ModelRegistry::TrainingSource {
                        datanetId: u(1),
                        version: 1,
                    }],
                    feePerCall: u(FEE),
                },
                label,
            );
        }
    }

    /// Moves the clock past a just-posted root's challenge window, when claims open.
    pub fn open_claims(&mut self) {
        self.chain
            .advance_time(self.config.challenge_window)
            .unwrap();
    }

    pub fn epoch(&mut self) -> u64 {
        self.chain
            .view(self.d.payments, &InferencePayments::currentEpochCall {})
            .unwrap()
    }

    pub fn receipt(&mut self, n: u64) -> AttributionReceipt {
        let epoch = self.epoch();
        AttributionReceipt {
            inferenceId: keccak256(format!("inference {n}")),
            modelId: self.model_id,
            adapterIds: vec![self.adapter_id],
            payer: self.payer,
            amount: u(FEE),
            epoch,
            weightsHash: weights_hash(&[(keccak256([1u8]), u(700)), (keccak256([2u8]), u(300))])
                .unwrap(),
        }
    }

    pub fn sign(&self, r: &AttributionReceipt) -> Signature {
        self.operator
            .sign(r, &self.d.receipt_domain(&self.chain))
            .unwrap()
    }

    pub fn pay(&mut self, r: AttributionReceipt, sig: &Signature) -> TxOutcome {
        let call = Deployment::pay_call(r, sig);
        let (payer, payments) = (self.payer, self.d.payments);
        self.chain.send(payer, payments, &call).unwrap()
    }

    pub fn token_balance(&mut self, who: Address) -> U256 {
        self.chain
            .view(self.d.token, &TestToken::balanceOfCall { account: who })
            .unwrap()
    }

    pub fn print_gas(&self, title: &str) {
        println!("\n{title}\n{:<36} {:>10}", "call", "gas used");
        for (label, gas) in &self.gas {
            println!("{label:<36} {gas:>10}");
        }
    }
}
