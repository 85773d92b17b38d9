//! Grants read from the chain gate training, and the trained adapter's training-log head is
//! registered on chain, where a usage proof and the datanet's record proof both check out.

use openledger::provenance::{
    ModelRegistration, ProvenanceError, grants_from_chain, register_model,
};
use openledger::synthetic::KeyValueTask;
use openledger_chain::bindings::{DatanetRegistry, ModelRegistry};
use openledger_chain::deploy::{DeployConfig, Deployment};
use openledger_chain::evm::EmbeddedChain;
use openledger_core::grant::AccessStatus;
use openledger_core::{B256, ContentId, U256};

fn keccak256(s: &str) -> B256 {
    ContentId::of(s).0
}
use openledger_lora::model::RandomLlama;
use openledger_train::{LoraSettings, TrainConfig, TrainError, Trainer};

#[test]
fn chain_grants_gate_training_and_the_log_head_registered_on_chain_proves_usage() {
    let mut chain = EmbeddedChain::new(31337);
    let config = DeployConfig::dev(&chain);
    let d = Deployment::deploy(&mut chain, &config).unwrap();
    let owner = chain.dev_account(4).address;
    let me = chain.dev_account(5).address;
    let outsider = chain.dev_account(6).address;

    // A datanet, published on chain as version 1.
    let task = KeyValueTask {
        keys: 6,
        values: 3,
        alphabet: 5,
        distractors: 2,
    };
    let data = task.datanet("kv", &task.table(1), 16, 0.25, 2, 3).unwrap();
    let v1 = data.datanet.versions()[0];
    let out = chain
        .send(
            owner,
            d.datanets,
            &DatanetRegistry::registerDatanetCall {
                metadataHash: keccak256("kv"),
                uri: "ipfs://kv".into(),
            },
        )
        .unwrap();
    let id: U256 = out
        .returns::<DatanetRegistry::registerDatanetCall>()
        .unwrap();
    let ok = |out: openledger_chain::evm::TxOutcome| assert!(out.is_success(), "{out:?}");
    ok(chain
        .send(
            owner,
            d.datanets,
            &DatanetRegistry::publishVersionCall {
                datanetId: id,
                recordsRoot: v1.root,
                recordCount: v1.record_count as u64,
            },
        )
        .unwrap());
    for (who, purpose) in [(me, "fine-tune"), (outsider, "other")] {
        ok(chain
            .send(
                who,
                d.datanets,
                &DatanetRegistry::requestAccessCall {
                    datanetId: id,
                    purposeHash: keccak256(purpose),
                },
            )
            .unwrap());
    }
    ok(chain
        .send(
            owner,
            d.datanets,
            &DatanetRegistry::approveAccessCall {
                datanetId: id,
                requester: me,
            },
        )
        .unwrap());

    // The mirror read from the chain.
    let grants = grants_from_chain(&mut chain, d.datanets, &[id], &[me, outsider, owner]).unwrap();
    assert_eq!(grants.owner(id), Some(owner));
    assert_eq!(grants.status(id, me), AccessStatus::Approved);
    assert_eq!(grants.status(id, outsider), AccessStatus::Requested);
    assert!(grants.check(id, owner).is_ok());
    assert!(matches!(
        grants_from_chain(&mut chain, d.datanets, &[id + U256::from(1)], &[me]),
        Err(ProvenanceError::Chain(_))
    ));

    // Training under the grant, with a log.
    let model = RandomLlama {
        vocab: task.vocab(),
        hidden: 16,
        intermediate: 32,
        layers: 1,
        heads: 2,
        kv_heads: 1,
    }
    .model(1)
    .unwrap();
    let train: Vec<_> = data
        .datanet
        .records()
        .iter()
        .map(|r| task.example(&r.content).unwrap().with_source(id, r.hash))
        .collect();
    let mut cfg = TrainConfig::new(LoraSettings::new(&["q_proj", "v_proj"], 2, 4.0));
    cfg.steps = 4;
    cfg.batch_size = 4;
    let mut refused = Trainer::new(&model, cfg.clone()).unwrap();
    refused.require_grants(grants.clone(), outsider);
    assert!(matches!(
        refused.train(&train, &[], &mut |_| {}),
        Err(TrainError::AccessDenied { .. })
    ));
    let mut trainer = Trainer::new(&model, cfg).unwrap();
    trainer.require_grants(grants, me);
    trainer.start_log(keccak256("tiny random llama"));
    trainer.train(&train, &[], &mut |_| {}).unwrap();
    let log = trainer.training_log().unwrap().clone();

    // Registered on chain with the log head; the outsider cannot register on this datanet.
    let registration = ModelRegistration {
        salt: keccak256("kv adapter"),
        base_model: keccak256("tiny random llama"),
        artifact_hash: trainer.checkpoint().unwrap().id.0,
        sources: vec![(id, 1)],
        fee_per_call: U256::from(1_000u64),
    };
    register_model(&mut chain, d.models, me, &registration, &log).unwrap();
    let other = ModelRegistration {
        salt: keccak256("outsider adapter"),
        ..registration.clone()
    };
    assert!(matches!(
        register_model(&mut chain, d.models, outsider, &other, &log),
        Err(ProvenanceError::Chain(_))
    ));
    let on_chain = chain
        .view(
            d.models,
            &ModelRegistry::getModelCall {
                modelId: openledger_chain::bindings::model_id(me, registration.salt),
            },
        )
        .unwrap();
    assert_eq!(on_chain.trainingLogHead, log.head());
    assert_ne!(on_chain.trainingLogHead, B256::ZERO);

    // A record used in training: its usage proof verifies against the on-chain head, and its
    // membership in the datanet version against the on-chain records root.
    let (index, record) = data
        .datanet
        .records()
        .iter()
        .enumerate()
        .find_map(|(i, r)| log.was_used(&r.hash).map(|_| (i, r.clone())))
        .unwrap();
    let step = log.was_used(&record.hash).unwrap()[0];
    let usage = log.prove(&record.hash, step).unwrap();
    assert_eq!(
        usage.verify(&record.hash, on_chain.trainingLogHead),
        Some(step)
    );
    let inclusion = data.datanet.inclusion_proof(1, index).unwrap();
    assert!(
        chain
            .view(
                d.datanets,
                &DatanetRegistry::verifyRecordCall {
                    datanetId: id,
                    version: 1,
                    recordHash: record.hash.0,
                    proof: inclusion,
                },
            )
            .unwrap()
    );
}
