//! Exact reward splits in wei (`openledger_poa::split`): every split sums exactly to its input,
//! identically on every platform. Amounts cross as decimal strings.

use openledger_core::Address;
use openledger_poa::split::{self, NegativePolicy, SplitPolicy, ZeroWeightPolicy};

use crate::error::OpenLedgerError;
use crate::types::{address, address_str, u256};

/// One account and the wei it receives.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Payout {
    /// The receiving account (checksummed hex).
    pub account: String,
    /// The amount in wei, as a decimal string.
    pub amount: String,
}

/// One party of a split by scores.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ScoreShare {
    /// The party's account (hex).
    pub account: String,
    /// Its attribution score (finite; negative scores follow [`NegativeScores`]).
    pub score: f64,
}

/// One party of a split by integer weights.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct WeightShare {
    /// The party's account (hex).
    pub account: String,
    /// Its weight, as a decimal string.
    pub weight: String,
}

/// One party of a split by basis points.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct BpsShare {
    /// The party's account (hex).
    pub account: String,
    /// Its share in basis points (the shares sum to 10,000).
    pub bps: u16,
}

/// What to do with a negative score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum NegativeScores {
    /// Treat it as zero.
    Clip,
    /// Refuse the split ([`OpenLedgerError::Split`]).
    Reject,
}

/// The three-way split of an inference fee.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FeeSplitResult {
    /// What the model owner receives (the rounding remainder included).
    pub owner: Payout,
    /// What the protocol receives.
    pub protocol: Payout,
    /// The contributors' pool split by attribution, sorted by address.
    pub contributors: Vec<Payout>,
}

fn invalid(m: String) -> OpenLedgerError {
    OpenLedgerError::InvalidArgument(m)
}

fn payouts(p: Vec<split::Payout>) -> Vec<Payout> {
    p.iter().map(payout).collect()
}

fn payout(p: &split::Payout) -> Payout {
    Payout {
        account: address_str(&p.account),
        amount: p.amount.to_string(),
    }
}

fn policy(
    negative: NegativeScores,
    fallback: Option<String>,
) -> Result<SplitPolicy, OpenLedgerError> {
    Ok(SplitPolicy {
        negative: match negative {
            NegativeScores::Clip => NegativePolicy::Clip,
            NegativeScores::Reject => NegativePolicy::Reject,
        },
        zero_total: zero_policy(fallback)?,
    })
}

fn zero_policy(fallback: Option<String>) -> Result<ZeroWeightPolicy, OpenLedgerError> {
    Ok(match fallback {
        Some(f) => ZeroWeightPolicy::Fallback(address("fallback", &f).map_err(invalid)?),
        None => ZeroWeightPolicy::Reject,
    })
}

fn scores(shares: &[ScoreShare]) -> Result<Vec<(Address, f64)>, OpenLedgerError> {
    shares
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Ok((
                address(&format!("scores[{i}].account"), &s.account).map_err(invalid)?,
                s.score,
            ))
        })
        .collect()
}

/// Splits `amount` wei by attribution scores: largest-remainder rounding, ties to the smaller
/// address, payouts sorted by address. A zero total goes to `fallback` (or is refused).
#[uniffi::export]
pub fn split_scores(
    amount: String,
    scores: Vec<ScoreShare>,
    negative: NegativeScores,
    fallback: Option<String>,
) -> Result<Vec<Payout>, OpenLedgerError> {
    let amount = u256("amount", &amount).map_err(invalid)?;
    let scores = self::scores(&scores)?;
    Ok(payouts(split::split_scores(
        amount,
        &scores,
        &policy(negative, fallback)?,
    )?))
}

/// Splits `amount` wei by exact integer weights (decimal strings).
#[uniffi::export]
pub fn split_weights(
    amount: String,
    weights: Vec<WeightShare>,
    fallback: Option<String>,
) -> Result<Vec<Payout>, OpenLedgerError> {
    let amount = u256("amount", &amount).map_err(invalid)?;
    let weights = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            Ok((
                address(&format!("weights[{i}].account"), &w.account).map_err(invalid)?,
                u256(&format!("weights[{i}].weight"), &w.weight).map_err(invalid)?,
            ))
        })
        .collect::<Result<Vec<_>, OpenLedgerError>>()?;
    Ok(payouts(split::split_weights(
        amount,
        &weights,
        zero_policy(fallback)?,
    )?))
}

/// Splits `amount` wei by basis points that sum to exactly 10,000.
#[uniffi::export]
pub fn split_bps(amount: String, bps: Vec<BpsShare>) -> Result<Vec<Payout>, OpenLedgerError> {
    let amount = u256("amount", &amount).map_err(invalid)?;
    let bps = bps
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Ok((
                address(&format!("bps[{i}].account"), &b.account).map_err(invalid)?,
                b.bps,
            ))
        })
        .collect::<Result<Vec<_>, OpenLedgerError>>()?;
    Ok(payouts(split::split_bps(amount, &bps)?))
}

/// Splits an inference fee like the `InferencePayments` contract: the protocol and the data pool
/// get `⌊fee·bps/10⁴⌋` each, the owner the rest; the pool is split by `scores`.
#[uniffi::export]
#[allow(clippy::too_many_arguments)]
pub fn split_fee(
    fee: String,
    owner: String,
    protocol: String,
    protocol_bps: u16,
    data_pool_bps: u16,
    scores: Vec<ScoreShare>,
    negative: NegativeScores,
    fallback: Option<String>,
) -> Result<FeeSplitResult, OpenLedgerError> {
    let fee = u256("fee", &fee).map_err(invalid)?;
    let split = split::FeeSplit {
        owner: address("owner", &owner).map_err(invalid)?,
        protocol: address("protocol", &protocol).map_err(invalid)?,
        protocol_bps,
        data_pool_bps,
        policy: policy(negative, fallback)?,
    };
    let r = split.split(fee, &self::scores(&scores)?)?;
    Ok(FeeSplitResult {
        owner: payout(&r.owner),
        protocol: payout(&r.protocol),
        contributors: payouts(r.contributors),
    })
}
