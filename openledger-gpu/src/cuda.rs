//! [`CudaRuntime`]: the [`Runtime`] interface on a CUDA device through cudarc, with the driver,
//! NVRTC and cuBLAS loaded at run time. Every entry point first checks that the libraries can
//! be loaded (cudarc panics when it cannot) and runs inside `catch_unwind` as a second guard, so
//! a missing library, device or kernel is a [`GpuError`], never a panic.
//!
//! Everything runs in order on one compute stream of the runtime's own (non-blocking): the
//! kernels of `openledger-kernels` (compiled by NVRTC for the device's architecture, cubin
//! first), GEMMs through cuBLASLt (`cublasLtMatmul`, inputs in the model's dtype,
//! `CUBLAS_COMPUTE_32F`; one plan per shape and alignment — descriptor, layouts and the
//! heuristic's algorithm — made on first use and kept; cuBLAS's `cublasGemmEx` for a shape
//! cuBLASLt offers no algorithm for), both with a workspace of the runtime's so that nothing is
//! allocated under a capture, and the copies in and out (asynchronous on that stream; a copy
//! out then waits for it). Launches are
//! asynchronous: a kernel that faults shows up at a later call as [`GpuError::ContextLost`];
//! with `OPENLEDGER_CUDA_SYNC=1` every launch is followed by a synchronisation so the failing
//! kernel is the one named.
//!
//! [`upload_async`](Runtime::upload_async) runs on a copy stream of its own (non-blocking, so
//! it overlaps with the launches): the bytes go through pinned staging buffers (reused once
//! their copy's event has fired), the copy stream first waits for the work issued before on
//! the compute stream, and an event recorded after the copies says when they have landed.
//!
//! Graphs ([`Runtime::begin_capture`]) are CUDA graphs: a capture of the compute stream
//! (thread-local mode), instantiated once and launched with `cuGraphLaunch`. While capturing,
//! copies to or from the host, uploads, allocation and synchronisation are refused before they
//! reach the driver. A capture belongs to the thread that began it: another thread's calls on
//! the runtime wait until it ends, so none of them is recorded into the graph or breaks it.

use crate::error::GpuError;
use crate::runtime::{Arg, DevicePtr, Dtype, Gemm, LaunchDims, Runtime, Scatter, UploadId};
use cudarc::cublas::sys as blas;
use cudarc::cublaslt::result as ltr;
use cudarc::cublaslt::sys as lt;
use cudarc::driver::sys::{self as cu, CUresult};
use cudarc::driver::{CudaContext, CudaFunction, DriverError, result};
use openledger_lora::sgmv::{context_lost, cuda_driver_available, load_kernels};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The cuBLAS workspace (cuBLAS's own default on Hopper is 32 MiB).
const BLAS_WORKSPACE: usize = 32 << 20;

/// The smallest pinned staging buffer made (larger uploads get one of their size).
const STAGING_MIN: usize = 8 << 20;
/// Pinned staging held at most (but for one upload larger than it), so that copies issued
/// faster than they land wait rather than pin the whole model.
const STAGING_CAP: usize = 256 << 20;

/// A pinned host buffer for uploads on the copy stream, and the event of its last copy.
struct Staging {
    host: *mut c_void,
    len: usize,
    event: cu::CUevent,
    /// The upload using it, until that upload is seen done.
    busy: Option<u64>,
}

/// The copy stream (made on first use), its staging buffers and the uploads in flight.
#[derive(Default)]
struct Copies {
    stream: Option<cu::CUstream>,
    /// Recorded on the compute stream before each upload, waited for by the copy stream.
    order: Option<cu::CUevent>,
    staging: Vec<Staging>,
    next: u64,
}

// SAFETY: the raw handles and pinned pointers are used only under the runtime's context and
// behind the mutex that holds them.
unsafe impl Send for Copies {}

impl Copies {
    /// Frees the staging buffer of upload `id` when its event has fired (or `wait`: once it
    /// fires); true when it has landed (an id not in flight has).
    fn finish(&mut self, id: u64, wait: bool) -> Result<bool, GpuError> {
        let Some(s) = self.staging.iter_mut().find(|s| s.busy == Some(id)) else {
            return Ok(true);
        };
        // SAFETY: the event is live (destroyed only on drop).
        let r = unsafe {
            if wait {
                result::event::synchronize(s.event)
            } else {
                result::event::query(s.event)
            }
        };
        match r {
            Ok(()) => {
                s.busy = None;
                Ok(true)
            }
            Err(e) if e.0 == CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            Err(e) => Err(drv("cuEventQuery")(e)),
        }
    }

    /// Waits for every copy in flight.
    fn drain(&mut self) -> Result<(), GpuError> {
        let busy: Vec<u64> = self.staging.iter().filter_map(|s| s.busy).collect();
        for id in busy {
            self.finish(id, true)?;
        }
        Ok(())
    }

    /// A free staging buffer of at least `len` bytes (freeing those whose copies have landed;
    /// making one when none fits).
    fn staging_for(&mut self, len: usize) -> Result<usize, GpuError> {
        let busy: Vec<u64> = self.staging.iter().filter_map(|s| s.busy).collect();
        for id in busy {
            self.finish(id, false)?;
        }
        let fits = |c: &Self| {
            c.staging
                .iter()
                .position(|s| s.busy.is_none() && s.len >= len)
        };
        if let Some(i) = fits(self) {
            return Ok(i);
        }
        // Pinned memory is bounded: past the cap, wait for the copies in flight, and make room
        // by freeing idle buffers too small for this one.
        let pinned: usize = self.staging.iter().map(|s| s.len).sum();
        if pinned + len.max(STAGING_MIN) > STAGING_CAP {
            self.drain()?;
            if let Some(i) = fits(self) {
                return Ok(i);
            }
            for s in std::mem::take(&mut self.staging) {
                // SAFETY: idle (drained above); the handles are ours.
                unsafe {
                    let _ = result::event::destroy(s.event);
                    let _ = result::free_host(s.host);
                }
            }
        }
        let bytes = len.max(STAGING_MIN);
        // SAFETY: allocates pinned host memory; the context is current.
        let host = unsafe { result::malloc_host(bytes, 0) }.map_err(drv("cuMemHostAlloc"))?;
        let event = match result::event::create(cu::CUevent_flags::CU_EVENT_DISABLE_TIMING) {
            Ok(e) => e,
            Err(e) => {
                // SAFETY: allocated just above, not used.
                let _ = unsafe { result::free_host(host) };
                return Err(drv("cuEventCreate")(e));
            }
        };
        self.staging.push(Staging {
            host,
            len: bytes,
            event,
            busy: None,
        });
        Ok(self.staging.len() - 1)
    }
}

/// Runs `f`, turning a panic into [`GpuError::Panicked`].
fn guard<R>(what: &'static str, f: impl FnOnce() -> Result<R, GpuError>) -> Result<R, GpuError> {
    openledger_kernels::catch_panic(f)
        .unwrap_or_else(|message| Err(GpuError::Panicked { what, message }))
}

/// The error of driver call `op`.
fn drv(op: &str) -> impl Fn(DriverError) -> GpuError + '_ {
    move |e| {
        if context_lost(e.0) {
            GpuError::ContextLost {
                during: op.to_string(),
                message: e.to_string(),
            }
        } else if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            GpuError::OutOfMemory {
                what: op.to_string(),
                bytes: 0,
            }
        } else {
            GpuError::Driver {
                op: op.to_string(),
                message: e.to_string(),
            }
        }
    }
}

