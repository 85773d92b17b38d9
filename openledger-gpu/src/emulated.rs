//! [`EmulatedRuntime`]: the [`Runtime`] interface in host memory. Device addresses are host
//! addresses; kernels are the very CUDA C of `openledger-kernels`, compiled for the host under
//! its emulation of blocks, warps and barriers (`kernels/emulate/device_ffi.cpp`, one entry
//! point taking cuLaunchKernel's arguments) and loaded as a shared library; GEMMs are a host
//! loop with the same contract as the device's (f32 accumulation, one rounding to the output
//! type). Everything is synchronous but [`upload_async`](Runtime::upload_async): its bytes are
//! kept and copied only when the upload is seen done, after a set number of polls
//! ([`set_upload_polls`](EmulatedRuntime::set_upload_polls)), so code that used an upload before
//! it landed reads garbage and fails its checks, as it could on a device.
//!
//! Graphs ([`Runtime::begin_capture`]) are recorded calls: while capturing, launches, GEMMs and
//! device copies are kept (checked as they would be run, not run), host copies, uploads,
//! allocation and synchronisation are refused and freeing breaks the capture, as under a CUDA
//! stream capture; a replay runs the recorded calls in order with the arguments they had. So a
//! step that changed an address or a size between capture and replay, or put a host copy
//! inside the capture, computes stale values or fails here as it would on a device.
//!
//! It exists so that the GPU model's host side — weight layout, launch arguments, the paged
//! KV cache in device layout, batch metadata — runs and is checked on machines without a GPU.
//! It is slow (one OS thread per emulated CUDA thread) and says nothing of speed.

use crate::error::GpuError;
use crate::runtime::{Arg, DevicePtr, Dtype, Gemm, LaunchDims, Runtime, Scatter, UploadId};
use libloading::Library;
use openledger_kernels::emulate::{EmulatedOutput, compile_emulated};
use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// An emulated upload in flight: its bytes, where they go, and polls left before it lands.
/// A recorded call of a graph.
#[derive(Debug, Clone)]
enum Op {
    Launch {
        name: String,
        dims: LaunchDims,
        args: Vec<Arg>,
    },
    Gemm(Gemm),
    Copy {
        dst: DevicePtr,
        src: DevicePtr,
        bytes: usize,
    },
}

/// The capture under way (its calls, or why it is broken; the thread making it) and the
/// graphs held.
#[derive(Debug, Default)]
struct Graphs {
    capture: Option<Result<Vec<Op>, String>>,
    owner: Option<std::thread::ThreadId>,
    held: HashMap<u64, Vec<Op>>,
    next: u64,
}

struct PendingUpload {
    data: Vec<u8>,
    copies: Vec<Scatter>,
    polls_left: usize,
}

/// Alignment of every emulated allocation (what `cudaMalloc` guarantees).
const ALIGN: usize = 256;

type LaunchFn = unsafe extern "C" fn(
    *const c_char,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut *mut c_void,
) -> c_int;

/// The runtime interface over host memory and host-compiled kernels (see the module docs).
pub struct EmulatedRuntime {
    lib: Arc<Library>,
    allocations: Mutex<HashMap<DevicePtr, Layout>>,
    uploads: Mutex<HashMap<u64, PendingUpload>>,
    next_upload: AtomicU64,
    upload_polls: AtomicUsize,
    graphs: Mutex<Graphs>,
    /// Told when a capture ends.
    capture_ended: std::sync::Condvar,
}

impl std::fmt::Debug for EmulatedRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedRuntime")
            .field(
                "allocations",
                &self.allocations.lock().map(|a| a.len()).unwrap_or(0),
            )
            .finish()
    }
}

