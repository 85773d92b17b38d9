//! The CUDA backend: adapters in pages of one device slab per dtype ([`AdapterSlab`], filled
//! through pinned staging buffers), each layer's slot table uploaded once with its slots, the
//! plan's launch tiles copied per call into one persistent device buffer (one copy per call),
//! and the kernels of `openledger-kernels` (compiled by NVRTC for the device, cubin first)
//! launched through cudarc. The driver and NVRTC are loaded at run time: every entry point
//! first checks that
//! they can be (cudarc panics when it cannot) and runs inside `catch_unwind` as a second guard,
//! so a missing library, device or kernel is an [`SgmvError`], never a panic.
//!
//! Launches are asynchronous: a kernel that faults shows up at a later call, and the fault
//! poisons the context. With `OPENLEDGER_CUDA_SYNC=1` every launch is followed by a
//! synchronisation, so the failing kernel is the one named; a poisoned context is
//! [`SgmvError::ContextLost`] whatever call finds it.

use crate::element::LoraElement;
use crate::error::SgmvError;
use crate::plan::{AdapterSlots, LaunchTiles, OutputWindow, SgmvPlan};
use crate::slab::{DEFAULT_PAGE_BYTES, PageAllocator, PageRun, SLAB_ALIGN, SlotLayout};
use cudarc::driver::sys::CUresult;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, DriverError,
    LaunchArgs, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use openledger_kernels::{Image, entry_points, sources::dtypes};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Threads per block of the shrink kernels: `SHRINK_WARPS` (4) warps, one rank row each.
const SHRINK_THREADS: u32 = 128;
/// Rank rows per shrink block (`SHRINK_WARPS` in shrink.cu).
const SHRINK_WARPS: usize = 4;
/// Threads per block of the expand kernels, each taking one 16-byte vector of outputs.
const EXPAND_THREADS: u32 = 128;
/// Rows per tile of the SGMV kernels (the `ROWS` they are instantiated with); BGMV's is 1.
const SGMV_ROWS: usize = 8;
/// The static shared memory a block may take without opting in: the expand kernels stage
/// `rows × largest rank` f32 in it.
const SHARED_BYTES: usize = 48 << 10;
/// Elements of each of the two pinned staging buffers of a slab.
const STAGING_BYTES: usize = 4 << 20;

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
    openledger_kernels::catch_panic(f)
        .unwrap_or_else(|message| Err(SgmvError::Panicked { what, message }))
}

