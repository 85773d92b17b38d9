//! The paged KV cache: a fixed pool of blocks, each holding `block_size` token positions of K and
//! V for every layer, and a block table per sequence mapping its positions to blocks (the layout
//! of vLLM's PagedAttention). A sequence grows one block at a time, so memory is wasted only in
//! each sequence's last block, and a finished sequence hands its blocks straight back.
//!
//! Values are stored as f32, f16 or bf16 ([`KvDtype`]) and always computed with in f32. Within
//! a block each KV head's rows are contiguous, so attention reads them as runs. A sequence can
//! be forked (parallel sampling, beam search): the fork shares every block and a shared block is
//! copied only when one side writes into it.
//!
//! Every operation that can fail (no free block, unknown sequence, position out of range, a
//! storage that could not copy) returns a [`KvError`] and leaves the cache exactly as it was.
//!
//! The block tables are kept apart from the values: [`PagedKvCache`] decides which block holds
//! what (allocation, forks, copy on write, swapping) and asks its [`KvStorage`] to copy blocks
//! and to move them out to host memory and back. [`HostKvStorage`], the default, keeps every
//! block in one host vector; a storage in GPU memory carries out the same requests with device
//! copies (swap-out then being a device-to-host copy).
//!
//! ```
//! use openledger_lora::serve::{KvLayout, PagedKvCache, SeqId};
//!
//! let layout = KvLayout { n_layers: 1, n_kv_heads: 1, head_dim: 2, block_size: 2 };
//! let mut kv = PagedKvCache::new(layout, 4).unwrap();
//! let s = SeqId(7);
//! kv.add_sequence(s).unwrap();
//! let range = kv.append_slots(s, 3).unwrap(); // positions 0..3 take two blocks
//! assert_eq!(range, 0..3);
//! assert_eq!(kv.block_table(s).unwrap().len(), 2);
//! kv.write(s, 0, 2, &[1.0, 2.0], &[3.0, 4.0]).unwrap();
//! assert_eq!(kv.key(s, 0, 2).unwrap(), [1.0, 2.0]);
//! kv.free(s).unwrap();
//! assert_eq!(kv.free_blocks(), 4);
//! ```

use openledger_core::error::{Classify, ErrorKind};
use std::collections::HashMap;
use std::ops::Range;

use half::{bf16, f16};
use thiserror::Error;

/// Identifies one sequence in the cache (the scheduler gives one per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// Shape of the cache: what one token position stores and how positions group into blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// Transformer layers (each has its own K and V).
    pub n_layers: usize,
    /// Key/value heads per layer.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Token positions per block.
    pub block_size: usize,
}

impl KvLayout {
    /// Floats in one position's K (or V) for one layer: `n_kv_heads · head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Floats in one block (all layers, K and V).
    pub fn block_floats(&self) -> usize {
        self.n_layers * 2 * self.block_size * self.kv_dim()
    }

    /// Blocks needed to hold `tokens` positions (a zero block size, which no cache accepts,
    /// counts as 1).
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size.max(1))
    }
}

