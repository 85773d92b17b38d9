//! The whole path on the embedded EVM: datanet and model registered, access granted, inferences
//! paid with operator-signed receipts, an epoch root built in Rust posted, every contributor
//! claiming with a Rust-built proof, balances checked to the wei.

mod common;

use alloy_primitives::{Address, U256, keccak256};
use common::{FEE, MINTED, World, u};
use openledger_chain::bindings::{AttributionRewards, InferencePayments};
use openledger_chain::claims::EpochClaims;
use openledger_chain::evm::BASE_FEE;
use openledger_chain::receipt::{recover_signer, signing_hash, struct_hash};

#[test]
fn contract_digest_and_struct_hash_equal_rust_and_rust_signature_is_accepted() {
    let mut w = World::new();
    let r = w.receipt(1);
    let domain = w.d.receipt_domain(&w.chain);
    let payments = w.d.payments;
    let on_chain_struct = w
        .chain
        .view(
            payments,
            &InferencePayments::receiptStructHashCall { r: r.clone() },
        )
        .unwrap();
    assert_eq!(on_chain_struct, struct_hash(&r));
    let on_chain_digest = w
        .chain
        .view(
            payments,
            &InferencePayments::receiptDigestCall { r: r.clone() },
        )
        .unwrap();
    assert_eq!(on_chain_digest, signing_hash(&r, &domain));
    let sig = w.sign(&r);
    assert_eq!(
        recover_signer(&r, &domain, &sig).unwrap(),
        w.operator.address()
    );
    let out = w.pay(r.clone(), &sig);
    assert!(out.is_success(), "{:?}", out.output);
    let paid = out.events::<InferencePayments::InferencePaid>();
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0].operator, w.operator.address());
    assert_eq!(paid[0].inferenceId, r.inferenceId);
}

