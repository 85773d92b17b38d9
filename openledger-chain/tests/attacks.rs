//! Hostile inputs the contracts must reject, each with the exact custom error (or panic) decoded
//! from the revert data.

mod common;

use alloy_primitives::{Address, B256, Signature, U256, keccak256};
use alloy_sol_types::SolCall;
use common::{World, custom, u};
use openledger_chain::bindings::AttributionRewards::{self, AttributionRewardsErrors as RErr};
use openledger_chain::bindings::DatanetRegistry::{self, DatanetRegistryErrors as DErr};
use openledger_chain::bindings::InferencePayments::{self, InferencePaymentsErrors as PErr};
use openledger_chain::bindings::ModelRegistry::{self, ModelRegistryErrors as MErr};
use openledger_chain::bindings::{ReentrantToken, TestToken};
use openledger_chain::claims::EpochClaims;
use openledger_chain::evm::RevertReason;
use openledger_chain::receipt::OperatorSigner;
use openledger_chain::standard::{StandardMerkleTree, TreeOptions};

/// A world whose epoch 0 holds one paid inference and is closed, with contributors' claims
/// posted for it.
fn posted() -> (World, EpochClaims) {
    let mut w = World::new();
    let r = w.receipt(1);
    let sig = w.sign(&r);
    assert!(w.pay(r, &sig).is_success());
    w.chain.advance_time(86_400).unwrap();
    let pool = w
        .chain
        .view(w.d.payments, &InferencePayments::dataPoolCall { epoch: 0 })
        .unwrap();
    let a: Vec<Address> = (7..10).map(|i| w.chain.dev_account(i).address).collect();
    let third = pool / u(3);
    let claims = EpochClaims::new(
        0,
        &[(a[0], pool - third - third), (a[1], third), (a[2], third)],
    )
    .unwrap();
    let (poster, rewards) = (w.config.poster, w.d.rewards);
    w.ok(poster, rewards, &claims.post_call(), "post");
    w.open_claims();
    (w, claims)
}

#[test]
fn double_claim_is_rejected() {
    let (mut w, claims) = posted();
    let (from, rewards) = (w.chain.dev_account(7).address, w.d.rewards);
    w.ok(from, rewards, &claims.claim_call(0).unwrap(), "claim");
    let out = w.send(from, rewards, &claims.claim_call(0).unwrap());
    assert_eq!(
        custom::<RErr>(&out),
        RErr::AlreadyClaimed(AttributionRewards::AlreadyClaimed {
            epoch: 0,
            index: u(0)
        })
    );
}

#[test]
fn forged_proofs_are_rejected() {
    let (mut w, claims) = posted();
    let (from, rewards) = (w.chain.dev_account(7).address, w.d.rewards);
    let expected = RErr::InvalidProof(AttributionRewards::InvalidProof {
        epoch: 0,
        index: u(1),
    });
    // A larger amount with the genuine proof.
    let mut c = claims.claim_call(1).unwrap();
    c.amount += u(1);
    assert_eq!(custom::<RErr>(&w.send(from, rewards, &c)), expected);
    // Another account with the genuine proof.
    let mut c = claims.claim_call(1).unwrap();
    c.account = from;
    assert_eq!(custom::<RErr>(&w.send(from, rewards, &c)), expected);
    // A flipped bit in a sibling.
    let mut c = claims.claim_call(1).unwrap();
    c.proof[0].0[31] ^= 1;
    assert_eq!(custom::<RErr>(&w.send(from, rewards, &c)), expected);
    // An internal node presented as a leaf (second-preimage attempt): its children as "proof".
    let mut c = claims.claim_call(1).unwrap();
    c.proof.clear();
    assert_eq!(custom::<RErr>(&w.send(from, rewards, &c)), expected);
    // Nothing was paid out.
    assert!(
        !w.chain
            .view(
                rewards,
                &AttributionRewards::isClaimedCall {
                    epoch: 0,
                    index: u(1)
                }
            )
            .unwrap()
    );
}