/// Why a cache operation was refused. The cache is unchanged after any of them.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KvError {
    /// A layout dimension is zero, or the pool has no block, or its size overflows.
    #[error("invalid KV layout {layout:?} with {num_blocks} blocks: {reason}")]
    InvalidLayout {
        /// The layout asked for.
        layout: KvLayout,
        /// The pool size asked for.
        num_blocks: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Not enough free blocks for the request.
    #[error("out of KV blocks for sequence {seq:?}: need {needed}, {free} free")]
    OutOfBlocks {
        /// The sequence that asked.
        seq: SeqId,
        /// Blocks it needed.
        needed: usize,
        /// Blocks free at the time.
        free: usize,
    },
    /// The sequence is not in the cache (or, for swapping in, not in the swapped store).
    #[error("unknown sequence {seq:?}")]
    UnknownSequence {
        /// The sequence named.
        seq: SeqId,
    },
    /// The sequence is already in the cache or the swapped store.
    #[error("sequence {seq:?} already exists")]
    DuplicateSequence {
        /// The sequence named.
        seq: SeqId,
    },
    /// A position at or past the sequence's length.
    #[error("position {pos} out of range for sequence {seq:?} of length {len}")]
    PositionOutOfRange {
        /// The sequence named.
        seq: SeqId,
        /// The position asked for.
        pos: usize,
        /// The sequence's length.
        len: usize,
    },
    /// A layer index at or past `n_layers`.
    #[error("layer {layer} out of range ({n_layers} layers)")]
    LayerOutOfRange {
        /// The layer asked for.
        layer: usize,
        /// Layers in the layout.
        n_layers: usize,
    },
    /// A K or V slice whose length is not `kv_dim`, or a query/output of the wrong size.
    #[error("{what} has {found} floats, expected {expected}")]
    WrongLength {
        /// Which argument.
        what: &'static str,
        /// Floats expected.
        expected: usize,
        /// Floats given.
        found: usize,
    },
    /// Attention parameters that cannot work with the cache's layout.
    #[error("invalid attention parameters: {reason}")]
    InvalidAttention {
        /// What is wrong.
        reason: String,
    },
    /// The storage failed to carry out a copy the cache asked of it (a device copy, for a
    /// storage in GPU memory); the tables are as they were before the call.
    #[error("KV storage failed to {op}: {message}")]
    Storage {
        /// What the storage was doing.
        op: &'static str,
        /// Why it failed.
        message: String,
    },
}

impl Classify for KvError {
    fn kind(&self) -> ErrorKind {
        match self {
            KvError::OutOfBlocks { .. } => ErrorKind::Budget,
            KvError::InvalidLayout { .. }
            | KvError::UnknownSequence { .. }
            | KvError::DuplicateSequence { .. }
            | KvError::PositionOutOfRange { .. }
            | KvError::LayerOutOfRange { .. }
            | KvError::WrongLength { .. }
            | KvError::InvalidAttention { .. } => ErrorKind::InvalidArgument,
            KvError::Storage { .. } => ErrorKind::Internal,
        }
    }
}

/// How the cache stores K and V; arithmetic on them is always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// 4 bytes a value, exact.
    #[default]
    F32,
    /// IEEE half precision: 2 bytes a value, 11 significant bits.
    F16,
    /// bfloat16: 2 bytes a value, f32's range, 8 significant bits.
    Bf16,
}

impl KvDtype {
    /// Bytes one value takes.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
        }
    }
}

/// A storage element of the cache, converted to and from f32.
pub(crate) trait KvElem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl KvElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl KvElem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl KvElem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// Rows of one KV head in one block, in the cache's storage type.
pub(crate) enum HeadRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

/// The pool's (or a swapped sequence's) values.
#[derive(Debug, Clone)]
enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

/// Runs `$body` with `$v` bound to the storage's vector, whatever its element type.
macro_rules! with_storage {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            Storage::F32($v) => $body,
            Storage::F16($v) => $body,
            Storage::Bf16($v) => $body,
        }
    };
}

impl Storage {
    fn zeros(dtype: KvDtype, n: usize) -> Self {
        match dtype {
            KvDtype::F32 => Storage::F32(vec![0.0; n]),
            KvDtype::F16 => Storage::F16(vec![f16::ZERO; n]),
            KvDtype::Bf16 => Storage::Bf16(vec![bf16::ZERO; n]),
        }
    }

    fn write(&mut self, off: usize, x: &[f32]) {
        with_storage!(self, v => {
            for (d, &s) in v[off..off + x.len()].iter_mut().zip(x) {
                *d = KvElem::from_f32(s);
            }
        })
    }

    fn read(&self, off: usize, n: usize, out: &mut Vec<f32>) {
        with_storage!(self, v => out.extend(v[off..off + n].iter().map(|x| x.to_f32())))
    }

    fn copy_within(&mut self, src: Range<usize>, dst: usize) {
        with_storage!(self, v => v.copy_within(src, dst))
    }

    /// Appends `src[range]` of the same type to `self`.
    fn append_from(&mut self, src: &Storage, range: Range<usize>) {
        match (self, src) {
            (Storage::F32(d), Storage::F32(s)) => d.extend_from_slice(&s[range]),
            (Storage::F16(d), Storage::F16(s)) => d.extend_from_slice(&s[range]),
            (Storage::Bf16(d), Storage::Bf16(s)) => d.extend_from_slice(&s[range]),
            // One cache only ever holds one type.
            _ => {}
        }
    }

