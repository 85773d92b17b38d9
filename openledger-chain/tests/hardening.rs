//! What reading the contracts as an attacker found, each fixed and shown here: every test fails on
//! the contracts before the fix (an inner Merkle node verified as a record, model ids could be
//! squatted, a posted root was final and claimable at once, one admin key changed the split
//! instantly, nothing could be paused, a fee-on-transfer token under-funded the split, and
//! ownership of datanets and models could not move, let alone safely).

mod common;

use alloy_primitives::{Address, B256, U256, keccak256};
use common::{FEE, World, custom, u};
use openledger_chain::bindings::AttributionRewards::{self, AttributionRewardsErrors as RErr};
use openledger_chain::bindings::DatanetRegistry::{self, DatanetRegistryErrors as DErr};
use openledger_chain::bindings::InferencePayments::{self, InferencePaymentsErrors as PErr};
use openledger_chain::bindings::ModelRegistry::{self, ModelRegistryErrors as MErr};
use openledger_chain::bindings::model_id;
use openledger_chain::claims::EpochClaims;
use openledger_core::ContentId;
use openledger_core::merkle::{MerkleTree, process_proof};
use openledger_core::trainlog::record_leaf;

/// Pays `n` inferences in the current epoch and moves to the next; returns the closed epoch's
/// data pool.
fn pay_and_close(w: &mut World, n: u64) -> U256 {
    let epoch = w.epoch();
    for i in 0..n {
        let r = w.receipt(1_000 * epoch + i);
        let sig = w.sign(&r);
        assert!(w.pay(r, &sig).is_success());
    }
    w.chain.advance_time(w.config.epoch_duration).unwrap();
    let payments = w.d.payments;
    w.chain
        .view(payments, &InferencePayments::dataPoolCall { epoch })
        .unwrap()
}

/// The model's owner names `heir` as its successor.
fn offer_model(w: &mut World, heir: Address) {
    let (mo, models, id) = (w.model_owner, w.d.models, w.model_id);
    w.ok(
        mo,
        models,
        &ModelRegistry::transferModelOwnershipCall {
            modelId: id,
            newOwner: heir,
        },
        "transferModelOwnership",
    );
}

fn contributors(w: &World, pool: U256) -> Vec<(Address, U256)> {
    let a = w.chain.dev_account(7).address;
    let b = w.chain.dev_account(8).address;
    let half = pool / u(2);
    vec![(a, half), (b, pool - half)]
}

#[test]
fn an_inner_node_of_the_records_tree_does_not_verify_as_a_record() {
    let mut w = World::new();
    let (dn, registry) = (w.datanet_owner, w.d.datanets);
    let records: Vec<ContentId> = (0..8u8).map(|i| ContentId::of([i])).collect();
    let leaves: Vec<B256> = records.iter().map(record_leaf).collect();
    let tree = MerkleTree::new(&leaves).unwrap();
    w.ok(
        dn,
        registry,
        &DatanetRegistry::publishVersionCall {
            datanetId: u(1),
            recordsRoot: tree.root(),
            recordCount: 8,
        },
        "publish",
    );
    let proof = tree.proof(0).unwrap();
    let call = |hash: B256, proof: Vec<B256>| DatanetRegistry::verifyRecordCall {
        datanetId: u(1),
        version: 2,
        recordHash: hash,
        proof,
    };
    assert!(
        w.chain
            .view(registry, &call(records[0].0, proof.clone()))
            .unwrap()
    );
    // The parent of two leaves, with the rest of the proof, leads to the root: it must not
    // pass as a record (it did when the contract took the leaf as given).
    let inner = process_proof(leaves[0], &proof[..1]);
    assert_eq!(process_proof(inner, &proof[1..]), tree.root());
    assert!(
        !w.chain
            .view(registry, &call(inner, proof[1..].to_vec()))
            .unwrap()
    );
    // Nor does a leaf passed as the record's hash.
    assert!(!w.chain.view(registry, &call(leaves[0], proof)).unwrap());
}

