//! What the GPU model asks of a device: memory (allocate, copy in, copy out, copy within),
//! kernel launches by name with cuLaunchKernel's argument convention, and row-major GEMMs with
//! f32 accumulation. [`CudaRuntime`](crate::CudaRuntime) does it on a CUDA device;
//! [`EmulatedRuntime`](crate::EmulatedRuntime) does it in host memory with the same kernels
//! compiled for the host, so everything above this interface is tested without a GPU.
//!
//! Device addresses are plain `u64`s ([`DevicePtr`]); a [`Buffer`] owns an allocation and frees
//! it when dropped, and its copies are bounds-checked. Launches and GEMMs take raw addresses:
//! they are `unsafe`, their callers (the model) promise the addresses and sizes fit.

use crate::error::GpuError;
use openledger_core::DType;
use std::sync::Arc;

/// A device address.
pub type DevicePtr = u64;

/// The element type of a device tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// The suffix of the kernels instantiated for it (`embed_bf16`).
    pub fn suffix(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    /// The same type as the rest of the SDK names it.
    pub fn core(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::Bf16 => DType::BF16,
        }
    }

    /// Encodes f32 values as this type's little-endian bytes (round to nearest even).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        self.core().encode_le(values)
    }

    /// Decodes this type's little-endian bytes to f32 (a trailing partial element is ignored).
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        let whole = bytes.len() - bytes.len() % self.bytes();
        // A whole number of elements always decodes.
        self.core().decode_le(&bytes[..whole]).unwrap_or_default()
    }
}

/// One kernel argument, passed by address as cuLaunchKernel passes `kernelParams`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    /// A device address (a `T*` parameter).
    Ptr(DevicePtr),
    /// An `int`.
    I32(i32),
    /// A 64-bit integer (`i64`).
    I64(i64),
    /// A `float`.
    F32(f32),
}

impl Arg {
    /// The argument's bytes at the start of an 8-byte word (little-endian), which the kernel
    /// reads through a pointer to that word.
    pub fn word(self) -> u64 {
        match self {
            Arg::Ptr(p) => p,
            Arg::I32(v) => v as u32 as u64,
            Arg::I64(v) => v as u64,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

/// A launch's grid and block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchDims {
    /// Blocks along x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block (a multiple of 32, at most 1024).
    pub threads: u32,
    /// Bytes of dynamic shared memory.
    pub shared_bytes: u32,
}

impl LaunchDims {
    /// `grid` blocks of `threads` threads, no dynamic shared memory.
    pub fn new(grid: (u32, u32, u32), threads: u32) -> Self {
        Self {
            grid,
            threads,
            shared_bytes: 0,
        }
    }

    /// Checks the dimensions the way the device would refuse them: a zero or over-large
    /// grid (x below 2³¹, y and z below 2¹⁶), a block that is not 32..=1024 threads in whole
    /// warps.
    pub fn check(&self, kernel: &str) -> Result<(), GpuError> {
        let (x, y, z) = self.grid;
        let bad = |reason: String| GpuError::Launch {
            kernel: kernel.to_string(),
            reason,
        };
        if x == 0 || y == 0 || z == 0 || x >= 1 << 31 || y >= 1 << 16 || z >= 1 << 16 {
            return Err(bad(format!("grid {:?} out of range", self.grid)));
        }
        if self.threads == 0 || self.threads > 1024 || !self.threads.is_multiple_of(32) {
            return Err(bad(format!(
                "{} threads per block (a multiple of 32 up to 1024 is needed)",
                self.threads
            )));
        }
        Ok(())
    }
}

/// `y[i, j] = Σ_l x[i, l] · w[j, l]` (plus `y[i, j]` when `accumulate`) for `i < m`, `j < n`,
/// `l < k`: row-major `x` (`m` rows, stride `ldx`), `w` as a linear layer stores it (`n` rows
/// of `k`, stride `ldw`) and `y` (`m` rows, stride `ldy`), all of `dtype`, products summed in
/// f32 and the result rounded once to `dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gemm {
    /// Rows of `x` and `y`.
    pub m: usize,
    /// Rows of `w`, columns of `y`.
    pub n: usize,
    /// Columns of `x` and `w`.
    pub k: usize,
    /// The input.
    pub x: DevicePtr,
    /// Elements between rows of `x`.
    pub ldx: usize,
    /// The weight.
    pub w: DevicePtr,
    /// Elements between rows of `w`.
    pub ldw: usize,
    /// The output.
    pub y: DevicePtr,
    /// Elements between rows of `y`.
    pub ldy: usize,
    /// The element type of all three.
    pub dtype: Dtype,
    /// Adds to `y` instead of overwriting it.
    pub accumulate: bool,
}

impl Gemm {
    /// Checks the shape: non-zero sizes, strides no shorter than their rows, sizes that fit
    /// the `int` the BLAS takes.
    pub fn check(&self) -> Result<(), GpuError> {
        let bad = |reason: String| GpuError::InvalidArgument {
            name: "gemm",
            reason,
        };
        if self.m == 0 || self.n == 0 || self.k == 0 {
            return Err(bad(format!(
                "empty product {}×{}×{}",
                self.m, self.n, self.k
            )));
        }
        if self.ldx < self.k || self.ldw < self.k || self.ldy < self.n {
            return Err(bad(format!(
                "strides ({}, {}, {}) shorter than rows ({}, {}, {})",
                self.ldx, self.ldw, self.ldy, self.k, self.k, self.n
            )));
        }
        let limit = i32::MAX as usize;
        if [self.m, self.n, self.k, self.ldx, self.ldw, self.ldy]
            .iter()
            .any(|&v| v > limit)
        {
            return Err(bad("a size above i32::MAX".into()));
        }
        Ok(())
    }
}

/// One copy of an [`upload_async`](Runtime::upload_async): `len` bytes from `src_offset` of the
/// source to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scatter {
    /// Where the bytes go.
    pub dst: DevicePtr,
    /// Where they start in the source.
    pub src_offset: usize,
    /// How many.
    pub len: usize,
}

