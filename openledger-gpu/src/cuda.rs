//! [`CudaRuntime`]: the [`Runtime`] interface on a CUDA device through cudarc, with the driver,
//! NVRTC and cuBLAS loaded at run time. Every entry point first checks that the libraries can
//! be loaded (cudarc panics when it cannot) and runs inside `catch_unwind` as a second guard, so
//! a missing library, device or kernel is a [`GpuError`], never a panic.
//!
//! Everything runs in order on the context's default stream: the kernels of
//! `openledger-kernels` (compiled by NVRTC for the device's architecture, cubin first) and
//! cuBLAS's `cublasGemmEx` (inputs in the model's dtype, `CUBLAS_COMPUTE_32F`). Launches are
//! asynchronous: a kernel that faults shows up at a later call as [`GpuError::ContextLost`];
//! with `OPENLEDGER_CUDA_SYNC=1` every launch is followed by a synchronisation so the failing
//! kernel is the one named.
//!
//! [`upload_async`](Runtime::upload_async) runs on a copy stream of its own (non-blocking, so
//! it overlaps with the launches): the bytes go through pinned staging buffers (reused once
//! their copy's event has fired), the copy stream first waits for the work issued before on
//! the default stream, and an event recorded after the copies says when they have landed.

use crate::error::GpuError;
use crate::runtime::{Arg, DevicePtr, Dtype, Gemm, LaunchDims, Runtime, Scatter, UploadId};
use cudarc::cublas::sys as blas;
use cudarc::driver::sys::{self as cu, CUresult};
use cudarc::driver::{CudaContext, CudaFunction, DriverError, result};
use openledger_lora::sgmv::{context_lost, cuda_driver_available, load_kernels};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

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
    /// Recorded on the default stream before each upload, waited for by the copy stream.
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

/// A cuBLAS handle, destroyed with the runtime.
struct BlasHandle(blas::cublasHandle_t);

// SAFETY: the handle is used under the runtime's context, one call at a time (cuBLAS handles
// may be used from any thread that has the context current).
unsafe impl Send for BlasHandle {}
// SAFETY: as above; calls through `&self` are serialised by the caller's single stream.
unsafe impl Sync for BlasHandle {}

/// The runtime interface on CUDA device `ordinal` (see the module docs).
pub struct CudaRuntime {
    ctx: Arc<CudaContext>,
    funcs: HashMap<String, CudaFunction>,
    blas: BlasHandle,
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
            let handle = cudarc::cublas::result::create_handle().map_err(|e| GpuError::Driver {
                op: "cublasCreate".into(),
                message: format!("{e:?}"),
            })?;
            Ok(Self {
                ctx,
                funcs,
                blas: BlasHandle(handle),
                sync: std::env::var("OPENLEDGER_CUDA_SYNC").is_ok_and(|v| v == "1"),
                name,
                tensor_cores: major >= 8,
                copies: Mutex::new(Copies::default()),
            })
        })
    }

    /// Free and total device memory, in bytes.
    pub fn memory(&self) -> Result<(usize, usize), GpuError> {
        guard("cuMemGetInfo", || {
            self.ctx.mem_get_info().map_err(drv("cuMemGetInfo"))
        })
    }

    fn bind(&self) -> Result<(), GpuError> {
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))
    }

    fn copies(&self) -> Result<std::sync::MutexGuard<'_, Copies>, GpuError> {
        self.copies.lock().map_err(|_| GpuError::Driver {
            op: "the copy stream".into(),
            message: "its lock is poisoned".into(),
        })
    }

    fn after_launch(&self, what: &str) -> Result<(), GpuError> {
        if self.sync {
            result::ctx::synchronize().map_err(drv(what))?;
        }
        Ok(())
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
            // Copies in flight on the copy stream may target it: they land first.
            self.copies()?.drain()?;
            // SAFETY: as the caller promises; cuMemFree waits for work using it.
            unsafe { result::free_sync(ptr) }.map_err(drv("cuMemFree"))
        });
    }

    unsafe fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError> {
        guard("cuMemcpyHtoD", || {
            self.bind()?;
            // SAFETY: as the caller promises; a synchronous copy from pageable memory.
            unsafe { result::memcpy_htod_sync(dst, src) }.map_err(drv("cuMemcpyHtoD"))
        })
    }

    unsafe fn upload_async(&self, src: &[u8], copies: &[Scatter]) -> Result<UploadId, GpuError> {
        Scatter::check(src.len(), copies)?;
        guard("an upload on the copy stream", || {
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
                result::event::record(order, std::ptr::null_mut()).map_err(drv("cuEventRecord"))?;
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
        guard("cuMemcpyDtoH", || {
            self.bind()?;
            // SAFETY: as the caller promises; waits for the work issued before.
            unsafe { result::memcpy_dtoh_sync(dst, src) }.map_err(drv("cuMemcpyDtoH"))
        })
    }

    unsafe fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<(), GpuError> {
        guard("cuMemcpyDtoD", || {
            self.bind()?;
            // SAFETY: as the caller promises.
            unsafe { result::memcpy_dtod_sync(dst, src, bytes) }.map_err(drv("cuMemcpyDtoD"))
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
            // parameters before returning. The null stream is the context's default stream.
            unsafe {
                result::launch_kernel(
                    f.cu_function(),
                    dims.grid,
                    (dims.threads, 1, 1),
                    dims.shared_bytes,
                    std::ptr::null_mut(),
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
            self.bind()?;
            result::ctx::synchronize().map_err(drv("cuCtxSynchronize"))
        })
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
    }
}