/// Whether the cuBLAS library can be loaded.
pub fn cublas_available() -> bool {
    // SAFETY: only tries to open the library; no symbol is called.
    std::panic::catch_unwind(|| unsafe { blas::is_culib_present() }).unwrap_or(false)
}

/// Whether the cuBLASLt library can be loaded.
pub fn cublaslt_available() -> bool {
    // SAFETY: only tries to open the library; no symbol is called.
    std::panic::catch_unwind(|| unsafe { lt::is_culib_present() }).unwrap_or(false)
}

/// What a cuBLASLt plan is made for: a GEMM's shape and type, and the alignment its three
/// addresses share (the heuristic picks only algorithms that need no more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GemmShape {
    m: usize,
    n: usize,
    k: usize,
    ldx: usize,
    ldw: usize,
    ldy: usize,
    dtype: Dtype,
    align: u32,
}

impl GemmShape {
    fn of(g: &Gemm) -> Self {
        // The largest power of two (up to 256) dividing every address.
        let bits = (g.x | g.w | g.y | 256).trailing_zeros().min(8);
        Self {
            m: g.m,
            n: g.n,
            k: g.k,
            ldx: g.ldx,
            ldw: g.ldw,
            ldy: g.ldy,
            dtype: g.dtype,
            align: 1 << bits,
        }
    }
}

/// cuBLASLt plans held at most (one per shape and alignment).
const MAX_LT_PLANS: usize = 4096;

/// A cuBLASLt plan: the operation, the layouts of w, x and y, and the algorithm.
struct LtPlan {
    desc: lt::cublasLtMatmulDesc_t,
    layouts: [lt::cublasLtMatrixLayout_t; 3],
    algo: lt::cublasLtMatmulAlgo_t,
}

impl LtPlan {
    /// Destroys the descriptor and layouts.
    ///
    /// # Safety
    /// They are not used again.
    unsafe fn destroy(&self) {
        // SAFETY: as the caller promises.
        unsafe {
            let _ = ltr::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = ltr::destroy_matrix_layout(l);
            }
        }
    }
}

/// The cuBLASLt handle and its plans by shape (`None`: cuBLASLt has no algorithm for that
/// shape, or turned it down once; cublasGemmEx runs it).
struct Lt {
    handle: lt::cublasLtHandle_t,
    plans: Mutex<HashMap<GemmShape, Option<LtPlan>>>,
}