/// Whether a driver error leaves the context unusable (a kernel faulted): every later call on
/// it fails the same way.
pub fn context_lost(code: CUresult) -> bool {
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
        if context_lost(e.0) {
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

/// Compiles every kernel of `openledger-kernels` for `ctx`'s device (a cubin for its
/// architecture, PTX where NVRTC cannot; once per architecture per process) and loads them,
/// by entry point name with its dtype suffix (`rms_norm_bf16`).
pub fn load_kernels(ctx: &Arc<CudaContext>) -> Result<HashMap<String, CudaFunction>, SgmvError> {
    guard("loading the kernels", || {
        let (major, minor) = ctx
            .compute_capability()
            .map_err(drv("cuDeviceGetAttribute"))?;
        let programs = openledger_kernels::programs_for_device(major as u32, minor as u32)?;
        let mut funcs = HashMap::new();
        for (file, image) in programs.iter() {
            let ptx = match image {
                Image::Cubin(bytes) => Ptx::from_binary(bytes.clone()),
                Image::Ptx(text) => Ptx::from_src(text.clone()),
            };
            let module = ctx.load_module(ptx).map_err(drv("cuModuleLoadData"))?;
            for entry in entry_points(file) {
                for d in dtypes(file) {
                    let name = format!("{entry}_{d}");
                    let f = module
                        .load_function(&name)
                        .map_err(drv("cuModuleGetFunction"))?;
                    funcs.insert(name, f);
                }
            }
        }
        Ok(funcs)
    })
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

/// A pinned host buffer and the event after the last copy out of it.
struct Staging<T> {
    buf: PinnedHostSlice<T>,
    done: Option<CudaEvent>,
}

impl<T> Drop for Staging<T> {
    fn drop(&mut self) {
        // The copies read the buffer asynchronously: it may be freed only once they are done.
        if let Some(done) = self.done.take() {
            let _ = done.synchronize();
        }
    }
}

/// What a slab and the slots in it share: the device buffer, its pages, the staging buffers.
struct SlabState<T> {
    buf: CudaSlice<T>,
    pages: PageAllocator,
    staging: Vec<Staging<T>>,
    /// The staging buffer the next chunk goes through (they take turns across calls).
    next: usize,
}

struct SlabShared<T> {
    stream: Arc<CudaStream>,
    page_bytes: usize,
    base: u64,
    state: Mutex<SlabState<T>>,
}

impl<T> SlabShared<T> {
    fn lock(&self) -> MutexGuard<'_, SlabState<T>> {
        // A panic while the lock was held left no half-made run behind (a run is recorded only
        // once its copy is queued), so the state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The adapters of one dtype in device memory: one buffer cut into pages, each slot a run of
/// whole pages (S-LoRA's unified paging: slots of any rank share the buffer, and a freed
/// slot's pages serve the next), filled from the host through two pinned staging buffers used
/// in turn. Cheap to clone (the clones share the slab); the pages of a [`GpuSlots`] return to
/// it when the slots are dropped.
pub struct AdapterSlab<T> {
    shared: Arc<SlabShared<T>>,
}

impl<T> Clone for AdapterSlab<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> std::fmt::Debug for AdapterSlab<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("AdapterSlab")
            .field("page_bytes", &self.shared.page_bytes)
            .field("pages", &st.pages.pages())
            .field("free_pages", &st.pages.free_pages())
            .finish()
    }
}

impl<T: GpuElement> AdapterSlab<T> {
    /// Bytes in each page.
    pub fn page_bytes(&self) -> usize {
        self.shared.page_bytes
    }

    /// Pages in all.
    pub fn pages(&self) -> usize {
        self.shared.lock().pages.pages()
    }

    /// Pages no slot holds.
    pub fn free_pages(&self) -> usize {
        self.shared.lock().pages.free_pages()
    }

    /// Copies one layer's slots into runs of this slab (`B` in any [`BLayout`](crate::BLayout):
    /// each slot is packed as the kernels read it, `A` and `Bᵀ` in zero-padded rows) and uploads
    /// the layer's slot table. [`SgmvError::SlabFull`] when a slot finds no run, with every run
    /// this call took given back.
    pub fn upload(&self, slots: &AdapterSlots<'_, T>) -> Result<GpuSlots<T>, SgmvError> {
        let (in_features, out_features) = (slots.in_features(), slots.out_features());
        for (what, value) in [("in_features", in_features), ("out_features", out_features)] {
            i32::try_from(value).map_err(|_| SgmvError::TooLarge { what, value })?;
        }
        let elem = std::mem::size_of::<T>();
        let page_elems = self.shared.page_bytes / elem;
        // The padded row lengths depend on the layer only, not on a slot's rank.
        let rows = SlotLayout::new(in_features, out_features, 1, elem);
        guard("upload_slots", || {
            let mut out = GpuSlots {
                slab: self.clone(),
                in_features,
                out_features,
                lda: rows.lda,
                ldb: rows.ldb,
                ranks: slots.ranks(),
                runs: Vec::with_capacity(slots.len()),
                table: None,
            };
            let mut words = Vec::with_capacity(4 * slots.len());
            let mut st = self.shared.lock();
            for slot in slots.slots() {
                let layout = SlotLayout::new(in_features, out_features, slot.rank, elem);
                let run = st.pages.alloc(layout.pages(elem, self.shared.page_bytes))?;
                let packed = layout.pack(slot, in_features, out_features, slots.b_layout());
                if let Err(e) = self.stage(&mut st, &packed, run.start * page_elems) {
                    st.pages.free(run);
                    return Err(e);
                }
                out.runs.push(run);
                let a = self.shared.base + (run.start * self.shared.page_bytes) as u64;
                let b = a + (layout.b_offset * elem) as u64;
                words.extend_from_slice(&[
                    a as i64,
                    b as i64,
                    slot.rank as i64,
                    i64::from(slot.scale.to_bits()),
                ]);
            }
            drop(st);
            if !words.is_empty() {
                let table = self.shared.stream.clone_htod(&words);
                out.table = Some(table.map_err(drv("cuMemcpyHtoD"))?);
            }
            Ok(out)
        })
    }

    /// Queues the copy of `data` to element `at` of the slab through the staging buffers.
    fn stage(&self, st: &mut SlabState<T>, data: &[T], at: usize) -> Result<(), SgmvError> {
        let stream = &self.shared.stream;
        let SlabState {
            buf, staging, next, ..
        } = st;
        let chunk_len = staging[0].buf.len();
        for (i, chunk) in data.chunks(chunk_len).enumerate() {
            let turn = *next;
            *next = (turn + 1) % staging.len();
            let stage = &mut staging[turn];
            if let Some(done) = stage.done.take() {
                done.synchronize().map_err(drv("cuEventSynchronize"))?;
            }
            let host = stage
                .buf
                .as_mut_slice()
                .map_err(drv("cuEventSynchronize"))?;
            host[..chunk.len()].copy_from_slice(chunk);
            let from = at + i * chunk_len;
            let mut dst = buf.slice_mut(from..from + chunk.len());
            stream
                .memcpy_htod(&host[..chunk.len()], &mut dst)
                .map_err(drv("cuMemcpyHtoDAsync"))?;
            stage.done = Some(stream.record_event(None).map_err(drv("cuEventRecord"))?);
        }
        Ok(())
    }
}

/// One layer's adapter slots in an [`AdapterSlab`]: a run of pages per slot and the slot table
/// the kernels index (each slot's `A` and `Bᵀ` addresses, rank and scale), uploaded once. The
/// runs go back to the slab on drop.
pub struct GpuSlots<T> {
    slab: AdapterSlab<T>,
    in_features: usize,
    out_features: usize,
    lda: usize,
    ldb: usize,
    ranks: Vec<usize>,
    runs: Vec<PageRun>,
    table: Option<CudaSlice<i64>>,
}

impl<T> std::fmt::Debug for GpuSlots<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuSlots")
            .field("in_features", &self.in_features)
            .field("out_features", &self.out_features)
            .field("ranks", &self.ranks)
            .field("runs", &self.runs)
            .finish()
    }
}

