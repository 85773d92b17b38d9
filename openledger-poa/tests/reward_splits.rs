//! Properties of the exact reward splits over a million seeded random cases, and the JSON test
//! vectors that the language bindings replay.
//!
//! Regenerate the vectors with
//! `OPENLEDGER_WRITE_VECTORS=1 cargo test -p openledger-poa --test reward_splits writes_vectors`;
//! `vectors_replay_exactly` checks the committed file against the implementation.

use alloy_primitives::U512;
use openledger_core::{Address, U256};
use openledger_poa::PoaError;
use openledger_poa::rng::SeededStream;
use openledger_poa::split::{
    FeeSplit, NegativePolicy, Payout, SplitPolicy, ZeroWeightPolicy, scores_to_fixed_point,
    split_bps, split_scores, split_weights,
};
use serde_json::{Value, json};

fn random_address(s: &mut SeededStream, pool: u64) -> Address {
    // A small pool of addresses makes ties by address and duplicates likely.
    let mut b = [0u8; 20];
    let v = s.below(pool);
    b[12..].copy_from_slice(&v.to_be_bytes());
    b[0] = (v % 7) as u8;
    Address::from(b)
}

fn random_amount(s: &mut SeededStream) -> U256 {
    match s.below(4) {
        0 => U256::from(s.below(20)),
        1 => U256::from(s.next_u64()),
        2 => U256::from_limbs([s.next_u64(), s.next_u64(), s.next_u64(), s.next_u64()]),
        _ => U256::MAX - U256::from(s.below(3)),
    }
}

fn random_score(s: &mut SeededStream) -> f64 {
    match s.below(8) {
        0 => 0.0,
        1 => -s.next_f64(),
        2 => 1.0, // exact ties
        3 => s.next_f64() * 1e-30,
        4 => s.next_f64() * 1e30,
        5 => f64::from(s.below(5) as u32),
        _ => s.next_f64(),
    }
}

fn random_case(s: &mut SeededStream) -> (U256, Vec<(Address, f64)>) {
    let n = 1 + s.below(9) as usize;
    let mut seen = std::collections::BTreeSet::new();
    let mut scores = Vec::with_capacity(n);
    while scores.len() < n {
        let a = random_address(s, 64);
        if seen.insert(a) {
            scores.push((a, random_score(s)));
        }
    }
    (random_amount(s), scores)
}

fn wide(x: U256) -> U512 {
    let mut l = [0u64; 8];
    l[..4].copy_from_slice(x.as_limbs());
    U512::from_limbs(l)
}

#[test]
fn a_million_random_splits_sum_exactly_and_stay_within_one_wei_of_the_ideal() {
    let mut s = SeededStream::new(0x5eed_0001);
    let fallback = Address::repeat_byte(0xfe);
    let policy = SplitPolicy {
        negative: NegativePolicy::Clip,
        zero_total: ZeroWeightPolicy::Fallback(fallback),
    };
    let cases = 1_000_000;
    let mut fallbacks = 0;
    for case in 0..cases {
        let (amount, scores) = random_case(&mut s);
        let out = split_scores(amount, &scores, &policy).unwrap();
        let sum = out.iter().fold(U512::ZERO, |a, p| a + wide(p.amount));
        assert_eq!(sum, wide(amount), "case {case}: {scores:?}");
        let clipped: Vec<f64> = scores.iter().map(|x| x.1.max(0.0)).collect();
        let w = scores_to_fixed_point(&clipped).unwrap();
        let total: U512 = w.iter().map(|&x| wide(x)).sum();
        if total.is_zero() {
            fallbacks += 1;
            assert_eq!(
                out,
                vec![Payout {
                    account: fallback,
                    amount
                }]
            );
            continue;
        }
        assert!(
            out.windows(2).all(|p| p[0].account < p[1].account),
            "sorted by address"
        );
        for (i, &(account, _)) in scores.iter().enumerate() {
            let p = out.iter().find(|p| p.account == account).unwrap();
            let floor = wide(amount) * wide(w[i]) / total;
            let got = wide(p.amount);
            assert!(
                got == floor || got == floor + U512::from(1u8),
                "case {case}: party {i}"
            );
        }
        // Order of the input never matters.
        if case % 16 == 0 {
            let mut rev = scores.clone();
            rev.reverse();
            assert_eq!(
                split_scores(amount, &rev, &policy).unwrap(),
                out,
                "case {case}"
            );
        }
    }
    assert!(fallbacks > 0 && fallbacks < cases / 10, "{fallbacks}");
}

