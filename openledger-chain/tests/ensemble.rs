//! Ensemble payments on the embedded EVM against the Rust mirror: an inference served by several
//! models (adapters with weights) pays the share-weighted mean of their fees, the contract's
//! EIP-712 digest of the ensemble receipt is Rust's, and what the contract credits each owner,
//! the treasury and the data pool equals `ensemble_fee` / `ensemble_owner_shares` and the fee
//! split, to the wei, for several fee and weight mixes. Bad ensembles are refused alike by both.

mod common;

use alloy_primitives::{Address, B256, U256, keccak256};
use common::{FEE, World, custom, u};
use openledger_chain::ChainError;
use openledger_chain::bindings::{InferencePayments, ModelRegistry, model_id};
use openledger_chain::receipt::{
    EnsembleReceipt, ensemble_fee, ensemble_owner_shares, ensemble_shares, recover_signer,
    signing_hash, struct_hash, weights_hash,
};

/// Registers a model for each of dev accounts 7, 8 and 9 (owners of their own) at `fees`.
fn models(w: &mut World, fees: [U256; 3]) -> Vec<(B256, Address)> {
    (0..3)
        .map(|i| {
            let owner = w.chain.dev_account(7 + i).address;
            let salt = keccak256(format!("ensemble member {i}"));
            let models = w.d.models;
            w.ok(
                owner,
                models,
                &ModelRegistry::registerModelCall {
                    salt,
                    baseModel: keccak256("base: llama-3-8b"),
                    artifactHash: salt,
                    trainingLogHead: keccak256("training log head"),
                    sources: vec![],
                    feePerCall: fees[i],
                },
                "registerModel",
            );
            (model_id(owner, salt), owner)
        })
        .collect()
}

fn withdrawable(w: &mut World, account: Address) -> U256 {
    let payments = w.d.payments;
    w.chain
        .view(payments, &InferencePayments::withdrawableCall { account })
        .unwrap()
}

fn pay(w: &mut World, r: &EnsembleReceipt) -> openledger_chain::evm::TxOutcome {
    let sig = w.operator.sign(r, &w.d.receipt_domain(&w.chain)).unwrap();
    let call = InferencePayments::payForEnsembleCall {
        receipt: r.clone(),
        signature: sig.as_bytes().to_vec().into(),
    };
    let (payer, payments) = (w.payer, w.d.payments);
    w.chain.send(payer, payments, &call).unwrap()
}

fn receipt(
    w: &mut World,
    n: u64,
    ids: &[B256],
    shares: Vec<U256>,
    amount: U256,
) -> EnsembleReceipt {
    let epoch = w.epoch();
    EnsembleReceipt {
        inferenceId: keccak256(format!("ensemble inference {n}")),
        modelIds: ids.to_vec(),
        shares,
        payer: w.payer,
        amount,
        epoch,
        weightsHash: weights_hash(&[(keccak256([1u8]), u(1))]).unwrap(),
    }
}

