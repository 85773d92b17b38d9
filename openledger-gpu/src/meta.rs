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
    /// Each sequence's first row and row count (its rows are consecutive, at consecutive
    /// positions).
    pub seqs: Vec<(usize, usize)>,
    /// The window `pack` was given.
    pub window: Option<usize>,
}

/// Which rows the attention of a step computes how: sequences with many rows (prompts) in
/// tiles of the tensor-core prefill kernel, the others row by row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttentionPlan {
    /// `(first row, rows)` of each tile, flattened: rows of one sequence, at most the tile size.
    pub tiles: Vec<i32>,
    /// The rows the row kernel takes, in order.
    pub rows: Vec<i32>,
    /// The longest stretch of keys one of `rows` attends to (what its split over the context
    /// is sized for).
    pub rows_span: usize,
}

impl AttentionPlan {
    /// Tiles in the plan.
    pub fn num_tiles(&self) -> usize {
        self.tiles.len() / 2
    }
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
        let mut m = StepMeta {
            window,
            ..StepMeta::default()
        };
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
            m.seqs.push((m.ids.len(), s.tokens.len()));
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

impl StepMeta {
    /// Splits the rows between the two attention kernels: every sequence of at least
    /// `min_rows` rows (`0`: none) goes to the prefill kernel in tiles of up to `tile_rows`
    /// rows; the others' rows to the row kernel.
    pub fn attention_plan(&self, tile_rows: usize, min_rows: usize) -> AttentionPlan {
        let mut plan = AttentionPlan::default();
        let tile_rows = tile_rows.max(1);
        for &(first, n) in &self.seqs {
            if min_rows > 0 && n >= min_rows {
                for at in (0..n).step_by(tile_rows) {
                    plan.tiles.push((first + at) as i32);
                    plan.tiles.push((n - at).min(tile_rows) as i32);
                }
            } else {
                for r in first..first + n {
                    plan.rows.push(r as i32);
                    let pos = self.positions[r] as usize;
                    let span = self.window.map_or(pos + 1, |w| w.min(pos + 1));
                    plan.rows_span = plan.rows_span.max(span);
                }
            }
        }
        plan
    }
}

impl StepMeta {
    /// Whether this is a decode step a graph can run: every sequence one new row, each
    /// needing its logits.
    pub fn is_decode(&self) -> bool {
        !self.seqs.is_empty()
            && self.seqs.iter().all(|&(_, n)| n == 1)
            && self.logit_rows.len() == self.seqs.len()
    }

    /// Pads a decode step to `rows` rows for the graph of that batch size: each added row
    /// reads token 0 at position 0 through a one-block table of block 0, writes no KV slot
    /// (`-1`), and has its logits computed (and never read). The real rows keep their
    /// indices, so their logits are the first rows of the result.
    pub fn pad_decode(&mut self, rows: usize) {
        let have = self.ids.len();
        if rows <= have {
            return;
        }
        let off = self.tables.len() as i64;
        self.tables.push(0);
        for r in have..rows {
            self.seqs.push((r, 1));
            self.ids.push(0);
            self.positions.push(0);
            self.slots.push(-1);
            self.table_off.push(off);
            self.logit_rows.push(r as i32);
        }
        self.max_span = self.max_span.max(1);
    }
}

/// The batch size a graph is captured for that a decode step of `rows` sequences runs in
/// (padded up to it), or `None` above `max` (the step runs without a graph): 1, 2, 4, 8,
/// then multiples of 8 up to 64, of 32 up to 256 and of 64 beyond: at most 7, 31 or 63 rows
/// of padding, and a few dozen sizes to capture (vLLM captures 1, 2, 4 and multiples of 8 up
/// to 512).
pub fn graph_bucket(rows: usize, max: usize) -> Option<usize> {
    if rows == 0 || rows > max {
        return None;
    }
    let b = match rows {
        0..=8 => rows.next_power_of_two(),
        9..=64 => rows.next_multiple_of(8),
        65..=256 => rows.next_multiple_of(32),
        _ => rows.next_multiple_of(64),
    };
    Some(b.min(max))
}

/// The split over the context a graph is captured with for a step whose longest row sees
/// `span` keys in parts of `part_len`: the parts that span needs, rounded up to a power of
/// two, so a graph serves contexts growing up to twice as long (parts with no keys of a row
/// are passed over when merging).
pub fn graph_parts(span: usize, part_len: usize) -> usize {
    span.div_ceil(part_len.max(1)).max(1).next_power_of_two()
}

/// Little-endian bytes of `i32`s.
pub(crate) fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of `i64`s.
pub(crate) fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openledger_lora::serve::{RequestId, SeqId, StepSeq};

    fn seq(id: u64, len: usize, start_pos: usize) -> StepSeq {
        StepSeq {
            request: RequestId(id),
            seq: SeqId(id),
            tokens: vec![1; len],
            start_pos,
            adapter: None,
            block_table: (0..(start_pos + len).div_ceil(4) as u32).collect(),
            needs_logits: true,
        }
    }