#[test]
fn integer_weight_splits_are_exact_and_monotone() {
    let mut s = SeededStream::new(0x5eed_0002);
    for case in 0..100_000 {
        let n = 1 + s.below(6) as usize;
        let amount = random_amount(&mut s);
        let weights: Vec<(Address, U256)> = (0..n)
            .map(|i| (Address::with_last_byte(i as u8), U256::from(s.below(1_000))))
            .collect();
        let Ok(out) = split_weights(amount, &weights, ZeroWeightPolicy::Reject) else {
            assert!(weights.iter().all(|w| w.1.is_zero()), "case {case}");
            continue;
        };
        assert_eq!(
            out.iter().fold(U512::ZERO, |a, p| a + wide(p.amount)),
            wide(amount)
        );
        // A larger weight never receives less.
        for a in 0..n {
            for b in 0..n {
                if weights[a].1 > weights[b].1 {
                    assert!(out[a].amount >= out[b].amount, "case {case}");
                }
            }
        }
    }
}

fn policy_json(p: &SplitPolicy) -> Value {
    json!({
        "negative": match p.negative { NegativePolicy::Clip => "clip", NegativePolicy::Reject => "reject" },
        "fallback": match p.zero_total { ZeroWeightPolicy::Fallback(a) => json!(a.to_string()), ZeroWeightPolicy::Reject => Value::Null },
    })
}

fn policy_from_json(v: &Value) -> SplitPolicy {
    SplitPolicy {
        negative: match v["negative"].as_str().unwrap() {
            "clip" => NegativePolicy::Clip,
            _ => NegativePolicy::Reject,
        },
        zero_total: match v["fallback"].as_str() {
            Some(a) => ZeroWeightPolicy::Fallback(a.parse().unwrap()),
            None => ZeroWeightPolicy::Reject,
        },
    }
}

fn error_name(e: &PoaError) -> &'static str {
    match e {
        PoaError::NonFinite { .. } => "NonFinite",
        PoaError::NegativeWeight { .. } => "NegativeWeight",
        PoaError::ZeroTotalWeight { .. } => "ZeroTotalWeight",
        PoaError::DuplicateAccount(_) => "DuplicateAccount",
        PoaError::BasisPoints { .. } => "BasisPoints",
        PoaError::Empty { .. } => "Empty",
        _ => "Other",
    }
}

fn payouts_json(p: &[Payout]) -> Value {
    Value::Array(
        p.iter()
            .map(|p| json!({"account": p.account.to_string(), "amount": p.amount.to_string()}))
            .collect(),
    )
}

fn outcome(r: Result<Vec<Payout>, PoaError>) -> Value {
    match r {
        Ok(p) => json!({"payouts": payouts_json(&p)}),
        Err(e) => json!({"error": error_name(&e)}),
    }
}

fn scores_json(scores: &[(Address, f64)]) -> Value {
    Value::Array(
        scores
            .iter()
            .map(|(a, s)| json!({"account": a.to_string(), "score": s, "score_bits": format!("{:#018x}", s.to_bits())}))
            .collect(),
    )
}

/// `(name, amount, scores, policy)` of one score-split vector.
type ScoreCase = (String, U256, Vec<(Address, f64)>, SplitPolicy);