// SAFETY: the handle and plans are used under the runtime's context, behind the mutex, one
// call at a time (cuBLASLt handles may be used from any thread that has the context current).
unsafe impl Send for Lt {}
// SAFETY: as above.
unsafe impl Sync for Lt {}

fn lt_type(d: Dtype) -> lt::cudaDataType {
    match d {
        Dtype::F32 => lt::cudaDataType::CUDA_R_32F,
        Dtype::F16 => lt::cudaDataType::CUDA_R_16F,
        Dtype::Bf16 => lt::cudaDataType::CUDA_R_16BF,
    }
}

/// Makes the cuBLASLt plan of `s` (`Ok(None)`: no algorithm for it).
///
/// # Safety
/// `handle` is live and the context current.
unsafe fn lt_plan(
    handle: lt::cublasLtHandle_t,
    s: &GemmShape,
) -> Result<Option<LtPlan>, ltr::CublasError> {
    let t = lt_type(s.dtype);
    // Column-major view: yᵀ [n, m] = op(w) · xᵀ, with w stored as a column-major [k, n]
    // (transposed by the operation) and x as a column-major [k, m].
    let desc = ltr::create_matmul_desc(
        lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        lt::cudaDataType::CUDA_R_32F,
    )?;
    let mut made: Vec<lt::cublasLtMatrixLayout_t> = Vec::new();
    let result = (|| {
        // cublasOperation_t, from cuBLAS (cuBLASLt takes it as an int32).
        let op = blas::cublasOperation_t::CUBLAS_OP_T as i32;
        // SAFETY: the descriptor is live; the attribute is an int-sized operation.
        unsafe {
            ltr::set_matmul_desc_attribute(
                desc,
                lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &op as *const _ as *const c_void,
                std::mem::size_of_val(&op),
            )?;
        }
        for (rows, cols, ld) in [(s.k, s.n, s.ldw), (s.k, s.m, s.ldx), (s.n, s.m, s.ldy)] {
            made.push(ltr::create_matrix_layout(
                t,
                rows as u64,
                cols as u64,
                ld as i64,
            )?);
        }
        let pref = ltr::create_matmul_pref()?;
        let workspace = BLAS_WORKSPACE as u64;
        // A split over k sums its parts in f32 (in the workspace), never in the output's
        // type: the products are summed in f32 and rounded once, as `Gemm` promises.
        let reduction =
            lt::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
        // SAFETY: the preference and layouts are live; each attribute has its documented
        // type (u64 workspace bytes, u32 reduction mask and alignments).
        let heuristic = unsafe {
            let set = |attr, value: *const c_void, size| {
                ltr::set_matmul_pref_attribute(pref, attr, value, size)
            };
            use lt::cublasLtMatmulPreferenceAttributes_t as P;
            let r = set(
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &workspace as *const u64 as *const c_void,
                8,
            )
            .and_then(|()| {
                set(
                    P::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                    &reduction as *const u32 as *const c_void,
                    4,
                )
            })
            .and_then(|()| {
                [
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                ]
                .into_iter()
                .try_for_each(|a| set(a, &s.align as *const u32 as *const c_void, 4))
            })
            .and_then(|()| {
                ltr::get_matmul_algo_heuristic(
                    handle, desc, made[0], made[1], made[2], made[2], pref,
                )
            });
            let _ = ltr::destroy_matmul_pref(pref);
            r
        };
        match heuristic {
            Ok(h) => Ok(Some(h.algo)),
            Err(e) if e.0 == lt::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => Ok(None),
            Err(e) => Err(e),
        }
    })();
    match result {
        Ok(Some(algo)) => Ok(Some(LtPlan {
            desc,
            layouts: [made[0], made[1], made[2]],
            algo,
        })),
        other => {
            // SAFETY: made above, not used again.
            unsafe {
                let _ = ltr::destroy_matmul_desc(desc);
                for l in made {
                    let _ = ltr::destroy_matrix_layout(l);
                }
            }
            other.map(|_| None)
        }
    }
}

/// A cuBLAS handle, destroyed with the runtime.
struct BlasHandle(blas::cublasHandle_t);

// SAFETY: the handle is used under the runtime's context, one call at a time (cuBLAS handles
// may be used from any thread that has the context current).
unsafe impl Send for BlasHandle {}
// SAFETY: as above; calls through `&self` are serialised by the caller's single stream.
unsafe impl Sync for BlasHandle {}

/// An instantiated CUDA graph and the graph it came from.
struct HeldGraph {
    graph: cu::CUgraph,
    exec: cu::CUgraphExec,
}

/// The stream everything but uploads runs on, and the graphs captured from it.
struct Compute {
    stream: cu::CUstream,
    /// cuBLAS's workspace.
    workspace: cu::CUdeviceptr,
    graphs: Mutex<HashMap<u64, HeldGraph>>,
    next_graph: std::sync::atomic::AtomicU64,
    /// The thread capturing the stream, if one is.
    capture: Mutex<Option<std::thread::ThreadId>>,
    /// Told when a capture ends.
    capture_ended: std::sync::Condvar,
}

