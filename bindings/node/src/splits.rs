//! JavaScript face of `openledger_poa::split`: exact reward splits in wei. Amounts are `bigint`s
//! (or decimal strings) up to 2²⁵⁶ − 1, and every split sums exactly to its input.

use napi::Either;
use napi::bindgen_prelude::{BigInt, Float64Array};
use napi_derive::napi;
use openledger_core::{Address, U256};
use openledger_poa::split::{
    self as rs, FeeSplit as RustFeeSplit, NegativePolicy, Payout as RustPayout, SplitPolicy,
    ZeroWeightPolicy,
};

use crate::error::{JsResult, Result, invalid_arg};
use crate::types::{Amount, Bytes, address, address_str, bigint, u256};

/// One account and the wei it receives.
#[napi(object)]
pub struct Payout {
    /// The receiving account (checksummed).
    pub account: String,
    /// The amount in wei.
    pub amount: BigInt,
}

pub(crate) fn payout(p: &RustPayout) -> Payout {
    Payout {
        account: address_str(&p.account),
        amount: bigint(p.amount),
    }
}

/// An account and its integer weight.
#[napi(object, object_to_js = false)]
pub struct Weight {
    /// The account (`0x` hex or 20 bytes).
    pub account: Bytes,
    /// Its weight, a non-negative integer.
    pub weight: Amount,
}

/// An account and its share in basis points.
#[napi(object, object_to_js = false)]
pub struct BasisPoints {
    /// The account (`0x` hex or 20 bytes).
    pub account: Bytes,
    /// Its share in basis points (0 ..= 10000).
    pub bps: u32,
}

/// How a split by scores treats negative scores and an all-zero total.
#[napi(object, object_to_js = false)]
pub struct SplitOptions {
    /// `"clip"` (the default: a negative score counts as zero) or `"reject"`.
    pub negative: Option<String>,
    /// The account that receives everything when every weight is zero (otherwise a `Split`
    /// error).
    pub fallback: Option<Bytes>,
}

fn zero_policy(fallback: Option<&Bytes>) -> Result<ZeroWeightPolicy> {
    Ok(match fallback {
        Some(f) => ZeroWeightPolicy::Fallback(address("fallback", f)?),
        None => ZeroWeightPolicy::Reject,
    })
}

pub(crate) fn policy(options: Option<&SplitOptions>) -> Result<SplitPolicy> {
    let negative = match options.and_then(|o| o.negative.as_deref()) {
        None | Some("clip") => NegativePolicy::Clip,
        Some("reject") => NegativePolicy::Reject,
        Some(other) => {
            return Err(invalid_arg(
                "negative",
                format!("expected \"clip\" or \"reject\", found {other:?}"),
            ));
        }
    };
    Ok(SplitPolicy {
        negative,
        zero_total: zero_policy(options.and_then(|o| o.fallback.as_ref()))?,
    })
}

fn bps_u16(name: &str, v: u32) -> Result<u16> {
    u16::try_from(v).map_err(|_| invalid_arg(name, format!("{v} basis points is out of range")))
}

/// Accounts and scores (one per account) paired up.
pub(crate) fn scored(
    accounts: &[Bytes],
    scores: &Either<Float64Array, Vec<f64>>,
) -> Result<Vec<(Address, f64)>> {
    let values: &[f64] = match scores {
        Either::A(a) => a,
        Either::B(v) => v,
    };
    if values.len() != accounts.len() {
        return Err(invalid_arg(
            "scores",
            format!("{} scores for {} accounts", values.len(), accounts.len()),
        ));
    }
    accounts
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (a, s))| Ok((address(&format!("accounts[{i}]"), a)?, *s)))
        .collect()
}

