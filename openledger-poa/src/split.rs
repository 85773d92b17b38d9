//! Exact reward splits: an integer amount of wei divided by weights so that the parts always sum
//! to the amount, identically on every platform.
//!
//! * **Largest remainder.** Each party first gets `⌊amount·wᵢ/W⌋`; the `L < n` wei left over go
//!   one each to the parties with the largest remainders `amount·wᵢ mod W`. Ties are broken by
//!   address, ascending (the numerically smaller 20-byte address wins).
//! * **f64 scores become exact integers** before any division: each finite score `m·2ᵉ` is
//!   rescaled by a power of two to a fixed-point integer whose unit is 2⁻⁶⁴ of the last mantissa
//!   bit (ulp) of the largest score (a pure bit manipulation, no rounding mode involved), so the
//!   split is a function of the bits of the scores only.
//! * **Policies** decide what happens to negative scores ([`NegativePolicy`]) and to a zero total
//!   weight ([`ZeroWeightPolicy`]); a [`CarryOverLedger`] holds payouts below a minimum until a
//!   later epoch instead of letting them vanish.
//!
//! ```
//! use openledger_poa::split::{split_scores, SplitPolicy};
//! use openledger_core::{Address, U256};
//!
//! let a = Address::repeat_byte(1);
//! let b = Address::repeat_byte(2);
//! let c = Address::repeat_byte(3);
//! let parts = split_scores(U256::from(100u64), &[(a, 1.0), (b, 1.0), (c, 1.0)], &SplitPolicy::default()).unwrap();
//! // 33 each, and the one wei left over goes to the smallest address (all remainders tie).
//! assert_eq!(parts.iter().map(|p| p.amount.to::<u64>()).collect::<Vec<_>>(), vec![34, 33, 33]);
//! assert_eq!(parts.iter().map(|p| p.amount).sum::<U256>(), U256::from(100u64));
//! ```

use std::collections::{BTreeMap, BTreeSet};

use alloy_primitives::U512;
use openledger_core::{Address, U256};
use serde::{Deserialize, Serialize};

use crate::error::{PoaError, Result};

/// One account and the wei it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Payout {
    /// The receiving account.
    pub account: Address,
    /// The amount in wei.
    pub amount: U256,
}

/// What to do with a negative score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NegativePolicy {
    /// Treat it as zero (the party receives nothing from this split).
    #[default]
    Clip,
    /// Fail with [`PoaError::NegativeWeight`].
    Reject,
}

/// What to do when every weight is zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZeroWeightPolicy {
    /// Fail with [`PoaError::ZeroTotalWeight`].
    #[default]
    Reject,
    /// Send the whole amount to this account.
    Fallback(Address),
}

/// The policies of one split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPolicy {
    /// Handling of negative scores.
    pub negative: NegativePolicy,
    /// Handling of a zero total weight.
    pub zero_total: ZeroWeightPolicy,
}

fn widen(x: U256) -> U512 {
    let mut limbs = [0u64; 8];
    limbs[..4].copy_from_slice(x.as_limbs());
    U512::from_limbs(limbs)
}

fn narrow(x: U512) -> U256 {
    let l = x.as_limbs();
    debug_assert!(l[4..].iter().all(|&v| v == 0));
    U256::from_limbs([l[0], l[1], l[2], l[3]])
}

fn check_unique(accounts: impl Iterator<Item = Address>) -> Result<()> {
    let mut seen = BTreeSet::new();
    for a in accounts {
        if !seen.insert(a) {
            return Err(PoaError::DuplicateAccount(a));
        }
    }
    Ok(())
}