#[test]
fn full_flow_pays_splits_posts_and_every_contributor_claims_to_the_wei() {
    let mut w = World::new();
    let (payments, rewards) = (w.d.payments, w.d.rewards);
    let n_inferences = 5u64;

    // Pay for inferences in epoch 0.
    let payer_eth_before = w.chain.balance(w.payer);
    let mut payer_gas = 0u64;
    for k in 0..n_inferences {
        let r = w.receipt(k);
        let sig = w.sign(&r);
        let out = w.pay(r, &sig);
        assert!(out.is_success(), "payment {k}: {:?}", out.output);
        payer_gas += out.gas_used;
        w.gas.push(("payForInference".into(), out.gas_used));
        let ev = &out.events::<InferencePayments::InferencePaid>()[0];
        assert_eq!(ev.ownerShare + ev.protocolShare + ev.dataShare, u(FEE));
    }
    // Gas is charged at the base fee, exactly.
    assert_eq!(
        payer_eth_before - w.chain.balance(w.payer),
        U256::from(payer_gas) * U256::from(BASE_FEE)
    );

    // The split: protocol 5 %, data 20 %, owner the rest (incl. rounding remainder).
    let fee = u(FEE);
    let protocol = fee * u(500) / u(10_000);
    let data = fee * u(2000) / u(10_000);
    let owner = fee - protocol - data;
    let n = u(n_inferences as u128);
    let (mo, treasury) = (w.model_owner, w.config.treasury);
    assert_eq!(
        w.chain
            .view(
                payments,
                &InferencePayments::withdrawableCall { account: mo }
            )
            .unwrap(),
        owner * n
    );
    assert_eq!(
        w.chain
            .view(
                payments,
                &InferencePayments::withdrawableCall { account: treasury }
            )
            .unwrap(),
        protocol * n
    );
    let pool = w
        .chain
        .view(payments, &InferencePayments::dataPoolCall { epoch: 0 })
        .unwrap();
    assert_eq!(pool, data * n);
    assert_eq!(w.token_balance(payments), fee * n);

    // Close epoch 0 and build the contributors' claims in Rust: weights 5:3:2:1:1 of the pool,
    // the rounding remainder to the first contributor, so the totals sum to the pool exactly.
    w.chain.advance_time(86_400).unwrap();
    assert_eq!(w.epoch(), 1);
    let contributors: Vec<Address> = (7..10)
        .map(|i| w.chain.dev_account(i).address)
        .chain((0..2u8).map(|i| Address::from_word(keccak256([i, 0xab]))))
        .collect();
    let weights = [5u128, 3, 2, 1, 1];
    let mut totals: Vec<(Address, U256)> = contributors
        .iter()
        .zip(weights)
        .map(|(a, wt)| (*a, pool * u(wt) / u(12)))
        .collect();
    let assigned: U256 = totals.iter().map(|t| t.1).sum();
    totals[0].1 += pool - assigned;
    let claims = EpochClaims::new(0, &totals).unwrap();
    assert_eq!(claims.total(), pool);

    let poster = w.config.poster;
    let out = w.ok(poster, rewards, &claims.post_call(), "postEpochRoot");
    let posted = &out.events::<AttributionRewards::EpochPosted>()[0];
    assert_eq!(
        (posted.fromPool, posted.topUp, posted.root),
        (pool, U256::ZERO, claims.root())
    );
    assert_eq!(w.token_balance(rewards), pool);
    w.open_claims();

    // Every contributor claims (the first two send their own claim, a relayer sends the rest).
    for (i, &(account, amount)) in totals.iter().enumerate() {
        let from = if i < 2 {
            account
        } else {
            w.chain.dev_account(8).address
        };
        let before = w.token_balance(account);
        let out = w.ok(from, rewards, &claims.claim_call(i).unwrap(), "claim");
        let ev = &out.events::<AttributionRewards::Claimed>()[0];
        assert_eq!((ev.account, ev.amount), (account, amount));
        assert_eq!(w.token_balance(account) - before, amount);
        assert!(
            w.chain
                .view(
                    rewards,
                    &AttributionRewards::isClaimedCall {
                        epoch: 0,
                        index: u(i as u128)
                    }
                )
                .unwrap()
        );
    }
    assert_eq!(w.token_balance(rewards), U256::ZERO);

    // Owner and treasury pull their shares; the payments contract ends empty.
    w.ok(
        mo,
        payments,
        &InferencePayments::withdrawCall {},
        "withdraw (owner)",
    );
    w.ok(
        treasury,
        payments,
        &InferencePayments::withdrawCall {},
        "withdraw (treasury)",
    );
    assert_eq!(w.token_balance(mo), owner * n);
    assert_eq!(w.token_balance(treasury), protocol * n);
    assert_eq!(w.token_balance(payments), U256::ZERO);
    let payer = w.payer;
    assert_eq!(w.token_balance(payer), u(MINTED) - fee * n);
    w.print_gas("gas per call (embedded EVM, Prague, solc 0.8.30 optimizer 200 runs)");
}

#[test]
fn epoch_pool_is_topped_up_by_the_poster_when_the_root_sums_to_more() {
    let mut w = World::new();
    let r = w.receipt(1);
    let sig = w.sign(&r);
    assert!(w.pay(r, &sig).is_success());
    w.chain.advance_time(86_400).unwrap();
    let pool = w
        .chain
        .view(w.d.payments, &InferencePayments::dataPoolCall { epoch: 0 })
        .unwrap();
    let poster = w.config.poster;
    let (token, rewards) = (w.d.token, w.d.rewards);
    let top_up = u(12_345);
    w.ok(
        poster,
        token,
        &openledger_chain::bindings::TestToken::mintCall {
            to: poster,
            amount: top_up,
        },
        "mint",
    );
    w.ok(
        poster,
        token,
        &openledger_chain::bindings::TestToken::approveCall {
            spender: rewards,
            value: top_up,
        },
        "approve",
    );
    let a = w.chain.dev_account(7).address;
    let claims = EpochClaims::new(0, &[(a, pool + top_up)]).unwrap();
    let out = w.ok(poster, rewards, &claims.post_call(), "postEpochRoot");
    let ev = &out.events::<AttributionRewards::EpochPosted>()[0];
    assert_eq!((ev.fromPool, ev.topUp), (pool, top_up));
    w.open_claims();
    w.ok(a, rewards, &claims.claim_call(0).unwrap(), "claim");
    assert_eq!(w.token_balance(a), pool + top_up);
}
