//! The host side of a step: a [`StepBatch`] packed into the arrays the kernels read (token
//! ids, positions, KV slots, block tables with each row's offset into them, the rows that need
//! logits) and checked against the model and the KV pool before anything is written.

use crate::error::GpuError;
use openledger_lora::serve::StepBatch;

/// A step's metadata, as the kernels read it (one entry per token row unless said otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepMeta {
    /// Token ids.
    pub ids: Vec<i32>,
    /// Each row's position in its sequence.
    pub positions: Vec<i32>,
    /// Each row's KV slot: `block · block_size + position % block_size`.
    pub slots: Vec<i64>,
    /// Every sequence's block table, one after another.
    pub tables: Vec<i32>,
    /// Each row's offset of its sequence's block table in `tables`.
    pub table_off: Vec<i64>,
    /// The rows whose logits are returned (each sequence's last row, where it needs logits).
    pub logit_rows: Vec<i32>,
    /// The longest stretch of keys one row attends to (its position + 1, or the window).
    pub max_span: usize,
}

impl StepMeta {
    /// Packs `batch` for a model of `vocab` tokens over a pool of `num_blocks` blocks of
    /// `block_size` positions, attending within `window` (`None`: the whole context; the
    /// longest window of any layer). Every sequence needs tokens, ids below `vocab`, and a
    /// block table of blocks below `num_blocks` covering its new positions.
    pub fn pack(
        batch: &StepBatch,
        vocab: usize,
        block_size: usize,
        num_blocks: usize,
        window: Option<usize>,
    ) -> Result<Self, GpuError> {
        let mut m = StepMeta::default();
        let rows = batch.num_tokens();
        if rows == 0 || rows > i32::MAX as usize {
            return Err(GpuError::InvalidArgument {
                name: "batch",
                reason: format!("{rows} tokens (1 to i32::MAX are taken)"),
            });
        }
        for (n, s) in batch.seqs.iter().enumerate() {
            let bad = |reason: String| GpuError::InvalidArgument {
                name: "batch",
                reason: format!("sequence {n} ({:?}): {reason}", s.seq),
            };
            if s.tokens.is_empty() {
                return Err(bad("no tokens".into()));
            }
            let end = s.start_pos + s.tokens.len();
            if end > i32::MAX as usize {
                return Err(bad(format!("position {end} past i32::MAX")));
            }
            let needed = end.div_ceil(block_size);
            if s.block_table.len() < needed {
                return Err(bad(format!(
                    "its block table holds {} blocks, positions up to {end} need {needed}",
                    s.block_table.len()
                )));
            }
            if let Some(&b) = s.block_table.iter().find(|&&b| b as usize >= num_blocks) {
                return Err(bad(format!(
                    "block {b} is outside the pool of {num_blocks}"
                )));
            }
            if let Some((i, &t)) = s
                .tokens
                .iter()
                .enumerate()
                .find(|(_, t)| **t as usize >= vocab)
            {
                return Err(bad(format!(
                    "token {t} at {i} is outside the vocabulary of {vocab}"
                )));
            }
            let off = m.tables.len() as i64;
            m.tables.extend(s.block_table.iter().map(|&b| b as i32));
            for (i, &t) in s.tokens.iter().enumerate() {
                let pos = s.start_pos + i;
                m.ids.push(t as i32);
                m.positions.push(pos as i32);
                let blk = s.block_table[pos / block_size] as i64;
                m.slots
                    .push(blk * block_size as i64 + (pos % block_size) as i64);
                m.table_off.push(off);
                let span = window.map_or(pos + 1, |w| w.min(pos + 1));
                m.max_span = m.max_span.max(span);
            }
            if s.needs_logits {
                m.logit_rows.push((m.ids.len() - 1) as i32);
            }
        }
        Ok(m)
    }
}

/// Little-endian bytes of `i32`s.
pub(crate) fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of `i64`s.
pub(crate) fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
