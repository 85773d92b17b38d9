//! What an indexer or client reads back from the registries after set-up, and the events it
//! indexes.

mod common;

use alloy_primitives::{B256, keccak256};
use common::{FEE, World, custom, u};
use openledger_chain::bindings::DatanetRegistry::{self, DatanetRegistryErrors as DErr};
use openledger_chain::bindings::{ModelRegistry, model_id};
use openledger_core::ContentId;
use openledger_core::datanet::verify_record_proof;
use openledger_core::merkle::MerkleTree;
use openledger_core::trainlog::record_leaf;

#[test]
fn datanet_and_version_read_back_as_registered() {
    let mut w = World::new();
    let registry = w.d.datanets;
    let d = w
        .chain
        .view(
            registry,
            &DatanetRegistry::getDatanetCall { datanetId: u(1) },
        )
        .unwrap();
    assert_eq!(d.owner, w.datanet_owner);
    assert_eq!(d.metadataHash, keccak256("legal contracts datanet"));
    assert_eq!(d.uri, "ipfs://datanet-legal");
    assert_eq!(d.versionCount, 1);
    let v = w
        .chain
        .view(
            registry,
            &DatanetRegistry::getVersionCall {
                datanetId: u(1),
                version: 1,
            },
        )
        .unwrap();
    assert_eq!(v.recordCount, 10);
    assert_ne!(v.recordsRoot, B256::ZERO);
    let missing = w
        .chain
        .call(
            w.payer,
            registry,
            alloy_sol_types::SolCall::abi_encode(&DatanetRegistry::getVersionCall {
                datanetId: u(1),
                version: 2,
            })
            .into(),
        )
        .unwrap();
    assert_eq!(
        custom::<DErr>(&missing),
        DErr::UnknownVersion(DatanetRegistry::UnknownVersion {
            datanetId: u(1),
            version: 2
        })
    );
    assert!(
        w.chain
            .view(
                registry,
                &DatanetRegistry::hasAccessCall {
                    datanetId: u(1),
                    account: w.model_owner
                }
            )
            .unwrap()
    );
}

#[test]
fn model_reads_back_with_its_training_sources_and_events() {
    let mut w = World::new();
    let models = w.d.models;
    let m = w
        .chain
        .view(
            models,
            &ModelRegistry::getModelCall {
                modelId: w.model_id,
            },
        )
        .unwrap();
    assert_eq!(
        (m.owner, m.active, m.feePerCall),
        (w.model_owner, true, u(FEE))
    );
    assert_eq!(m.baseModel, keccak256("base: llama-3-8b"));
    let sources = w
        .chain
        .view(
            models,
            &ModelRegistry::trainingSourcesCall {
                modelId: w.model_id,
            },
        )
        .unwrap();
    assert_eq!(sources.len(), 1);
    assert_eq!((sources[0].datanetId, sources[0].version), (u(1), 1));

    // A second version, then a model trained on both: the event carries everything.
    let (dn, mo, registry) = (w.datanet_owner, w.model_owner, w.d.datanets);
    let out = w.ok(
        dn,
        registry,
        &DatanetRegistry::publishVersionCall {
            datanetId: u(1),
            recordsRoot: keccak256("v2"),
            recordCount: 12,
        },
        "publish v2",
    );
    let ev = &out.events::<DatanetRegistry::VersionPublished>()[0];
    assert_eq!((ev.datanetId, ev.version, ev.recordCount), (u(1), 2, 12));
    let id = model_id(mo, keccak256("model v2"));
    let out = w.ok(
        mo,
        models,
        &ModelRegistry::registerModelCall {
            salt: keccak256("model v2"),
            baseModel: w.model_id,
            artifactHash: keccak256("weights"),
            trainingLogHead: keccak256("log head"),
            sources: vec![
                ModelRegistry::TrainingSource {
                    datanetId: u(1),
                    version: 1,
                },
                ModelRegistry::TrainingSource {
                    datanetId: u(1),
                    version: 2,
                },
            ],
            feePerCall: u(5),
        },
        "register v2",
    );
    let ev = &out.events::<ModelRegistry::ModelRegistered>()[0];
    assert_eq!(
        (ev.modelId, ev.owner, ev.baseModel, ev.feePerCall),
        (id, mo, w.model_id, u(5))
    );
    assert_eq!(ev.sources.len(), 2);
    // The same id (its owner's salt) cannot be registered twice.
    let again = w.send(
        mo,
        models,
        &ModelRegistry::registerModelCall {
            salt: keccak256("model v2"),
            baseModel: B256::ZERO,
            artifactHash: B256::ZERO,
            trainingLogHead: B256::ZERO,
            sources: vec![],
            feePerCall: u(1),
        },
    );
    assert_eq!(
        custom::<ModelRegistry::ModelRegistryErrors>(&again),
        ModelRegistry::ModelRegistryErrors::ModelAlreadyRegistered(
            ModelRegistry::ModelAlreadyRegistered { modelId: id }
        )
    );
}

#[test]
fn records_proven_with_the_core_merkle_module_verify_on_chain() {
    let mut w = World::new();
    let (dn, registry) = (w.datanet_owner, w.d.datanets);
    // Content hashes of 23 records, and their double-hashed leaves.
    let records: Vec<ContentId> = (0..23u32)
        .map(|i| ContentId::of(format!("record {i}").as_bytes()))
        .collect();
    let leaves: Vec<B256> = records.iter().map(record_leaf).collect();
    let tree = MerkleTree::new(&leaves).unwrap();
    w.ok(
        dn,
        registry,
        &DatanetRegistry::publishVersionCall {
            datanetId: u(1),
            recordsRoot: tree.root(),
            recordCount: records.len() as u64,
        },
        "publish v2",
    );
    for (k, record) in records.iter().enumerate() {
        let proof = tree.proof(k).unwrap();
        let call = DatanetRegistry::verifyRecordCall {
            datanetId: u(1),
            version: 2,
            recordHash: record.0,
            proof: proof.clone(),
        };
        assert!(w.chain.view(registry, &call).unwrap(), "record {k}");
        assert!(verify_record_proof(tree.root(), record, &proof));
        // Neither the leaf itself nor another hash passes as the record.
        for forged in [leaves[k], keccak256(record.0)] {
            let forged = DatanetRegistry::verifyRecordCall {
                recordHash: forged,
                ..call.clone()
            };
            assert!(!w.chain.view(registry, &forged).unwrap());
        }
    }
}