/// Splits `amount` by exact integer weights with largest-remainder rounding.
///
/// Returns one payout per party (zero amounts included) sorted by address, summing exactly to
/// `amount`. A zero total weight follows `zero_total`; an empty list is [`PoaError::Empty`]
/// unless the policy names a fallback.
pub fn split_weights(
    amount: U256,
    weights: &[(Address, U256)],
    zero_total: ZeroWeightPolicy,
) -> Result<Vec<Payout>> {
    check_unique(weights.iter().map(|w| w.0))?;
    let total: U512 = weights.iter().map(|w| widen(w.1)).sum();
    if total.is_zero() {
        return match zero_total {
            ZeroWeightPolicy::Fallback(account) => Ok(vec![Payout { account, amount }]),
            ZeroWeightPolicy::Reject if weights.is_empty() => Err(PoaError::Empty {
                what: "split weights".into(),
            }),
            ZeroWeightPolicy::Reject => Err(PoaError::ZeroTotalWeight {
                what: "split weights".into(),
            }),
        };
    }
    let amount_w = widen(amount);
    let mut parts: Vec<(Address, U256, U512)> = weights
        .iter()
        .map(|&(account, w)| {
            let prod = amount_w * widen(w); // < 2^512: both factors < 2^256
            (account, narrow(prod / total), prod % total)
        })
        .collect();
    let floors: U256 = parts.iter().map(|p| p.1).sum();
    // Σ⌊·⌋ ≤ amount and amount − Σ⌊·⌋ < n, so this fits a usize.
    let leftover = (amount - floors).to::<u64>() as usize;
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&i, &j| {
        parts[j]
            .2
            .cmp(&parts[i].2)
            .then(parts[i].0.cmp(&parts[j].0))
    });
    for &i in order.iter().take(leftover) {
        parts[i].1 += U256::from(1u8);
    }
    let mut out: Vec<Payout> = parts
        .into_iter()
        .map(|(account, amount, _)| Payout { account, amount })
        .collect();
    out.sort_by_key(|p| p.account);
    Ok(out)
}

/// Splits `amount` by basis points that must sum to exactly 10,000.
pub fn split_bps(amount: U256, bps: &[(Address, u16)]) -> Result<Vec<Payout>> {
    // Summed in u64: 65,537 entries of u16::MAX already pass u32::MAX.
    let total: u64 = bps.iter().map(|b| u64::from(b.1)).sum();
    if total != 10_000 {
        return Err(PoaError::BasisPoints {
            what: "split".into(),
            expected: 10_000,
            found: u32::try_from(total).unwrap_or(u32::MAX),
        });
    }
    let w: Vec<(Address, U256)> = bps.iter().map(|&(a, b)| (a, U256::from(b))).collect();
    split_weights(amount, &w, ZeroWeightPolicy::Reject)
}

/// The bits of a finite, non-negative f64 as `mantissa · 2^exponent`.
fn decompose(x: f64) -> (u64, i32) {
    let bits = x.to_bits();
    let exp_bits = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    if exp_bits == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), exp_bits - 1075)
    }
}

/// Converts non-negative finite scores to exact fixed-point integers sharing one scale: with the
/// largest score written `m·2^emax` (53-bit `m`), score `mᵢ·2^eᵢ` becomes
/// `⌊mᵢ·2^(eᵢ − emax + 64)⌋` (< 2¹¹⁸). Scores below 2⁻¹¹⁶ of the largest truncate to zero.
///
/// The conversion is pure integer bit manipulation, hence identical on every platform. A score
/// that is not finite is [`PoaError::NonFinite`], a negative one [`PoaError::InvalidConfig`]
/// (both naming its index).
pub fn scores_to_fixed_point(scores: &[f64]) -> Result<Vec<U256>> {
    for (index, &s) in scores.iter().enumerate() {
        if !s.is_finite() {
            return Err(PoaError::NonFinite {
                what: "score".into(),
                index,
                value: s,
            });
        }
        if s < 0.0 {
            return Err(PoaError::InvalidConfig {
                what: format!("score {index}"),
                reason: format!("{s} is negative"),
            });
        }
    }
    // -0.0 has the sign bit set: read it as +0.0.
    let parts: Vec<(u64, i32)> = scores.iter().map(|&s| decompose(s + 0.0)).collect();
    let emax = parts
        .iter()
        .filter(|p| p.0 != 0)
        .map(|p| p.1)
        .max()
        .unwrap_or(0);
    Ok(parts
        .iter()
        .map(|&(m, e)| {
            if m == 0 {
                return U256::ZERO;
            }
            let shift = i64::from(e) - i64::from(emax) + 64;
            if shift >= 0 {
                U256::from(m) << (shift as usize) // ≤ 2^53 · 2^64
            } else if shift > -64 {
                U256::from(m >> (-shift) as u32)
            } else {
                U256::ZERO
            }
        })
        .collect())
}

