//! [`DeviceKvStorage`]: the values of a paged KV cache in device memory, in the layout the
//! kernels read (per layer, K and V each `[blocks, kv_heads, block_size, head_dim]`). The
//! engine's [`PagedKvCache`](openledger_lora::serve::PagedKvCache) keeps the block tables and
//! asks it for block copies (copy on write) and swaps: swapping out copies a sequence's blocks
//! to host memory, swapping in copies them back.

use crate::error::GpuError;
use crate::runtime::{Buffer, Dtype, Runtime};
use openledger_lora::serve::{KvError, KvLayout, KvStorage};
use std::sync::Arc;

/// A paged KV pool in device memory (see the module docs).
#[derive(Debug)]
pub struct DeviceKvStorage {
    layout: KvLayout,
    num_blocks: usize,
    dtype: Dtype,
    k: Vec<Buffer>,
    v: Vec<Buffer>,
}

/// A swapped-out sequence's blocks in host memory: per block, per layer, K then V.
#[derive(Debug, Clone)]
pub struct DeviceSwapped {
    data: Vec<u8>,
}

impl DeviceSwapped {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

fn storage_error(op: &'static str) -> impl Fn(GpuError) -> KvError {
    move |e| KvError::Storage {
        op,
        message: e.to_string(),
    }
}

impl DeviceKvStorage {
    /// Allocates `num_blocks` blocks of `layout` holding `dtype`.
    pub fn new(
        rt: &Arc<dyn Runtime>,
        layout: KvLayout,
        num_blocks: usize,
        dtype: Dtype,
    ) -> Result<Self, GpuError> {
        let bytes = num_blocks
            .checked_mul(layout.block_size)
            .and_then(|x| x.checked_mul(layout.kv_dim()))
            .and_then(|x| x.checked_mul(dtype.bytes()))
            .ok_or_else(|| GpuError::InvalidArgument {
                name: "num_blocks",
                reason: format!("{num_blocks} blocks of {layout:?} overflow"),
            })?;
        let mut k = Vec::with_capacity(layout.n_layers);
        let mut v = Vec::with_capacity(layout.n_layers);
        for _ in 0..layout.n_layers {
            k.push(Buffer::new(rt, bytes)?);
            v.push(Buffer::new(rt, bytes)?);
        }
        Ok(Self {
            layout,
            num_blocks,
            dtype,
            k,
            v,
        })
    }

    /// The layout.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Bytes of device memory held.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(Buffer::len).sum()
    }

    /// Layer `layer`'s K and V pools.
    pub(crate) fn layer(&self, layer: usize) -> (&Buffer, &Buffer) {
        (&self.k[layer], &self.v[layer])
    }

    /// Bytes of one block of one layer's K (or V).
    fn block_bytes(&self) -> usize {
        self.layout.block_size * self.layout.kv_dim() * self.dtype.bytes()
    }

    fn check_block(&self, b: u32) -> Result<usize, KvError> {
        let b = b as usize;
        if b >= self.num_blocks {
            return Err(KvError::Storage {
                op: "address a block",
                message: format!("block {b} is outside the pool of {}", self.num_blocks),
            });
        }
        Ok(b * self.block_bytes())
    }
}

impl KvStorage for DeviceKvStorage {
    type Swapped = DeviceSwapped;

    fn copy_block(&mut self, src: u32, dst: u32) -> Result<(), KvError> {
        let (from, to) = (self.check_block(src)?, self.check_block(dst)?);
        if from == to {
            return Ok(());
        }
        let n = self.block_bytes();
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            buf.copy_within(from, to, n)
                .map_err(storage_error("copy a block"))?;
        }
        Ok(())
    }

    fn swap_out(&mut self, blocks: &[u32]) -> Result<DeviceSwapped, KvError> {
        let n = self.block_bytes();
        let mut data = vec![0u8; blocks.len() * 2 * self.layout.n_layers * n];
        let mut chunks = data.chunks_exact_mut(n);
        for &b in blocks {
            let at = self.check_block(b)?;
            for (k, v) in self.k.iter().zip(&self.v) {
                for buf in [k, v] {
                    let chunk = chunks.next().expect("sized for every block");
                    buf.read(at, chunk).map_err(storage_error("swap out"))?;
                }
            }
        }
        Ok(DeviceSwapped { data })
    }

    fn swap_in(&mut self, swapped: &DeviceSwapped, blocks: &[u32]) -> Result<(), KvError> {
        let n = self.block_bytes();
        let per_block = 2 * self.layout.n_layers * n;
        if swapped.data.len() != blocks.len() * per_block {
            return Err(KvError::Storage {
                op: "swap in",
                message: format!(
                    "{} bytes swapped out for {} blocks of {per_block}",
                    swapped.data.len(),
                    blocks.len()
                ),
            });
        }
        for &b in blocks {
            self.check_block(b)?;
        }
        let mut chunks = swapped.data.chunks_exact(n);
        for &b in blocks {
            let at = b as usize * n;
            for (k, v) in self.k.iter_mut().zip(self.v.iter_mut()) {
                for buf in [k, v] {
                    let chunk = chunks.next().expect("length checked");
                    buf.write(at, chunk).map_err(storage_error("swap in"))?;
                }
            }
        }
        Ok(())
    }
}
