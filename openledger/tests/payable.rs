//! The Payable-AI loop end to end on the shipped datanet (the quick configuration: two adapters,
//! four requests, one of them for the adapters' ensemble): what it pays is checked against the chain's own state, to the wei; copies
//! earn nothing, and trent's planted poison is flagged and charged.

use alloy_sol_types::SolValue;
use openledger::chain::bindings::{DatanetRegistry, InferencePayments, ModelRegistry, TestToken};
use openledger::chain::chain::ChainExt;
use openledger::chain::claims::EpochClaims;
use openledger::chain::receipt::{
    ensemble_fee, ensemble_owner_shares, ensemble_shares, weights_hash,
};
use openledger::core::{Address, B256, U256};
use openledger::payable::{
    DRUG_FACTS_JSONL, HarmPolicy, LoopConfig, LoopError, LoopEvent, PayableAi, without_copies,
};
use openledger::poa::split::{DebtLedger, Payout};
use openledger::train::TrainError;

fn u(s: &str) -> U256 {
    s.parse().expect("a decimal amount")
}

#[test]
fn the_loop_pays_every_contributor_exactly_and_copies_earn_nothing_extra() {
    let dir = tempfile::tempdir().unwrap();
    let config = LoopConfig::quick(dir.path().to_path_buf());
    let n_requests = config.requests.len();
    let mut events: Vec<LoopEvent> = Vec::new();
    let mut on = |e: &LoopEvent| events.push(e.clone());
    let mut l = PayableAi::new(config).unwrap();

    let d = l.publish_datanet(&mut on).unwrap().clone();
    assert_eq!((d.records, d.distinct_records), (124, 64));
    assert_eq!(
        d.near_duplicate_clusters.len(),
        24,
        "erin's 12 records in 3 wordings, alice's 12 with mallory's 3 copies"
    );
    let sizes: Vec<usize> = d.near_duplicate_clusters.iter().map(Vec::len).collect();
    assert_eq!(sizes.iter().filter(|&&n| n == 3).count(), 12);
    assert_eq!(sizes.iter().filter(|&&n| n == 4).count(), 12);
    let erin = d.copier.expect("the copier is found");
    assert_eq!(d.contributors[&erin], 36);
    // Every later member of a cluster is flagged: erin's own 24, and mallory's 36 of alice's.
    assert_eq!(d.copies.len(), 60);
    let by = d.copies_by_copier();
    assert_eq!(by[&(erin, erin)], 24);
    let alice: Address = "0xa11ce000000000000000000000000000000a11ce"
        .parse()
        .unwrap();
    let mallory: Vec<Address> = by
        .iter()
        .filter(|((_, owner), _)| *owner == alice)
        .map(|(&(who, _), &n)| {
            assert_eq!(n, 12);
            who
        })
        .collect();
    assert_eq!(mallory.len(), 3);

    let adapters = l.fine_tune(&mut on).unwrap().to_vec();
    let models = l.deployment().models;
    for a in &adapters {
        assert!(a.last_loss < a.first_loss, "{} learns", a.name);
        // 300 steps reach about half of the answers word for word (trent's poison, answering
        // four of the questions otherwise, makes the fit harder).
        assert!(a.recall > 0.3, "{} recalls {:.2}", a.name, a.recall);
        let m = l
            .chain()
            .view(
                models,
                &ModelRegistry::getModelCall {
                    modelId: a.model_id,
                },
            )
            .unwrap();
        assert_eq!(m.trainingLogHead, a.training_log_head);
        assert_eq!(m.artifactHash, a.artifact_hash);
        assert_eq!(m.feePerCall, u(&a.fee_wei));
        assert!(
            std::path::Path::new(&a.dir)
                .join("adapter_model.safetensors")
                .is_file()
        );
    }

    // trent's four planted records are flagged as harmful on the gold answers, and only they.
    let trent: Address = "0x7ee7000000000000000000000000000000007ee7"
        .parse()
        .unwrap();
    let v = l
        .report()
        .validation
        .clone()
        .expect("the validation set is measured");
    assert_eq!((v.answers, v.records), (60, 64));
    assert_eq!(v.policy, HarmPolicy::CarryNegative);
    let planted = v.planted.expect("poison was planted");
    assert_eq!((planted.planted, planted.caught), (4, 4));
    // With two adapters one honest record falls below the line too (with the standard three,
    // none does).
    assert!(
        planted.false_flags <= 1,
        "{} false flags",
        planted.false_flags
    );
    assert!(planted.auc >= 0.95, "AUC {}", planted.auc);
    assert!(v.flagged.iter().all(|f| f.influence < v.threshold));
    assert!(v.threshold < 0.0);

    // Reputation: the honest five alike; trent's flags and mallory's copies weigh them down.
    let rep = &l.report().reputation;
    let score = |who: Address| rep.iter().find(|c| c.account == who).unwrap().score;
    assert!((score(alice) - 16.0 / 17.0).abs() < 1e-12);
    assert_eq!(score(alice), score(erin));
    assert!((score(trent) - 4.0 / 9.0).abs() < 1e-12);
    for m in &mallory {
        assert!((score(*m) - 4.0 / 17.0).abs() < 1e-12);
    }

    let served = l.serve(&mut on).unwrap().to_vec();
    assert_eq!(served.len(), n_requests);
    assert_eq!(
        l.report().serving.as_ref().unwrap().first_step_sequences,
        n_requests
    );
    assert!(
        served.iter().all(|r| !r.answer.is_empty()),
        "{:?}",
        served
            .iter()
            .map(|r| (&r.adapter, &r.prompt, &r.answer))
            .collect::<Vec<_>>()
    );

    let paid = l.attribute_and_pay(&mut on).unwrap().to_vec();
    let payments = l.deployment().payments;
    for r in &paid {
        let fee = u(&r.fee_wei);
        let pool = u(&r.data_pool_wei);
        assert_eq!(
            u(&r.owner_share_wei) + u(&r.protocol_share_wei) + pool,
            fee,
            "request {}: the fee splits exactly",
            r.index
        );
        let to_contributors: U256 = r.contributors.values().map(|v| u(v)).sum();
        assert_eq!(
            to_contributors, pool,
            "request {}: the pool splits exactly",
            r.index
        );
        assert!(
            !r.contributors
                .contains_key(&openledger::core::Address::ZERO),
            "nobody unnamed is paid"
        );
        assert!(
            l.chain()
                .view(
                    payments,
                    &InferencePayments::paidCall {
                        inferenceId: r.inference_id
                    }
                )
                .unwrap()
        );
        assert!(!r.citations.is_empty() && r.citations.len() <= 3);
        assert!(
            mallory.iter().all(|m| !r.contributors.contains_key(m)),
            "request {}: copies are not paid",
            r.index
        );
        assert!(
            !r.contributors.contains_key(&trent),
            "request {}: flagged records are not paid",
            r.index
        );
        assert!(
            r.citations
                .iter()
                .chain(&r.top_influence)
                .all(|c| c.contributor != trent),
            "request {}: flagged records are not cited",
            r.index
        );
    }

    // Every answer's pool parts are what its signed receipt commits to, and sum to its pool;
    // an adapter's TracIn part pays its own training records.
    for r in &paid {
        let parts: Vec<(B256, U256)> = r
            .pool_parts
            .iter()
            .map(|p| (p.record, u(&p.amount_wei)))
            .collect();
        assert_eq!(weights_hash(&parts).unwrap(), r.weights_hash);
        assert_eq!(
            parts.iter().map(|p| p.1).sum::<U256>(),
            u(&r.data_pool_wei),
            "request {}",
            r.index
        );
    }
    // The ensemble (the third request: pharma-lora-r8 weighted 0.6, pharma-mlp-r16 0.4), paid
    // with payForEnsemble: the fee is the members' fees weighted, the owners' part split by
    // weight, the influence part of the pool split between the members by weight (the first the
    // rest), each member's part over its own training records; the RAG part names the
    // ensemble.
    let ens = &paid[2];
    assert_eq!(ens.adapter, "pharma-lora-r8*0.6+pharma-mlp-r16*0.4");
    let member = |name: &str| adapters.iter().find(|a| a.name == name).unwrap();
    let names = ["pharma-lora-r8", "pharma-mlp-r16"];
    let ids: Vec<B256> = names.iter().map(|n| member(n).model_id).collect();
    let fees: Vec<U256> = names.iter().map(|n| u(&member(n).fee_wei)).collect();
    let shares = ensemble_shares(&[0.6, 0.4]).unwrap();
    assert_eq!(shares, [U256::from(600_000u64), U256::from(400_000u64)]);
    // ⌊0.6·(2·10¹⁵ + 3) + 0.4·(10¹⁵ + 7)⌋ = ⌊1.6·10¹⁵ + 4.6⌋.
    assert_eq!(u(&ens.fee_wei), U256::from(1_600_000_000_000_004u64));
    assert_eq!(u(&ens.fee_wei), ensemble_fee(&ids, &fees, &shares).unwrap());
    let owners = ensemble_owner_shares(&ids, u(&ens.owner_share_wei), &shares).unwrap();
    for (name, part) in names.iter().zip(&owners) {
        assert_eq!(u(&ens.owner_shares_wei[*name]), *part, "{name}'s owner");
    }
    let pool = u(&ens.data_pool_wei);
    let influence = pool * U256::from(5_000u64) / U256::from(10_000u64);
    let tracin: Vec<_> = ens
        .pool_parts
        .iter()
        .filter(|p| p.method == "tracin")
        .collect();
    assert_eq!(tracin.iter().map(|p| p.model).collect::<Vec<_>>(), ids);
    let by_member = ensemble_owner_shares(&ids, influence, &shares).unwrap();
    for (p, want) in tracin.iter().zip(&by_member) {
        assert_eq!(u(&p.amount_wei), *want);
    }
    let rag_part = ens.pool_parts.last().unwrap();
    assert_eq!(rag_part.method, "rag_relevance");
    assert_eq!(
        rag_part.model,
        alloy_primitives::keccak256((ids.clone(), shares.clone()).abi_encode_params())
    );
    assert_eq!(u(&rag_part.amount_wei), pool - influence);
    for r in paid.iter().filter(|r| !r.adapter.contains('+')) {
        assert_eq!(r.owner_shares_wei.len(), 1);
        assert_eq!(r.owner_shares_wei[&r.adapter], r.owner_share_wei);
        for p in r.pool_parts.iter().filter(|p| p.method == "tracin") {
            assert_eq!(p.model, member(&r.adapter).model_id);
        }
    }

    // What an earlier close that stopped after its root and first claim leaves behind: the
    // epoch over, its root posted, leaf 0 claimed. close_epoch does only the rest.
    let epoch_no = l
        .chain()
        .view(payments, &InferencePayments::currentEpochCall {})
        .unwrap();
    let mut totals = std::collections::BTreeMap::<Address, U256>::new();
    for r in &paid {
        for (a, v) in &r.contributors {
            *totals.entry(*a).or_default() += u(v);
        }
    }
    // Debts charged by the answers are taken out of the payouts first (see close_epoch).
    let mut ledger = DebtLedger::new();
    for r in &paid {
        for (a, v) in &r.harm_charged {
            ledger.charge(*a, u(v)).unwrap();
        }
    }
    let payouts: Vec<Payout> = totals
        .into_iter()
        .map(|(account, amount)| Payout { account, amount })
        .collect();
    let totals: Vec<(Address, U256)> = ledger
        .settle(&payouts)
        .unwrap()
        .paid
        .into_iter()
        .filter(|p| !p.amount.is_zero())
        .map(|p| (p.account, p.amount))
        .collect();
    let claims = EpochClaims::new(epoch_no, &totals).unwrap();
    let dev = l.deploy_config().clone();
    let rewards = l.deployment().rewards;
    l.chain()
        .dev()
        .unwrap()
        .advance_time(dev.epoch_duration)
        .unwrap();
    assert!(
        l.chain()
            .send(dev.poster, rewards, &claims.post_call())
            .unwrap()
            .is_success()
    );
    // Claims open when the root's challenge window closes.
    l.chain()
        .dev()
        .unwrap()
        .advance_time(dev.challenge_window)
        .unwrap();
    assert!(
        l.chain()
            .send(dev.poster, rewards, &claims.claim_call(0).unwrap())
            .unwrap()
            .is_success()
    );

    let e = l.close_epoch(&mut on).unwrap().clone();
    assert_eq!(e.post_gas, 0, "the root was not posted again");
    assert!(l.report().resumed.root);
    assert_eq!(l.report().resumed.claims, 1);
    assert_eq!(
        e.contributors[0].claim_gas, 0,
        "leaf 0 was not claimed again"
    );
    assert!(e.contributors[1..].iter().all(|c| c.claim_gas > 0));
    assert!(e.claims_match);
    assert_eq!(e.claimed_total_wei, e.pool_wei);
    let total: U256 = paid.iter().map(|r| u(&r.data_pool_wei)).sum();
    assert_eq!(u(&e.pool_wei), total);
    let token = l.deployment().token;
    for c in &e.contributors {
        let balance = l
            .chain()
            .view(token, &TestToken::balanceOfCall { account: c.account })
            .unwrap();
        assert_eq!(
            balance,
            u(&c.claimed_wei),
            "{} holds exactly its claim",
            c.name
        );
    }
    // Each model owner withdrew exactly the owners' shares the answers credited it.
    for a in &adapters {
        let credited: U256 = paid
            .iter()
            .filter_map(|r| r.owner_shares_wei.get(&a.name))
            .map(|v| u(v))
            .sum();
        let (_, _, got) = e
            .withdrawn
            .iter()
            .find(|w| w.0 == a.owner)
            .expect("the owner withdrew");
        assert_eq!(u(got), credited, "{}'s owner", a.name);
    }
    // trent's debt: charged for the harm his records did to the answers, nothing to take it
    // from (he earned nothing), carried whole.
    let debt = e
        .debts
        .iter()
        .find(|d| d.account == trent)
        .expect("trent owes");
    assert!(u(&debt.charged_wei) > U256::ZERO);
    assert_eq!(u(&debt.taken_wei), U256::ZERO);
    assert_eq!(debt.carried_wei, debt.charged_wei);
    let by_answers: U256 = paid
        .iter()
        .filter_map(|r| r.harm_charged.get(&trent))
        .map(|v| u(v))
        .sum();
    assert_eq!(u(&debt.charged_wei), by_answers);
    assert!(e.contributors.iter().all(|c| c.account != trent));
    let near = e.near_duplicates.expect("the counterfactual is on");
    assert_eq!(near.account, erin);
    assert!(near.holds);
    assert!(u(&near.paid_wei) <= u(&near.before_splitting_wei));
    assert!(
        u(&near.without_clustering_wei) > u(&near.paid_wei),
        "without clustering the copies would pay: {} vs {}",
        near.without_clustering_wei,
        near.paid_wei
    );

    // Events: stages in order, tokens only while serving, the report serialises.
    let stages: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            LoopEvent::Stage { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        stages,
        [
            "datanet",
            "fine-tune",
            "serve",
            "attribute-and-pay",
            "epoch"
        ]
    );
    let mut stage = "";
    let mut tokens = 0;
    for e in &events {
        match e {
            LoopEvent::Stage { name } => stage = name,
            LoopEvent::Token { .. } => {
                assert_eq!(stage, "serve");
                tokens += 1;
            }
            LoopEvent::Progress { done, total, .. } => assert!(done <= total),
        }
    }
    assert!(tokens >= n_requests);
    let json: serde_json::Value = serde_json::from_str(&l.report().to_json()).unwrap();
    assert_eq!(json["epoch"]["pool_wei"], e.pool_wei.as_str());
}