#[test]
fn ensemble_payments_credit_what_rust_computes_to_the_wei() {
    let mut w = World::new();
    let odd = u(FEE);
    let members = models(&mut w, [odd, u(3 * 10u128.pow(17) + 7), u(999)]);
    let ids: Vec<B256> = members.iter().map(|m| m.0).collect();
    let fees = [odd, u(3 * 10u128.pow(17) + 7), u(999)];
    let payments = w.d.payments;
    let treasury = w.config.treasury;
    let mut expected = [U256::ZERO; 3];
    let mut expected_treasury = U256::ZERO;
    let mut expected_pool = U256::ZERO;
    let mut paid_total = U256::ZERO;
    let cases: [(&[usize], &[f32]); 5] = [
        (&[0, 1], &[0.7, 0.3]),
        (&[0, 1, 2], &[1.0, 1.0, 1.0]),
        (&[2, 0], &[0.25, 1.5]),
        (&[1], &[0.5]),
        (&[0, 1, 2], &[0.333_333_3, 2.0, 0.000_001]),
    ];
    for (n, (which, weights)) in cases.into_iter().enumerate() {
        let ids_n: Vec<B256> = which.iter().map(|&i| ids[i]).collect();
        let fees_n: Vec<U256> = which.iter().map(|&i| fees[i]).collect();
        let shares = ensemble_shares(weights).unwrap();
        let fee = ensemble_fee(&ids_n, &fees_n, &shares).unwrap();
        let r = receipt(&mut w, n as u64, &ids_n, shares.clone(), fee);

        // The contract's fee, struct hash and digest are Rust's.
        let (on_chain_fee, owners) = {
            let out = w
                .chain
                .view(
                    payments,
                    &InferencePayments::ensembleFeeCall {
                        modelIds: ids_n.clone(),
                        shares: shares.clone(),
                    },
                )
                .unwrap();
            (out.fee, out.owners)
        };
        assert_eq!(on_chain_fee, fee, "case {n}");
        let want_owners: Vec<Address> = which.iter().map(|&i| members[i].1).collect();
        assert_eq!(owners, want_owners);
        let domain = w.d.receipt_domain(&w.chain);
        let hash = w
            .chain
            .view(
                payments,
                &InferencePayments::ensembleReceiptStructHashCall { r: r.clone() },
            )
            .unwrap();
        assert_eq!(hash, struct_hash(&r));
        let digest = w
            .chain
            .view(
                payments,
                &InferencePayments::ensembleReceiptDigestCall { r: r.clone() },
            )
            .unwrap();
        assert_eq!(digest, signing_hash(&r, &domain));

        let out = pay(&mut w, &r);
        assert!(out.is_success(), "case {n}: {:?}", out.output);
        w.gas.push((
            format!("payForEnsemble ({} models)", which.len()),
            out.gas_used,
        ));
        // The fee split as one model's fee is, the owners' part by share.
        let protocol = fee * u(500) / u(10_000);
        let data = fee * u(2000) / u(10_000);
        let owners_part = fee - protocol - data;
        let parts = ensemble_owner_shares(&ids_n, owners_part, &shares).unwrap();
        assert_eq!(parts.iter().copied().sum::<U256>(), owners_part);
        let ev = &out.events::<InferencePayments::EnsemblePaid>()[0];
        assert_eq!(ev.ownerShares, parts, "case {n}");
        assert_eq!(
            (ev.protocolShare, ev.dataShare, ev.amount),
            (protocol, data, fee)
        );
        for (&i, part) in which.iter().zip(&parts) {
            expected[i] += *part;
        }
        expected_treasury += protocol;
        expected_pool += data;
        paid_total += fee;
    }
    for (i, (_, owner)) in members.iter().enumerate() {
        assert_eq!(withdrawable(&mut w, *owner), expected[i], "owner {i}");
    }
    assert_eq!(withdrawable(&mut w, treasury), expected_treasury);
    let pool = w
        .chain
        .view(payments, &InferencePayments::dataPoolCall { epoch: 0 })
        .unwrap();
    assert_eq!(pool, expected_pool);
    assert_eq!(w.token_balance(payments), paid_total);
    assert_eq!(
        expected.iter().copied().sum::<U256>() + expected_treasury + expected_pool,
        paid_total
    );
    // The signature commits to the shares.
    let shares = ensemble_shares(&[0.5, 0.5]).unwrap();
    let r = receipt(&mut w, 99, &ids[..2], shares, u(1));
    let sig = w.operator.sign(&r, &w.d.receipt_domain(&w.chain)).unwrap();
    let mut tampered = r.clone();
    tampered.shares[1] = u(500_001);
    assert_ne!(
        recover_signer(&tampered, &w.d.receipt_domain(&w.chain), &sig).unwrap(),
        w.operator.address()
    );
    w.print_gas("ensemble payments");
}

#[test]
fn bad_ensembles_are_refused_by_rust_and_by_the_contract() {
    let mut w = World::new();
    let members = models(&mut w, [u(FEE); 3]);
    let ids: Vec<B256> = members.iter().map(|m| m.0).collect();
    let one = vec![u(1)];
    let two = vec![u(1), u(1)];
    let zero = vec![u(1), U256::ZERO];
    let dup = [ids[0], ids[0]];
    let many: Vec<B256> = (0..17u8).map(|i| keccak256([i])).collect();
    let cases: Vec<(&[B256], Vec<U256>)> = vec![
        (&[], vec![]),
        (&ids[..2], one),
        (&ids[..2], zero),
        (&dup, two.clone()),
        (&many, vec![u(1); 17]),
    ];
    for (n, (ids_n, shares)) in cases.into_iter().enumerate() {
        let fees = vec![u(FEE); ids_n.len()];
        assert!(
            matches!(
                ensemble_fee(ids_n, &fees, &shares),
                Err(ChainError::InvalidEnsemble { .. })
            ),
            "case {n}"
        );
        let r = receipt(&mut w, 100 + n as u64, ids_n, shares, u(FEE));
        let out = pay(&mut w, &r);
        assert!(!out.is_success(), "case {n}");
        let e: InferencePayments::InferencePaymentsErrors = custom(&out);
        assert!(
            matches!(
                e,
                InferencePayments::InferencePaymentsErrors::InvalidEnsemble(_)
                    | InferencePayments::InferencePaymentsErrors::ZeroShare(_)
                    | InferencePayments::InferencePaymentsErrors::DuplicateModel(_)
            ),
            "case {n}: {e:?}"
        );
    }
    // A wrong amount, and weights that give no share.
    let r = receipt(&mut w, 200, &ids[..2], two, u(FEE) + u(1));
    let e: InferencePayments::InferencePaymentsErrors = custom(&pay(&mut w, &r));
    assert!(matches!(
        e,
        InferencePayments::InferencePaymentsErrors::FeeMismatch(_)
    ));
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY, 4e-7] {
        assert!(
            matches!(
                ensemble_shares(&[1.0, bad]),
                Err(ChainError::InvalidEnsemble { reason }) if reason.contains("member 1")
            ),
            "{bad}"
        );
    }
    assert_eq!(
        w.token_balance(w.d.payments),
        U256::ZERO,
        "nothing was taken"
    );
}