    /// Copies `src[range]` of the same type into `self` at `dst`.
    fn copy_from(&mut self, dst: usize, src: &Storage, range: Range<usize>) {
        let n = range.len();
        match (self, src) {
            (Storage::F32(d), Storage::F32(s)) => d[dst..dst + n].copy_from_slice(&s[range]),
            (Storage::F16(d), Storage::F16(s)) => d[dst..dst + n].copy_from_slice(&s[range]),
            (Storage::Bf16(d), Storage::Bf16(s)) => d[dst..dst + n].copy_from_slice(&s[range]),
            _ => {}
        }
    }

    fn empty_like(&self, capacity: usize) -> Storage {
        match self {
            Storage::F32(_) => Storage::F32(Vec::with_capacity(capacity)),
            Storage::F16(_) => Storage::F16(Vec::with_capacity(capacity)),
            Storage::Bf16(_) => Storage::Bf16(Vec::with_capacity(capacity)),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct SeqBlocks {
    blocks: Vec<u32>,
    len: usize,
}

/// Where a paged cache keeps its values, driven by the block tables of [`PagedKvCache`]: the
/// cache decides which block holds what (allocation, forks sharing blocks, copy on write,
/// swapping), the storage holds the bytes and carries out the copies it is asked for. The host
/// storage ([`HostKvStorage`]) keeps every block in one vector; a storage in device memory
/// keeps them where its kernels read them and swaps out to host memory.
pub trait KvStorage {
    /// A swapped-out sequence's blocks, held outside the pool (in host memory).
    type Swapped;

    /// Copies block `src` into block `dst` (both below the pool's size), every layer, K and V.
    fn copy_block(&mut self, src: u32, dst: u32) -> Result<(), KvError>;

    /// Copies `blocks` out of the pool, in this order.
    fn swap_out(&mut self, blocks: &[u32]) -> Result<Self::Swapped, KvError>;

    /// Copies a swapped sequence's blocks, in their order, into `blocks` of the pool (as many
    /// as it holds).
    fn swap_in(&mut self, swapped: &Self::Swapped, blocks: &[u32]) -> Result<(), KvError>;
}

/// The host storage of a paged cache: every block in one vector of f32, f16 or bf16, each
/// holding, per layer, K then V as `[n_kv_heads, block_size, head_dim]`.
#[derive(Debug, Clone)]
pub struct HostKvStorage {
    block_floats: usize,
    data: Storage,
}

/// A swapped-out sequence's blocks in host memory (of a [`HostKvStorage`]).
#[derive(Debug, Clone)]
pub struct HostSwapped {
    data: Storage,
}

impl KvStorage for HostKvStorage {
    type Swapped = HostSwapped;

    fn copy_block(&mut self, src: u32, dst: u32) -> Result<(), KvError> {
        let bf = self.block_floats;
        let from = src as usize * bf;
        self.data.copy_within(from..from + bf, dst as usize * bf);
        Ok(())
    }

    fn swap_out(&mut self, blocks: &[u32]) -> Result<HostSwapped, KvError> {
        let bf = self.block_floats;
        let mut data = self.data.empty_like(blocks.len() * bf);
        for &b in blocks {
            let o = b as usize * bf;
            data.append_from(&self.data, o..o + bf);
        }
        Ok(HostSwapped { data })
    }

    fn swap_in(&mut self, swapped: &HostSwapped, blocks: &[u32]) -> Result<(), KvError> {
        let bf = self.block_floats;
        for (i, &b) in blocks.iter().enumerate() {
            self.data
                .copy_from(b as usize * bf, &swapped.data, i * bf..(i + 1) * bf);
        }
        Ok(())
    }
}

struct SwappedSeq<W> {
    data: W,
    /// Blocks it held when it was swapped out.
    blocks: usize,
    len: usize,
}

impl<W: Clone> Clone for SwappedSeq<W> {
    fn clone(&self) -> Self {
        Self {
            data: self.data.clone(),
            blocks: self.blocks,
            len: self.len,
        }
    }
}

/// A paged KV cache over a fixed pool of blocks: the block tables (allocation, forks sharing
/// blocks, copy on write, swapping) over a storage `S` that holds the values; by default the
/// host storage (f32, f16 or bf16 values, f32 arithmetic), with a host-side swapped store.
pub struct PagedKvCache<S: KvStorage = HostKvStorage> {
    layout: KvLayout,
    num_blocks: usize,
    dtype: KvDtype,
    storage: S,
    free: Vec<u32>,
    /// Sequences holding each block (0: free; above 1: shared by forks, copied on write).
    refs: Vec<u32>,
    seqs: HashMap<SeqId, SeqBlocks>,
    swapped: HashMap<SeqId, SwappedSeq<S::Swapped>>,
}

impl<S: KvStorage + Clone> Clone for PagedKvCache<S>
where
    S::Swapped: Clone,
{
    fn clone(&self) -> Self {
        Self {
            layout: self.layout,
            num_blocks: self.num_blocks,
            dtype: self.dtype,
            storage: self.storage.clone(),
            free: self.free.clone(),
            refs: self.refs.clone(),
            seqs: self.seqs.clone(),
            swapped: self.swapped.clone(),
        }
    }
}

impl<S: KvStorage> std::fmt::Debug for PagedKvCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagedKvCache")
            .field("layout", &self.layout)
            .field("num_blocks", &self.num_blocks)
            .field("dtype", &self.dtype)
            .field("free_blocks", &self.free.len())
            .field("sequences", &self.seqs.len())
            .field("swapped", &self.swapped.len())
            .finish()
    }
}

impl PagedKvCache {
    /// A cache of `num_blocks` blocks of `layout`, all free, storing f32.
    pub fn new(layout: KvLayout, num_blocks: usize) -> Result<Self, KvError> {
        Self::with_dtype(layout, num_blocks, KvDtype::F32)
    }

