//! The CUDA backend: the plan's tables and the adapters in device memory, and the kernels of
//! `openledger-kernels` (compiled by NVRTC for the device, cubin first) launched through
//! cudarc. The driver and NVRTC are loaded at run time: every entry point first checks that
//! they can be (cudarc panics when it cannot) and runs inside `catch_unwind` as a second guard,
//! so a missing library, device or kernel is an [`SgmvError`], never a panic.
//!
//! Launches are asynchronous: a kernel that faults shows up at a later call, and the fault
//! poisons the context. With `OPENLEDGER_CUDA_SYNC=1` every launch is followed by a
//! synchronisation, so the failing kernel is the one named; a poisoned context is
//! [`SgmvError::ContextLost`] whatever call finds it.

use crate::element::LoraElement;
use crate::error::SgmvError;
use crate::plan::{AdapterSlots, BLayout, DeviceTables, SgmvPlan};
use cudarc::driver::sys::CUresult;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DriverError, LaunchArgs,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use openledger_kernels::{Image, entry_points, panic_message, sources::DTYPES};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// Threads per block of every kernel.
const BLOCK: u32 = 256;
/// Rows per block of the SGMV kernels (`SHRINK_ROWS` / `EXPAND_ROWS` in the sources).
const ROWS_PER_BLOCK: usize = 8;

/// An element type the kernels are instantiated for (`f32`, `half::f16`, `half::bf16`).
pub trait GpuElement:
    LoraElement + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits
{
}
impl GpuElement for f32 {}
impl GpuElement for half::f16 {}
impl GpuElement for half::bf16 {}

/// Runs `f`, turning a panic into [`SgmvError::Panicked`].
fn guard<R>(what: &'static str, f: impl FnOnce() -> Result<R, SgmvError>) -> Result<R, SgmvError> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(SgmvError::Panicked {
            what,
            message: panic_message(p),
        })
    })
}

/// Whether a driver error leaves the context unusable (a kernel faulted): every later call on
/// it fails the same way.
fn is_sticky(code: CUresult) -> bool {
    matches!(
        code,
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
            | CUresult::CUDA_ERROR_LAUNCH_FAILED
            | CUresult::CUDA_ERROR_MISALIGNED_ADDRESS
            | CUresult::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUresult::CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUresult::CUDA_ERROR_INVALID_PC
            | CUresult::CUDA_ERROR_ASSERT
            | CUresult::CUDA_ERROR_LAUNCH_TIMEOUT
            | CUresult::CUDA_ERROR_CONTEXT_IS_DESTROYED
            | CUresult::CUDA_ERROR_ECC_UNCORRECTABLE
    )
}

/// The error of the driver call `op`: [`SgmvError::ContextLost`] for a sticky one.
fn drv(op: &str) -> impl Fn(DriverError) -> SgmvError + '_ {
    move |e| {
        if is_sticky(e.0) {
            SgmvError::ContextLost {
                during: op.to_string(),
                message: e.to_string(),
            }
        } else {
            SgmvError::Driver {
                op: op.to_string(),
                message: e.to_string(),
            }
        }
    }
}

/// Whether the NVRTC library can be loaded.
pub fn nvrtc_available() -> bool {
    openledger_kernels::nvrtc_available()
}

/// Whether the CUDA driver library can be loaded.
pub fn cuda_driver_available() -> bool {
    // SAFETY: only tries to open the library; no symbol is called.
    std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// Whether `OPENLEDGER_CUDA_SYNC=1` asks for a synchronisation after each launch.
fn sync_after_launch() -> bool {
    std::env::var("OPENLEDGER_CUDA_SYNC").is_ok_and(|v| v == "1")
}

/// A buffer in device memory.
#[derive(Debug)]
pub struct GpuBuffer<T> {
    inner: CudaSlice<T>,
}

impl<T> GpuBuffer<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.len() == 0
    }
}