#[test]
fn a_model_id_cannot_be_squatted() {
    let mut w = World::new();
    let (mo, models) = (w.model_owner, w.d.models);
    let squatter = w.chain.dev_account(9).address;
    let salt = keccak256("legal-qa v2");
    let register = ModelRegistry::registerModelCall {
        salt,
        baseModel: B256::ZERO,
        artifactHash: keccak256("weights"),
        trainingLogHead: B256::ZERO,
        sources: vec![],
        feePerCall: u(1),
    };
    // The squatter sees the registration in the mempool and sends it first: it gets an id of
    // its own, and the owner's registration still goes through with theirs.
    let first = w.ok(squatter, models, &register, "squatter registers");
    let squatted = first.events::<ModelRegistry::ModelRegistered>()[0].modelId;
    assert_eq!(squatted, model_id(squatter, salt));
    let out = w.ok(mo, models, &register, "owner registers");
    let ev = &out.events::<ModelRegistry::ModelRegistered>()[0];
    assert_eq!((ev.modelId, ev.owner), (model_id(mo, salt), mo));
    assert_ne!(ev.modelId, squatted);
    let on_chain = w
        .chain
        .view(
            models,
            &ModelRegistry::modelIdForCall {
                registrant: mo,
                salt,
            },
        )
        .unwrap();
    assert_eq!(on_chain, model_id(mo, salt));
    // The owner cannot register the same salt twice.
    assert_eq!(
        custom::<MErr>(&w.send(mo, models, &register)),
        MErr::ModelAlreadyRegistered(ModelRegistry::ModelAlreadyRegistered {
            modelId: model_id(mo, salt)
        })
    );
}

#[test]
fn a_root_can_be_vetoed_in_its_challenge_window_and_claims_wait_for_it() {
    let mut w = World::new();
    let pool = pay_and_close(&mut w, 3);
    let (rewards, poster, guardian) = (w.d.rewards, w.config.poster, w.config.guardian);
    // A compromised poster commits a root paying itself the whole pool.
    let stolen = EpochClaims::new(0, &[(poster, pool)]).unwrap();
    w.ok(poster, rewards, &stolen.post_call(), "post (stolen)");
    let opens = w
        .chain
        .view(rewards, &AttributionRewards::claimableAtCall { epoch: 0 })
        .unwrap();
    assert_eq!(opens, w.chain.timestamp() + w.config.challenge_window);
    // It cannot claim at once.
    assert_eq!(
        custom::<RErr>(&w.send(poster, rewards, &stolen.claim_call(0).unwrap())),
        RErr::ChallengeWindowOpen(AttributionRewards::ChallengeWindowOpen {
            epoch: 0,
            claimableAt: opens
        })
    );
    // Only the guardian vetoes.
    let veto = AttributionRewards::vetoEpochRootCall { epoch: 0 };
    assert!(matches!(
        custom::<RErr>(&w.send(poster, rewards, &veto)),
        RErr::AccessControlUnauthorizedAccount(_)
    ));
    let out = w.ok(guardian, rewards, &veto, "vetoEpochRoot");
    let ev = &out.events::<AttributionRewards::EpochVetoed>()[0];
    assert_eq!((ev.root, ev.held), (stolen.root(), pool));
    assert_eq!(
        custom::<RErr>(&w.send(poster, rewards, &stolen.claim_call(0).unwrap())),
        RErr::UnknownEpoch(AttributionRewards::UnknownEpoch { epoch: 0 })
    );
    // The funds stayed for the corrected root, which takes them without a new pull.
    assert_eq!(w.token_balance(rewards), pool);
    let fixed = EpochClaims::new(0, &contributors(&w, pool)).unwrap();
    let out = w.ok(poster, rewards, &fixed.post_call(), "post (fixed)");
    let ev = &out.events::<AttributionRewards::EpochPosted>()[0];
    assert_eq!(
        (ev.fromPool, ev.topUp, ev.total),
        (U256::ZERO, U256::ZERO, pool)
    );
    assert_eq!(
        w.chain
            .view(rewards, &AttributionRewards::heldForRepostCall { epoch: 0 })
            .unwrap(),
        U256::ZERO
    );
    // After the window: claims go through, and the root can no longer be vetoed.
    let window = w.config.challenge_window;
    w.chain.advance_time(window).unwrap();
    assert_eq!(
        custom::<RErr>(&w.send(guardian, rewards, &veto)),
        RErr::ChallengeWindowClosed(AttributionRewards::ChallengeWindowClosed { epoch: 0 })
    );
    for (i, &(account, amount)) in contributors(&w, pool).iter().enumerate() {
        let before = w.token_balance(account);
        w.ok(account, rewards, &fixed.claim_call(i).unwrap(), "claim");
        assert_eq!(w.token_balance(account) - before, amount);
    }
    assert_eq!(w.token_balance(rewards), U256::ZERO);
}