#[test]
fn truncated_proof_is_rejected() {
    let (mut w, claims) = posted();
    let (from, rewards) = (w.chain.dev_account(8).address, w.d.rewards);
    let mut c = claims.claim_call(2).unwrap();
    assert!(c.proof.len() >= 2);
    c.proof.pop();
    assert_eq!(
        custom::<RErr>(&w.send(from, rewards, &c)),
        RErr::InvalidProof(AttributionRewards::InvalidProof {
            epoch: 0,
            index: u(2)
        })
    );
}

#[test]
fn claims_against_the_wrong_epoch_are_rejected() {
    let (mut w, claims) = posted();
    let (from, rewards) = (w.chain.dev_account(7).address, w.d.rewards);
    // Epoch 1 is not posted yet.
    let mut c = claims.claim_call(0).unwrap();
    c.epoch = 1;
    assert_eq!(
        custom::<RErr>(&w.send(from, rewards, &c)),
        RErr::UnknownEpoch(AttributionRewards::UnknownEpoch { epoch: 1 })
    );
    // Epoch 1 posted with other claims: epoch 0's proof does not open it.
    w.chain.advance_time(86_400).unwrap();
    let other = EpochClaims::new(
        1,
        &[
            (Address::repeat_byte(9), U256::ZERO),
            (Address::repeat_byte(8), U256::ZERO),
        ],
    )
    .unwrap();
    let poster = w.config.poster;
    w.ok(poster, rewards, &other.post_call(), "post epoch 1");
    w.open_claims();
    assert_eq!(
        custom::<RErr>(&w.send(from, rewards, &c)),
        RErr::InvalidProof(AttributionRewards::InvalidProof {
            epoch: 1,
            index: u(0)
        })
    );
}

#[test]
fn unauthorised_root_post_and_pool_release_are_rejected() {
    let mut w = World::new();
    w.chain.advance_time(86_400).unwrap();
    let intruder = w.chain.dev_account(9).address;
    let claims = EpochClaims::new(0, &[(intruder, u(1))]).unwrap();
    let rewards = w.d.rewards;
    let poster_role = w
        .chain
        .view(rewards, &AttributionRewards::POSTER_ROLECall {})
        .unwrap();
    let out = w.send(intruder, rewards, &claims.post_call());
    assert_eq!(
        custom::<RErr>(&out),
        RErr::AccessControlUnauthorizedAccount(
            AttributionRewards::AccessControlUnauthorizedAccount {
                account: intruder,
                neededRole: poster_role
            }
        )
    );
    let payments = w.d.payments;
    let pool_role = w
        .chain
        .view(payments, &InferencePayments::POOL_ROLECall {})
        .unwrap();
    let out = w.send(
        intruder,
        payments,
        &InferencePayments::releaseDataPoolCall { epoch: 0 },
    );
    assert_eq!(
        custom::<PErr>(&out),
        PErr::AccessControlUnauthorizedAccount(
            InferencePayments::AccessControlUnauthorizedAccount {
                account: intruder,
                neededRole: pool_role
            }
        )
    );
}

