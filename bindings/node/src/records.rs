//! JavaScript face of `openledger_poa::record`: the canonical attribution record of one
//! inference (who is owed what share of its data pool, by which method) and epochs that add
//! records' pools into exact per-contributor totals and the claims of the epoch's Merkle tree.

use std::sync::{Mutex, MutexGuard};

use napi::Either;
use napi::bindgen_prelude::{BigInt, Buffer, Float64Array};
use napi_derive::napi;
use openledger_core::B256;
use openledger_poa::record::{
    AttributionMethod, AttributionRecord as RustRecord, Epoch as RustEpoch,
};

use crate::error::{JsResult, Result};
use crate::splits::{Payout, SplitOptions, payout, policy, scored};
use crate::types::{Amount, Bytes, address_str, b256, b256_str, bigint, u256};

/// A contributor's share of a record, in units of 10¹⁸.
#[napi(object)]
pub struct RecordWeight {
    /// The contributor (checksummed).
    pub account: String,
    /// Its share of 10¹⁸.
    pub weight: BigInt,
}

/// The attribution of one inference: contributors' shares of its data pool as fixed-point
/// weights summing to exactly 10¹⁸, canonically encoded (Solidity `abi.encode`) and identified
/// by the keccak-256 of that encoding.
#[napi]
pub struct AttributionRecord {
    pub(crate) inner: RustRecord,
}

fn hashes(name: &str, v: &[Bytes]) -> Result<Vec<B256>> {
    v.iter()
        .enumerate()
        .map(|(i, h)| b256(&format!("{name}[{i}]"), h))
        .collect()
}

#[napi]
impl AttributionRecord {
    /// The record of inference `inferenceId` of base model `modelId` with the adapters
    /// `adapterIds`, by `method` (`"tracin"`, `"cosine"`, `"trak"`, `"influence_function"`,
    /// `"datainf"`, `"rag_relevance"` or `"context_cite"`), its weights the float `scores` of
    /// `accounts` split exactly into shares of 10¹⁸ (negative scores clipped or refused, a zero
    /// total to `options.fallback`).
    #[napi(factory, catch_unwind)]
    pub fn from_scores(
        inference_id: Bytes,
        model_id: Bytes,
        adapter_ids: Vec<Bytes>,
        method: String,
        accounts: Vec<Bytes>,
        scores: Either<Float64Array, Vec<f64>>,
        options: Option<SplitOptions>,
    ) -> Result<Self> {
        let method: AttributionMethod = method.parse().js()?;
        let inner = RustRecord::from_scores(
            b256("inferenceId", &inference_id)?,
            b256("modelId", &model_id)?,
            hashes("adapterIds", &adapter_ids)?,
            method,
            &scored(&accounts, &scores)?,
            &policy(options.as_ref())?,
        )
        .js()?;
        Ok(Self { inner })
    }

    /// Reads a record from its canonical encoding (anything else is refused).
    #[napi(factory, catch_unwind)]
    pub fn decode(data: Buffer) -> Result<Self> {
        Ok(Self {
            inner: RustRecord::decode(&data).js()?,
        })
    }

    /// The canonical encoding.
    #[napi(catch_unwind)]
    pub fn encode(&self) -> Buffer {
        self.inner.encode().into()
    }

    /// keccak-256 of the encoding.
    #[napi(getter, catch_unwind)]
    pub fn id(&self) -> String {
        self.inner.id().to_string()
    }

    /// The inference.
    #[napi(getter, catch_unwind)]
    pub fn inference_id(&self) -> String {
        b256_str(&self.inner.inference_id)
    }

    /// The base model.
    #[napi(getter, catch_unwind)]
    pub fn model_id(&self) -> String {
        b256_str(&self.inner.model_id)
    }

    /// The adapters, in the order applied.
    #[napi(getter, catch_unwind)]
    pub fn adapter_ids(&self) -> Vec<String> {
        self.inner.adapter_ids.iter().map(b256_str).collect()
    }

    /// How the weights were obtained.
    #[napi(getter, catch_unwind)]
    pub fn method(&self) -> String {
        self.inner.method.name().to_string()
    }

    /// The contributors' shares, ascending by address.
    #[napi(getter, catch_unwind)]
    pub fn weights(&self) -> Vec<RecordWeight> {
        self.inner
            .weights
            .iter()
            .map(|(a, w)| RecordWeight {
                account: address_str(a),
                weight: bigint(*w),
            })
            .collect()
    }
}

/// One claim of an epoch's Merkle tree.
#[napi(object)]
pub struct RewardClaim {
    /// Its position (its bit in the contract's claimed bitmap).
    pub index: BigInt,
    /// The claimant (checksummed).
    pub account: String,
    /// Wei claimable.
    pub amount: BigInt,
}

/// An epoch: the data pools of many inferences split exactly by their records into
/// per-contributor totals, and the claims of the epoch's Merkle tree.
#[napi]
pub struct Epoch {
    inner: Mutex<RustEpoch>,
}

impl Epoch {
    fn lock(&self) -> MutexGuard<'_, RustEpoch> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[napi]
impl Epoch {
    /// An empty epoch numbered `number`.
    #[napi(constructor, catch_unwind)]
    pub fn new(number: u32) -> Self {
        Self {
            inner: Mutex::new(RustEpoch::new(u64::from(number))),
        }
    }

    /// Splits `pool` wei (the contributors' part of the inference's fee) by `record`'s weights
    /// into the totals. An invalid record or an overflow changes nothing.
    #[napi(catch_unwind)]
    pub fn add(&self, record: &AttributionRecord, pool: Amount) -> Result<()> {
        let pool = u256("pool", &pool)?;
        self.lock().add(&record.inner, pool).js()
    }

    /// The epoch number.
    #[napi(getter, catch_unwind)]
    pub fn number(&self) -> f64 {
        self.lock().number as f64
    }

    /// Wei pooled (the sum of the totals).
    #[napi(getter, catch_unwind)]
    pub fn pooled(&self) -> BigInt {
        bigint(self.lock().pooled())
    }

    /// Ids of the records added, in order.
    #[napi(getter, catch_unwind)]
    pub fn records(&self) -> Vec<String> {
        self.lock()
            .records()
            .iter()
            .map(|r| r.to_string())
            .collect()
    }

    /// Per-contributor totals, sorted by address.
    #[napi(catch_unwind)]
    pub fn payouts(&self) -> Vec<Payout> {
        self.lock().payouts().iter().map(payout).collect()
    }

    /// The claims of the epoch's tree, sorted by address.
    #[napi(catch_unwind)]
    pub fn claims(&self) -> Vec<RewardClaim> {
        self.lock()
            .claim_leaves()
            .iter()
            .map(|c| RewardClaim {
                index: bigint(c.index),
                account: address_str(&c.account),
                amount: bigint(c.amount),
            })
            .collect()
    }
}