#[test]
fn stages_out_of_order_are_typed_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = PayableAi::new(LoopConfig::quick(dir.path().to_path_buf())).unwrap();
    let mut on = |_: &LoopEvent| {};
    assert!(matches!(
        l.serve(&mut on),
        Err(LoopError::OutOfOrder { stage: "serve", .. })
    ));
    assert!(matches!(
        l.fine_tune(&mut on),
        Err(LoopError::OutOfOrder {
            needs: "publish_datanet",
            ..
        })
    ));
    assert!(matches!(
        l.close_epoch(&mut on),
        Err(LoopError::OutOfOrder { .. })
    ));
    assert!(l.report().datanet.is_none());
    l.publish_datanet(&mut on).unwrap();
    assert!(matches!(
        l.publish_datanet(&mut on),
        Err(LoopError::Config(_))
    ));
}

#[test]
fn bad_datanets_and_configurations_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let with = |jsonl: &str| {
        let mut c = LoopConfig::quick(dir.path().to_path_buf());
        c.datanet_jsonl = jsonl.into();
        PayableAi::new(c).err().expect("refused")
    };
    let no_answer = r#"{"content":"aspirin","contributor":"0x00000000000000000000000000000000000000a1","license":"CC0-1.0"}"#;
    assert!(matches!(
        with(no_answer),
        LoopError::RecordShape { index: 0, .. }
    ));
    let truncated = &DRUG_FACTS_JSONL[..DRUG_FACTS_JSONL.len() / 2];
    assert!(matches!(with(truncated), LoopError::Datanet(_)));
    assert!(matches!(with(""), LoopError::Config(_)));

    let mut c = LoopConfig::quick(dir.path().to_path_buf());
    c.requests[0].adapter = "no-such-adapter".into();
    let err = PayableAi::new(c).err().unwrap();
    assert!(err.to_string().contains("no-such-adapter"), "{err}");
    // Ensembles: every member planned, no DoRA member (PEFT's `cat` has none), weights that
    // parse and are positive.
    let refused = |spelling: &str| {
        let mut c = LoopConfig::standard(dir.path().to_path_buf());
        c.requests[0].adapter = spelling.into();
        match c.validate() {
            Err(LoopError::Config(reason)) => reason,
            other => panic!("{spelling}: {other:?}"),
        }
    };
    let why = refused("pharma-lora-r8+pharma-dora-r4");
    assert!(
        why.contains("pharma-dora-r4") && why.contains("DoRA"),
        "{why}"
    );
    let why = refused("pharma-lora-r8+nobody");
    assert!(why.contains("nobody is not planned"), "{why}");
    let why = refused("pharma-lora-r8*0+pharma-mlp-r16");
    assert!(why.contains("not a positive finite number"), "{why}");
    let why = refused("pharma-lora-r8+pharma-lora-r8");
    assert!(why.contains("same adapter twice"), "{why}");
    let c = LoopConfig::standard(dir.path().to_path_buf());
    assert_eq!(
        c.members_of(&c.requests[3]).unwrap(),
        [(0, 0.6), (2, 0.4)],
        "the standard ensemble: pharma-lora-r8 and pharma-mlp-r16"
    );
    let mut c = LoopConfig::quick(dir.path().to_path_buf());
    c.influence_bps = 10_001;
    assert!(matches!(PayableAi::new(c), Err(LoopError::Config(_))));
    // The shipped datanet before splitting (and before mallory's copies) is the 64 distinct
    // records (trent's poison among them).
    assert_eq!(without_copies(DRUG_FACTS_JSONL).lines().count(), 64);
}