impl Scatter {
    /// Refuses copies reading past a source of `src_len` bytes.
    pub fn check(src_len: usize, copies: &[Scatter]) -> Result<(), GpuError> {
        match copies.iter().find(|c| {
            c.src_offset
                .checked_add(c.len)
                .is_none_or(|end| end > src_len)
        }) {
            Some(c) => Err(GpuError::BufferTooSmall {
                what: "upload source",
                needed: c.src_offset.saturating_add(c.len),
                len: src_len,
            }),
            None => Ok(()),
        }
    }
}

/// An upload issued by [`upload_async`](Runtime::upload_async), until it is seen done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadId(pub u64);

/// A device: memory, launches and GEMMs, in the order they are issued (one stream); and
/// uploads on a copy stream of their own that overlap with them.
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// The device's name and ordinal (`"NVIDIA H200 (cuda:0)"`), or `"host emulation"`.
    fn device_name(&self) -> String;

    /// Whether the device has the f16 / bf16 tensor-core product the prefill attention kernel
    /// uses (`mma.sync` m16n8k16: compute capability 8.0 or later; the host emulation has it).
    fn tensor_cores(&self) -> bool;

    /// Allocates `bytes` (at least 256-byte aligned, contents undefined).
    fn alloc(&self, bytes: usize) -> Result<DevicePtr, GpuError>;

    /// Frees an allocation (copies of [`upload_async`](Self::upload_async) into it still in
    /// flight are waited for or dropped first).
    ///
    /// # Safety
    /// `ptr` came from [`alloc`](Self::alloc) of this runtime and is not used again; no
    /// launch still reading or writing it is in flight.
    unsafe fn free(&self, ptr: DevicePtr);

    /// Copies `src` to `dst` (returns once `src` may be reused).
    ///
    /// # Safety
    /// `dst..dst + src.len()` lies in one live allocation.
    unsafe fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError>;

    /// Copies `dst.len()` bytes from `src`, after everything issued before.
    ///
    /// # Safety
    /// `src..src + dst.len()` lies in one live allocation.
    unsafe fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<(), GpuError>;

    /// Copies `bytes` from `src` to `dst` on the device, ordered with launches.
    ///
    /// # Safety
    /// Both ranges lie in live allocations and do not overlap.
    unsafe fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<(), GpuError>;

    /// Launches kernel `name` (an entry point of `openledger-kernels`, dtype suffix included).
    ///
    /// # Safety
    /// `args` are the kernel's parameters, in order and of its types, and every address and
    /// size they hold fits what the kernel reads and writes under `dims`.
    unsafe fn launch(&self, name: &str, dims: LaunchDims, args: &[Arg]) -> Result<(), GpuError>;

    /// Runs a GEMM ([`Gemm`]).
    ///
    /// # Safety
    /// The addresses hold the matrices the shape and strides imply.
    unsafe fn gemm(&self, g: &Gemm) -> Result<(), GpuError>;

    /// Waits for everything issued; a fault of an earlier launch surfaces here.
    fn synchronize(&self) -> Result<(), GpuError>;

    /// Free and total device memory in bytes, where the device reports them.
    fn memory_info(&self) -> Option<(usize, usize)> {
        None
    }

    /// Starts copying parts of `src` to the device (`copies`) and returns at once: the copies
    /// run on a copy stream, after the work issued before, while later launches go on; they
    /// have landed once [`upload_done`](Self::upload_done) says so or
    /// [`wait_upload`](Self::wait_upload) returns. `src` may be reused on return. The default
    /// copies before returning.
    ///
    /// # Safety
    /// Every destination lies in a live allocation that nothing reads or writes until the
    /// upload is done (freeing it is safe: see [`free`](Self::free)).
    unsafe fn upload_async(&self, src: &[u8], copies: &[Scatter]) -> Result<UploadId, GpuError> {
        Scatter::check(src.len(), copies)?;
        for c in copies {
            // SAFETY: as the caller promises.
            unsafe { self.upload(c.dst, &src[c.src_offset..c.src_offset + c.len])? };
        }
        Ok(UploadId(0))
    }

    /// Whether upload `id` has landed (an id seen done, or unknown, is done).
    fn upload_done(&self, id: UploadId) -> Result<bool, GpuError> {
        let _ = id;
        Ok(true)
    }

    /// Waits until upload `id` has landed.
    fn wait_upload(&self, id: UploadId) -> Result<(), GpuError> {
        let _ = id;
        Ok(())
    }

    /// Starts capturing a graph: the launches, GEMMs and device copies issued next are
    /// recorded, not run, until [`end_capture`](Self::end_capture). Meanwhile host copies,
    /// uploads, synchronisation and allocation are refused (a CUDA stream capture cannot
    /// hold them). The capture belongs to this thread: other threads' calls on the runtime
    /// wait until it ends. Use [`Graph::capture`], which ends the capture on every path. The
    /// default refuses: the runtime has no graphs.
    fn begin_capture(&self) -> Result<(), GpuError> {
        Err(GpuError::Unsupported {
            what: format!("graphs on {}", self.device_name()),
        })
    }

    /// Ends the capture begun by [`begin_capture`](Self::begin_capture) and returns the graph's
    /// id; with `discard`, drops what was recorded and returns 0.
    fn end_capture(&self, discard: bool) -> Result<u64, GpuError> {
        let _ = discard;
        Err(GpuError::Unsupported {
            what: format!("graphs on {}", self.device_name()),
        })
    }

    /// Runs graph `id` once, in order with the work issued before and after it.
    ///
    /// # Safety
    /// Every address the graph's launches, GEMMs and copies were recorded with is still live
    /// and holds what they read and write.
    unsafe fn replay(&self, id: u64) -> Result<(), GpuError> {
        let _ = id;
        Err(GpuError::Unsupported {
            what: format!("graphs on {}", self.device_name()),
        })
    }

    /// Frees graph `id` (an unknown id is ignored).
    fn drop_graph(&self, id: u64) {
        let _ = id;
    }

    /// Whether this thread is capturing (another thread's calls wait until its capture ends).
    fn capturing(&self) -> bool {
        false
    }
}