/// Splits `amount` by f64 scores: non-finite scores are [`PoaError::NonFinite`], negative scores
/// follow `policy.negative`, and the rest are made exact with [`scores_to_fixed_point`] and split
/// by [`split_weights`].
pub fn split_scores(
    amount: U256,
    scores: &[(Address, f64)],
    policy: &SplitPolicy,
) -> Result<Vec<Payout>> {
    let clean = checked_scores(scores, policy)?;
    let fixed = scores_to_fixed_point(&clean)?;
    let weights: Vec<(Address, U256)> = scores.iter().map(|s| s.0).zip(fixed).collect();
    split_weights(amount, &weights, policy.zero_total)
}

/// The scores with negative ones clipped to zero (or refused, per `policy.negative`); a
/// non-finite score is [`PoaError::NonFinite`].
fn checked_scores(scores: &[(Address, f64)], policy: &SplitPolicy) -> Result<Vec<f64>> {
    let mut clean = Vec::with_capacity(scores.len());
    for (i, &(account, s)) in scores.iter().enumerate() {
        if !s.is_finite() {
            return Err(PoaError::NonFinite {
                what: format!("score of {account}"),
                index: i,
                value: s,
            });
        }
        if s < 0.0 {
            match policy.negative {
                NegativePolicy::Clip => clean.push(0.0),
                NegativePolicy::Reject => {
                    return Err(PoaError::NegativeWeight { account, value: s });
                }
            }
        } else {
            clean.push(s);
        }
    }
    Ok(clean)
}

/// The three-way split of an inference fee: model owner, protocol, and data contributors.
///
/// It is the same rule as the `InferencePayments` contract, so off-chain epoch totals equal the
/// data pool the chain collected: `protocol = ⌊fee·protocol_bps/10⁴⌋`,
/// `data pool = ⌊fee·data_pool_bps/10⁴⌋`, and the model owner receives the rest (the rounding
/// remainder).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeSplit {
    /// The model owner's account.
    pub owner: Address,
    /// The protocol treasury.
    pub protocol: Address,
    /// Protocol share in basis points.
    pub protocol_bps: u16,
    /// Data contributors' pool share in basis points.
    pub data_pool_bps: u16,
    /// Policies for the contributors' pool.
    pub policy: SplitPolicy,
}

/// The result of a [`FeeSplit`]: `owner + protocol + Σ contributors == fee`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeSplitResult {
    /// What the model owner receives.
    pub owner: Payout,
    /// What the protocol receives.
    pub protocol: Payout,
    /// The contributors' pool, split by attribution (or paid to the fallback account).
    pub contributors: Vec<Payout>,
}

impl FeeSplitResult {
    /// Every payout, owner and protocol first.
    pub fn all(&self) -> impl Iterator<Item = &Payout> {
        [&self.owner, &self.protocol]
            .into_iter()
            .chain(&self.contributors)
    }
}