impl EmulatedRuntime {
    /// Builds the emulated kernels into `dir` with the C++20 compiler `$CXX` (else `c++`) and
    /// loads them. Compiling takes tens of seconds; build once and share the runtime.
    pub fn build(dir: &Path) -> Result<Self, GpuError> {
        std::fs::create_dir_all(dir).map_err(|source| GpuError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let so = dir.join("libdevice_emulated.so");
        compile_emulated("device_ffi.cpp", &so, EmulatedOutput::SharedLibrary)
            .map_err(GpuError::Emulation)?;
        // SAFETY: the library is built from this repository's sources; its initialisers only
        // define the kernels' table.
        let lib = unsafe { Library::new(&so) }
            .map_err(|e| GpuError::Emulation(format!("cannot load {}: {e}", so.display())))?;
        // SAFETY: the symbol's C signature is `LaunchFn` (device_ffi.cpp).
        unsafe { lib.get::<LaunchFn>(b"emu_launch_kernel") }
            .map_err(|e| GpuError::Emulation(format!("no launch entry point: {e}")))?;
        Ok(Self {
            lib: Arc::new(lib),
            allocations: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            next_upload: AtomicU64::new(1),
            upload_polls: AtomicUsize::new(0),
            graphs: Mutex::new(Graphs::default()),
            capture_ended: std::sync::Condvar::new(),
        })
    }

    /// Another runtime over the same compiled kernels (no second compile), with memory and
    /// upload settings of its own.
    pub fn sibling(&self) -> Self {
        Self {
            lib: Arc::clone(&self.lib),
            allocations: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            next_upload: AtomicU64::new(1),
            upload_polls: AtomicUsize::new(0),
            graphs: Mutex::new(Graphs::default()),
            capture_ended: std::sync::Condvar::new(),
        }
    }

    /// How many times [`upload_done`](Runtime::upload_done) answers "not yet" for each later
    /// [`upload_async`](Runtime::upload_async) before its bytes land (default 0: the first
    /// poll lands it).
    pub fn set_upload_polls(&self, polls: usize) {
        self.upload_polls.store(polls, Ordering::Relaxed);
    }

    /// Uploads issued and not yet seen done.
    pub fn uploads_in_flight(&self) -> usize {
        self.uploads.lock().map(|u| u.len()).unwrap_or(0)
    }

    /// Copies a pending upload's bytes to their destinations.
    fn land(p: PendingUpload) {
        for c in &p.copies {
            // SAFETY: `upload_async`'s caller promised every destination stays live until the
            // upload is done, which is now.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    p.data[c.src_offset..].as_ptr(),
                    c.dst as *mut u8,
                    c.len,
                )
            };
        }
    }

    /// Live allocations.
    pub fn live_allocations(&self) -> usize {
        self.allocations.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// The graph table, once no other thread is capturing (a capture belongs to the thread
    /// that began it, as a CUDA thread-local capture: another thread's calls wait until it
    /// ends instead of being recorded into it or breaking it).
    fn graphs(&self) -> Result<std::sync::MutexGuard<'_, Graphs>, GpuError> {
        let me = std::thread::current().id();
        let poisoned = |_| GpuError::Emulation("the graph table is poisoned".into());
        let g = self.graphs.lock().map_err(poisoned)?;
        self.capture_ended
            .wait_while(g, |g| g.owner.is_some_and(|t| t != me))
            .map_err(poisoned)
    }

    /// Records `op` when a capture is under way (true), else leaves it to be run (false).
    fn record(&self, op: impl FnOnce() -> Op) -> Result<bool, GpuError> {
        let mut g = self.graphs()?;
        match &mut g.capture {
            None => Ok(false),
            Some(Ok(ops)) => {
                ops.push(op());
                Ok(true)
            }
            // A broken capture records nothing more; ending it reports why.
            Some(Err(_)) => Ok(true),
        }
    }

    /// Refuses `what` while a capture is under way (and breaks the capture).
    fn refuse_in_capture(&self, what: &str) -> Result<(), GpuError> {
        let mut g = self.graphs()?;
        if let Some(c) = &mut g.capture {
            let why = format!("{what} while capturing a graph");
            if c.is_ok() {
                *c = Err(why.clone());
            }
            return Err(GpuError::InvalidArgument {
                name: "graph capture",
                reason: why,
            });
        }
        Ok(())
    }

    /// Refuses a replay of graph `id` that would touch memory freed since it was captured:
    /// every address its calls were recorded with (a pointer argument that is not null, a
    /// GEMM's matrices, a copy's ends) must lie in a live allocation.
    fn check_live(&self, id: u64, ops: &[Op]) -> Result<(), GpuError> {
        let mut live: Vec<(DevicePtr, u64)> = self
            .allocations
            .lock()
            .map_err(|_| GpuError::Emulation("allocation table poisoned".into()))?
            .iter()
            .map(|(&p, l)| (p, p + l.size() as u64))
            .collect();
        live.sort_unstable();
        let inside = |p: DevicePtr| {
            let i = live.partition_point(|&(start, _)| start <= p);
            i > 0 && p < live[i - 1].1
        };
        let mut addresses = Vec::new();
        for op in ops {
            match op {
                Op::Launch { args, .. } => addresses.extend(args.iter().filter_map(|a| match a {
                    Arg::Ptr(p) if *p != 0 => Some(*p),
                    _ => None,
                })),
                Op::Gemm(g) => addresses.extend([g.x, g.w, g.y]),
                Op::Copy { dst, src, .. } => addresses.extend([*dst, *src]),
            }
        }
        match addresses.into_iter().find(|&p| !inside(p)) {
            Some(p) => Err(GpuError::InvalidArgument {
                name: "graph",
                reason: format!("graph {id} was captured with {p:#x}, which has been freed"),
            }),
            None => Ok(()),
        }
    }

    /// Runs one call.
    ///
    /// # Safety
    /// As [`Runtime::launch`], [`Runtime::gemm`] and [`Runtime::copy`].
    unsafe fn run(&self, op: &Op) -> Result<(), GpuError> {
        // SAFETY: as the caller promises.
        unsafe {
            match op {
                Op::Launch { name, dims, args } => self.run_launch(name, *dims, args),
                Op::Gemm(g) => self.run_gemm(g),
                Op::Copy { dst, src, bytes } => {
                    std::ptr::copy_nonoverlapping(*src as *const u8, *dst as *mut u8, *bytes);
                    Ok(())
                }
            }
        }
    }
}