// SAFETY: the handles are used only under the runtime's context; the graphs behind a mutex
// (CUDA graphs are not to be used from two threads at once).
unsafe impl Send for Compute {}
// SAFETY: as above.
unsafe impl Sync for Compute {}

/// The runtime interface on CUDA device `ordinal` (see the module docs).
pub struct CudaRuntime {
    ctx: Arc<CudaContext>,
    funcs: HashMap<String, CudaFunction>,
    blas: BlasHandle,
    lt: Lt,
    compute: Compute,
    sync: bool,
    name: String,
    /// Compute capability 8.0 or later.
    tensor_cores: bool,
    copies: Mutex<Copies>,
}

impl std::fmt::Debug for CudaRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaRuntime")
            .field("device", &self.name)
            .field("kernels", &self.funcs.len())
            .finish()
    }
}

impl CudaRuntime {
    /// Opens device `ordinal`, compiles every kernel for its architecture (once per
    /// architecture per process) and creates a cuBLAS handle.
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        if !cuda_driver_available() {
            return Err(GpuError::MissingLibrary {
                library: "cuda",
                searched: openledger_kernels::library_candidates("cuda"),
            });
        }
        if !openledger_kernels::nvrtc_available() {
            return Err(GpuError::MissingLibrary {
                library: "nvrtc",
                searched: openledger_kernels::library_candidates("nvrtc"),
            });
        }
        if !cublas_available() {
            return Err(GpuError::MissingLibrary {
                library: "cublas",
                searched: openledger_kernels::library_candidates("cublas"),
            });
        }
        if !cublaslt_available() {
            return Err(GpuError::MissingLibrary {
                library: "cublasLt",
                searched: openledger_kernels::library_candidates("cublasLt"),
            });
        }
        guard("CUDA initialisation", || {
            let ctx = CudaContext::new(ordinal).map_err(|e| GpuError::NoDevice {
                ordinal,
                message: e.to_string(),
            })?;
            let name = ctx.name().map_err(drv("cuDeviceGetName"))?;
            let name = format!("{name} (cuda:{ordinal})");
            let (major, _) = ctx
                .compute_capability()
                .map_err(drv("cuDeviceGetAttribute"))?;
            let funcs = load_kernels(&ctx).map_err(|e| GpuError::Driver {
                op: "loading the kernels".into(),
                message: e.to_string(),
            })?;
            ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(drv("cuStreamCreate"))?;
            // SAFETY: allocates; the context is current.
            let workspace = unsafe { result::malloc_sync(BLAS_WORKSPACE) };
            let workspace = match workspace {
                Ok(w) => w,
                Err(e) => {
                    // SAFETY: created just above, unused.
                    let _ = unsafe { result::stream::destroy(stream) };
                    return Err(drv("cuMemAlloc")(e));
                }
            };
            let compute = Compute {
                stream,
                workspace,
                graphs: Mutex::new(HashMap::new()),
                next_graph: Default::default(),
                capture: Mutex::new(None),
                capture_ended: std::sync::Condvar::new(),
            };
            let blas_err = |op: &str, e: String| GpuError::Driver {
                op: op.into(),
                message: e,
            };
            let handles = cudarc::cublas::result::create_handle()
                .map_err(|e| blas_err("cublasCreate", format!("{e:?}")))
                .and_then(|h| match ltr::create_handle() {
                    Ok(l) => Ok((h, l)),
                    Err(e) => {
                        // SAFETY: made just above, unused.
                        let _ = unsafe { cudarc::cublas::result::destroy_handle(h) };
                        Err(blas_err("cublasLtCreate", format!("{e:?}")))
                    }
                });
            let (handle, lt_handle) = match handles {
                Ok(h) => h,
                Err(e) => {
                    // SAFETY: ours, unused.
                    unsafe {
                        let _ = result::free_sync(workspace);
                        let _ = result::stream::destroy(stream);
                    }
                    return Err(e);
                }
            };
            // From here the runtime owns the handles: dropping it frees them.
            let rt = Self {
                ctx,
                funcs,
                blas: BlasHandle(handle),
                lt: Lt {
                    handle: lt_handle,
                    plans: Mutex::new(HashMap::new()),
                },
                compute,
                sync: std::env::var("OPENLEDGER_CUDA_SYNC").is_ok_and(|v| v == "1"),
                name,
                tensor_cores: major >= 8,
                copies: Mutex::new(Copies::default()),
            };
            // SAFETY: the handle, stream and workspace are live and ours.
            unsafe {
                cudarc::cublas::result::set_stream(rt.blas.0, rt.compute.stream as _)
                    .map_err(|e| blas_err("cublasSetStream", format!("{e:?}")))?;
                blas::cublasSetWorkspace_v2(
                    rt.blas.0,
                    rt.compute.workspace as *mut c_void,
                    BLAS_WORKSPACE,
                )
                .result()
                .map_err(|e| blas_err("cublasSetWorkspace", format!("{e:?}")))?;
            }
            Ok(rt)
        })
    }

    /// Free and total device memory, in bytes.
    pub fn memory(&self) -> Result<(usize, usize), GpuError> {
        guard("cuMemGetInfo", || {
            self.ctx.mem_get_info().map_err(drv("cuMemGetInfo"))
        })
    }

    /// Makes the runtime's context current on this thread, once no other thread is capturing
    /// (its capture would record this thread's work, or be broken by it).
    fn bind(&self) -> Result<(), GpuError> {
        drop(self.capture_owner()?);
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))
    }

    /// The capture's owner, once it is this thread or none (waiting for another thread's
    /// capture to end).
    fn capture_owner(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, Option<std::thread::ThreadId>>, GpuError> {
        let me = std::thread::current().id();
        let poisoned = |_| GpuError::Driver {
            op: "the graph capture".into(),
            message: "its lock is poisoned".into(),
        };
        let owner = self.compute.capture.lock().map_err(poisoned)?;
        self.compute
            .capture_ended
            .wait_while(owner, |o| o.is_some_and(|t| t != me))
            .map_err(poisoned)
    }

    fn copies(&self) -> Result<std::sync::MutexGuard<'_, Copies>, GpuError> {
        self.copies.lock().map_err(|_| GpuError::Driver {
            op: "the copy stream".into(),
            message: "its lock is poisoned".into(),
        })
    }

    fn after_launch(&self, what: &str) -> Result<(), GpuError> {
        if self.sync && !self.capturing() {
            result::ctx::synchronize().map_err(drv(what))?;
        }
        Ok(())
    }

    /// Refuses `what` while a capture is under way.
    fn refuse_in_capture(&self, what: &str) -> Result<(), GpuError> {
        if self.capturing() {
            return Err(GpuError::InvalidArgument {
                name: "graph capture",
                reason: format!("{what} while capturing a graph"),
            });
        }
        Ok(())
    }

    fn graphs(&self) -> Result<std::sync::MutexGuard<'_, HashMap<u64, HeldGraph>>, GpuError> {
        self.compute.graphs.lock().map_err(|_| GpuError::Driver {
            op: "the graph table".into(),
            message: "its lock is poisoned".into(),
        })
    }
}