impl FeeSplit {
    /// Splits `fee`: the protocol and the data pool get `⌊fee·bps/10⁴⌋` each, the owner the
    /// rest (so it absorbs the rounding); the pool is split by `scores` with [`split_scores`].
    pub fn split(&self, fee: U256, scores: &[(Address, f64)]) -> Result<FeeSplitResult> {
        let bps = u32::from(self.protocol_bps) + u32::from(self.data_pool_bps);
        if bps > 10_000 {
            return Err(PoaError::BasisPoints {
                what: "protocol + data pool".into(),
                expected: 10_000,
                found: bps,
            });
        }
        let part = |b: u16| narrow(widen(fee) * U512::from(b) / U512::from(10_000u32));
        let protocol = part(self.protocol_bps);
        let pool = part(self.data_pool_bps);
        let owner = fee - protocol - pool;
        // An empty pool (no data share, or a fee too small for one wei of it) pays nobody;
        // the scores are still checked.
        let contributors = if pool.is_zero() {
            checked_scores(scores, &self.policy)?;
            Vec::new()
        } else {
            split_scores(pool, scores, &self.policy)?
        };
        Ok(FeeSplitResult {
            owner: Payout {
                account: self.owner,
                amount: owner,
            },
            protocol: Payout {
                account: self.protocol,
                amount: protocol,
            },
            contributors,
        })
    }
}

/// What one epoch's settlement paid and what it carried over.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// Payouts at or above the minimum (pending balances included), sorted by address.
    pub paid: Vec<Payout>,
    /// Balances still below the minimum after this epoch, sorted by address.
    pub carried: Vec<Payout>,
}

/// Balances below the minimum payout, held from one epoch to the next so no wei vanishes.
///
/// Invariant: `Σ paid + pending_after == Σ payouts + pending_before` for every settlement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarryOverLedger {
    min_payout: U256,
    pending: BTreeMap<Address, U256>,
}

impl CarryOverLedger {
    /// A ledger that pays only balances of at least `min_payout` wei.
    pub fn new(min_payout: U256) -> Self {
        Self {
            min_payout,
            pending: BTreeMap::new(),
        }
    }

    /// The minimum payout.
    pub fn min_payout(&self) -> U256 {
        self.min_payout
    }

    /// The balance held for `account`.
    pub fn pending(&self, account: &Address) -> U256 {
        self.pending.get(account).copied().unwrap_or_default()
    }

    /// Total wei held over; `None` when it does not fit in 256 bits (each balance does, their
    /// sum over many accounts may not).
    pub fn pending_total(&self) -> Option<U256> {
        self.pending
            .values()
            .try_fold(U256::ZERO, |sum, &v| sum.checked_add(v))
    }

    /// Adds this epoch's `payouts` to the pending balances and pays every balance that reaches
    /// the minimum. On overflow nothing changes and [`PoaError::Overflow`] is returned.
    pub fn settle(&mut self, payouts: &[Payout]) -> Result<Settlement> {
        let mut next = self.pending.clone();
        for p in payouts {
            let slot = next.entry(p.account).or_default();
            *slot = slot
                .checked_add(p.amount)
                .ok_or_else(|| PoaError::Overflow {
                    what: format!("pending balance of {}", p.account),
                })?;
        }
        let mut settlement = Settlement::default();
        next.retain(|&account, amount| {
            if *amount >= self.min_payout && !amount.is_zero() {
                settlement.paid.push(Payout {
                    account,
                    amount: *amount,
                });
                false
            } else {
                !amount.is_zero()
            }
        });
        settlement.carried = next
            .iter()
            .map(|(&account, &amount)| Payout { account, amount })
            .collect();
        self.pending = next;
        Ok(settlement)
    }
}

/// What one epoch's debt settlement did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebtSettlement {
    /// The payouts after debts were taken and what was taken was shared out, sorted by
    /// address; they sum exactly to the payouts settled.
    pub paid: Vec<Payout>,
    /// What was taken from each debtor's payout this epoch, sorted by address.
    pub taken: Vec<Payout>,
    /// What each debtor still owes after this epoch (carried to the next), sorted by address.
    pub owed: Vec<Payout>,
}