/// Reads element `i` of a host array of `dtype` as f32.
///
/// # Safety
/// `p` holds at least `i + 1` elements of `dtype`.
/// `Σ a[l]·b[l]` in f32, in eight running sums (an order of summation as good as the device's,
/// which promises none).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

unsafe fn load(p: DevicePtr, i: usize, dtype: Dtype) -> f32 {
    // SAFETY: as the caller promises; reads unaligned, so any address is fine.
    unsafe {
        match dtype {
            Dtype::F32 => std::ptr::read_unaligned((p as *const f32).add(i)),
            Dtype::F16 => {
                half::f16::from_bits(std::ptr::read_unaligned((p as *const u16).add(i))).to_f32()
            }
            Dtype::Bf16 => {
                half::bf16::from_bits(std::ptr::read_unaligned((p as *const u16).add(i))).to_f32()
            }
        }
    }
}

/// Writes `v` rounded to `dtype` as element `i` of a host array.
///
/// # Safety
/// `p` holds at least `i + 1` elements of `dtype`.
unsafe fn store(p: DevicePtr, i: usize, dtype: Dtype, v: f32) {
    // SAFETY: as the caller promises.
    unsafe {
        match dtype {
            Dtype::F32 => std::ptr::write_unaligned((p as *mut f32).add(i), v),
            Dtype::F16 => {
                std::ptr::write_unaligned((p as *mut u16).add(i), half::f16::from_f32(v).to_bits())
            }
            Dtype::Bf16 => {
                std::ptr::write_unaligned((p as *mut u16).add(i), half::bf16::from_f32(v).to_bits())
            }
        }
    }
}

impl Runtime for EmulatedRuntime {
    fn device_name(&self) -> String {
        "host emulation".into()
    }

    fn tensor_cores(&self) -> bool {
        true
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr, GpuError> {
        self.refuse_in_capture("allocating")?;
        let oom = || GpuError::OutOfMemory {
            what: "emulated device memory".into(),
            bytes,
        };
        let layout = Layout::from_size_align(bytes.max(1), ALIGN).map_err(|_| oom())?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            return Err(oom());
        }
        // Garbage, not zeros, as device memory: a kernel must write what it later reads.
        // SAFETY: `p` holds `layout.size()` bytes.
        unsafe { std::ptr::write_bytes(p, 0xA5, layout.size()) };
        self.allocations
            .lock()
            .map_err(|_| GpuError::Emulation("allocation table poisoned".into()))?
            .insert(p as DevicePtr, layout);
        Ok(p as DevicePtr)
    }

    unsafe fn free(&self, ptr: DevicePtr) {
        // Freeing breaks a capture (the memory would leave under the graph), as on a device.
        let _ = self.refuse_in_capture("freeing");
        let layout = self
            .allocations
            .lock()
            .ok()
            .and_then(|mut a| a.remove(&ptr));
        if let Some(layout) = layout {
            // Copies in flight into it are dropped: the memory is going away.
            let end = ptr + layout.size() as u64;
            if let Ok(mut uploads) = self.uploads.lock() {
                for u in uploads.values_mut() {
                    u.copies
                        .retain(|c| c.dst + c.len as u64 <= ptr || c.dst >= end);
                }
            }
            // SAFETY: allocated by `alloc` with this layout, freed once (removed above).
            unsafe { std::alloc::dealloc(ptr as *mut u8, layout) };
        }
    }

