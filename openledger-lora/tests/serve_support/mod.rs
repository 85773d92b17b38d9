//! A toy model for the serving tests whose next-token logits are a known function of the tokens
//! it stored: it writes each token into the paged KV cache (K = 0, so attention is uniform; V =
//! [token, position]) and reads them back with paged attention, so the mean it attends to gives
//! the sum of the sequence's tokens and checks the positions. A wrong block table, a lost or
//! doubled token, or another sequence's blocks change its output.

#![allow(dead_code)]

use std::collections::HashMap;

use openledger_lora::pool::AdapterId;
use openledger_lora::serve::{
    AdapterReadiness, AttentionParams, AttnSeq, EngineConfig, KvDtype, KvLayout, Logits,
    PagedKvCache, Preemption, Readiness, RequestError, RequestId, StepBatch, StepModel,
    paged_attention,
};

pub const VOCAB: usize = 32;

/// Adapter whose logits come out NaN.
pub const NAN_ADAPTER: &str = "nan";

pub fn adapter_bias(adapter: Option<&str>) -> usize {
    adapter.map_or(0, |a| a.bytes().map(usize::from).sum::<usize>() % 13)
}

/// The token the toy model favours after `tokens`.
pub fn target(tokens: &[u32], adapter: Option<&str>) -> usize {
    let sum: usize = tokens.iter().map(|&t| t as usize).sum();
    (sum * 7 + tokens.len() * 3 + adapter_bias(adapter)) % VOCAB
}

/// Logits: −(circular distance to the target) / 2.
pub fn logits_for(target: usize) -> Vec<f32> {
    (0..VOCAB)
        .map(|j| {
            let d = (j + VOCAB - target) % VOCAB;
            -(d.min(VOCAB - d) as f32) / 2.0
        })
        .collect()
}

/// Greedy continuation computed without the engine.
pub fn reference_greedy(prompt: &[u32], adapter: Option<&str>, n: usize) -> Vec<u32> {
    let mut t = prompt.to_vec();
    for _ in 0..n {
        t.push(target(&t, adapter) as u32);
    }
    t[prompt.len()..].to_vec()
}

#[derive(Default)]
pub struct ToyModel {
    /// Per step: (request, tokens run, needs logits).
    pub log: Vec<Vec<(RequestId, usize, bool)>>,
    /// The most distinct adapters a step may name (a step naming more fails).
    pub max_adapters: Option<usize>,
    /// Adapters "on their way to the device": `prepare_adapter` answers not yet this many
    /// times more, and a step naming one before that fails.
    pub copying: HashMap<String, usize>,
}

impl StepModel for ToyModel {
    openledger_lora::host_kv_cache!();

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn max_adapters(&self) -> Option<usize> {
        self.max_adapters
    }

    fn prepare_adapter(&mut self, adapter: &AdapterId) -> Result<bool, RequestError> {
        match self.copying.get_mut(adapter.as_str()) {
            Some(left) if *left > 0 => {
                *left -= 1;
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    fn forward(
        &mut self,
        batch: &StepBatch,
        kv: &mut PagedKvCache,
    ) -> Result<Logits, Box<dyn std::error::Error + Send + Sync>> {
        let adapters: std::collections::HashSet<_> = batch
            .seqs
            .iter()
            .filter_map(|s| s.adapter.as_ref())
            .collect();
        if let Some(a) = adapters
            .iter()
            .find(|a| self.copying.get(a.as_str()).is_some_and(|&n| n > 0))
        {
            return Err(format!("a step naming {a} before its copy landed").into());
        }
        if self.max_adapters.is_some_and(|m| adapters.len() > m) {
            return Err(format!("a step naming {} adapters", adapters.len()).into());
        }
        self.log.push(
            batch
                .seqs
                .iter()
                .map(|s| (s.request, s.tokens.len(), s.needs_logits))
                .collect(),
        );
        let mut data = Vec::new();
        for s in &batch.seqs {
            if kv.block_table(s.seq)? != &s.block_table[..] {
                return Err("block table in the batch differs from the cache".into());
            }
            for (i, &t) in s.tokens.iter().enumerate() {
                kv.write(
                    s.seq,
                    0,
                    s.start_pos + i,
                    &[0.0, 0.0],
                    &[t as f32, (s.start_pos + i) as f32],
                )?;
            }
            if !s.needs_logits {
                continue;
            }
            let last = s.start_pos + s.tokens.len() - 1;
            let params = AttentionParams {
                n_heads: 1,
                scale: 1.0,
                sliding_window: None,
            };
            let mut out = [0.0f32; 2];
            let q = [AttnSeq {
                seq: s.seq,
                start_pos: last,
                n_queries: 1,
            }];
            paged_attention(kv, 0, &params, &q, &[0.3, -0.7], &mut out)?;
            let len = (last + 1) as f32;
            let sum = (out[0] * len).round() as usize;
            let mean_pos = last as f32 / 2.0;
            if (out[1] - mean_pos).abs() > 1e-3 {
                return Err(
                    format!("positions read back as mean {} not {mean_pos}", out[1]).into(),
                );
            }
            let adapter = s.adapter.as_ref().map(|a| a.as_str());
            if adapter == Some(NAN_ADAPTER) {
                data.extend(std::iter::repeat_n(f32::NAN, VOCAB));
                continue;
            }
            let tgt = (sum * 7 + (last + 1) * 3 + adapter_bias(adapter)) % VOCAB;
            data.extend(logits_for(tgt));
        }
        Ok(Logits { data })
    }
}

pub fn config(
    block_size: usize,
    num_blocks: usize,
    max_tokens_per_step: usize,
    max_context: usize,
    preemption: Preemption,
) -> EngineConfig {
    EngineConfig {
        kv_layout: KvLayout {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: 2,
            block_size,
        },
        num_blocks,
        max_tokens_per_step,
        max_running: 64,
        max_context,
        preemption,
        kv_dtype: KvDtype::F32,
    }
}

/// Readiness from a table: adapters listed with a count report `Loading` that many times, then
/// `Ready`; unlisted adapters are unknown.
#[derive(Default)]
pub struct FakeReadiness {
    pub loading_polls: HashMap<String, usize>,
}

impl AdapterReadiness for FakeReadiness {
    fn readiness(&mut self, adapter: &AdapterId) -> Readiness {
        match self.loading_polls.get_mut(adapter.as_str()) {
            None => Readiness::Unknown,
            Some(0) => Readiness::Ready,
            Some(n) => {
                *n -= 1;
                Readiness::Loading
            }
        }
    }
}

pub fn id(s: &str) -> AdapterId {
    s.parse().unwrap()
}