impl<T> GpuSlots<T> {
    /// The rank of each slot.
    pub fn ranks(&self) -> &[usize] {
        &self.ranks
    }

    /// Pages of the slab the slots hold.
    pub fn pages(&self) -> usize {
        self.runs.iter().map(|r| r.len).sum()
    }
}

impl<T> Drop for GpuSlots<T> {
    fn drop(&mut self) {
        // Kernels still queued on the stream read these pages before any later upload (on
        // the same stream) writes them.
        let mut st = self.slab.shared.lock();
        for run in self.runs.drain(..) {
            st.pages.free(run);
        }
    }
}

/// One CUDA device with the SGMV / BGMV kernels loaded.
#[derive(Debug)]
pub struct CudaSgmv {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<String, CudaFunction>,
    sync: bool,
    /// The launch tiles of the current call, in a buffer kept between calls (grown as needed).
    tiles: Mutex<Option<CudaSlice<i64>>>,
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
            let funcs = load_kernels(&ctx)?;
            let stream = ctx.default_stream();
            Ok(Self {
                ctx,
                stream,
                funcs,
                sync: sync_after_launch(),
                tiles: Mutex::new(None),
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

    /// A slab of `bytes` (rounded up to whole pages) of device memory for adapters of dtype
    /// `T`, in pages of `page_bytes` (a multiple of 256; [`DEFAULT_PAGE_BYTES`] is 16 KiB), with
    /// two pinned staging buffers of 4 MiB.
    pub fn adapter_slab<T: GpuElement>(
        &self,
        bytes: usize,
        page_bytes: usize,
    ) -> Result<AdapterSlab<T>, SgmvError> {
        if page_bytes == 0 || !page_bytes.is_multiple_of(SLAB_ALIGN) {
            return Err(SgmvError::TooLarge {
                what: "page bytes (a multiple of 256 is needed)",
                value: page_bytes,
            });
        }
        let pages = bytes.div_ceil(page_bytes).max(1);
        let elems = pages
            .checked_mul(page_bytes / std::mem::size_of::<T>())
            .ok_or(SgmvError::TooLarge {
                what: "slab bytes",
                value: bytes,
            })?;
        guard("adapter_slab", || {
            let buf = self
                .stream
                .alloc_zeros::<T>(elems)
                .map_err(drv("cuMemAlloc"))?;
            let base = {
                let (p, _sync) = buf.device_ptr(&self.stream);
                p
            };
            let stage_len = (STAGING_BYTES / std::mem::size_of::<T>()).min(elems);
            let staging = (0..2)
                .map(|_| {
                    // SAFETY: the buffer is written before any copy out of it reads it.
                    let buf = unsafe { self.ctx.alloc_pinned::<T>(stage_len) }
                        .map_err(drv("cuMemHostAlloc"))?;
                    Ok(Staging { buf, done: None })
                })
                .collect::<Result<Vec<_>, SgmvError>>()?;
            Ok(AdapterSlab {
                shared: Arc::new(SlabShared {
                    stream: Arc::clone(&self.stream),
                    page_bytes,
                    base,
                    state: Mutex::new(SlabState {
                        buf,
                        pages: PageAllocator::new(pages),
                        staging,
                        next: 0,
                    }),
                }),
            })
        })
    }

    /// Uploads one layer's slots into a slab of their own, just large enough (see
    /// [`CudaSgmv::adapter_slab`] and [`AdapterSlab::upload`] to share one slab between
    /// layers and adapters).
    pub fn upload_slots<T: GpuElement>(
        &self,
        slots: &AdapterSlots<'_, T>,
    ) -> Result<GpuSlots<T>, SgmvError> {
        let elem = std::mem::size_of::<T>();
        let pages: usize = slots
            .slots()
            .iter()
            .map(|s| {
                SlotLayout::new(slots.in_features(), slots.out_features(), s.rank, elem)
                    .pages(elem, DEFAULT_PAGE_BYTES)
            })
            .sum();
        let slab = self.adapter_slab::<T>(pages * DEFAULT_PAGE_BYTES, DEFAULT_PAGE_BYTES)?;
        slab.upload(slots)
    }

    fn func(&self, kernel: &str) -> Result<&CudaFunction, SgmvError> {
        self.funcs
            .get(kernel)
            .ok_or_else(|| SgmvError::KernelMissing {
                kernel: kernel.to_string(),
            })
    }

    /// Checks the buffers against the plan and the slots; the plan's tiles when there is work.
    fn prepare<T>(
        &self,
        kind: Kernels,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        io: (&'static str, usize, usize),
        v_len: usize,
    ) -> Result<Option<LaunchTiles>, SgmvError> {
        plan.check_ranks(&slots.ranks)?;
        let (name, width, len) = io;
        crate::check_len(name, plan.rows() * width, len)?;
        crate::check_len("v", plan.intermediate_len(), v_len)?;
        if plan.intermediate_len() == 0 {
            return Ok(None);
        }
        let tiles = plan.launch_tiles(kind.rows())?;
        let shared = kind.rows() * tiles.max_rank * 4;
        if shared > SHARED_BYTES {
            return Err(SgmvError::TooLarge {
                what: "rank (the expand kernels stage rows × rank f32 in 48 KiB)",
                value: tiles.max_rank,
            });
        }
        Ok(Some(tiles))
    }

    /// Copies `tiles` into the persistent tile buffer (grown to the next power of two when
    /// short) with one copy, and returns it locked for the launch that reads it.
    fn upload_tiles(
        &self,
        tiles: &LaunchTiles,
    ) -> Result<MutexGuard<'_, Option<CudaSlice<i64>>>, SgmvError> {
        let mut held = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
        let n = tiles.words.len();
        if held.as_ref().is_none_or(|b| b.len() < n) {
            let cap = n.next_power_of_two().max(256);
            *held = Some(self.stream.alloc_zeros(cap).map_err(drv("cuMemAlloc"))?);
        }
        if let Some(buf) = held.as_mut() {
            self.stream
                .memcpy_htod(&tiles.words, &mut buf.slice_mut(0..n))
                .map_err(drv("cuMemcpyHtoD"))?;
        }
        Ok(held)
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

    /// SGMV shrink: `v = x · Aᵀ` for every row of `plan`, packed as the plan says, in tiles of
    /// up to eight rows sharing a slot (prefill segments): each block stages its rows' `x` once
    /// for four rank rows.
    pub fn sgmv_shrink<T: GpuElement>(
        &self,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        x: &GpuBuffer<T>,
        v: &mut GpuBuffer<f32>,
    ) -> Result<(), SgmvError> {
        self.shrink(Kernels::Segments, plan, slots, x, v)
    }

    /// SGMV expand: `y += scale · v · Bᵀ` for every row of `plan`, in tiles of up to eight
    /// rows, into the columns `window` gives each row of `y` (`y` is
    /// `[plan.rows(), window.row_stride]`; [`OutputWindow::dense`] for a layer's own output).
    pub fn sgmv_expand<T: GpuElement>(
        &self,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        v: &GpuBuffer<f32>,
        y: &mut GpuBuffer<T>,
        window: OutputWindow,
    ) -> Result<(), SgmvError> {
        self.expand(Kernels::Segments, plan, slots, v, y, window)
    }

    /// BGMV shrink: each row of `plan` on its own (decode, one adapter per row); rows without
    /// an adapter take no block.
    pub fn bgmv_shrink<T: GpuElement>(
        &self,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        x: &GpuBuffer<T>,
        v: &mut GpuBuffer<f32>,
    ) -> Result<(), SgmvError> {
        self.shrink(Kernels::Rows, plan, slots, x, v)
    }

    /// BGMV expand: each row of `plan` on its own, into `window`'s columns of `y`.
    pub fn bgmv_expand<T: GpuElement>(
        &self,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        v: &GpuBuffer<f32>,
        y: &mut GpuBuffer<T>,
        window: OutputWindow,
    ) -> Result<(), SgmvError> {
        self.expand(Kernels::Rows, plan, slots, v, y, window)
    }

    fn shrink<T: GpuElement>(
        &self,
        kind: Kernels,
        plan: &SgmvPlan,
        slots: &GpuSlots<T>,
        x: &GpuBuffer<T>,
        v: &mut GpuBuffer<f32>,
    ) -> Result<(), SgmvError> {
        let io = ("x", slots.in_features, x.len());
        let Some(tiles) = self.prepare(kind, plan, slots, io, v.len())? else {
            return Ok(());
        };
        let Some(table) = &slots.table else {
            return Ok(());
        };
        let kernel = format!("{}_{}", kind.name("shrink"), T::NAME);
        guard(kind.name("shrink"), || {
            let cfg = LaunchConfig {
                grid_dim: grid2(tiles.len(), tiles.max_rank.div_ceil(SHRINK_WARPS))?,
                block_dim: (SHRINK_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let f = self.func(&kernel)?;
            let held = self.upload_tiles(&tiles)?;
            let Some(tile_buf) = held.as_ref() else {
                return Ok(());
            };
            let (ldx, d, lda) = (
                slots.in_features as i64,
                slots.in_features as i32,
                slots.lda as i32,
            );
            let mut b = self.stream.launch_builder(f);
            b.arg(&mut v.inner)
                .arg(&x.inner)
                .arg(&ldx)
                .arg(table)
                .arg(tile_buf)
                .arg(&d)
                .arg(&lda);
            // SAFETY: the arguments of `sgmv_shrink_*` / `bgmv_shrink_*` in shrink.cu, in
            // order; `prepare` checked x and v against the plan, the tiles come from the plan
            // and the slot table from these slots (checked against the plan's ranks).
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
        window: OutputWindow,
    ) -> Result<(), SgmvError> {
        window.check(slots.out_features)?;
        let io = ("y", window.row_stride, y.len());
        let Some(tiles) = self.prepare(kind, plan, slots, io, v.len())? else {
            return Ok(());
        };
        let Some(table) = &slots.table else {
            return Ok(());
        };
        let kernel = format!("{}_{}", kind.name("expand"), T::NAME);
        guard(kind.name("expand"), || {
            let per_block = EXPAND_THREADS as usize * (16 / std::mem::size_of::<T>());
            let cfg = LaunchConfig {
                grid_dim: grid2(tiles.len(), slots.out_features.div_ceil(per_block))?,
                block_dim: (EXPAND_THREADS, 1, 1),
                shared_mem_bytes: (kind.rows() * tiles.max_rank * 4) as u32,
            };
            let f = self.func(&kernel)?;
            let held = self.upload_tiles(&tiles)?;
            let Some(tile_buf) = held.as_ref() else {
                return Ok(());
            };
            let (ldy, col) = (window.row_stride as i64, window.col_offset as i64);
            let (out, ldb) = (slots.out_features as i32, slots.ldb as i32);
            let mut b = self.stream.launch_builder(f);
            b.arg(&mut y.inner)
                .arg(&ldy)
                .arg(&col)
                .arg(&v.inner)
                .arg(table)
                .arg(tile_buf)
                .arg(&out)
                .arg(&ldb);
            // SAFETY: the arguments of `sgmv_expand_*` / `bgmv_expand_*` in expand.cu, in
            // order; `prepare` checked y (with the window) and v against the plan, the tiles
            // come from the plan and the slot table from these slots.
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
    /// Rows per tile.
    fn rows(self) -> usize {
        match self {
            Kernels::Segments => SGMV_ROWS,
            Kernels::Rows => 1,
        }
    }

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

fn grid2(x: usize, y: usize) -> Result<(u32, u32, u32), SgmvError> {
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
        1,
    ))
}