impl CudaRuntime {
    /// Runs `g` through cuBLASLt with its shape's plan (made on first use); false where
    /// cuBLASLt has no algorithm for the shape (or turned it down: then never again), for
    /// cublasGemmEx to run.
    ///
    /// # Safety
    /// As [`Runtime::gemm`].
    unsafe fn gemm_lt(&self, g: &Gemm) -> Result<bool, GpuError> {
        guard("cublasLtMatmul", || {
            self.bind()?;
            let shape = GemmShape::of(g);
            let mut plans = self.lt.plans.lock().map_err(|_| GpuError::Driver {
                op: "the cuBLASLt plans".into(),
                message: "their lock is poisoned".into(),
            })?;
            let handle = self.lt.handle;
            if plans.len() >= MAX_LT_PLANS && !plans.contains_key(&shape) {
                // Prompts of every length make shapes without end: past the bound, start
                // afresh (a plan is read only while its call is issued).
                for p in plans.values().flatten() {
                    // SAFETY: removed next, never used again.
                    unsafe { p.destroy() };
                }
                plans.clear();
            }
            // SAFETY: the handle is live and the context current. An error making the plan
            // leaves the shape to cublasGemmEx.
            let entry = plans
                .entry(shape)
                .or_insert_with(|| unsafe { lt_plan(handle, &shape) }.unwrap_or(None));
            let Some(plan) = entry.as_ref() else {
                return Ok(false);
            };
            let alpha = 1f32;
            let beta = if g.accumulate { 1f32 } else { 0f32 };
            // SAFETY: the plan was made for this shape and alignment; the caller promises the
            // matrices; the workspace is the runtime's and the stream its compute stream.
            let r = unsafe {
                ltr::matmul(
                    self.lt.handle,
                    plan.desc,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    g.w as *const c_void,
                    plan.layouts[0],
                    g.x as *const c_void,
                    plan.layouts[1],
                    g.y as *const c_void,
                    plan.layouts[2],
                    g.y as *mut c_void,
                    plan.layouts[2],
                    &plan.algo,
                    self.compute.workspace as *mut c_void,
                    BLAS_WORKSPACE,
                    self.compute.stream as _,
                )
            };
            match r {
                Ok(()) => {
                    drop(plans);
                    self.after_launch("cublasLtMatmul")?;
                    Ok(true)
                }
                Err(e)
                    if matches!(
                        e.0,
                        lt::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED
                            | lt::cublasStatus_t::CUBLAS_STATUS_INVALID_VALUE
                    ) =>
                {
                    // Refused before anything was issued: the shape goes to cublasGemmEx.
                    if let Some(Some(p)) = plans.insert(shape, None) {
                        // SAFETY: taken out of the table, not used again.
                        unsafe { p.destroy() };
                    }
                    Ok(false)
                }
                Err(e) => Err(GpuError::Driver {
                    op: "cublasLtMatmul".into(),
                    message: format!("{e:?}"),
                }),
            }
        })
    }
}