/// Debts charged to contributors whose records did harm (see the payable loop's harm policy),
/// held from one epoch to the next and taken out of their later payouts: a negative balance
/// that is carried, never a payment from them. What is taken is shared among the epoch's
/// accounts that owe nothing, in proportion to their payouts, so the payouts still sum to the
/// epoch's pool to the wei.
///
/// Invariant: `Σ owed_after = Σ owed_before + Σ charged − Σ taken`, and `Σ paid = Σ payouts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebtLedger {
    owed: BTreeMap<Address, U256>,
}

impl DebtLedger {
    /// A ledger with no debts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `amount` to what `account` owes. On overflow nothing changes and
    /// [`PoaError::Overflow`] is returned.
    pub fn charge(&mut self, account: Address, amount: U256) -> Result<()> {
        if amount.is_zero() {
            return Ok(());
        }
        let slot = self.owed.entry(account).or_default();
        *slot = slot.checked_add(amount).ok_or_else(|| PoaError::Overflow {
            what: format!("debt of {account}"),
        })?;
        Ok(())
    }

    /// What `account` owes.
    pub fn owed(&self, account: &Address) -> U256 {
        self.owed.get(account).copied().unwrap_or_default()
    }

    /// Every debt, sorted by address.
    pub fn debts(&self) -> Vec<Payout> {
        self.owed
            .iter()
            .map(|(&account, &amount)| Payout { account, amount })
            .collect()
    }