#[test]
fn unclaimed_rewards_return_to_the_set_address_after_the_claim_period() {
    let mut w = World::new();
    let pool = pay_and_close(&mut w, 2);
    let (rewards, poster) = (w.d.rewards, w.config.poster);
    let recipient = w.config.unclaimed_recipient;
    let totals = contributors(&w, pool);
    let claims = EpochClaims::new(0, &totals).unwrap();
    w.ok(poster, rewards, &claims.post_call(), "post");
    w.chain.advance_time(w.config.challenge_window).unwrap();
    w.ok(
        totals[0].0,
        rewards,
        &claims.claim_call(0).unwrap(),
        "claim",
    );
    let sweep = AttributionRewards::sweepUnclaimedCall { epoch: 0 };
    assert!(matches!(
        custom::<RErr>(&w.send(poster, rewards, &sweep)),
        RErr::ClaimPeriodOpen(_)
    ));
    w.chain.advance_time(w.config.claim_period).unwrap();
    assert!(matches!(
        custom::<RErr>(&w.send(totals[1].0, rewards, &claims.claim_call(1).unwrap())),
        RErr::ClaimPeriodOver(_)
    ));
    let before = w.token_balance(recipient);
    // Anyone may sweep; it goes to the set address.
    let out = w.ok(totals[1].0, rewards, &sweep, "sweepUnclaimed");
    let ev = &out.events::<AttributionRewards::UnclaimedSwept>()[0];
    assert_eq!((ev.to, ev.amount), (recipient, totals[1].1));
    assert_eq!(w.token_balance(recipient) - before, totals[1].1);
    assert_eq!(w.token_balance(rewards), U256::ZERO);
    assert_eq!(
        custom::<RErr>(&w.send(poster, rewards, &sweep)),
        RErr::AlreadySwept(AttributionRewards::AlreadySwept { epoch: 0 })
    );
}

#[test]
fn the_split_and_the_admin_change_only_after_the_delay() {
    let mut w = World::new();
    let (payments, admin) = (w.d.payments, w.config.admin);
    let split = |w: &mut World| {
        let s = w
            .chain
            .view(payments, &InferencePayments::splitCall { amount: u(FEE) })
            .unwrap();
        (s.ownerShare, s.protocolShare, s.dataShare)
    };
    let before = split(&mut w);
    let thief = w.chain.dev_account(9).address;
    let propose = InferencePayments::proposeSplitCall {
        treasury_: thief,
        protocolBps_: 9_000,
        dataPoolBps_: 0,
    };
    assert!(matches!(
        custom::<PErr>(&w.send(thief, payments, &propose)),
        PErr::AccessControlUnauthorizedAccount(_)
    ));
    let out = w.ok(admin, payments, &propose, "proposeSplit");
    let effective = out.events::<InferencePayments::SplitProposed>()[0].effectiveAt;
    // Proposed in public, not applied: payments in the meantime keep the old split.
    assert_eq!(split(&mut w), before);
    let apply = InferencePayments::applySplitCall {};
    assert_eq!(
        custom::<PErr>(&w.send(thief, payments, &apply)),
        PErr::SplitNotReady(InferencePayments::SplitNotReady {
            effectiveAt: effective
        })
    );
    w.chain.advance_time(w.config.admin_delay).unwrap();
    w.ok(thief, payments, &apply, "applySplit");
    assert_eq!(
        w.chain
            .view(payments, &InferencePayments::treasuryCall {})
            .unwrap(),
        thief
    );
    assert_ne!(split(&mut w), before);
    assert_eq!(
        custom::<PErr>(&w.send(thief, payments, &apply)),
        PErr::NoPendingSplit(InferencePayments::NoPendingSplit {})
    );

    // The admin role itself moves only after the delay, and never by a plain grant.
    let role = w
        .chain
        .view(payments, &InferencePayments::DEFAULT_ADMIN_ROLECall {})
        .unwrap();
    assert!(matches!(
        custom::<PErr>(&w.send(
            admin,
            payments,
            &InferencePayments::grantRoleCall {
                role,
                account: thief
            }
        )),
        PErr::AccessControlEnforcedDefaultAdminRules(_)
    ));
    w.ok(
        admin,
        payments,
        &InferencePayments::beginDefaultAdminTransferCall { newAdmin: thief },
        "beginDefaultAdminTransfer",
    );
    let accept = InferencePayments::acceptDefaultAdminTransferCall {};
    assert!(matches!(
        custom::<PErr>(&w.send(thief, payments, &accept)),
        PErr::AccessControlEnforcedDefaultAdminDelay(_)
    ));
    w.chain.advance_time(w.config.admin_delay + 1).unwrap();
    w.ok(thief, payments, &accept, "acceptDefaultAdminTransfer");
    assert_eq!(
        w.chain
            .view(payments, &InferencePayments::defaultAdminCall {})
            .unwrap(),
        thief
    );
}