fn blas_type(d: Dtype) -> blas::cudaDataType {
    match d {
        Dtype::F32 => blas::cudaDataType::CUDA_R_32F,
        Dtype::F16 => blas::cudaDataType::CUDA_R_16F,
        Dtype::Bf16 => blas::cudaDataType::CUDA_R_16BF,
    }
}

impl Runtime for CudaRuntime {
    fn device_name(&self) -> String {
        self.name.clone()
    }

    fn tensor_cores(&self) -> bool {
        self.tensor_cores
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr, GpuError> {
        guard("cuMemAlloc", || {
            self.refuse_in_capture("allocating")?;
            self.bind()?;
            // SAFETY: allocates; the context is current.
            unsafe { result::malloc_sync(bytes.max(1)) }.map_err(|e| match drv("cuMemAlloc")(e) {
                GpuError::OutOfMemory { .. } => GpuError::OutOfMemory {
                    what: "device memory".into(),
                    bytes,
                },
                other => other,
            })
        })
    }

    unsafe fn free(&self, ptr: DevicePtr) {
        let _ = guard("cuMemFree", || {
            self.bind()?;
            // Copies in flight on the copy stream may target it: they land first, and so does
            // the work issued before on the compute stream.
            self.copies()?.drain()?;
            if !self.capturing() {
                // SAFETY: the stream is ours and live.
                unsafe { result::stream::synchronize(self.compute.stream) }
                    .map_err(drv("cuStreamSynchronize"))?;
            }
            // SAFETY: as the caller promises; nothing issued before uses it any more.
            unsafe { result::free_sync(ptr) }.map_err(drv("cuMemFree"))
        });
    }

    unsafe fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError> {
        guard("cuMemcpyHtoDAsync", || {
            self.refuse_in_capture("a host-to-device copy")?;
            self.bind()?;
            // SAFETY: as the caller promises. From pageable memory the driver stages `src`
            // before returning, so it may be reused; the copy is ordered on the stream.
            unsafe { result::memcpy_htod_async(dst, src, self.compute.stream) }
                .map_err(drv("cuMemcpyHtoDAsync"))
        })
    }

    unsafe fn upload_async(&self, src: &[u8], copies: &[Scatter]) -> Result<UploadId, GpuError> {
        Scatter::check(src.len(), copies)?;
        guard("an upload on the copy stream", || {
            self.refuse_in_capture("an upload")?;
            self.bind()?;
            let mut c = self.copies()?;
            let stream = match c.stream {
                Some(s) => s,
                None => {
                    let s = result::stream::create(result::stream::StreamKind::NonBlocking)
                        .map_err(drv("cuStreamCreate"))?;
                    c.stream = Some(s);
                    s
                }
            };
            let order = match c.order {
                Some(e) => e,
                None => {
                    let e = result::event::create(cu::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                        .map_err(drv("cuEventCreate"))?;
                    c.order = Some(e);
                    e
                }
            };
            let i = c.staging_for(src.len())?;
            c.next += 1;
            let id = c.next;
            let s = &mut c.staging[i];
            // SAFETY: the staging buffer holds at least `src.len()` bytes and no copy in
            // flight reads it (its last event has fired); the copies read it in order after
            // this write; the caller promises the destinations.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), s.host as *mut u8, src.len());
                result::event::record(order, self.compute.stream).map_err(drv("cuEventRecord"))?;
                result::stream::wait_event(
                    stream,
                    order,
                    cu::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )
                .map_err(drv("cuStreamWaitEvent"))?;
                for part in copies {
                    let bytes = std::slice::from_raw_parts(
                        (s.host as *const u8).add(part.src_offset),
                        part.len,
                    );
                    result::memcpy_htod_async(part.dst, bytes, stream)
                        .map_err(drv("cuMemcpyHtoDAsync"))?;
                }
                result::event::record(s.event, stream).map_err(drv("cuEventRecord"))?;
            }
            s.busy = Some(id);
            Ok(UploadId(id))
        })
    }

    fn upload_done(&self, id: UploadId) -> Result<bool, GpuError> {
        guard("cuEventQuery", || {
            self.bind()?;
            self.copies()?.finish(id.0, false)
        })
    }

    fn wait_upload(&self, id: UploadId) -> Result<(), GpuError> {
        guard("cuEventSynchronize", || {
            self.bind()?;
            self.copies()?.finish(id.0, true).map(drop)
        })
    }

    unsafe fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<(), GpuError> {
        guard("cuMemcpyDtoHAsync", || {
            self.refuse_in_capture("a device-to-host copy")?;
            self.bind()?;
            // SAFETY: as the caller promises; ordered after the work issued before, and
            // waited for before `dst` is handed back.
            unsafe {
                result::memcpy_dtoh_async(dst, src, self.compute.stream)
                    .map_err(drv("cuMemcpyDtoHAsync"))?;
                result::stream::synchronize(self.compute.stream).map_err(drv("cuStreamSynchronize"))
            }
        })
    }

    unsafe fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<(), GpuError> {
        guard("cuMemcpyDtoDAsync", || {
            self.bind()?;
            // SAFETY: as the caller promises.
            unsafe { result::memcpy_dtod_async(dst, src, bytes, self.compute.stream) }
                .map_err(drv("cuMemcpyDtoDAsync"))
        })
    }

    unsafe fn launch(&self, name: &str, dims: LaunchDims, args: &[Arg]) -> Result<(), GpuError> {
        dims.check(name)?;
        let f = self.funcs.get(name).ok_or_else(|| GpuError::Launch {
            kernel: name.to_string(),
            reason: "no such kernel".into(),
        })?;
        guard("cuLaunchKernel", || {
            self.bind()?;
            let mut words: Vec<u64> = args.iter().map(|a| a.word()).collect();
            let mut params: Vec<*mut c_void> = words
                .iter_mut()
                .map(|w| w as *mut u64 as *mut c_void)
                .collect();
            // SAFETY: the caller promises the arguments fit the kernel; the driver copies the
            // parameters before returning.
            unsafe {
                result::launch_kernel(
                    f.cu_function(),
                    dims.grid,
                    (dims.threads, 1, 1),
                    dims.shared_bytes,
                    self.compute.stream,
                    &mut params,
                )
            }
            .map_err(|e| match drv(name)(e) {
                GpuError::Driver { message, .. } => GpuError::Launch {
                    kernel: name.to_string(),
                    reason: message,
                },
                other => other,
            })?;
            self.after_launch(name)
        })
    }

    unsafe fn gemm(&self, g: &Gemm) -> Result<(), GpuError> {
        g.check()?;
        // SAFETY: as the caller promises.
        if unsafe { self.gemm_lt(g)? } {
            return Ok(());
        }
        guard("cublasGemmEx", || {
            self.bind()?;
            let alpha = 1f32;
            let beta = if g.accumulate { 1f32 } else { 0f32 };
            let t = blas_type(g.dtype);
            // Column-major view: yᵀ [n, m] = w [n, k] · xᵀ [k, m], with w stored row-major as
            // a column-major [k, n] (so transposed) and x row-major as a column-major [k, m].
            // SAFETY: as the caller promises; sizes are checked to fit `int`.
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    self.blas.0,
                    blas::cublasOperation_t::CUBLAS_OP_T,
                    blas::cublasOperation_t::CUBLAS_OP_N,
                    g.n as i32,
                    g.m as i32,
                    g.k as i32,
                    &alpha as *const f32 as *const c_void,
                    g.w as *const c_void,
                    t,
                    g.ldw as i32,
                    g.x as *const c_void,
                    t,
                    g.ldx as i32,
                    &beta as *const f32 as *const c_void,
                    g.y as *mut c_void,
                    t,
                    g.ldy as i32,
                    blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| GpuError::Driver {
                op: "cublasGemmEx".into(),
                message: format!("{e:?}"),
            })?;
            self.after_launch("cublasGemmEx")
        })
    }