#[test]
fn a_revoked_grant_stops_fine_tuning_before_anything_is_registered() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LoopConfig::quick(dir.path().to_path_buf());
    config.adapters.truncate(1);
    config
        .requests
        .retain(|r| r.adapter == config.adapters[0].name);
    config.steps = 10;
    config.checkpoints = 1;
    let mut l = PayableAi::new(config).unwrap();
    let mut on = |_: &LoopEvent| {};
    let d = l.publish_datanet(&mut on).unwrap();
    let id: U256 = d.id.parse().unwrap();
    let registry = l.deployment().datanets;
    let owner = l.account(4).unwrap();
    let trainer = l.account(6).unwrap();
    let out = l
        .chain()
        .send(
            owner,
            registry,
            &DatanetRegistry::revokeAccessCall {
                datanetId: id,
                requester: trainer,
            },
        )
        .unwrap();
    assert!(out.is_success());
    match l.fine_tune(&mut on) {
        Err(LoopError::Train(TrainError::AccessDenied { .. })) => {}
        other => panic!("expected AccessDenied, got {other:?}"),
    }
    assert!(l.report().adapters.is_empty());
}

/// The shipped datanet without mallory's copies, then `n` addresses each submitting a lightly
/// edited copy of every one of alice's records (each address its own edit), and the addresses.
fn alice_copied_by(n: usize) -> (String, Vec<Address>) {
    type Edit = fn(&str, &str) -> (String, String);
    let edits: [Edit; 10] = [
        |p, a| (format!("q: {p}"), a.into()),
        |p, a| (format!("{p}?"), format!("{a}.")),
        |p, a| (p.into(), format!("{a}, as i recall")),
        |p, a| (format!("so {p}"), a.into()),
        |p, a| (p.into(), format!("{a}!")),
        |p, a| (format!("hey {p}"), a.into()),
        |p, a| (p.into(), format!("{a} indeed")),
        |p, a| (format!("{p} again"), a.into()),
        |p, a| (p.into(), format!("a: {a}")),
        |p, a| (format!("{p}??"), format!("{a}...")),
    ];
    let lines: Vec<serde_json::Value> = DRUG_FACTS_JSONL
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| {
            !v["metadata"]["contributor_name"]
                .as_str()
                .unwrap()
                .starts_with("mallory")
        })
        .collect();
    let addresses: Vec<Address> = (0..n)
        .map(|k| Address::repeat_byte(0xc0 + k as u8))
        .collect();
    let mut out: Vec<serde_json::Value> = lines.clone();
    for (k, who) in addresses.iter().enumerate() {
        for v in lines
            .iter()
            .filter(|v| v["metadata"]["contributor_name"] == "alice")
        {
            let m = &v["metadata"];
            let (p, a) = edits[k](
                m["prompt"].as_str().unwrap(),
                m["response"].as_str().unwrap(),
            );
            out.push(serde_json::json!({
                "content": format!("{p} => {a}"),
                "contributor": who,
                "license": "CC-BY-4.0",
                "metadata": {"prompt": p, "response": a, "contributor_name": format!("copier-{k}")},
            }));
        }
    }
    let jsonl = out.iter().map(|v| format!("{v}\n")).collect();
    (jsonl, addresses)
}