#[test]
fn open_epochs_cannot_be_posted_and_epochs_cannot_be_posted_twice() {
    let (mut w, claims) = posted();
    let (poster, rewards) = (w.config.poster, w.d.rewards);
    let out = w.send(poster, rewards, &claims.post_call());
    assert_eq!(
        custom::<RErr>(&out),
        RErr::EpochAlreadyPosted(AttributionRewards::EpochAlreadyPosted { epoch: 0 })
    );
    // Epoch 1 is the current one: its pool is not released, so the post reverts (bubbled up).
    let current = EpochClaims::new(1, &[(poster, u(1))]).unwrap();
    let out = w.send(poster, rewards, &current.post_call());
    match out.revert_reason::<PErr>() {
        Some(RevertReason::Custom(PErr::EpochNotClosed(e))) => {
            assert_eq!((e.epoch, e.current), (1, 1))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn replayed_inference_id_is_rejected() {
    let mut w = World::new();
    let r = w.receipt(7);
    let sig = w.sign(&r);
    assert!(w.pay(r.clone(), &sig).is_success());
    let payer = w.payer;
    let before = w.token_balance(payer);
    let out = w.pay(r.clone(), &sig);
    assert_eq!(
        custom::<PErr>(&out),
        PErr::InferenceAlreadyPaid(InferencePayments::InferenceAlreadyPaid {
            inferenceId: r.inferenceId
        })
    );
    assert_eq!(w.token_balance(payer), before);
}

#[test]
fn tampered_or_foreign_receipts_are_rejected() {
    let mut w = World::new();
    let r = w.receipt(3);
    let sig = w.sign(&r);
    // Any field changed after signing recovers someone who is not an operator.
    let mut tampered = vec![r.clone(), r.clone(), r.clone()];
    tampered[0].weightsHash = keccak256("other weights");
    tampered[1].adapterIds.clear();
    tampered[2].inferenceId = keccak256("another inference");
    for t in tampered {
        match custom::<PErr>(&w.pay(t, &sig)) {
            PErr::InvalidReceiptSignature(e) => assert_ne!(e.signer, w.operator.address()),
            other => panic!("{other:?}"),
        }
    }
    // Signed by a key without the operator role.
    let rogue = OperatorSigner::from_bytes(&B256::repeat_byte(0x42)).unwrap();
    let rogue_sig = rogue.sign(&r, &w.d.receipt_domain(&w.chain)).unwrap();
    assert_eq!(
        custom::<PErr>(&w.pay(r.clone(), &rogue_sig)),
        PErr::InvalidReceiptSignature(InferencePayments::InvalidReceiptSignature {
            signer: rogue.address()
        })
    );
    // Signed for another chain id: the domain differs.
    let foreign = openledger_chain::receipt::receipt_domain(1, w.d.payments);
    let foreign_sig = w.operator.sign(&r, &foreign).unwrap();
    assert!(matches!(
        custom::<PErr>(&w.pay(r.clone(), &foreign_sig)),
        PErr::InvalidReceiptSignature(_)
    ));
    // A truncated signature.
    let call = InferencePayments::payForInferenceCall {
        receipt: r.clone(),
        signature: sig.as_bytes()[..64].to_vec().into(),
    };
    let (payer, payments) = (w.payer, w.d.payments);
    assert_eq!(
        custom::<PErr>(&w.send(payer, payments, &call)),
        PErr::InvalidReceiptSignature(InferencePayments::InvalidReceiptSignature {
            signer: Address::ZERO
        })
    );
    // A high-s twin of the genuine signature (malleability).
    let n = U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )
    .unwrap();
    let twin = Signature::new(sig.r(), n - sig.s(), !sig.v());
    assert!(matches!(
        custom::<PErr>(&w.pay(r.clone(), &twin)),
        PErr::InvalidReceiptSignature(_)
    ));
    // The genuine one still works.
    assert!(w.pay(r, &sig).is_success());
}

#[test]
fn receipts_for_another_payer_epoch_or_fee_are_rejected() {
    let mut w = World::new();
    let mut r = w.receipt(4);
    r.payer = w.chain.dev_account(9).address;
    let sig = w.sign(&r);
    assert_eq!(
        custom::<PErr>(&w.pay(r.clone(), &sig)),
        PErr::PayerMismatch(InferencePayments::PayerMismatch {
            receiptPayer: r.payer,
            caller: w.payer
        })
    );
    let mut r = w.receipt(5);
    r.epoch = 3;
    let sig = w.sign(&r);
    assert_eq!(
        custom::<PErr>(&w.pay(r, &sig)),
        PErr::WrongEpoch(InferencePayments::WrongEpoch {
            expected: 0,
            found: 3
        })
    );
    let mut r = w.receipt(6);
    r.amount -= u(1);
    let sig = w.sign(&r);
    assert_eq!(
        custom::<PErr>(&w.pay(r.clone(), &sig)),
        PErr::FeeMismatch(InferencePayments::FeeMismatch {
            expected: r.amount + u(1),
            found: r.amount
        })
    );
}

#[test]
fn deactivated_models_cannot_be_paid_and_only_owners_manage_models() {
    let mut w = World::new();
    let (models, mo, intruder) = (w.d.models, w.model_owner, w.chain.dev_account(9).address);
    let id = w.model_id;
    let out = w.send(
        intruder,
        models,
        &ModelRegistry::updateFeeCall {
            modelId: id,
            newFee: u(1),
        },
    );
    assert_eq!(
        custom::<MErr>(&out),
        MErr::NotModelOwner(ModelRegistry::NotModelOwner {
            modelId: id,
            caller: intruder
        })
    );
    let out = w.ok(
        mo,
        models,
        &ModelRegistry::updateFeeCall {
            modelId: id,
            newFee: u(77),
        },
        "updateFee",
    );
    assert_eq!(out.events::<ModelRegistry::FeeUpdated>()[0].newFee, u(77));
    w.ok(
        mo,
        models,
        &ModelRegistry::deactivateCall { modelId: id },
        "deactivate",
    );
    let mut r = w.receipt(1);
    r.amount = u(77);
    let sig = w.sign(&r);
    match w.pay(r, &sig).revert_reason::<MErr>() {
        Some(RevertReason::Custom(MErr::ModelInactive(e))) => assert_eq!(e.modelId, id),
        other => panic!("{other:?}"),
    }
}

#[test]
fn training_access_is_required_and_revocable() {
    let mut w = World::new();
    let (registry, models, dn) = (w.d.datanets, w.d.models, w.datanet_owner);
    let stranger = w.chain.dev_account(9).address;
    let register = |id: &str| ModelRegistry::registerModelCall {
        salt: keccak256(id),
        baseModel: B256::ZERO,
        artifactHash: B256::ZERO,
        trainingLogHead: B256::ZERO,
        sources: vec![ModelRegistry::TrainingSource {
            datanetId: u(1),
            version: 1,
        }],
        feePerCall: u(1),
    };
    let no_access = MErr::NoTrainingAccess(ModelRegistry::NoTrainingAccess {
        datanetId: u(1),
        account: stranger,
    });
    assert_eq!(
        custom::<MErr>(&w.send(stranger, models, &register("a"))),
        no_access
    );
    // Non-owners cannot approve or publish.
    w.ok(
        stranger,
        registry,
        &DatanetRegistry::requestAccessCall {
            datanetId: u(1),
            purposeHash: B256::ZERO,
        },
        "request",
    );
    let out = w.send(
        stranger,
        registry,
        &DatanetRegistry::approveAccessCall {
            datanetId: u(1),
            requester: stranger,
        },
    );
    assert_eq!(
        custom::<DErr>(&out),
        DErr::NotDatanetOwner(DatanetRegistry::NotDatanetOwner {
            datanetId: u(1),
            caller: stranger
        })
    );
    w.ok(
        dn,
        registry,
        &DatanetRegistry::approveAccessCall {
            datanetId: u(1),
            requester: stranger,
        },
        "approve",
    );
    w.ok(stranger, models, &register("b"), "register with access");
    w.ok(
        dn,
        registry,
        &DatanetRegistry::revokeAccessCall {
            datanetId: u(1),
            requester: stranger,
        },
        "revoke",
    );
    assert_eq!(
        custom::<MErr>(&w.send(stranger, models, &register("c"))),
        no_access
    );
    // Unknown versions are refused.
    let mut bad = register("d");
    bad.sources[0].version = 2;
    assert_eq!(
        custom::<MErr>(&w.send(dn, models, &bad)),
        MErr::UnknownDatanetVersion(ModelRegistry::UnknownDatanetVersion {
            datanetId: u(1),
            version: 2
        })
    );
}

#[test]
fn reentrancy_through_a_malicious_token_is_stopped_by_the_guard() {
    let mut w = World::with_reentrant_token();
    let r = w.receipt(1);
    let sig = w.sign(&r);
    assert!(w.pay(r, &sig).is_success());
    let (token, payments, rewards, mo) = (w.d.token, w.d.payments, w.d.rewards, w.model_owner);

    // withdraw -> token.transfer -> payments.withdraw again.
    let owed = w
        .chain
        .view(
            payments,
            &InferencePayments::withdrawableCall { account: mo },
        )
        .unwrap();
    w.ok(
        mo,
        token,
        &ReentrantToken::armCall {
            target_: payments,
            payload_: InferencePayments::withdrawCall {}.abi_encode().into(),
        },
        "arm",
    );
    let out = w.send(mo, payments, &InferencePayments::withdrawCall {});
    assert_eq!(
        custom::<PErr>(&out),
        PErr::ReentrancyGuardReentrantCall(InferencePayments::ReentrancyGuardReentrantCall {})
    );
    assert_eq!(
        w.chain
            .view(
                payments,
                &InferencePayments::withdrawableCall { account: mo }
            )
            .unwrap(),
        owed
    );
    assert_eq!(w.token_balance(mo), U256::ZERO);
    // The attack reverted whole, the token's arm flag included: disarm it (a zero target).
    w.ok(
        mo,
        token,
        &ReentrantToken::armCall {
            target_: Address::ZERO,
            payload_: Default::default(),
        },
        "disarm",
    );

    // claim -> token.transfer -> rewards.claim again (same leaf).
    w.chain.advance_time(86_400).unwrap();
    let pool = w
        .chain
        .view(payments, &InferencePayments::dataPoolCall { epoch: 0 })
        .unwrap();
    let a = w.chain.dev_account(7).address;
    let claims = EpochClaims::new(
        0,
        &[(a, pool), (w.chain.dev_account(8).address, U256::ZERO)],
    )
    .unwrap();
    let poster = w.config.poster;
    w.ok(poster, rewards, &claims.post_call(), "post");
    w.open_claims();
    let call = claims.claim_call(0).unwrap();
    w.ok(
        a,
        token,
        &ReentrantToken::armCall {
            target_: rewards,
            payload_: call.abi_encode().into(),
        },
        "arm",
    );
    assert_eq!(
        custom::<RErr>(&w.send(a, rewards, &call)),
        RErr::ReentrancyGuardReentrantCall(AttributionRewards::ReentrancyGuardReentrantCall {})
    );
    assert_eq!(w.token_balance(a), U256::ZERO);
    // Disarmed, the same claim goes through.
    w.ok(
        a,
        token,
        &ReentrantToken::armCall {
            target_: Address::ZERO,
            payload_: Default::default(),
        },
        "disarm",
    );
    w.ok(a, rewards, &call, "claim");
    assert_eq!(w.token_balance(a), pool);
}

#[test]
fn fee_of_two_to_the_256_minus_one_splits_exactly() {
    let mut w = World::new();
    let (models, mo, token, payer, payments) =
        (w.d.models, w.model_owner, w.d.token, w.payer, w.d.payments);
    let id = w.model_id;
    w.ok(
        mo,
        models,
        &ModelRegistry::updateFeeCall {
            modelId: id,
            newFee: U256::MAX,
        },
        "fee max",
    );
    // The payer already holds MINTED; top them up to exactly 2^256 - 1 total supply.
    let supply = w.chain.view(token, &TestToken::totalSupplyCall {}).unwrap();
    w.ok(
        payer,
        token,
        &TestToken::mintCall {
            to: payer,
            amount: U256::MAX - supply,
        },
        "mint max",
    );
    let mut r = w.receipt(1);
    r.amount = U256::MAX;
    let sig = w.sign(&r);
    let out = w.pay(r, &sig);
    assert!(out.is_success(), "{:?}", out.output);
    let ev = &out.events::<InferencePayments::InferencePaid>()[0];
    assert_eq!(
        ev.protocolShare,
        U256::MAX / u(10_000) * u(500) + (U256::MAX % u(10_000)) * u(500) / u(10_000)
    );
    assert_eq!(
        ev.ownerShare
            .checked_add(ev.protocolShare)
            .and_then(|x| x.checked_add(ev.dataShare)),
        Some(U256::MAX)
    );
    assert_eq!(
        w.chain
            .view(
                payments,
                &InferencePayments::withdrawableCall { account: mo }
            )
            .unwrap(),
        ev.ownerShare
    );
    // A second payment cannot be funded: the token's supply is at its ceiling.
    w.ok(
        payer,
        token,
        &TestToken::approveCall {
            spender: payments,
            value: U256::MAX,
        },
        "approve",
    );
    let overflow = w.send(
        payer,
        token,
        &TestToken::mintCall {
            to: payer,
            amount: u(1),
        },
    );
    match overflow.revert_reason::<PErr>() {
        Some(RevertReason::Panic(p)) => assert_eq!(p.code, u(0x11)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn claim_totals_near_two_to_the_256_revert_instead_of_wrapping() {
    let mut w = World::new();
    w.chain.advance_time(86_400).unwrap();
    let (a, b) = (
        w.chain.dev_account(7).address,
        w.chain.dev_account(8).address,
    );
    // A hostile root: leaves summing past 2^256, funded with 1 wei.
    let values = vec![
        vec!["0".to_string(), a.to_string(), "1".to_string()],
        vec!["1".to_string(), b.to_string(), U256::MAX.to_string()],
    ];
    let tree = StandardMerkleTree::from_strings(
        &values,
        &["uint256", "address", "uint256"],
        TreeOptions::default(),
    )
    .unwrap();
    let (poster, token, rewards) = (w.config.poster, w.d.token, w.d.rewards);
    w.ok(
        poster,
        token,
        &TestToken::mintCall {
            to: poster,
            amount: u(1),
        },
        "mint",
    );
    w.ok(
        poster,
        token,
        &TestToken::approveCall {
            spender: rewards,
            value: u(1),
        },
        "approve",
    );
    w.ok(
        poster,
        rewards,
        &AttributionRewards::postEpochRootCall {
            epoch: 0,
            root: tree.root(),
            total: u(1),
        },
        "post",
    );
    w.open_claims();
    let claim = |i: usize, account: Address, amount: U256| AttributionRewards::claimCall {
        epoch: 0,
        index: u(i as u128),
        account,
        amount,
        proof: tree.proof(i).unwrap(),
    };
    w.ok(a, rewards, &claim(0, a, u(1)), "claim 1 wei");
    // claimed (1) + 2^256 - 1 overflows: checked arithmetic panics (0x11) rather than wrapping to 0.
    let out = w.send(b, rewards, &claim(1, b, U256::MAX));
    match out.revert_reason::<RErr>() {
        Some(RevertReason::Panic(p)) => assert_eq!(p.code, u(0x11)),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.token_balance(b), U256::ZERO);
}

#[test]
fn claims_beyond_the_funded_total_are_rejected() {
    let mut w = World::new();
    w.chain.advance_time(86_400).unwrap();
    let (a, b) = (
        w.chain.dev_account(7).address,
        w.chain.dev_account(8).address,
    );
    let claims = EpochClaims::new(0, &[(a, u(60)), (b, u(50))]).unwrap();
    let (poster, token, rewards) = (w.config.poster, w.d.token, w.d.rewards);
    w.ok(
        poster,
        token,
        &TestToken::mintCall {
            to: poster,
            amount: u(100),
        },
        "mint",
    );
    w.ok(
        poster,
        token,
        &TestToken::approveCall {
            spender: rewards,
            value: u(100),
        },
        "approve",
    );
    // The poster under-funds the root (100 instead of 110).
    w.ok(
        poster,
        rewards,
        &AttributionRewards::postEpochRootCall {
            epoch: 0,
            root: claims.root(),
            total: u(100),
        },
        "post",
    );
    w.open_claims();
    w.ok(a, rewards, &claims.claim_call(0).unwrap(), "claim");
    assert_eq!(
        custom::<RErr>(&w.send(b, rewards, &claims.claim_call(1).unwrap())),
        RErr::EpochOverdrawn(AttributionRewards::EpochOverdrawn {
            epoch: 0,
            total: u(100),
            claimed: u(110)
        })
    );
}