    /// A cache storing its values as `dtype` (f16 and bf16 halve its memory; values are rounded
    /// when written and computed with in f32).
    pub fn with_dtype(
        layout: KvLayout,
        num_blocks: usize,
        dtype: KvDtype,
    ) -> Result<Self, KvError> {
        let invalid = |reason| KvError::InvalidLayout {
            layout,
            num_blocks,
            reason,
        };
        if layout.n_layers == 0
            || layout.n_kv_heads == 0
            || layout.head_dim == 0
            || layout.block_size == 0
        {
            return Err(invalid("every dimension must be at least 1"));
        }
        if num_blocks == 0 || num_blocks > u32::MAX as usize {
            return Err(invalid("the pool needs between 1 and u32::MAX blocks"));
        }
        let floats = layout
            .n_layers
            .checked_mul(2 * layout.block_size)
            .and_then(|x| x.checked_mul(layout.kv_dim()))
            .and_then(|x| x.checked_mul(num_blocks))
            .ok_or_else(|| invalid("the pool size overflows"))?;
        let storage = HostKvStorage {
            block_floats: layout.block_floats(),
            data: Storage::zeros(dtype, floats),
        };
        Self::with_storage(layout, num_blocks, dtype, storage)
    }

    /// Stores K and V (each `[n_kv_heads, head_dim]`, `kv_dim` floats) of `layer` at `pos`, a
    /// position already appended. Writing into a block shared with a fork first copies it (and
    /// fails with [`KvError::OutOfBlocks`], changing nothing, when no block is free).
    pub fn write(
        &mut self,
        seq: SeqId,
        layer: usize,
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), KvError> {
        let d = self.layout.kv_dim();
        for (what, s) in [("key", k), ("value", v)] {
            if s.len() != d {
                return Err(KvError::WrongLength {
                    what,
                    expected: d,
                    found: s.len(),
                });
            }
        }
        let (block, slot) = self.writable_slot(seq, layer, pos)?;
        let hd = self.layout.head_dim;
        for h in 0..self.layout.n_kv_heads {
            let ko = self.offset(block, layer, false, h, slot);
            self.storage.data.write(ko, &k[h * hd..(h + 1) * hd]);
            let vo = self.offset(block, layer, true, h, slot);
            self.storage.data.write(vo, &v[h * hd..(h + 1) * hd]);
        }
        Ok(())
    }