#[test]
fn copying_alices_records_under_1_3_or_10_addresses_earns_nothing_and_costs_her_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let alice: Address = "0xa11ce000000000000000000000000000000a11ce"
        .parse()
        .unwrap();
    // Stages 1 to 4 of the quick loop on `jsonl`: what each contributor is paid, and the
    // copies the datanet stage flagged.
    let pay = |jsonl: String, name: &str| {
        let mut c = LoopConfig::quick(dir.path().join(name));
        c.datanet_jsonl = jsonl;
        c.counterfactual = false;
        let mut l = PayableAi::new(c).unwrap();
        let mut on = |_: &LoopEvent| {};
        let d = l.publish_datanet(&mut on).unwrap().clone();
        l.fine_tune(&mut on).unwrap();
        l.serve(&mut on).unwrap();
        let mut paid = std::collections::BTreeMap::<Address, U256>::new();
        for r in l.attribute_and_pay(&mut on).unwrap() {
            for (a, v) in &r.contributors {
                *paid.entry(*a).or_default() += u(v);
            }
        }
        (paid, d)
    };
    let (honest, d) = pay(alice_copied_by(0).0, "honest");
    assert!(
        d.copies.iter().all(|c| c.owner == c.contributor),
        "only erin's own copies"
    );
    assert!(honest[&alice] > U256::ZERO);
    for n in [1, 3, 10] {
        let (jsonl, copiers) = alice_copied_by(n);
        let (paid, d) = pay(jsonl, &format!("copied-{n}"));
        assert_eq!(d.records, 88 + 12 * n);
        assert_eq!(d.distinct_records, 64, "{n} copiers: no copy is kept");
        let flagged: Vec<_> = d.copies.iter().filter(|c| c.owner == alice).collect();
        assert_eq!(flagged.len(), 12 * n, "{n} copiers: every copy is flagged");
        assert!(flagged.iter().all(|c| copiers.contains(&c.contributor)));
        // Nothing changes for anyone, to the wei, and the copiers are paid nothing.
        assert_eq!(paid, honest, "{n} copiers");
        assert!(copiers.iter().all(|c| !paid.contains_key(c)));
    }
}