    fn memory_info(&self) -> Option<(usize, usize)> {
        self.memory().ok()
    }

    fn synchronize(&self) -> Result<(), GpuError> {
        guard("cuCtxSynchronize", || {
            self.refuse_in_capture("synchronising")?;
            self.bind()?;
            result::ctx::synchronize().map_err(drv("cuCtxSynchronize"))
        })
    }

    fn begin_capture(&self) -> Result<(), GpuError> {
        guard("cuStreamBeginCapture", || {
            self.refuse_in_capture("beginning a capture")?;
            self.bind()?;
            // Held until the capture has begun: no other thread slips work in before.
            let mut owner = self.capture_owner()?;
            // SAFETY: the stream is ours and live.
            unsafe {
                result::stream::begin_capture(
                    self.compute.stream,
                    cu::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                )
            }
            .map_err(drv("cuStreamBeginCapture"))?;
            *owner = Some(std::thread::current().id());
            Ok(())
        })
    }

    fn end_capture(&self, discard: bool) -> Result<u64, GpuError> {
        guard("cuStreamEndCapture", || {
            if !self.capturing() {
                return Err(GpuError::InvalidArgument {
                    name: "graph capture",
                    reason: "no capture is under way".into(),
                });
            }
            let bound = self.bind();
            // SAFETY: the stream is ours and capturing.
            let graph = unsafe { result::stream::end_capture(self.compute.stream) };
            // The capture is over (even where it failed): other threads go on.
            *self.capture_owner()? = None;
            self.compute.capture_ended.notify_all();
            bound?;
            let graph = graph.map_err(drv("cuStreamEndCapture"))?;
            if discard || graph.is_null() {
                if !graph.is_null() {
                    // SAFETY: made just above, not instantiated.
                    let _ = unsafe { result::graph::destroy(graph) };
                }
                if discard {
                    return Ok(0);
                }
                return Err(GpuError::Driver {
                    op: "cuStreamEndCapture".into(),
                    message: "the capture made no graph".into(),
                });
            }
            // SAFETY: a graph just captured.
            let exec =
                match unsafe { result::graph::instantiate(graph, cu::CUgraphInstantiate_flags(0)) }
                {
                    Ok(e) => e,
                    Err(e) => {
                        // SAFETY: ours, not instantiated.
                        let _ = unsafe { result::graph::destroy(graph) };
                        return Err(drv("cuGraphInstantiate")(e));
                    }
                };
            let id = self.compute.next_graph.fetch_add(1, Ordering::SeqCst) + 1;
            self.graphs()?.insert(id, HeldGraph { graph, exec });
            Ok(id)
        })
    }