    /// Where head `head`'s row at `slot` starts. A block holds, per layer, K then V, each as
    /// `[n_kv_heads, block_size, head_dim]`: one head's keys for a block are contiguous, which is
    /// what attention reads.
    fn offset(&self, block: u32, layer: usize, value: bool, head: usize, slot: usize) -> usize {
        let l = &self.layout;
        ((((block as usize * l.n_layers + layer) * 2 + usize::from(value)) * l.n_kv_heads + head)
            * l.block_size
            + slot)
            * l.head_dim
    }

    fn read(&self, seq: SeqId, layer: usize, pos: usize, value: bool) -> Result<Vec<f32>, KvError> {
        let (block, slot) = self.locate(seq, layer, pos)?;
        let hd = self.layout.head_dim;
        let mut out = Vec::with_capacity(self.layout.kv_dim());
        for h in 0..self.layout.n_kv_heads {
            let o = self.offset(block, layer, value, h, slot);
            self.storage.data.read(o, hd, &mut out);
        }
        Ok(out)
    }

    /// A copy of the key stored for `layer` at `pos` (`[n_kv_heads, head_dim]`).
    pub fn key(&self, seq: SeqId, layer: usize, pos: usize) -> Result<Vec<f32>, KvError> {
        self.read(seq, layer, pos, false)
    }

    /// A copy of the value stored for `layer` at `pos` (`[n_kv_heads, head_dim]`).
    pub fn value(&self, seq: SeqId, layer: usize, pos: usize) -> Result<Vec<f32>, KvError> {
        self.read(seq, layer, pos, true)
    }

    /// One KV head's K (or V) rows in one block and layer: `[block_size, head_dim]`, for
    /// kernels that walk a block table themselves. `block` must be below
    /// [`num_blocks`](Self::num_blocks) and `head` below `n_kv_heads`.
    pub(crate) fn head_rows(
        &self,
        block: u32,
        layer: usize,
        value: bool,
        head: usize,
    ) -> HeadRows<'_> {
        let o = self.offset(block, layer, value, head, 0);
        let r = o..o + self.layout.block_size * self.layout.head_dim;
        match &self.storage.data {
            Storage::F32(v) => HeadRows::F32(&v[r]),
            Storage::F16(v) => HeadRows::F16(&v[r]),
            Storage::Bf16(v) => HeadRows::Bf16(&v[r]),
        }
    }
}

impl<S: KvStorage> PagedKvCache<S> {
    /// A cache of `num_blocks` blocks of `layout`, all free, over `storage` (which holds that
    /// many blocks of values stored as `dtype`).
    pub fn with_storage(
        layout: KvLayout,
        num_blocks: usize,
        dtype: KvDtype,
        storage: S,
    ) -> Result<Self, KvError> {
        if layout.n_layers == 0
            || layout.n_kv_heads == 0
            || layout.head_dim == 0
            || layout.block_size == 0
        {
            return Err(KvError::InvalidLayout {
                layout,
                num_blocks,
                reason: "every dimension must be at least 1",
            });
        }
        if num_blocks == 0 || num_blocks > u32::MAX as usize {
            return Err(KvError::InvalidLayout {
                layout,
                num_blocks,
                reason: "the pool needs between 1 and u32::MAX blocks",
            });
        }
        Ok(Self {
            layout,
            num_blocks,
            dtype,
            storage,
            // Popped from the back: hand out low block numbers first.
            free: (0..num_blocks as u32).rev().collect(),
            refs: vec![0; num_blocks],
            seqs: HashMap::new(),
            swapped: HashMap::new(),
        })
    }

    /// The storage holding the values.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage holding the values, to write into the slots [`writable_slot`]
    /// (Self::writable_slot) gives (a device storage's kernels write K and V themselves).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// The block and slot where `layer`'s K and V of `seq` at `pos` (a position already
    /// appended) are to be written, copying first a block shared with a fork (which fails
    /// with [`KvError::OutOfBlocks`], changing nothing, when no block is free).
    pub fn writable_slot(
        &mut self,
        seq: SeqId,
        layer: usize,
        pos: usize,
    ) -> Result<(u32, usize), KvError> {
        let (mut block, slot) = self.locate(seq, layer, pos)?;
        if self.refs[block as usize] > 1 {
            let index = pos / self.layout.block_size;
            self.copy_on_write(seq, index)?;
            block = self.entry(seq)?.blocks[index];
        }
        Ok((block, slot))
    }