/// One layer's adapter slots in device memory (`A` `[rank, in]`, `B` `[out, rank]`), with the
/// pointer, rank and scale tables the kernels index by slot.
#[derive(Debug)]
pub struct GpuSlots<T> {
    in_features: usize,
    out_features: usize,
    ranks: Vec<usize>,
    _a: Vec<CudaSlice<T>>,
    _b: Vec<CudaSlice<T>>,
    a_ptrs: CudaSlice<i64>,
    b_ptrs: CudaSlice<i64>,
    ranks_dev: CudaSlice<i32>,
    scales_dev: CudaSlice<f32>,
}

impl<T> GpuSlots<T> {
    /// The rank of each slot.
    pub fn ranks(&self) -> &[usize] {
        &self.ranks
    }
}

/// A plan's segment bounds in device memory for one launch.
struct Tables {
    starts: CudaSlice<i32>,
    ends: CudaSlice<i32>,
}

/// A plan's slots and intermediate offsets in device memory for one launch: per segment for
/// the SGMV kernels, per row for the BGMV ones.
struct RowTables {
    slots: CudaSlice<i32>,
    v_off: CudaSlice<i64>,
}

/// One CUDA device with the SGMV / BGMV kernels loaded.
#[derive(Debug)]
pub struct CudaSgmv {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<String, CudaFunction>,
    sync: bool,
}

impl CudaSgmv {
    /// Opens device `ordinal`, compiles the kernels for its architecture (a cubin for
    /// `sm_XY`, PTX where NVRTC cannot; once per architecture per process) and loads them.
    pub fn new(ordinal: usize) -> Result<Self, SgmvError> {
        if !cuda_driver_available() {
            return Err(SgmvError::NoCudaDriver {
                searched: openledger_kernels::library_candidates("cuda"),
            });
        }
        guard("CUDA initialisation", || {
            let ctx = CudaContext::new(ordinal).map_err(|e| SgmvError::NoDevice {
                ordinal,
                message: e.to_string(),
            })?;
            let (major, minor) = ctx
                .compute_capability()
                .map_err(drv("cuDeviceGetAttribute"))?;
            let programs = openledger_kernels::programs_for_device(major as u32, minor as u32)?;
            let stream = ctx.default_stream();
            let mut funcs = HashMap::new();
            for (file, image) in programs.iter() {
                let ptx = match image {
                    Image::Cubin(bytes) => Ptx::from_binary(bytes.clone()),
                    Image::Ptx(text) => Ptx::from_src(text.clone()),
                };
                let module = ctx.load_module(ptx).map_err(drv("cuModuleLoadData"))?;
                for entry in entry_points(file) {
                    for d in DTYPES {
                        let name = format!("{entry}_{d}");
                        let f = module
                            .load_function(&name)
                            .map_err(drv("cuModuleGetFunction"))?;
                        funcs.insert(name, f);
                    }
                }
            }
            Ok(Self {
                ctx,
                stream,
                funcs,
                sync: sync_after_launch(),
            })
        })
    }

    /// The device's name.
    pub fn device_name(&self) -> Result<String, SgmvError> {
        self.ctx.name().map_err(drv("cuDeviceGetName"))
    }

    /// Copies `host` to a new device buffer.
    pub fn upload<T: GpuElement>(&self, host: &[T]) -> Result<GpuBuffer<T>, SgmvError> {
        guard("upload", || {
            Ok(GpuBuffer {
                inner: self.stream.clone_htod(host).map_err(drv("cuMemcpyHtoD"))?,
            })
        })
    }

    /// A new zeroed device buffer of `len` elements.
    pub fn zeros<T: GpuElement>(&self, len: usize) -> Result<GpuBuffer<T>, SgmvError> {
        guard("alloc", || {
            Ok(GpuBuffer {
                inner: self.stream.alloc_zeros(len).map_err(drv("cuMemAlloc"))?,
            })
        })
    }

    /// Copies a device buffer back to the host.
    pub fn download<T: GpuElement>(&self, buf: &GpuBuffer<T>) -> Result<Vec<T>, SgmvError> {
        guard("download", || {
            self.stream
                .clone_dtoh(&buf.inner)
                .map_err(drv("cuMemcpyDtoH"))
        })
    }