/// Splits `amount` wei by integer `weights` with largest-remainder rounding; returns one payout
/// per account sorted by address, summing exactly to `amount`. With every weight zero, the
/// whole amount goes to `options.fallback` if given, else a `Split` error.
#[napi(catch_unwind)]
pub fn split_weights(
    amount: Amount,
    weights: Vec<Weight>,
    options: Option<SplitOptions>,
) -> Result<Vec<Payout>> {
    crate::error::guard(|| {
        let amount = u256("amount", &amount)?;
        let ws = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let name = format!("weights[{i}]");
                Ok((address(&name, &w.account)?, u256(&name, &w.weight)?))
            })
            .collect::<Result<Vec<(Address, U256)>>>()?;
        let zero = zero_policy(options.as_ref().and_then(|o| o.fallback.as_ref()))?;
        let out = rs::split_weights(amount, &ws, zero).js()?;
        Ok(out.iter().map(payout).collect())
    })
}

/// Splits `amount` wei by basis points (summing to exactly 10,000).
#[napi(catch_unwind)]
pub fn split_bps(amount: Amount, bps: Vec<BasisPoints>) -> Result<Vec<Payout>> {
    crate::error::guard(|| {
        let amount = u256("amount", &amount)?;
        let bs = bps
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let name = format!("bps[{i}]");
                Ok((address(&name, &b.account)?, bps_u16(&name, b.bps)?))
            })
            .collect::<Result<Vec<(Address, u16)>>>()?;
        Ok(rs::split_bps(amount, &bs)
            .js()?
            .iter()
            .map(payout)
            .collect())
    })
}

/// Splits `amount` wei by float `scores` (one per account). Negative scores are clipped to zero
/// (`negative: "clip"`, the default) or refused (`"reject"`); non-finite scores are refused.
#[napi(catch_unwind)]
pub fn split_scores(
    amount: Amount,
    accounts: Vec<Bytes>,
    scores: Either<Float64Array, Vec<f64>>,
    options: Option<SplitOptions>,
) -> Result<Vec<Payout>> {
    crate::error::guard(|| {
        let amount = u256("amount", &amount)?;
        let scored = scored(&accounts, &scores)?;
        let policy = policy(options.as_ref())?;
        Ok(rs::split_scores(amount, &scored, &policy)
            .js()?
            .iter()
            .map(payout)
            .collect())
    })
}

/// The result of a `FeeSplit`: `owner + protocol + Σ contributors == fee`.
#[napi(object)]
pub struct FeeSplitResult {
    /// What the model owner receives.
    pub owner: Payout,
    /// What the protocol receives.
    pub protocol: Payout,
    /// The contributors' pool, split by attribution (or paid to the fallback account).
    pub contributors: Vec<Payout>,
}

/// The three-way split of an inference fee: model owner, protocol, and data contributors (the
/// same rule as the `InferencePayments` contract).
#[napi]
pub struct FeeSplit {
    inner: RustFeeSplit,
}

#[napi]
impl FeeSplit {
    /// `protocolBps + dataPoolBps` must not exceed 10,000; the owner gets the rest.
    #[napi(constructor, catch_unwind)]
    pub fn new(
        owner: Bytes,
        protocol: Bytes,
        protocol_bps: u32,
        data_pool_bps: u32,
        options: Option<SplitOptions>,
    ) -> Result<Self> {
        crate::error::guard(|| {
            Ok(Self {
                inner: RustFeeSplit {
                    owner: address("owner", &owner)?,
                    protocol: address("protocol", &protocol)?,
                    protocol_bps: bps_u16("protocolBps", protocol_bps)?,
                    data_pool_bps: bps_u16("dataPoolBps", data_pool_bps)?,
                    policy: policy(options.as_ref())?,
                },
            })
        })
    }

    /// Splits `fee` wei; the contributors' pool is split by `scores` over `accounts`.
    #[napi(catch_unwind)]
    pub fn split(
        &self,
        fee: Amount,
        accounts: Vec<Bytes>,
        scores: Either<Float64Array, Vec<f64>>,
    ) -> Result<FeeSplitResult> {
        crate::error::guard(|| {
            let fee = u256("fee", &fee)?;
            let scored = scored(&accounts, &scores)?;
            let r = self.inner.split(fee, &scored).js()?;
            Ok(FeeSplitResult {
                owner: payout(&r.owner),
                protocol: payout(&r.protocol),
                contributors: r.contributors.iter().map(payout).collect(),
            })
        })
    }
}