    /// The cache's layout.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// How values are stored.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Blocks free now.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Whether `seq` is in the cache (not counting swapped sequences).
    pub fn contains(&self, seq: SeqId) -> bool {
        self.seqs.contains_key(&seq)
    }

    /// Whether `seq` is in the swapped store.
    pub fn is_swapped(&self, seq: SeqId) -> bool {
        self.swapped.contains_key(&seq)
    }

    /// Adds an empty sequence (it holds no block until it appends).
    pub fn add_sequence(&mut self, seq: SeqId) -> Result<(), KvError> {
        if self.seqs.contains_key(&seq) || self.swapped.contains_key(&seq) {
            return Err(KvError::DuplicateSequence { seq });
        }
        self.seqs.insert(seq, SeqBlocks::default());
        Ok(())
    }

    fn entry(&self, seq: SeqId) -> Result<&SeqBlocks, KvError> {
        self.seqs.get(&seq).ok_or(KvError::UnknownSequence { seq })
    }

    /// Positions stored for `seq`.
    pub fn seq_len(&self, seq: SeqId) -> Result<usize, KvError> {
        Ok(self.entry(seq)?.len)
    }

    /// The blocks of `seq`, in position order.
    pub fn block_table(&self, seq: SeqId) -> Result<&[u32], KvError> {
        Ok(&self.entry(seq)?.blocks)
    }

    /// New blocks `seq` would need to append `n` positions (counting the copy of a partly
    /// filled last block it shares with a fork).
    pub fn blocks_needed(&self, seq: SeqId, n: usize) -> Result<usize, KvError> {
        let e = self.entry(seq)?;
        let grow = self
            .layout
            .blocks_for(e.len + n)
            .saturating_sub(e.blocks.len());
        Ok(grow + usize::from(self.last_block_is_shared(e, n)))
    }

    fn last_block_is_shared(&self, e: &SeqBlocks, n: usize) -> bool {
        n > 0
            && !e.len.is_multiple_of(self.layout.block_size)
            && e.blocks.last().is_some_and(|&b| self.refs[b as usize] > 1)
    }