#[test]
fn a_guardian_pauses_payments_and_claims_and_only_the_admin_resumes() {
    let mut w = World::new();
    let (payments, rewards, admin) = (w.d.payments, w.d.rewards, w.config.admin);
    let guardian = w.chain.dev_account(9).address;
    for (contract, role) in [
        (
            payments,
            w.chain
                .view(payments, &InferencePayments::GUARDIAN_ROLECall {})
                .unwrap(),
        ),
        (
            rewards,
            w.chain
                .view(rewards, &AttributionRewards::GUARDIAN_ROLECall {})
                .unwrap(),
        ),
    ] {
        w.ok(
            admin,
            contract,
            &InferencePayments::grantRoleCall {
                role,
                account: guardian,
            },
            "grant GUARDIAN_ROLE",
        );
    }
    let r = w.receipt(1);
    let sig = w.sign(&r);
    assert!(w.pay(r, &sig).is_success());
    w.ok(
        guardian,
        payments,
        &InferencePayments::pauseCall {},
        "pause payments",
    );
    let r = w.receipt(2);
    let sig = w.sign(&r);
    assert_eq!(
        custom::<PErr>(&w.pay(r.clone(), &sig)),
        PErr::EnforcedPause(InferencePayments::EnforcedPause {})
    );
    // Credited shares stay withdrawable while paused.
    let owner = w.model_owner;
    w.ok(
        owner,
        payments,
        &InferencePayments::withdrawCall {},
        "withdraw while paused",
    );
    assert!(matches!(
        custom::<PErr>(&w.send(guardian, payments, &InferencePayments::unpauseCall {})),
        PErr::AccessControlUnauthorizedAccount(_)
    ));
    w.ok(
        admin,
        payments,
        &InferencePayments::unpauseCall {},
        "unpause payments",
    );
    assert!(w.pay(r, &sig).is_success());

    // Claims.
    let pool = pay_and_close(&mut w, 1);
    let claims = EpochClaims::new(0, &contributors(&w, pool)).unwrap();
    let poster = w.config.poster;
    w.ok(poster, rewards, &claims.post_call(), "post");
    w.chain.advance_time(w.config.challenge_window).unwrap();
    w.ok(
        guardian,
        rewards,
        &AttributionRewards::pauseCall {},
        "pause claims",
    );
    let claim = claims.claim_call(0).unwrap();
    assert_eq!(
        custom::<RErr>(&w.send(poster, rewards, &claim)),
        RErr::EnforcedPause(AttributionRewards::EnforcedPause {})
    );
    w.ok(
        admin,
        rewards,
        &AttributionRewards::unpauseCall {},
        "unpause claims",
    );
    w.ok(poster, rewards, &claim, "claim");
}

#[test]
fn a_fee_on_transfer_token_is_refused() {
    let mut w = World::with_fee_on_transfer_token();
    let payments = w.d.payments;
    let payer = w.payer;
    let balance = w.token_balance(payer);
    let r = w.receipt(1);
    let sig = w.sign(&r);
    let id = r.inferenceId;
    // 1 % burnt on the way: the contract would have credited shares it never received.
    let received = u(FEE) - u(FEE) / u(100);
    assert_eq!(
        custom::<PErr>(&w.pay(r, &sig)),
        PErr::FeeOnTransferToken(InferencePayments::FeeOnTransferToken {
            expected: u(FEE),
            received
        })
    );
    assert_eq!(w.token_balance(payer), balance);
    assert_eq!(w.token_balance(payments), U256::ZERO);
    assert!(
        !w.chain
            .view(payments, &InferencePayments::paidCall { inferenceId: id })
            .unwrap()
    );
}

