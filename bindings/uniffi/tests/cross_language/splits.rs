//! Reward split vectors (`openledger_poa::split`).

use alloy_primitives::U512;
use openledger_core::{Address, U256};
use openledger_poa::PoaError;
use openledger_poa::rng::SeededStream;
use openledger_poa::split::{
    FeeSplit, NegativePolicy, Payout, SplitPolicy, ZeroWeightPolicy, split_bps, split_scores,
    split_weights,
};
use serde_json::{Value, json};

use crate::{addr, named_address};

fn policy_json(p: &SplitPolicy) -> Value {
    json!({
        "negative": match p.negative { NegativePolicy::Clip => "clip", NegativePolicy::Reject => "reject" },
        "fallback": match p.zero_total { ZeroWeightPolicy::Fallback(a) => json!(addr(&a)), ZeroWeightPolicy::Reject => Value::Null },
    })
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
            .map(|p| json!({"account": addr(&p.account), "amount": p.amount.to_string()}))
            .collect(),
    )
}

/// The outcome of a split: its payouts (checked to sum to `amount`) or the error's name.
fn outcome(amount: U256, r: Result<Vec<Payout>, PoaError>) -> Value {
    match r {
        Ok(p) => {
            let sum = p.iter().fold(U512::ZERO, |a, p| a + U512::from(p.amount));
            assert_eq!(sum, U512::from(amount), "a split must sum to its input");
            json!({"payouts": payouts_json(&p)})
        }
        Err(e) => json!({"error": error_name(&e), "message": e.to_string()}),
    }
}

fn scores_json(scores: &[(Address, f64)]) -> Value {
    Value::Array(
        scores
            .iter()
            .map(|(a, s)| json!({"account": addr(a), "score": s, "score_bits": format!("{:#018x}", s.to_bits())}))
            .collect(),
    )
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
    match s.below(6) {
        0 => 0.0,
        1 => -s.next_f64(),
        2 => 1.0,
        3 => s.next_f64() * 1e-30,
        4 => s.next_f64() * 1e30,
        _ => s.next_f64(),
    }
}

/// `(name, amount, scores, policy)` of one split by scores.
type ScoreCase = (String, U256, Vec<(Address, f64)>, SplitPolicy);

/// `(name, amount, weights, zero-total policy)` of one split by integer weights.
type WeightCase = (&'static str, U256, Vec<(Address, U256)>, ZeroWeightPolicy);

pub fn splits() -> Value {
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
            "three equal parties, the odd wei to the smallest address".into(),
            U256::from(100u8),
            vec![(a(3), 1.0), (a(1), 1.0), (a(2), 1.0)],
            clip,
        ),
        (
            "largest remainder wins".into(),
            U256::from(10u8),
            vec![(a(1), 1.0), (a(2), 2.0)],
            clip,
        ),
        (
            "negative score clipped to zero".into(),
            U256::from(7u8),
            vec![(a(1), -0.5), (a(2), 0.25)],
            clip,
        ),
        (
            "negative score rejected".into(),
            U256::from(7u8),
            vec![(a(1), -0.5), (a(2), 0.25)],
            reject,
        ),
        (
            "zero total paid to the fallback".into(),
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
            "NaN rejected".into(),
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
            "the largest amount".into(),
            U256::MAX,
            vec![(a(1), 0.1), (a(2), 0.2), (a(3), 0.7)],
            clip,
        ),
        (
            "subnormal next to huge".into(),
            U256::from(123_456_789u64),
            vec![(a(1), f64::MIN_POSITIVE / 8.0), (a(2), 1e300)],
            clip,
        ),
    ];
    let mut s = SeededStream::new(0x0c05_5147);
    for i in 0..24 {
        let n = 1 + s.below(6) as usize;
        let scores = (0..n)
            .map(|k| {
                (
                    named_address(&format!("split {i} party {k}")),
                    random_score(&mut s),
                )
            })
            .collect();
        cases.push((
            format!("seeded {i}"),
            random_amount(&mut s),
            scores,
            fallback,
        ));
    }
    let mut out: Vec<Value> = cases
        .into_iter()
        .map(|(name, amount, scores, policy)| {
            json!({
                "kind": "scores", "name": name, "amount": amount.to_string(),
                "scores": scores_json(&scores), "policy": policy_json(&policy),
                "expected": outcome(amount, split_scores(amount, &scores, &policy)),
            })
        })
        .collect();
    let weight_cases: Vec<WeightCase> = vec![
        (
            "integer weights 1:2:3",
            U256::from(1_000_000_007u64),
            vec![
                (a(1), U256::from(1u8)),
                (a(2), U256::from(2u8)),
                (a(3), U256::from(3u8)),
            ],
            ZeroWeightPolicy::Reject,
        ),
        (
            "weights near 2^256",
            U256::MAX,
            vec![(a(4), U256::MAX), (a(5), U256::MAX - U256::from(1u8))],
            ZeroWeightPolicy::Reject,
        ),
        (
            "all-zero weights to the fallback",
            U256::from(5u8),
            vec![(a(1), U256::ZERO)],
            ZeroWeightPolicy::Fallback(a(0xfe)),
        ),
    ];
    for (name, amount, weights, zero) in weight_cases {
        out.push(json!({
            "kind": "weights", "name": name, "amount": amount.to_string(),
            "weights": weights.iter().map(|(a, w)| json!({"account": addr(a), "weight": w.to_string()})).collect::<Vec<_>>(),
            "fallback": match zero { ZeroWeightPolicy::Fallback(f) => json!(addr(&f)), ZeroWeightPolicy::Reject => Value::Null },
            "expected": outcome(amount, split_weights(amount, &weights, zero)),
        }));
    }
    for (name, amount, bps) in [
        (
            "basis points 2500 / 7500",
            U256::from(1_001u32),
            vec![(a(1), 2_500u16), (a(2), 7_500)],
        ),
        (
            "basis points not summing to 10000",
            U256::from(5u8),
            vec![(a(1), 5_000u16)],
        ),
    ] {
        out.push(json!({
            "kind": "bps", "name": name, "amount": amount.to_string(),
            "bps": bps.iter().map(|(a, b)| json!({"account": addr(a), "bps": b})).collect::<Vec<_>>(),
            "expected": outcome(amount, split_bps(amount, &bps)),
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
        let sum = r.all().fold(U512::ZERO, |s, p| s + U512::from(p.amount));
        assert_eq!(sum, U512::from(amount), "a fee split must sum to the fee");
        out.push(json!({
            "kind": "fee", "name": name, "amount": amount.to_string(),
            "owner": addr(&fee.owner), "protocol": addr(&fee.protocol),
            "protocol_bps": fee.protocol_bps, "data_pool_bps": fee.data_pool_bps,
            "policy": policy_json(&fee.policy), "scores": scores_json(&scores),
            "expected": {"owner": r.owner.amount.to_string(), "protocol": r.protocol.amount.to_string(), "payouts": payouts_json(&r.contributors)},
        }));
    }
    Value::Array(out)
}