/// Builds every vector: hand-picked edge cases first, then seeded random ones.
fn build_vectors() -> Value {
    let a = |i: u8| Address::repeat_byte(i);
    let clip = SplitPolicy::default();
    let reject = SplitPolicy {
        negative: NegativePolicy::Reject,
        zero_total: ZeroWeightPolicy::Reject,
    };
    let fallback = SplitPolicy {
        negative: NegativePolicy::Clip,
        zero_total: ZeroWeightPolicy::Fallback(a(0xfe)),
    };
    let mut cases: Vec<ScoreCase> = vec![
        (
            "three equal parties, one wei to the smallest address".into(),
            U256::from(100u8),
            vec![(a(3), 1.0), (a(1), 1.0), (a(2), 1.0)],
            clip,
        ),
        (
            "largest remainder wins over address".into(),
            U256::from(10u8),
            vec![(a(1), 1.0), (a(2), 2.0)],
            clip,
        ),
        (
            "negative clipped".into(),
            U256::from(7u8),
            vec![(a(1), -0.5), (a(2), 0.25)],
            clip,
        ),
        (
            "negative rejected".into(),
            U256::from(7u8),
            vec![(a(1), -0.5), (a(2), 0.25)],
            reject,
        ),
        (
            "zero total to fallback".into(),
            U256::from(999u32),
            vec![(a(1), 0.0), (a(2), -1.0)],
            fallback,
        ),
        (
            "zero total rejected".into(),
            U256::from(999u32),
            vec![(a(1), 0.0)],
            clip,
        ),
        ("empty list rejected".into(), U256::from(1u8), vec![], clip),
        (
            "nan rejected".into(),
            U256::from(1u8),
            vec![(a(1), f64::NAN)],
            clip,
        ),
        (
            "duplicate account rejected".into(),
            U256::from(1u8),
            vec![(a(1), 1.0), (a(1), 1.0)],
            clip,
        ),
        (
            "max amount".into(),
            U256::MAX,
            vec![(a(1), 0.1), (a(2), 0.2), (a(3), 0.7)],
            clip,
        ),
        (
            "tiny score below the fixed-point scale".into(),
            U256::from(10u64).pow(U256::from(18u8)),
            vec![(a(1), 1.0), (a(2), 1e-25)],
            clip,
        ),
        (
            "subnormal and huge".into(),
            U256::from(123_456_789u64),
            vec![(a(1), f64::MIN_POSITIVE / 8.0), (a(2), 1e300)],
            clip,
        ),
    ];
    let mut s = SeededStream::new(0x0bec_7085);
    for i in 0..200 {
        let (amount, scores) = random_case(&mut s);
        cases.push((format!("random {i}"), amount, scores, fallback));
    }
    let mut out: Vec<Value> = cases
        .into_iter()
        .map(|(name, amount, scores, policy)| {
            json!({
                "kind": "scores",
                "name": name,
                "amount": amount.to_string(),
                "scores": scores_json(&scores),
                "policy": policy_json(&policy),
                "expected": outcome(split_scores(amount, &scores, &policy)),
            })
        })
        .collect();
    for (name, amount, bps) in [
        (
            "bps quarter and three quarters",
            U256::from(1_001u32),
            vec![(a(1), 2_500u16), (a(2), 7_500)],
        ),
        (
            "bps not summing to 10000",
            U256::from(5u8),
            vec![(a(1), 5_000u16)],
        ),
    ] {
        out.push(json!({
            "kind": "bps",
            "name": name,
            "amount": amount.to_string(),
            "bps": bps.iter().map(|(a, b)| json!({"account": a.to_string(), "bps": b})).collect::<Vec<_>>(),
            "expected": outcome(split_bps(amount, &bps)),
        }));
    }
    let fee = FeeSplit {
        owner: a(0xaa),
        protocol: a(0xbb),
        protocol_bps: 500,
        data_pool_bps: 6_500,
        policy: fallback,
    };
    for (name, amount, scores) in [
        (
            "fee with two contributors",
            U256::from(1_000_003u64),
            vec![(a(1), 0.6), (a(2), 0.4)],
        ),
        (
            "fee with no contributor weight",
            U256::from(77u8),
            vec![(a(1), 0.0)],
        ),
    ] {
        let r = fee.split(amount, &scores).unwrap();
        out.push(json!({
            "kind": "fee",
            "name": name,
            "amount": amount.to_string(),
            "owner": fee.owner.to_string(), "protocol": fee.protocol.to_string(),
            "protocol_bps": fee.protocol_bps, "data_pool_bps": fee.data_pool_bps,
            "policy": policy_json(&fee.policy),
            "scores": scores_json(&scores),
            "expected": {"owner": r.owner.amount.to_string(), "protocol": r.protocol.amount.to_string(), "payouts": payouts_json(&r.contributors)},
        }));
    }
    json!({
        "format": "openledger reward split vectors v1",
        "rules": "Amounts are decimal wei strings. Scores are IEEE-754 f64; score_bits is the exact, authoritative bit pattern (score is its shortest decimal form). \
    Negative scores follow policy.negative; each score m*2^e becomes the integer floor(m*2^(e-emax+64)) where emax is the exponent of the largest score's mantissa form; \
    each party gets floor(amount*w/W) and the leftover wei go one each to the largest remainders amount*w mod W, ties to the smaller address. \
    Payouts are sorted by address. A zero total weight pays everything to policy.fallback (or errors when it is null). \
    Fee: owner and protocol get floor(amount*bps/10000); contributors split the rest.",
        "cases": out,
    })
}