#[test]
fn datanets_and_models_change_owner_in_two_steps() {
    let mut w = World::new();
    let (dn, registry, mo, models) = (w.datanet_owner, w.d.datanets, w.model_owner, w.d.models);
    let heir = w.chain.dev_account(9).address;
    let stranger = w.chain.dev_account(8).address;

    // Datanet: named, not moved until accepted; only the named account accepts.
    w.ok(
        dn,
        registry,
        &DatanetRegistry::transferDatanetOwnershipCall {
            datanetId: u(1),
            newOwner: heir,
        },
        "transferDatanetOwnership",
    );
    let owner_of = |w: &mut World| {
        w.chain
            .view(
                registry,
                &DatanetRegistry::getDatanetCall { datanetId: u(1) },
            )
            .unwrap()
            .owner
    };
    assert_eq!(owner_of(&mut w), dn);
    let accept = DatanetRegistry::acceptDatanetOwnershipCall { datanetId: u(1) };
    assert_eq!(
        custom::<DErr>(&w.send(stranger, registry, &accept)),
        DErr::NotPendingDatanetOwner(DatanetRegistry::NotPendingDatanetOwner {
            datanetId: u(1),
            caller: stranger
        })
    );
    // The offer can be withdrawn, after which the heir cannot accept.
    w.ok(
        dn,
        registry,
        &DatanetRegistry::transferDatanetOwnershipCall {
            datanetId: u(1),
            newOwner: Address::ZERO,
        },
        "withdraw the offer",
    );
    assert!(matches!(
        custom::<DErr>(&w.send(heir, registry, &accept)),
        DErr::NotPendingDatanetOwner(_)
    ));
    w.ok(
        dn,
        registry,
        &DatanetRegistry::transferDatanetOwnershipCall {
            datanetId: u(1),
            newOwner: heir,
        },
        "transferDatanetOwnership",
    );
    let out = w.ok(heir, registry, &accept, "acceptDatanetOwnership");
    let ev = &out.events::<DatanetRegistry::DatanetOwnershipTransferred>()[0];
    assert_eq!((ev.previousOwner, ev.newOwner), (dn, heir));
    assert_eq!(owner_of(&mut w), heir);
    let publish = DatanetRegistry::publishVersionCall {
        datanetId: u(1),
        recordsRoot: keccak256("v2"),
        recordCount: 1,
    };
    assert!(matches!(
        custom::<DErr>(&w.send(dn, registry, &publish)),
        DErr::NotDatanetOwner(_)
    ));
    w.ok(heir, registry, &publish, "the new owner publishes");

    // Model: after the transfer, its fees are credited to the new owner.
    let id = w.model_id;
    offer_model(&mut w, heir);
    let accept = ModelRegistry::acceptModelOwnershipCall { modelId: id };
    assert!(matches!(
        custom::<MErr>(&w.send(stranger, models, &accept)),
        MErr::NotPendingModelOwner(_)
    ));
    w.ok(heir, models, &accept, "acceptModelOwnership");
    let payments = w.d.payments;
    let credited = |w: &mut World, who| {
        w.chain
            .view(
                payments,
                &InferencePayments::withdrawableCall { account: who },
            )
            .unwrap()
    };
    let (heir_before, mo_before) = (credited(&mut w, heir), credited(&mut w, mo));
    let r = w.receipt(1);
    let sig = w.sign(&r);
    assert!(w.pay(r, &sig).is_success());
    let (owner_share, _, _) = {
        let s = w
            .chain
            .view(payments, &InferencePayments::splitCall { amount: u(FEE) })
            .unwrap();
        (s.ownerShare, s.protocolShare, s.dataShare)
    };
    assert_eq!(credited(&mut w, heir) - heir_before, owner_share);
    assert_eq!(credited(&mut w, mo), mo_before);
    // The old owner can no longer change its fee.
    assert!(matches!(
        custom::<MErr>(&w.send(
            mo,
            models,
            &ModelRegistry::updateFeeCall {
                modelId: id,
                newFee: u(1)
            }
        )),
        MErr::NotModelOwner(_)
    ));
}

#[test]
fn a_claim_period_that_would_overflow_the_clock_is_refused_at_deployment() {
    use openledger_chain::deploy::{DeployConfig, Deployment};
    use openledger_chain::evm::EmbeddedChain;
    let mut chain = EmbeddedChain::new(31337);
    let mut config = DeployConfig::dev(&chain);
    // "Never expires" spelled as the largest period would make every claim overflow.
    config.claim_period = u64::MAX;
    let e = Deployment::deploy(&mut chain, &config).unwrap_err();
    assert!(
        e.to_string()
            .contains("AttributionRewards reverted: InvalidConfig()"),
        "{e}"
    );
    config.claim_period = u64::MAX / 2 - config.challenge_window;
    Deployment::deploy(&mut chain, &config).unwrap();
}

#[test]
fn deactivating_a_model_withdraws_its_ownership_offer() {
    let mut w = World::new();
    let (mo, models) = (w.model_owner, w.d.models);
    let heir = w.chain.dev_account(9).address;
    let id = w.model_id;
    offer_model(&mut w, heir);
    w.ok(
        mo,
        models,
        &ModelRegistry::deactivateCall { modelId: id },
        "deactivate",
    );
    assert_eq!(
        custom::<MErr>(&w.send(
            heir,
            models,
            &ModelRegistry::acceptModelOwnershipCall { modelId: id }
        )),
        MErr::ModelInactive(ModelRegistry::ModelInactive { modelId: id })
    );
}
