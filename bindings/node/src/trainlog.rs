//! JavaScript face of `openledger_core::trainlog`: the hash-chained training log whose head a
//! model registration commits to, its file format, its verification, and usage proofs (that a
//! record was in the batch of a step), checkable against the head alone.

use std::sync::{Mutex, MutexGuard};

use napi::bindgen_prelude::Buffer;
use napi_derive::napi;
use openledger_core::ContentId;
use openledger_core::trainlog::{TrainLog as RustLog, TrainStep, UsageProof};

use crate::error::{JsResult, Result};
use crate::task::count;
use crate::types::{Bytes, b256, b256_str};

/// One logged optimizer step.
#[napi(object)]
pub struct TrainLogEntry {
    /// The optimizer step.
    pub step: f64,
    /// The batch's record ids (`0x` hex), in batch order.
    pub records: Vec<String>,
    /// The batch loss.
    pub loss: f64,
    /// The learning rate.
    pub learning_rate: f64,
    /// The checkpoint hash, when one was taken.
    pub checkpoint: Option<String>,
    /// Merkle root over the batch's record leaves.
    pub batch_root: String,
    /// The head after this step.
    pub head: String,
}

/// An append-only, hash-chained record of every optimizer step: which records were in the
/// batch, the loss and learning rate (exact bits) and the checkpoint hash when one was taken.
#[napi]
pub struct TrainLog {
    inner: Mutex<RustLog>,
}

impl TrainLog {
    /// Wraps a log of the crates (the trainer's, say).
    pub(crate) fn wrap(log: RustLog) -> Self {
        Self {
            inner: Mutex::new(log),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RustLog> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn ids(name: &str, v: &[Bytes]) -> Result<Vec<ContentId>> {
    v.iter()
        .enumerate()
        .map(|(i, h)| Ok(ContentId(b256(&format!("{name}[{i}]"), h)?)))
        .collect()
}

#[napi]
impl TrainLog {
    /// An empty log for the base model `baseModel` and the adapter config whose keccak-256 is
    /// `adapterConfigHash`; its head is the genesis.
    #[napi(constructor, catch_unwind)]
    pub fn new(base_model: Bytes, adapter_config_hash: Bytes) -> Result<Self> {
        Ok(Self::wrap(RustLog::new(
            b256("baseModel", &base_model)?,
            b256("adapterConfigHash", &adapter_config_hash)?,
        )))
    }

    /// Reads a saved log (the structure is checked; `verify()` checks every hash).
    #[napi(factory, catch_unwind)]
    pub fn load(path: String) -> Result<Self> {
        Ok(Self::wrap(RustLog::load(&path).js()?))
    }

    /// Reads a log from the bytes `toBytes()` wrote.
    #[napi(factory, catch_unwind)]
    pub fn from_bytes(data: Buffer) -> Result<Self> {
        Ok(Self::wrap(RustLog::from_bytes(&data).js()?))
    }

    /// The log in its binary file format.
    #[napi(catch_unwind)]
    pub fn to_bytes(&self) -> Buffer {
        self.lock().to_bytes().into()
    }

    /// Writes the log to `path`.
    #[napi(catch_unwind)]
    pub fn save(&self, path: String) -> Result<()> {
        self.lock().save(&path).js()
    }

    /// Appends optimizer step `step` (strictly after the last one) whose batch held `records`,
    /// with its loss, learning rate and checkpoint hash; returns the new head.
    #[napi(catch_unwind)]
    pub fn append(
        &self,
        step: f64,
        records: Vec<Bytes>,
        loss: f64,
        learning_rate: f64,
        checkpoint: Option<Bytes>,
    ) -> Result<String> {
        let mut s = TrainStep::new(
            count("step", step)? as u64,
            ids("records", &records)?,
            loss,
            learning_rate,
        );
        if let Some(c) = checkpoint {
            s = s.with_checkpoint(b256("checkpoint", &c)?);
        }
        Ok(b256_str(&self.lock().append(s).js()?))
    }

    /// The head: what a model registration commits to.
    #[napi(getter, catch_unwind)]
    pub fn head(&self) -> String {
        b256_str(&self.lock().head())
    }

    /// The head of the empty log.
    #[napi(getter, catch_unwind)]
    pub fn genesis(&self) -> String {
        b256_str(&self.lock().genesis())
    }

    /// The base model's id.
    #[napi(getter, catch_unwind)]
    pub fn base_model(&self) -> String {
        b256_str(&self.lock().base_model())
    }

    /// The keccak-256 of the adapter config.
    #[napi(getter, catch_unwind)]
    pub fn adapter_config_hash(&self) -> String {
        b256_str(&self.lock().adapter_config_hash())
    }

    /// Steps logged.
    #[napi(getter, catch_unwind)]
    pub fn length(&self) -> f64 {
        self.lock().len() as f64
    }

    /// Every step.
    #[napi(catch_unwind)]
    pub fn entries(&self) -> Vec<TrainLogEntry> {
        self.lock()
            .entries()
            .iter()
            .map(|e| TrainLogEntry {
                step: e.step.step as f64,
                records: e.step.records.iter().map(|r| r.to_string()).collect(),
                loss: e.step.loss,
                learning_rate: e.step.learning_rate,
                checkpoint: e.step.checkpoint.as_ref().map(b256_str),
                batch_root: b256_str(&e.batch_root),
                head: b256_str(&e.head),
            })
            .collect()
    }

    /// Recomputes every batch root and head; returns the head, or throws `Integrity` naming the
    /// first entry that does not match.
    #[napi(catch_unwind)]
    pub fn verify(&self) -> Result<String> {
        Ok(b256_str(&self.lock().verify().js()?))
    }

    /// The steps whose batch held `record`, or null when none did.
    #[napi(catch_unwind)]
    pub fn was_used(&self, record: Bytes) -> Result<Option<Vec<f64>>> {
        let r = ContentId(b256("record", &record)?);
        Ok(self
            .lock()
            .was_used(&r)
            .map(|s| s.into_iter().map(|x| x as f64).collect()))
    }

    /// The proof that `record` was in the batch of `step`: `verifyUsageProof` checks it
    /// against the head alone, without the log.
    #[napi(catch_unwind)]
    pub fn prove(&self, record: Bytes, step: f64) -> Result<Buffer> {
        let r = ContentId(b256("record", &record)?);
        let p = self.lock().prove(&r, count("step", step)? as u64).js()?;
        Ok(p.to_bytes().into())
    }
}

/// The step a usage proof (from `TrainLog.prove`) shows `record` was trained on, if it leads to
/// `head`; null when it does not. Malformed proof bytes throw `Integrity`.
#[napi(catch_unwind)]
pub fn verify_usage_proof(proof: Buffer, record: Bytes, head: Bytes) -> Result<Option<f64>> {
    let p = UsageProof::from_bytes(&proof).js()?;
    let record = ContentId(b256("record", &record)?);
    Ok(p.verify(&record, b256("head", &head)?).map(|s| s as f64))
}