#[test]
fn under_the_zero_policy_flagged_records_earn_nothing_and_owe_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = LoopConfig::quick(dir.path().to_path_buf());
    c.counterfactual = false;
    c.harm = HarmPolicy::Zero;
    let report = PayableAi::run(c, &mut |_| {}).unwrap();
    let trent: Address = "0x7ee7000000000000000000000000000000007ee7"
        .parse()
        .unwrap();
    let v = report.validation.as_ref().unwrap();
    assert_eq!(v.policy, HarmPolicy::Zero);
    assert!(v.flagged.iter().any(|f| f.contributor == trent));
    let e = report.epoch.as_ref().unwrap();
    assert!(e.debts.is_empty());
    assert!(e.claims_match);
    assert!(e.contributors.iter().all(|c| c.account != trent));
    // Policies by name, and a validation set that is not one.
    assert_eq!("zero".parse::<HarmPolicy>().unwrap(), HarmPolicy::Zero);
    assert!("lenient".parse::<HarmPolicy>().is_err());
    let mut c = LoopConfig::quick(dir.path().to_path_buf());
    c.validation_jsonl = Some("{\"prompt\": \"what does aspirin treat\"}\n".into());
    let err = PayableAi::new(c).err().unwrap();
    assert!(err.to_string().contains("validation line 1"), "{err}");
    let mut c = LoopConfig::quick(dir.path().to_path_buf());
    c.harm_z = f64::NAN;
    assert!(matches!(PayableAi::new(c), Err(LoopError::Config(_))));
}