    unsafe fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError> {
        self.refuse_in_capture("a host-to-device copy")?;
        // SAFETY: the caller promises the range is in a live allocation.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    unsafe fn upload_async(&self, src: &[u8], copies: &[Scatter]) -> Result<UploadId, GpuError> {
        Scatter::check(src.len(), copies)?;
        self.refuse_in_capture("an upload")?;
        let id = self.next_upload.fetch_add(1, Ordering::Relaxed);
        let pending = PendingUpload {
            data: src.to_vec(),
            copies: copies.to_vec(),
            polls_left: self.upload_polls.load(Ordering::Relaxed),
        };
        self.uploads
            .lock()
            .map_err(|_| GpuError::Emulation("the upload table is poisoned".into()))?
            .insert(id, pending);
        Ok(UploadId(id))
    }

    fn upload_done(&self, id: UploadId) -> Result<bool, GpuError> {
        let mut uploads = self
            .uploads
            .lock()
            .map_err(|_| GpuError::Emulation("the upload table is poisoned".into()))?;
        match uploads.get_mut(&id.0) {
            None => Ok(true),
            Some(p) if p.polls_left > 0 => {
                p.polls_left -= 1;
                Ok(false)
            }
            Some(_) => {
                if let Some(p) = uploads.remove(&id.0) {
                    Self::land(p);
                }
                Ok(true)
            }
        }
    }

    fn wait_upload(&self, id: UploadId) -> Result<(), GpuError> {
        let p = self
            .uploads
            .lock()
            .map_err(|_| GpuError::Emulation("the upload table is poisoned".into()))?
            .remove(&id.0);
        if let Some(p) = p {
            Self::land(p);
        }
        Ok(())
    }

    unsafe fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<(), GpuError> {
        self.refuse_in_capture("a device-to-host copy")?;
        // SAFETY: the caller promises the range is in a live allocation.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    unsafe fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<(), GpuError> {
        if self.record(|| Op::Copy { dst, src, bytes })? {
            return Ok(());
        }
        // SAFETY: the caller promises both ranges are live and disjoint.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    unsafe fn launch(&self, name: &str, dims: LaunchDims, args: &[Arg]) -> Result<(), GpuError> {
        dims.check(name)?;
        let op = || Op::Launch {
            name: name.to_string(),
            dims,
            args: args.to_vec(),
        };
        if self.record(op)? {
            return Ok(());
        }
        // SAFETY: as the caller promises.
        unsafe { self.run_launch(name, dims, args) }
    }

    unsafe fn gemm(&self, g: &Gemm) -> Result<(), GpuError> {
        g.check()?;
        if self.record(|| Op::Gemm(*g))? {
            return Ok(());
        }
        // SAFETY: as the caller promises.
        unsafe { self.run_gemm(g) }
    }

    fn synchronize(&self) -> Result<(), GpuError> {
        self.refuse_in_capture("synchronising")
    }

    fn begin_capture(&self) -> Result<(), GpuError> {
        let mut g = self.graphs()?;
        if g.capture.is_some() {
            return Err(GpuError::InvalidArgument {
                name: "graph capture",
                reason: "a capture is already under way".into(),
            });
        }
        g.capture = Some(Ok(Vec::new()));
        g.owner = Some(std::thread::current().id());
        Ok(())
    }

    fn end_capture(&self, discard: bool) -> Result<u64, GpuError> {
        let mut g = self.graphs()?;
        if g.capture.is_some() {
            g.owner = None;
            self.capture_ended.notify_all();
        }
        let ops = match g.capture.take() {
            None => {
                return Err(GpuError::InvalidArgument {
                    name: "graph capture",
                    reason: "no capture is under way".into(),
                });
            }
            Some(_) if discard => return Ok(0),
            Some(Err(why)) => {
                return Err(GpuError::InvalidArgument {
                    name: "graph capture",
                    reason: why,
                });
            }
            Some(Ok(ops)) => ops,
        };
        g.next += 1;
        let id = g.next;
        g.held.insert(id, ops);
        Ok(id)
    }