    unsafe fn replay(&self, id: u64) -> Result<(), GpuError> {
        guard("cuGraphLaunch", || {
            self.refuse_in_capture("replaying a graph")?;
            self.bind()?;
            let graphs = self.graphs()?;
            let g = graphs.get(&id).ok_or_else(|| GpuError::InvalidArgument {
                name: "graph",
                reason: format!("no graph {id}"),
            })?;
            // SAFETY: the graph is live; the caller promises the addresses it holds.
            unsafe { result::graph::launch(g.exec, self.compute.stream) }
                .map_err(drv("cuGraphLaunch"))?;
            drop(graphs);
            self.after_launch("cuGraphLaunch")
        })
    }

    fn drop_graph(&self, id: u64) {
        let _ = guard("cuGraphExecDestroy", || {
            self.bind()?;
            if let Some(g) = self.graphs()?.remove(&id) {
                // SAFETY: ours, removed from the table so destroyed once; a launch of it in
                // flight finishes first (the driver defers the release).
                unsafe {
                    let _ = result::graph::exec_destroy(g.exec);
                    let _ = result::graph::destroy(g.graph);
                }
            }
            Ok(())
        });
    }

    fn capturing(&self) -> bool {
        let me = std::thread::current().id();
        self.compute
            .capture
            .lock()
            .is_ok_and(|o| o.is_some_and(|t| t == me))
    }
}

impl Drop for CudaRuntime {
    fn drop(&mut self) {
        let _ = guard("freeing the copy stream", || {
            self.bind()?;
            let c = std::mem::take(&mut *self.copies()?);
            // SAFETY: the handles are ours; the stream is drained before its buffers go.
            unsafe {
                if let Some(s) = c.stream {
                    let _ = result::stream::synchronize(s);
                }
                for s in c.staging {
                    let _ = result::event::destroy(s.event);
                    let _ = result::free_host(s.host);
                }
                if let Some(e) = c.order {
                    let _ = result::event::destroy(e);
                }
                if let Some(s) = c.stream {
                    let _ = result::stream::destroy(s);
                }
            }
            Ok(())
        });
        let _ = guard("freeing the graphs and the compute stream", || {
            self.bind()?;
            // SAFETY: the handles are ours; the stream is drained before anything goes.
            unsafe {
                let _ = result::stream::synchronize(self.compute.stream);
                if let Ok(mut graphs) = self.compute.graphs.lock() {
                    for (_, g) in graphs.drain() {
                        let _ = result::graph::exec_destroy(g.exec);
                        let _ = result::graph::destroy(g.graph);
                    }
                }
            }
            Ok(())
        });
        let _ = guard("cublasLtDestroy", || {
            self.bind()?;
            // SAFETY: ours, destroyed once; the stream was drained above.
            unsafe {
                if let Ok(mut plans) = self.lt.plans.lock() {
                    for p in plans.drain().filter_map(|(_, p)| p) {
                        p.destroy();
                    }
                }
                let _ = ltr::destroy_handle(self.lt.handle);
            }
            Ok(())
        });
        let _ = guard("cublasDestroy", || {
            self.bind()?;
            // SAFETY: the handle is ours and destroyed once.
            unsafe { cudarc::cublas::result::destroy_handle(self.blas.0) }.map_err(|e| {
                GpuError::Driver {
                    op: "cublasDestroy".into(),
                    message: format!("{e:?}"),
                }
            })
        });
        let _ = guard("freeing the cuBLAS workspace", || {
            self.bind()?;
            // SAFETY: ours; the handle that used them is gone and the stream drained.
            unsafe {
                let _ = result::free_sync(self.compute.workspace);
                let _ = result::stream::destroy(self.compute.stream);
            }
            Ok(())
        });
    }
}