fn vectors_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/reward_splits.json")
}

#[test]
fn writes_vectors() {
    if std::env::var_os("OPENLEDGER_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&build_vectors()).unwrap();
        std::fs::write(vectors_path(), text + "\n").unwrap();
    }
}

#[test]
fn vectors_replay_exactly() {
    let text = std::fs::read_to_string(vectors_path()).expect("committed vectors");
    let v: Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 200);
    let scores_of = |c: &Value| -> Vec<(Address, f64)> {
        c["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let bits = u64::from_str_radix(
                    s["score_bits"].as_str().unwrap().trim_start_matches("0x"),
                    16,
                )
                .unwrap();
                // score_bits is authoritative: not every JSON parser reads floats correctly rounded.
                (
                    s["account"].as_str().unwrap().parse().unwrap(),
                    f64::from_bits(bits),
                )
            })
            .collect()
    };
    for c in cases {
        let amount: U256 = c["amount"].as_str().unwrap().parse().unwrap();
        let got = match c["kind"].as_str().unwrap() {
            "scores" => outcome(split_scores(
                amount,
                &scores_of(c),
                &policy_from_json(&c["policy"]),
            )),
            "bps" => {
                let bps: Vec<(Address, u16)> = c["bps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| {
                        (
                            b["account"].as_str().unwrap().parse().unwrap(),
                            b["bps"].as_u64().unwrap() as u16,
                        )
                    })
                    .collect();
                outcome(split_bps(amount, &bps))
            }
            "fee" => {
                let fee = FeeSplit {
                    owner: c["owner"].as_str().unwrap().parse().unwrap(),
                    protocol: c["protocol"].as_str().unwrap().parse().unwrap(),
                    protocol_bps: c["protocol_bps"].as_u64().unwrap() as u16,
                    data_pool_bps: c["data_pool_bps"].as_u64().unwrap() as u16,
                    policy: policy_from_json(&c["policy"]),
                };
                let r = fee.split(amount, &scores_of(c)).unwrap();
                json!({"owner": r.owner.amount.to_string(), "protocol": r.protocol.amount.to_string(), "payouts": payouts_json(&r.contributors)})
            }
            k => panic!("unknown kind {k}"),
        };
        assert_eq!(got, c["expected"], "vector {:?}", c["name"]);
    }
}