    /// Device-to-device copy of `src` into `dst` (same length).
    pub fn copy<T: GpuElement>(
        &self,
        src: &GpuBuffer<T>,
        dst: &mut GpuBuffer<T>,
    ) -> Result<(), SgmvError> {
        crate::check_len("copy destination", src.len(), dst.len())?;
        guard("copy", || {
            self.stream
                .memcpy_dtod(&src.inner, &mut dst.inner)
                .map_err(drv("cuMemcpyDtoD"))
        })
    }

    /// Milliseconds the device spent on the work `f` queues, between two CUDA events recorded
    /// on the stream before and after it (the launches' own time, not the host's).
    pub fn elapsed_ms(&self, f: impl FnOnce() -> Result<(), SgmvError>) -> Result<f64, SgmvError> {
        let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .stream
            .record_event(timed)
            .map_err(drv("cuEventRecord"))?;
        f()?;
        let end = self
            .stream
            .record_event(timed)
            .map_err(drv("cuEventRecord"))?;
        let ms = start.elapsed_ms(&end).map_err(drv("cuEventElapsedTime"))?;
        Ok(f64::from(ms))
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), SgmvError> {
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))
    }

    /// Uploads one layer's adapter slots, validated as for the CPU operators; `B` must be held
    /// as PEFT stores it ([`BLayout::OutRank`]), which the expand kernels read.
    pub fn upload_slots<T: GpuElement>(
        &self,
        slots: &AdapterSlots<'_, T>,
    ) -> Result<GpuSlots<T>, SgmvError> {
        if slots.b_layout() != BLayout::OutRank {
            return Err(SgmvError::UnsupportedBLayout {
                layout: format!("{:?}", slots.b_layout()),
            });
        }
        let (in_features, out_features) = (slots.in_features(), slots.out_features());
        for (what, value) in [("in_features", in_features), ("out_features", out_features)] {
            i32::try_from(value).map_err(|_| SgmvError::TooLarge { what, value })?;
        }
        guard("upload_slots", || {
            let up = |h: &[T]| self.stream.clone_htod(h).map_err(drv("cuMemcpyHtoD"));
            let list = slots.slots();
            let a: Vec<CudaSlice<T>> = list.iter().map(|s| up(s.a)).collect::<Result<_, _>>()?;
            let b: Vec<CudaSlice<T>> = list.iter().map(|s| up(s.b)).collect::<Result<_, _>>()?;
            let ptr = |s: &CudaSlice<T>| {
                let (p, _sync) = s.device_ptr(&self.stream);
                p as i64
            };
            let a_ptrs: Vec<i64> = a.iter().map(ptr).collect();
            let b_ptrs: Vec<i64> = b.iter().map(ptr).collect();
            let ranks: Vec<i32> = list.iter().map(|s| s.rank as i32).collect();
            let scales: Vec<f32> = list.iter().map(|s| s.scale).collect();
            let h2d = drv("cuMemcpyHtoD");
            Ok(GpuSlots {
                in_features,
                out_features,
                ranks: slots.ranks(),
                a_ptrs: self.stream.clone_htod(&a_ptrs).map_err(&h2d)?,
                b_ptrs: self.stream.clone_htod(&b_ptrs).map_err(&h2d)?,
                ranks_dev: self.stream.clone_htod(&ranks).map_err(&h2d)?,
                scales_dev: self.stream.clone_htod(&scales).map_err(&h2d)?,
                _a: a,
                _b: b,
            })
        })
    }

    fn func(&self, kernel: &str) -> Result<&CudaFunction, SgmvError> {
        self.funcs
            .get(kernel)
            .ok_or_else(|| SgmvError::KernelMissing {
                kernel: kernel.to_string(),
            })
    }

    /// Uploads the plan's segment tables: bounds, then slots and offsets.
    fn upload_segments(&self, t: &DeviceTables) -> Result<(Tables, RowTables), SgmvError> {
        let h2d = drv("cuMemcpyHtoD");
        Ok((
            Tables {
                starts: self.stream.clone_htod(&t.starts).map_err(&h2d)?,
                ends: self.stream.clone_htod(&t.ends).map_err(&h2d)?,
            },
            RowTables {
                slots: self.stream.clone_htod(&t.slots).map_err(&h2d)?,
                v_off: self.stream.clone_htod(&t.v_off).map_err(&h2d)?,
            },
        ))
    }

    /// Uploads the plan's row tables: each row's slot (-1: none) and offset.
    fn upload_rows(&self, t: &DeviceTables) -> Result<RowTables, SgmvError> {
        let h2d = drv("cuMemcpyHtoD");
        Ok(RowTables {
            slots: self.stream.clone_htod(&t.row_slots).map_err(&h2d)?,
            v_off: self.stream.clone_htod(&t.row_v_off).map_err(&h2d)?,
        })
    }

    /// Checks the buffers against the plan and the slots; `Some(tables)` when there is work.
    fn prepare<T>(
        &self,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        io: (&'static str, usize, usize),
        v_len: usize,
    ) -> Result<Option<DeviceTables>, SgmvError> {
        plan.check_ranks(&slots.ranks)?;
        let (name, width, len) = io;
        crate::check_len(name, plan.rows() * width, len)?;
        crate::check_len("v", plan.intermediate_len(), v_len)?;
        if plan.intermediate_len() == 0 {
            return Ok(None);
        }
        Ok(Some(plan.device_tables()?))
    }

    /// Launches the kernel `b` was built for with `cfg`, then (under `OPENLEDGER_CUDA_SYNC=1`)
    /// waits for it.
    ///
    /// # Safety
    /// `b` holds the arguments of the `extern "C"` entry point `kernel`, in its order and of its
    /// types, and every index the kernel forms lies inside the buffers passed.
    unsafe fn run(
        &self,
        mut b: LaunchArgs<'_>,
        cfg: LaunchConfig,
        kernel: &str,
    ) -> Result<(), SgmvError> {
        // SAFETY: as the caller promises.
        unsafe { b.launch(cfg) }.map_err(drv(&format!("cuLaunchKernel {kernel}")))?;
        if self.sync {
            self.stream
                .synchronize()
                .map_err(drv(&format!("{kernel} (synchronised after its launch)")))?;
        }
        Ok(())
    }

    /// SGMV shrink: `v = x · Aᵀ` per segment of `plan`, packed as the plan says (one block per
    /// segment, rank row and eight rows).
    pub fn sgmv_shrink<T: GpuElement>(
        &self,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        x: &GpuBuffer<T>,
        v: &mut GpuBuffer<f32>,
    ) -> Result<(), SgmvError> {
        self.shrink(Kernels::Segments, plan, slots, x, v)
    }

    /// SGMV expand: `y += scale · v · Bᵀ` per segment of `plan`.
    pub fn sgmv_expand<T: GpuElement>(
        &self,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        v: &GpuBuffer<f32>,
        y: &mut GpuBuffer<T>,
    ) -> Result<(), SgmvError> {
        self.expand(Kernels::Segments, plan, slots, v, y)
    }

    /// BGMV shrink: each row of `plan` with its own slot (one block per row and rank row).
    pub fn bgmv_shrink<T: GpuElement>(
        &self,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        x: &GpuBuffer<T>,
        v: &mut GpuBuffer<f32>,
    ) -> Result<(), SgmvError> {
        self.shrink(Kernels::Rows, plan, slots, x, v)
    }

    /// BGMV expand: each row of `plan` with its own slot.
    pub fn bgmv_expand<T: GpuElement>(
        &self,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        v: &GpuBuffer<f32>,
        y: &mut GpuBuffer<T>,
    ) -> Result<(), SgmvError> {
        self.expand(Kernels::Rows, plan, slots, v, y)
    }

    /// The tables `kind` takes and the extent of the grid's first and last dimensions.
    fn tables(
        &self,
        kind: Kernels,
        t: &DeviceTables,
    ) -> Result<(Option<Tables>, RowTables, usize, usize), SgmvError> {
        Ok(match kind {
            Kernels::Segments => {
                let (segments, rows) = self.upload_segments(t)?;
                let blocks = t.max_len.div_ceil(ROWS_PER_BLOCK);
                (Some(segments), rows, t.starts.len(), blocks)
            }
            Kernels::Rows => (None, self.upload_rows(t)?, t.row_slots.len(), 1),
        })
    }

    fn shrink<T: GpuElement>(
        &self,
        kind: Kernels,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        x: &GpuBuffer<T>,
        v: &mut GpuBuffer<f32>,
    ) -> Result<(), SgmvError> {
        let Some(t) = self.prepare(plan, slots, ("x", slots.in_features, x.len()), v.len())? else {
            return Ok(());
        };
        guard(kind.name("shrink"), || {
            let (segments, rows, first, last) = self.tables(kind, &t)?;
            let d = slots.in_features as i32;
            let cfg = LaunchConfig {
                grid_dim: grid3(first, t.max_rank, last)?,
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let kernel = format!("{}_{}", kind.name("shrink"), T::NAME);
            let f = self.func(&kernel)?;
            let mut b = self.stream.launch_builder(f);
            b.arg(&mut v.inner)
                .arg(&x.inner)
                .arg(&slots.a_ptrs)
                .arg(&slots.ranks_dev);
            if let Some(seg) = &segments {
                b.arg(&seg.starts).arg(&seg.ends);
            }
            b.arg(&rows.slots).arg(&rows.v_off).arg(&d);
            // SAFETY: the arguments of `sgmv_shrink_*` (segments) or `bgmv_shrink_*` (rows) in
            // shrink.cu, in order; `prepare` checked every buffer against the plan and slots.
            unsafe { self.run(b, cfg, &kernel) }
        })
    }

    fn expand<T: GpuElement>(
        &self,
        kind: Kernels,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        v: &GpuBuffer<f32>,
        y: &mut GpuBuffer<T>,
    ) -> Result<(), SgmvError> {
        let Some(t) = self.prepare(plan, slots, ("y", slots.out_features, y.len()), v.len())?
        else {
            return Ok(());
        };
        guard(kind.name("expand"), || {
            let (segments, rows, first, last) = self.tables(kind, &t)?;
            let out = slots.out_features as i32;
            let cfg = LaunchConfig {
                grid_dim: grid3(first, slots.out_features.div_ceil(BLOCK as usize), last)?,
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let kernel = format!("{}_{}", kind.name("expand"), T::NAME);
            let f = self.func(&kernel)?;
            let mut b = self.stream.launch_builder(f);
            b.arg(&mut y.inner)
                .arg(&v.inner)
                .arg(&slots.b_ptrs)
                .arg(&slots.ranks_dev)
                .arg(&slots.scales_dev);
            if let Some(seg) = &segments {
                b.arg(&seg.starts).arg(&seg.ends);
            }
            b.arg(&rows.slots).arg(&rows.v_off).arg(&out);
            // SAFETY: the arguments of `sgmv_expand_*` (segments) or `bgmv_expand_*` (rows) in
            // expand.cu, in order; `prepare` checked every buffer against the plan and slots.
            unsafe { self.run(b, cfg, &kernel) }
        })
    }
}

/// Which kernels run a plan: by segment (SGMV) or by row (BGMV).
#[derive(Debug, Clone, Copy)]
enum Kernels {
    Segments,
    Rows,
}

impl Kernels {
    /// The entry point of `step` (`"shrink"`, `"expand"`), before the dtype suffix.
    fn name(self, step: &str) -> &'static str {
        match (self, step) {
            (Kernels::Segments, "shrink") => "sgmv_shrink",
            (Kernels::Segments, _) => "sgmv_expand",
            (Kernels::Rows, "shrink") => "bgmv_shrink",
            (Kernels::Rows, _) => "bgmv_expand",
        }
    }
}

fn grid3(x: usize, y: usize, z: usize) -> Result<(u32, u32, u32), SgmvError> {
    let dim = |what, v: usize, max: usize| {
        if v == 0 || v > max {
            Err(SgmvError::TooLarge { what, value: v })
        } else {
            Ok(v as u32)
        }
    };
    Ok((
        dim("grid x", x, i32::MAX as usize)?,
        dim("grid y", y, 65535)?,
        dim("grid z", z, 65535)?,
    ))
}