    #[test]
    fn buckets_cover_every_batch_size_with_bounded_padding() {
        assert_eq!(graph_bucket(0, 512), None);
        assert_eq!(graph_bucket(513, 512), None);
        let expect = [
            (1, 1),
            (2, 2),
            (3, 4),
            (5, 8),
            (8, 8),
            (9, 16),
            (17, 24),
            (64, 64),
            (65, 96),
            (250, 256),
            (257, 320),
            (500, 512),
            (512, 512),
        ];
        for (rows, bucket) in expect {
            assert_eq!(graph_bucket(rows, 512), Some(bucket), "{rows} rows");
        }
        // The cap is a bucket of its own.
        assert_eq!(graph_bucket(300, 300), Some(300));
        assert_eq!(graph_bucket(5, 6), Some(6));
        let mut sizes = std::collections::BTreeSet::new();
        for rows in 1..=512 {
            let b = graph_bucket(rows, 512).unwrap();
            assert!(b >= rows);
            let step = match rows {
                0..=8 => rows,
                9..=64 => 8,
                65..=256 => 32,
                _ => 64,
            };
            assert!(b - rows < step, "{rows} rows padded to {b}");
            sizes.insert(b);
        }
        assert_eq!(sizes.len(), 4 + 7 + 6 + 4, "captured sizes: {sizes:?}");
    }

    #[test]
    fn graph_parts_round_up_to_powers_of_two() {
        assert_eq!(graph_parts(1, 512), 1);
        assert_eq!(graph_parts(512, 512), 1);
        assert_eq!(graph_parts(513, 512), 2);
        assert_eq!(graph_parts(1537, 512), 4);
        assert_eq!(graph_parts(3000, 0), 4096);
    }

    #[test]
    fn a_decode_step_is_padded_with_rows_that_write_nothing() {
        let batch = StepBatch {
            seqs: vec![seq(0, 1, 40), seq(1, 1, 6)],
        };
        let mut m = StepMeta::pack(&batch, 2, 4, 100, None).unwrap();
        assert!(m.is_decode());
        let before = m.clone();
        m.pad_decode(2);
        assert_eq!(m, before, "no padding needed");
        m.pad_decode(4);
        assert_eq!(m.ids.len(), 4);
        assert_eq!(&m.ids[..2], &before.ids[..]);
        assert_eq!(&m.slots[..2], &before.slots[..]);
        assert_eq!(&m.slots[2..], &[-1, -1]);
        assert_eq!(&m.positions[2..], &[0, 0]);
        let off = m.table_off[2] as usize;
        assert_eq!(off, before.tables.len());
        assert_eq!(m.tables[off], 0);
        assert_eq!(m.table_off[3] as usize, off);
        assert_eq!(m.logit_rows, vec![0, 1, 2, 3]);
        assert_eq!(m.max_span, 41);
        assert!(m.is_decode());
        // A prompt, or a row that needs no logits, is no decode step.
        let prompt = StepBatch {
            seqs: vec![seq(0, 1, 40), seq(1, 3, 0)],
        };
        assert!(
            !StepMeta::pack(&prompt, 2, 4, 100, None)
                .unwrap()
                .is_decode()
        );
        let mut quiet = seq(2, 1, 3);
        quiet.needs_logits = false;
        let quiet = StepBatch {
            seqs: vec![seq(0, 1, 40), quiet],
        };
        assert!(!StepMeta::pack(&quiet, 2, 4, 100, None).unwrap().is_decode());
    }

    #[test]
    fn prompts_go_to_tiles_and_the_rest_row_by_row() {
        // A decode row at 40, a 150-row chunk from 10, a 15-row chunk, a 16-row prompt.
        let batch = StepBatch {
            seqs: vec![seq(0, 1, 40), seq(1, 150, 10), seq(2, 15, 0), seq(3, 16, 0)],
        };
        let m = StepMeta::pack(&batch, 2, 4, 100, None).unwrap();
        assert_eq!(m.seqs, vec![(0, 1), (1, 150), (151, 15), (166, 16)]);
        let plan = m.attention_plan(64, 16);
        assert_eq!(plan.tiles, vec![1, 64, 65, 64, 129, 22, 166, 16]);
        assert_eq!(plan.num_tiles(), 4);
        let mut rows = vec![0];
        rows.extend(151..166);
        assert_eq!(plan.rows, rows);
        assert_eq!(plan.rows_span, 41, "the decode row at 40 sees 41 keys");
        // 0: every row by rows, and the span is the step's.
        let all = m.attention_plan(64, 0);
        assert!(all.tiles.is_empty());
        assert_eq!(all.rows, (0..182).collect::<Vec<i32>>());
        assert_eq!(all.rows_span, m.max_span);
        assert_eq!(m.max_span, 160);
        // A window bounds the span.
        let windowed = StepMeta::pack(&batch, 2, 4, 100, Some(8)).unwrap();
        assert_eq!(windowed.attention_plan(64, 16).rows_span, 8);
        // Every sequence tiled: no row left for the row kernel.
        let tiled = m.attention_plan(64, 1);
        assert!(tiled.rows.is_empty());
        assert_eq!(tiled.rows_span, 0);
        assert_eq!(tiled.num_tiles(), 6);
    }
}