/// A recorded sequence of launches, GEMMs and device copies that a [`Runtime`] replays with
/// one call: a CUDA graph on a device (one `cuGraphLaunch` in place of a launch per kernel),
/// the recorded calls in order under the host emulation. The addresses and sizes are fixed
/// when it is captured: whatever changes between replays lives in device memory the graph
/// reads. Freed when dropped.
#[derive(Debug)]
pub struct Graph {
    rt: Arc<dyn Runtime>,
    id: u64,
}

impl Graph {
    /// Records what `issue` launches (it must issue only launches, GEMMs and device copies),
    /// ending the capture whether or not `issue` succeeds (or panics); `issue`'s error is
    /// returned as it is.
    pub fn capture(
        rt: &Arc<dyn Runtime>,
        issue: impl FnOnce() -> Result<(), GpuError>,
    ) -> Result<Self, GpuError> {
        /// Ends a capture left open: by an error, or by a panic unwinding through `capture`.
        struct Open<'a>(Option<&'a Arc<dyn Runtime>>);
        impl Drop for Open<'_> {
            fn drop(&mut self) {
                if let Some(rt) = self.0 {
                    let _ = rt.end_capture(true);
                }
            }
        }
        rt.begin_capture()?;
        let mut open = Open(Some(rt));
        issue()?;
        open.0 = None;
        let id = rt.end_capture(false)?;
        Ok(Self {
            rt: Arc::clone(rt),
            id,
        })
    }

    /// Runs the graph once.
    ///
    /// # Safety
    /// As [`Runtime::replay`]: every address it was captured with is still live.
    pub unsafe fn replay(&self) -> Result<(), GpuError> {
        // SAFETY: as the caller promises.
        unsafe { self.rt.replay(self.id) }
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        self.rt.drop_graph(self.id);
    }
}