    /// Takes each debtor's debt out of its payout in `payouts` (at most the payout), and shares
    /// what was taken among the accounts that owe nothing, by their payouts (largest remainder,
    /// as [`split_weights`]). When nobody owing nothing is paid this epoch, nothing is taken and
    /// every debt is carried whole. On an error (duplicate accounts, overflow) nothing changes.
    pub fn settle(&mut self, payouts: &[Payout]) -> Result<DebtSettlement> {
        check_unique(payouts.iter().map(|p| p.account))?;
        let creditors: Vec<(Address, U256)> = payouts
            .iter()
            .filter(|p| !p.amount.is_zero() && self.owed(&p.account).is_zero())
            .map(|p| (p.account, p.amount))
            .collect();
        let mut paid: BTreeMap<Address, U256> =
            payouts.iter().map(|p| (p.account, p.amount)).collect();
        let mut owed = self.owed.clone();
        let mut taken = BTreeMap::new();
        if !creditors.is_empty() {
            for (account, debt) in owed.iter_mut() {
                let Some(amount) = paid.get_mut(account) else {
                    continue;
                };
                let take = (*amount).min(*debt);
                if take.is_zero() {
                    continue;
                }
                *amount -= take;
                *debt -= take;
                taken.insert(*account, take);
            }
            let total: U256 = taken.values().copied().sum();
            if !total.is_zero() {
                for p in split_weights(total, &creditors, ZeroWeightPolicy::Reject)? {
                    let slot = paid.entry(p.account).or_default();
                    *slot = slot
                        .checked_add(p.amount)
                        .ok_or_else(|| PoaError::Overflow {
                            what: format!("payout of {}", p.account),
                        })?;
                }
            }
        }
        owed.retain(|_, v| !v.is_zero());
        let list = |m: &BTreeMap<Address, U256>| {
            m.iter()
                .map(|(&account, &amount)| Payout { account, amount })
                .collect::<Vec<_>>()
        };
        let settlement = DebtSettlement {
            paid: list(&paid),
            taken: list(&taken),
            owed: list(&owed),
        };
        self.owed = owed;
        Ok(settlement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> Address {
        Address::repeat_byte(i)
    }

    #[test]
    fn debts_are_taken_from_later_payouts_and_shared_out_to_the_wei() {
        let p = |a: u8, v: u64| Payout {
            account: addr(a),
            amount: U256::from(v),
        };
        let mut l = DebtLedger::new();
        l.charge(addr(9), U256::from(50u8)).unwrap();
        l.charge(addr(9), U256::from(25u8)).unwrap();
        l.charge(addr(3), U256::ZERO).unwrap();
        assert_eq!(l.debts(), vec![p(9, 75)]);
        // Epoch 1: the debtor earns 30 of the 100 paid: all 30 are taken, 45 carried; the 30
        // go to 1 and 2 by their payouts (20 : 50 → 8.57 and 21.43 → 9 and 21).
        let s = l.settle(&[p(1, 20), p(2, 50), p(9, 30)]).unwrap();
        assert_eq!(s.paid, vec![p(1, 29), p(2, 71), p(9, 0)]);
        assert_eq!(s.taken, vec![p(9, 30)]);
        assert_eq!(s.owed, vec![p(9, 45)]);
        // Epoch 2: it earns 100 and pays off the rest.
        let s = l.settle(&[p(1, 1), p(9, 100)]).unwrap();
        assert_eq!(s.paid, vec![p(1, 46), p(9, 55)]);
        assert_eq!(s.owed, vec![]);
        assert_eq!(l.owed(&addr(9)), U256::ZERO);
        // Nobody else is paid: nothing is taken, the debt is carried whole.
        l.charge(addr(9), U256::from(10u8)).unwrap();
        let s = l.settle(&[p(9, 7), p(1, 0)]).unwrap();
        assert_eq!((s.paid, s.owed), (vec![p(1, 0), p(9, 7)], vec![p(9, 10)]));
        // Bad input changes nothing.
        let before = l.clone();
        assert!(l.settle(&[p(1, 1), p(1, 2)]).is_err());
        assert!(l.charge(addr(9), U256::MAX).is_err());
        assert_eq!(l, before);
    }

    #[test]
    fn ties_go_to_the_smaller_address() {
        let w = [(addr(9), U256::from(1u8)), (addr(2), U256::from(1u8))];
        let p = split_weights(U256::from(3u8), &w, ZeroWeightPolicy::Reject).unwrap();
        assert_eq!(
            p[0],
            Payout {
                account: addr(2),
                amount: U256::from(2u8)
            }
        );
        assert_eq!(
            p[1],
            Payout {
                account: addr(9),
                amount: U256::from(1u8)
            }
        );
    }

    #[test]
    fn largest_remainder_beats_address_order() {
        // 10 · (1/3, 2/3): floors 3 and 6, remainders 1/3 and 2/3 → the larger remainder wins.
        let w = [(addr(1), U256::from(1u8)), (addr(2), U256::from(2u8))];
        let p = split_weights(U256::from(10u8), &w, ZeroWeightPolicy::Reject).unwrap();
        assert_eq!(p[0].amount, U256::from(3u8));
        assert_eq!(p[1].amount, U256::from(7u8));
    }

    #[test]
    fn max_amount_with_max_weights_does_not_overflow() {
        let w = [
            (addr(1), U256::MAX),
            (addr(2), U256::MAX),
            (addr(3), U256::from(1u8)),
        ];
        let p = split_weights(U256::MAX, &w, ZeroWeightPolicy::Reject).unwrap();
        assert_eq!(
            p.iter().map(|p| p.amount).fold(U256::ZERO, |a, b| a + b),
            U256::MAX
        );
    }

    #[test]
    fn zero_total_goes_to_fallback_or_is_rejected() {
        let f = addr(7);
        let p = split_scores(
            U256::from(5u8),
            &[(addr(1), 0.0), (addr(2), -1.0)],
            &SplitPolicy {
                negative: NegativePolicy::Clip,
                zero_total: ZeroWeightPolicy::Fallback(f),
            },
        )
        .unwrap();
        assert_eq!(
            p,
            vec![Payout {
                account: f,
                amount: U256::from(5u8)
            }]
        );
        let err = split_scores(U256::from(5u8), &[(addr(1), 0.0)], &SplitPolicy::default());
        assert!(matches!(err, Err(PoaError::ZeroTotalWeight { .. })));
    }

    #[test]
    fn negative_scores_are_clipped_or_rejected_by_policy() {
        let s = [(addr(1), 1.0), (addr(2), -3.0)];
        let p = split_scores(U256::from(10u8), &s, &SplitPolicy::default()).unwrap();
        assert_eq!(p[0].amount, U256::from(10u8));
        assert_eq!(p[1].amount, U256::ZERO);
        let reject = SplitPolicy {
            negative: NegativePolicy::Reject,
            ..Default::default()
        };
        let err = split_scores(U256::from(10u8), &s, &reject).unwrap_err();
        assert!(matches!(err, PoaError::NegativeWeight { account, .. } if account == addr(2)));
    }

    #[test]
    fn nan_score_and_duplicate_account_are_named() {
        let err = split_scores(
            U256::from(1u8),
            &[(addr(1), 1.0), (addr(3), f64::NAN)],
            &SplitPolicy::default(),
        );
        assert!(matches!(err, Err(PoaError::NonFinite { index: 1, .. })));
        let err = split_scores(
            U256::from(1u8),
            &[(addr(1), 1.0), (addr(1), 2.0)],
            &SplitPolicy::default(),
        );
        assert!(matches!(err, Err(PoaError::DuplicateAccount(a)) if a == addr(1)));
    }

    #[test]
    fn fixed_point_is_exact_for_dyadic_scores() {
        let f = scores_to_fixed_point(&[1.0, 0.5, 0.25, 0.0, 3.0]).unwrap();
        // 3.0 = (3·2^51)·2^-51: its ulp 2^-51 is split into 2^64 steps, so 1.0 ↦ 2^(51+64).
        assert_eq!(f[4], U256::from(3u8) << 115);
        assert_eq!(f[0], U256::from(1u8) << 115);
        assert_eq!(f[1], U256::from(1u8) << 114);
        assert_eq!(f[3], U256::ZERO);
        // Subnormals far below the scale truncate to zero instead of misbehaving.
        assert_eq!(
            scores_to_fixed_point(&[1.0, f64::MIN_POSITIVE / 4.0]).unwrap()[1],
            U256::ZERO
        );
    }

    #[test]
    fn bps_must_sum_to_ten_thousand() {
        let err = split_bps(U256::from(1u8), &[(addr(1), 5_000), (addr(2), 4_000)]).unwrap_err();
        assert!(matches!(err, PoaError::BasisPoints { found: 9_000, .. }));
        let p = split_bps(U256::from(1_000u32), &[(addr(1), 2_500), (addr(2), 7_500)]).unwrap();
        assert_eq!(p[0].amount, U256::from(250u32));
        // 65,537 × 65,535 + 10,001 wraps a u32 sum to exactly 10,000: still refused.
        let mut many: Vec<(Address, u16)> = (0..65_537u32)
            .map(|i| (Address::left_padding_from(&i.to_be_bytes()), u16::MAX))
            .collect();
        many.push((addr(0xff), 10_001));
        let err = split_bps(U256::from(1u8), &many).unwrap_err();
        assert!(
            matches!(
                err,
                PoaError::BasisPoints {
                    found: u32::MAX,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn fixed_point_refuses_what_is_not_a_non_negative_number() {
        for (bad, index) in [(vec![1.0, f64::NAN], 1), (vec![f64::INFINITY], 0)] {
            let err = scores_to_fixed_point(&bad).unwrap_err();
            assert!(
                matches!(err, PoaError::NonFinite { index: i, .. } if i == index),
                "{err}"
            );
        }
        let err = scores_to_fixed_point(&[2.0, -5.0]).unwrap_err();
        assert!(matches!(err, PoaError::InvalidConfig { .. }), "{err}");
        assert!(err.to_string().contains("score 1"), "{err}");
        let z = scores_to_fixed_point(&[-0.0, 1.0]).unwrap();
        assert_eq!(z[0], U256::ZERO);
    }

    #[test]
    fn fee_split_pays_owner_protocol_and_contributors_exactly() {
        let fs = FeeSplit {
            owner: addr(0xaa),
            protocol: addr(0xbb),
            protocol_bps: 1_000,
            data_pool_bps: 6_000,
            policy: SplitPolicy::default(),
        };
        let r = fs
            .split(U256::from(1_001u32), &[(addr(1), 0.7), (addr(2), 0.3)])
            .unwrap();
        // As on chain: protocol ⌊100.1⌋ = 100, data pool ⌊600.6⌋ = 600, owner the rest.
        assert_eq!(r.protocol.amount, U256::from(100u32));
        assert_eq!(r.owner.amount, U256::from(301u32));
        let pool: Vec<U256> = r.contributors.iter().map(|p| p.amount).collect();
        assert_eq!(pool, vec![U256::from(420u32), U256::from(180u32)]);
        assert_eq!(
            r.all().map(|p| p.amount).sum::<U256>(),
            U256::from(1_001u32)
        );
        // No data share: the contributors get nothing, with or without scores.
        let no_pool = FeeSplit {
            data_pool_bps: 0,
            ..fs
        };
        for scores in [&[][..], &[(addr(1), 0.0)][..], &[(addr(1), 0.7)][..]] {
            let r = no_pool.split(U256::from(1_001u32), scores).unwrap();
            assert!(r.contributors.is_empty());
            assert_eq!(r.owner.amount + r.protocol.amount, U256::from(1_001u32));
        }
        // A pool that rounds to zero wei likewise; bad scores are still refused.
        assert!(
            fs.split(U256::from(1u8), &[(addr(1), 0.7)])
                .unwrap()
                .contributors
                .is_empty()
        );
        assert!(matches!(
            no_pool.split(U256::from(1u8), &[(addr(1), f64::NAN)]),
            Err(PoaError::NonFinite { .. })
        ));
        let bad = FeeSplit {
            protocol_bps: 9_000,
            data_pool_bps: 1_001,
            ..fs
        };
        assert!(matches!(
            bad.split(U256::from(1u8), &[]),
            Err(PoaError::BasisPoints { .. })
        ));
    }

    #[test]
    fn small_payouts_carry_over_until_they_reach_the_minimum() {
        let mut ledger = CarryOverLedger::new(U256::from(100u32));
        let s1 = ledger
            .settle(&[
                Payout {
                    account: addr(1),
                    amount: U256::from(60u32),
                },
                Payout {
                    account: addr(2),
                    amount: U256::from(150u32),
                },
            ])
            .unwrap();
        assert_eq!(
            s1.paid,
            vec![Payout {
                account: addr(2),
                amount: U256::from(150u32)
            }]
        );
        assert_eq!(
            s1.carried,
            vec![Payout {
                account: addr(1),
                amount: U256::from(60u32)
            }]
        );
        let s2 = ledger
            .settle(&[Payout {
                account: addr(1),
                amount: U256::from(40u32),
            }])
            .unwrap();
        assert_eq!(
            s2.paid,
            vec![Payout {
                account: addr(1),
                amount: U256::from(100u32)
            }]
        );
        assert_eq!(ledger.pending_total(), Some(U256::ZERO));
    }

    #[test]
    fn overflowing_settlement_leaves_the_ledger_unchanged() {
        let mut ledger = CarryOverLedger::new(U256::MAX);
        ledger
            .settle(&[Payout {
                account: addr(1),
                amount: U256::from(5u8),
            }])
            .unwrap();
        let before = ledger.clone();
        let err = ledger.settle(&[Payout {
            account: addr(1),
            amount: U256::MAX,
        }]);
        assert!(matches!(err, Err(PoaError::Overflow { .. })));
        assert_eq!(ledger, before);
        // Two accounts whose balances fit but whose sum does not: the total says so.
        ledger
            .settle(&[Payout {
                account: addr(2),
                amount: U256::MAX - U256::from(1u8),
            }])
            .unwrap();
        assert_eq!(ledger.pending_total(), None);
    }
}