#[test]
fn reputation_weights_a_contributors_share_by_its_history() {
    use openledger::poa::reputation::{Outcome, Reputation, ReputationConfig};
    // Stages 1 to 4 of the quick loop: what alice and bob are paid, given a reputation that
    // starts with `history` for alice.
    let dir = tempfile::tempdir().unwrap();
    let alice: Address = "0xa11ce000000000000000000000000000000a11ce"
        .parse()
        .unwrap();
    let bob: Address = "0x00000000000000000000000000000000000b0b00"
        .parse()
        .unwrap();
    let pay = |history: Option<(Outcome, u64)>, name: &str| {
        let mut c = LoopConfig::quick(dir.path().join(name));
        c.counterfactual = false;
        let mut r = Reputation::new(ReputationConfig::default()).unwrap();
        if let Some((outcome, n)) = history {
            r.record(alice, outcome, n);
        }
        c.reputation = Some(r);
        let mut l = PayableAi::new(c).unwrap();
        let mut on = |_: &LoopEvent| {};
        l.publish_datanet(&mut on).unwrap();
        l.fine_tune(&mut on).unwrap();
        l.serve(&mut on).unwrap();
        let mut paid = std::collections::BTreeMap::<Address, U256>::new();
        for r in l.attribute_and_pay(&mut on).unwrap() {
            for (a, v) in &r.contributors {
                *paid.entry(*a).or_default() += u(v);
            }
        }
        let score = l
            .report()
            .reputation
            .iter()
            .find(|c| c.account == alice)
            .unwrap()
            .score;
        (paid, score)
    };
    let (clean, s0) = pay(None, "clean");
    let (flagged, s1) = pay(Some((Outcome::Harmful, 20)), "flagged");
    let (trusted, s2) = pay(Some((Outcome::Accepted, 100)), "trusted");
    assert!(s1 < s0 && s0 < s2, "{s1} < {s0} < {s2}");
    // The same answers and scores: alice's share of what alice and bob earn moves with her
    // reputation, and every pool is still split to the wei (checked by the loop's other test).
    let share = |p: &std::collections::BTreeMap<Address, U256>| {
        let (a, b) = (p[&alice].to::<u128>() as f64, p[&bob].to::<u128>() as f64);
        a / (a + b)
    };
    assert!(
        share(&flagged) < share(&clean),
        "a flagged past lowers her share"
    );
    assert!(
        share(&trusted) > share(&clean),
        "a long clean past raises it"
    );
    let total = |p: &std::collections::BTreeMap<Address, U256>| p.values().copied().sum::<U256>();
    assert_eq!(total(&flagged), total(&clean));
    assert_eq!(total(&trusted), total(&clean));
}