/// An allocation of a [`Runtime`], freed when dropped; copies in and out are bounds-checked.
#[derive(Debug)]
pub struct Buffer {
    rt: Arc<dyn Runtime>,
    ptr: DevicePtr,
    bytes: usize,
}

impl Buffer {
    /// Allocates `bytes` (`what` names it in an error).
    pub fn new(rt: &Arc<dyn Runtime>, bytes: usize) -> Result<Self, GpuError> {
        let ptr = rt.alloc(bytes.max(1))?;
        Ok(Self {
            rt: Arc::clone(rt),
            ptr,
            bytes,
        })
    }

    /// Allocates and fills with `data`.
    pub fn from_bytes(rt: &Arc<dyn Runtime>, data: &[u8]) -> Result<Self, GpuError> {
        let mut b = Self::new(rt, data.len())?;
        b.write(0, data)?;
        Ok(b)
    }

    /// The device address of the first byte.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// The device address `offset` bytes in.
    pub fn at(&self, offset: usize) -> DevicePtr {
        self.ptr + offset as u64
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    fn check(&self, what: &'static str, offset: usize, len: usize) -> Result<(), GpuError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.bytes => Ok(()),
            _ => Err(GpuError::BufferTooSmall {
                what,
                needed: offset.saturating_add(len),
                len: self.bytes,
            }),
        }
    }

    /// Copies `data` in at `offset`.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), GpuError> {
        self.check("write", offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: the range lies in this allocation (checked above).
        unsafe { self.rt.upload(self.at(offset), data) }
    }

    /// Starts copying `data` in at `offset` on the runtime's copy stream
    /// ([`Runtime::upload_async`]); the bytes are there once the upload is seen done. Dropping
    /// the buffer first is safe: the runtime drops (or waits for) copies into freed memory.
    pub fn write_async(&mut self, offset: usize, data: &[u8]) -> Result<UploadId, GpuError> {
        self.check("write", offset, data.len())?;
        let part = Scatter {
            dst: self.at(offset),
            src_offset: 0,
            len: data.len(),
        };
        // SAFETY: the range lies in this allocation (checked above), which the runtime keeps
        // copies in flight from outliving.
        unsafe { self.rt.upload_async(data, &[part]) }
    }

    /// Copies `out.len()` bytes out from `offset`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), GpuError> {
        self.check("read", offset, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: the range lies in this allocation (checked above).
        unsafe { self.rt.download(self.at(offset), out) }
    }

    /// Copies `bytes` from `src` at `src_offset` to `self` at `offset` on the device.
    pub fn copy_from(
        &mut self,
        offset: usize,
        src: &Buffer,
        src_offset: usize,
        bytes: usize,
    ) -> Result<(), GpuError> {
        self.check("copy destination", offset, bytes)?;
        src.check("copy source", src_offset, bytes)?;
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: both ranges are checked; `&mut self` and `&src` are distinct buffers.
        unsafe { self.rt.copy(self.at(offset), src.at(src_offset), bytes) }
    }
}

impl Buffer {
    /// Copies `bytes` from `src_offset` to `dst_offset` of this buffer on the device; the
    /// ranges must not overlap.
    pub fn copy_within(
        &mut self,
        src_offset: usize,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<(), GpuError> {
        self.check("copy source", src_offset, bytes)?;
        self.check("copy destination", dst_offset, bytes)?;
        if src_offset < dst_offset + bytes && dst_offset < src_offset + bytes {
            return Err(GpuError::InvalidArgument {
                name: "copy_within",
                reason: format!(
                    "{bytes} bytes from {src_offset} overlap their destination {dst_offset}"
                ),
            });
        }
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: both ranges are checked and disjoint.
        unsafe {
            self.rt
                .copy(self.at(dst_offset), self.at(src_offset), bytes)
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the pointer came from this runtime's `alloc` and is dropped once; the
        // runtime orders the free after the work issued before it.
        unsafe { self.rt.free(self.ptr) }
    }
}