    unsafe fn replay(&self, id: u64) -> Result<(), GpuError> {
        self.refuse_in_capture("replaying a graph")?;
        let ops =
            self.graphs()?
                .held
                .get(&id)
                .cloned()
                .ok_or_else(|| GpuError::InvalidArgument {
                    name: "graph",
                    reason: format!("no graph {id}"),
                })?;
        self.check_live(id, &ops)?;
        for op in &ops {
            // SAFETY: every address recorded lies in a live allocation (checked above), and
            // the caller promises it still holds what the call reads and writes.
            unsafe { self.run(op)? };
        }
        Ok(())
    }

    fn drop_graph(&self, id: u64) {
        if let Ok(mut g) = self.graphs() {
            g.held.remove(&id);
        }
    }

    fn capturing(&self) -> bool {
        let me = std::thread::current().id();
        self.graphs
            .lock()
            .is_ok_and(|g| g.capture.is_some() && g.owner == Some(me))
    }
}

impl EmulatedRuntime {
    unsafe fn run_launch(
        &self,
        name: &str,
        dims: LaunchDims,
        args: &[Arg],
    ) -> Result<(), GpuError> {
        let cname = CString::new(name).map_err(|_| GpuError::Launch {
            kernel: name.escape_debug().to_string(),
            reason: "a NUL byte in the name".into(),
        })?;
        let mut words: Vec<u64> = args.iter().map(|a| a.word()).collect();
        let mut params: Vec<*mut c_void> = words
            .iter_mut()
            .map(|w| w as *mut u64 as *mut c_void)
            .collect();
        // SAFETY: the symbol was found at build time with this signature.
        let launch = unsafe { self.lib.get::<LaunchFn>(b"emu_launch_kernel") }
            .map_err(|e| GpuError::Emulation(e.to_string()))?;
        let (gx, gy, gz) = dims.grid;
        // SAFETY: the caller promises the arguments fit the kernel; `params` points into
        // `words`, alive for the call.
        let rc = unsafe {
            launch(
                cname.as_ptr(),
                gx,
                gy,
                gz,
                dims.threads,
                dims.shared_bytes,
                params.as_mut_ptr(),
            )
        };
        match rc {
            0 => Ok(()),
            1 => Err(GpuError::Launch {
                kernel: name.to_string(),
                reason: "no such kernel".into(),
            }),
            _ => Err(GpuError::Launch {
                kernel: name.to_string(),
                reason: format!("{} threads per block refused", dims.threads),
            }),
        }
    }

    unsafe fn run_gemm(&self, g: &Gemm) -> Result<(), GpuError> {
        use rayon::prelude::*;
        // x's rows as f32, once; then the output's columns in chunks over the host's cores,
        // each chunk's rows of w widened once and run against every row of x.
        const COLS: usize = 64;
        let (m, k) = (g.m, g.k);
        let mut x = vec![0f32; m * k];
        for (i, row) in x.chunks_exact_mut(k).enumerate() {
            for (l, v) in row.iter_mut().enumerate() {
                // SAFETY: the caller promises the matrices hold what the shape implies.
                *v = unsafe { load(g.x, i * g.ldx + l, g.dtype) };
            }
        }
        let chunks: Vec<(usize, Vec<f32>)> = (0..g.n)
            .step_by(COLS)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|j0| {
                let cols = COLS.min(g.n - j0);
                let mut out = vec![0f32; m * cols];
                let mut w = vec![0f32; k];
                for c in 0..cols {
                    for (l, v) in w.iter_mut().enumerate() {
                        // SAFETY: as above.
                        *v = unsafe { load(g.w, (j0 + c) * g.ldw + l, g.dtype) };
                    }
                    for (i, xr) in x.chunks_exact(k).enumerate() {
                        out[i * cols + c] = dot(xr, &w);
                    }
                }
                (j0, out)
            })
            .collect();
        for (j0, out) in chunks {
            let cols = out.len() / m.max(1);
            for i in 0..m {
                for c in 0..cols {
                    let at = i * g.ldy + j0 + c;
                    let mut v = out[i * cols + c];
                    if g.accumulate {
                        // SAFETY: as above.
                        v += unsafe { load(g.y, at, g.dtype) };
                    }
                    // SAFETY: as above.
                    unsafe { store(g.y, at, g.dtype, v) };
                }
            }
        }
        Ok(())
    }
}

impl Drop for EmulatedRuntime {
    fn drop(&mut self) {
        if let Ok(mut a) = self.allocations.lock() {
            for (p, layout) in a.drain() {
                // SAFETY: every entry is a live allocation of `alloc`.
                unsafe { std::alloc::dealloc(p as *mut u8, layout) };
            }
        }
    }
}