    /// Takes a free block for one holder.
    fn take_block(&mut self) -> Option<u32> {
        let b = self.free.pop()?;
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Drops one holder from each block, freeing those no one holds any more.
    fn release_blocks(&mut self, blocks: Vec<u32>) {
        for b in blocks.into_iter().rev() {
            let r = &mut self.refs[b as usize];
            // A block no one holds is already free: releasing it again must not put it on the
            // free list twice (two sequences would then write into it).
            debug_assert!(*r > 0, "block {b} released with no holder");
            if *r == 0 {
                continue;
            }
            *r -= 1;
            if *r == 0 {
                self.free.push(b);
            }
        }
    }

    /// Replaces the shared block at `index` of `seq`'s table with a private copy.
    fn copy_on_write(&mut self, seq: SeqId, index: usize) -> Result<(), KvError> {
        let old = self.entry(seq)?.blocks[index];
        let new = self.take_block().ok_or(KvError::OutOfBlocks {
            seq,
            needed: 1,
            free: 0,
        })?;
        if let Err(e) = self.storage.copy_block(old, new) {
            self.release_blocks(vec![new]);
            return Err(e);
        }
        self.refs[old as usize] -= 1;
        if let Some(e) = self.seqs.get_mut(&seq) {
            e.blocks[index] = new;
        }
        Ok(())
    }

    /// Makes `child` a copy of `parent` that shares all its blocks; a shared block is copied
    /// only when one of them writes to it (or appends into it). Takes no block.
    pub fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<(), KvError> {
        if self.seqs.contains_key(&child) || self.swapped.contains_key(&child) {
            return Err(KvError::DuplicateSequence { seq: child });
        }
        let e = self.entry(parent)?.clone();
        for &b in &e.blocks {
            self.refs[b as usize] += 1;
        }
        self.seqs.insert(child, e);
        Ok(())
    }

    /// Grows `seq` by `n` positions, taking new blocks as the last one fills, and returns the new
    /// positions. All or nothing: with too few free blocks it fails with
    /// [`KvError::OutOfBlocks`] and takes none.
    pub fn append_slots(&mut self, seq: SeqId, n: usize) -> Result<Range<usize>, KvError> {
        let needed = self.blocks_needed(seq, n)?;
        if needed > self.free.len() {
            return Err(KvError::OutOfBlocks {
                seq,
                needed,
                free: self.free.len(),
            });
        }
        let e = self.entry(seq)?;
        if self.last_block_is_shared(e, n) {
            let last = e.blocks.len() - 1;
            self.copy_on_write(seq, last)?;
        }
        let grow = self
            .layout
            .blocks_for(self.entry(seq)?.len + n)
            .saturating_sub(self.entry(seq)?.blocks.len());
        let mut new_blocks = Vec::with_capacity(grow);
        for _ in 0..grow {
            new_blocks.extend(self.take_block());
        }
        let e = self
            .seqs
            .get_mut(&seq)
            .ok_or(KvError::UnknownSequence { seq })?;
        e.blocks.extend(new_blocks);
        let start = e.len;
        e.len += n;
        Ok(start..e.len)
    }

    /// Shortens `seq` to `len` positions (no-op when it is not longer), returning blocks no
    /// longer needed. Used to roll back a step whose forward pass failed.
    pub fn truncate(&mut self, seq: SeqId, len: usize) -> Result<(), KvError> {
        let bs = self.layout.block_size;
        let e = self
            .seqs
            .get_mut(&seq)
            .ok_or(KvError::UnknownSequence { seq })?;
        if len >= e.len {
            return Ok(());
        }
        e.len = len;
        let keep = len.div_ceil(bs);
        let dropped = e.blocks.split_off(keep);
        self.release_blocks(dropped);
        Ok(())
    }

    /// Removes `seq` (from the cache or the swapped store) and frees its blocks.
    pub fn free(&mut self, seq: SeqId) -> Result<(), KvError> {
        if let Some(e) = self.seqs.remove(&seq) {
            self.release_blocks(e.blocks);
            Ok(())
        } else if self.swapped.remove(&seq).is_some() {
            Ok(())
        } else {
            Err(KvError::UnknownSequence { seq })
        }
    }

    fn locate(&self, seq: SeqId, layer: usize, pos: usize) -> Result<(u32, usize), KvError> {
        if layer >= self.layout.n_layers {
            return Err(KvError::LayerOutOfRange {
                layer,
                n_layers: self.layout.n_layers,
            });
        }
        let e = self.entry(seq)?;
        if pos >= e.len {
            return Err(KvError::PositionOutOfRange {
                seq,
                pos,
                len: e.len,
            });
        }
        let bs = self.layout.block_size;
        Ok((e.blocks[pos / bs], pos % bs))
    }

    /// Moves `seq`'s blocks to the swapped store (host memory) and frees them in the pool.
    pub fn swap_out(&mut self, seq: SeqId) -> Result<(), KvError> {
        let e = self.entry(seq)?;
        let (blocks, len) = (e.blocks.clone(), e.len);
        let data = self.storage.swap_out(&blocks)?;
        self.seqs.remove(&seq);
        let n = blocks.len();
        self.release_blocks(blocks);
        self.swapped.insert(
            seq,
            SwappedSeq {
                data,
                blocks: n,
                len,
            },
        );
        Ok(())
    }

    /// Blocks `seq` needs to be swapped back in.
    pub fn swapped_blocks(&self, seq: SeqId) -> Result<usize, KvError> {
        let s = self
            .swapped
            .get(&seq)
            .ok_or(KvError::UnknownSequence { seq })?;
        Ok(s.blocks)
    }

    /// Brings a swapped sequence back into fresh blocks (all or nothing); blocks it shared with a
    /// fork before swapping out come back as its own copies.
    pub fn swap_in(&mut self, seq: SeqId) -> Result<(), KvError> {
        let needed = self.swapped_blocks(seq)?;
        if needed > self.free.len() {
            return Err(KvError::OutOfBlocks {
                seq,
                needed,
                free: self.free.len(),
            });
        }
        let s = self
            .swapped
            .remove(&seq)
            .ok_or(KvError::UnknownSequence { seq })?;
        let blocks: Vec<u32> = (0..needed).filter_map(|_| self.take_block()).collect();
        if let Err(e) = self.storage.swap_in(&s.data, &blocks) {
            self.release_blocks(blocks);
            self.swapped.insert(seq, s);
            return Err(e);
        }
        self.seqs.insert(seq, SeqBlocks { blocks, len: s.len });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host storage, with copies that can be made to fail, recording what it was asked.
    #[derive(Debug)]
    struct Flaky {
        host: HostKvStorage,
        fail: bool,
        copies: Vec<(u32, u32)>,
    }

    impl KvStorage for Flaky {
        type Swapped = HostSwapped;

        fn copy_block(&mut self, src: u32, dst: u32) -> Result<(), KvError> {
            self.check("copy a block")?;
            self.copies.push((src, dst));
            self.host.copy_block(src, dst)
        }

        fn swap_out(&mut self, blocks: &[u32]) -> Result<HostSwapped, KvError> {
            self.check("swap out")?;
            self.host.swap_out(blocks)
        }

        fn swap_in(&mut self, swapped: &HostSwapped, blocks: &[u32]) -> Result<(), KvError> {
            self.check("swap in")?;
            self.host.swap_in(swapped, blocks)
        }
    }

    impl Flaky {
        fn check(&self, op: &'static str) -> Result<(), KvError> {
            if self.fail {
                Err(KvError::Storage {
                    op,
                    message: "refused".into(),
                })
            } else {
                Ok(())
            }
        }
    }

    fn cache() -> PagedKvCache<Flaky> {
        let layout = KvLayout {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: 2,
            block_size: 2,
        };
        let host = PagedKvCache::new(layout, 4).unwrap().storage;
        let flaky = Flaky {
            host,
            fail: false,
            copies: Vec::new(),
        };
        PagedKvCache::with_storage(layout, 4, KvDtype::F32, flaky).unwrap()
    }

    #[test]
    fn a_storage_that_fails_leaves_the_tables_as_they_were() {
        let mut kv = cache();
        let (a, b) = (SeqId(1), SeqId(2));
        kv.add_sequence(a).unwrap();
        kv.append_slots(a, 3).unwrap();
        kv.fork(a, b).unwrap();
        // b writes into the shared second block: a copy on write, refused by the storage.
        kv.storage_mut().fail = true;
        let before = (kv.free_blocks(), kv.block_table(b).unwrap().to_vec());
        let e = kv.writable_slot(b, 0, 2).unwrap_err();
        assert!(
            matches!(
                e,
                KvError::Storage {
                    op: "copy a block",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            (kv.free_blocks(), kv.block_table(b).unwrap().to_vec()),
            before
        );
        // Once the storage works, the copy is asked of it: a's block into a fresh one.
        kv.storage_mut().fail = false;
        let (block, slot) = kv.writable_slot(b, 0, 2).unwrap();
        assert_eq!(slot, 0);
        let original = kv.block_table(a).unwrap()[1];
        assert_ne!(block, original);
        assert_eq!(kv.storage().copies, vec![(original, block)]);
        assert_eq!(kv.block_table(b).unwrap()[1], block);
        // Swapping out and in, refused: the sequence stays where it was.
        kv.storage_mut().fail = true;
        assert!(kv.swap_out(a).is_err());
        assert!(kv.contains(a) && !kv.is_swapped(a));
        kv.storage_mut().fail = false;
        kv.swap_out(a).unwrap();
        kv.storage_mut().fail = true;
        let free = kv.free_blocks();
        assert!(kv.swap_in(a).is_err());
        assert!(kv.is_swapped(a) && !kv.contains(a));
        assert_eq!(kv.free_blocks(), free);
        kv.storage_mut().fail = false;
        kv.swap_in(a).unwrap();
        assert_eq!(kv.seq_len(a).unwrap(), 3);
    }
}
