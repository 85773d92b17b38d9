//! The CUDA backend: NVRTC compilation (cached per architecture), device buffers and kernel
//! launches through cudarc. Every entry point first checks that the driver / NVRTC library can
//! be loaded (cudarc panics when it cannot) and runs inside `catch_unwind` as a second guard.

use crate::HostSlot;
use crate::error::KernelError;
use crate::layout::{RowLayout, SegmentLayout};
use crate::sources::{DTYPES, SOURCES, entry_points, program};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx, compile_ptx_with_opts};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};

/// Threads per block of every kernel.
const BLOCK: u32 = 256;
/// Rows per block of the SGMV kernels (`SHRINK_ROWS` / `EXPAND_ROWS` in the sources).
const ROWS_PER_BLOCK: usize = 8;

/// A storage type the kernels are instantiated for: `f32`, `half::f16`, `half::bf16`.
pub trait KernelElement:
    cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
    + Copy
    + Default
    + Send
    + Sync
    + 'static
{
    /// Suffix of the kernel names (`"f32"`, `"f16"`, `"bf16"`).
    const NAME: &'static str;
}
impl KernelElement for f32 {
    const NAME: &'static str = "f32";
}
impl KernelElement for half::f16 {
    const NAME: &'static str = "f16";
}
impl KernelElement for half::bf16 {
    const NAME: &'static str = "bf16";
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, turning a panic into [`KernelError::Panicked`].
fn guard<R>(
    what: &'static str,
    f: impl FnOnce() -> Result<R, KernelError>,
) -> Result<R, KernelError> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(KernelError::Panicked {
            what,
            message: panic_message(p),
        })
    })
}

fn drv(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> KernelError {
    move |e| KernelError::Driver {
        op,
        message: e.to_string(),
    }
}

/// Whether the NVRTC library can be loaded.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library; no symbol is called.
    std::panic::catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

/// Whether the CUDA driver library can be loaded.
pub fn cuda_driver_available() -> bool {
    // SAFETY: only tries to open the library; no symbol is called.
    std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

fn check_arch(arch: &str) -> Result<(), KernelError> {
    let digits = arch
        .strip_prefix("compute_")
        .or_else(|| arch.strip_prefix("sm_"))
        .map(|r| r.trim_end_matches(['a', 'f']))
        .unwrap_or("");
    if digits.len() >= 2 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(KernelError::BadArch {
            arch: arch.to_string(),
        })
    }
}

fn compile_one(file: &str, arch: &str) -> Result<Ptx, KernelError> {
    let src = program(file).ok_or_else(|| KernelError::NvrtcCall {
        kernel: file.to_string(),
        message: "no such kernel source".into(),
    })?;
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++14".into()],
        name: Some(file.to_string()),
        ..Default::default()
    };
    let ptx = guard("NVRTC compilation", || {
        compile_ptx_with_opts(src, opts).map_err(|e| match e {
            CompileError::CompileError { log, .. } => KernelError::Nvrtc {
                kernel: file.to_string(),
                log: log.to_string_lossy().into_owned(),
            },
            other => KernelError::NvrtcCall {
                kernel: file.to_string(),
                message: format!("{other:?}"),
            },
        })
    })?;
    let text = ptx.to_src();
    for entry in entry_points(file) {
        for d in DTYPES {
            let name = format!("{entry}_{d}");
            if !text.contains(&format!(".entry {name}(")) {
                return Err(KernelError::NvrtcCall {
                    kernel: file.to_string(),
                    message: format!("PTX lacks entry point {name}"),
                });
            }
        }
    }
    Ok(ptx)
}

/// `(source file, PTX)` of every kernel program for one architecture.
type ProgramSet = Vec<(&'static str, Ptx)>;

/// PTX of every source for `arch`, compiled once per architecture and cached.
fn cached_ptx(arch: &str) -> Result<ProgramSet, KernelError> {
    static CACHE: OnceLock<Mutex<HashMap<String, ProgramSet>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(arch) {
        return Ok(hit.clone());
    }
    if !nvrtc_available() {
        return Err(KernelError::NoNvrtc);
    }
    check_arch(arch)?;
    let compiled = SOURCES
        .iter()
        .map(|(file, _)| Ok((*file, compile_one(file, arch)?)))
        .collect::<Result<Vec<_>, KernelError>>()?;
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(arch.to_string(), compiled.clone());
    Ok(compiled)
}

/// Compiles every kernel source through NVRTC for `arch` (`"compute_80"`, `"sm_90"` ...) and
/// returns `(source file, PTX bytes)` for each. Needs libnvrtc but no GPU and no driver.
pub fn compile_all_kernels(arch: &str) -> Result<Vec<(String, usize)>, KernelError> {
    if !nvrtc_available() {
        return Err(KernelError::NoNvrtc);
    }
    check_arch(arch)?;
    Ok(cached_ptx(arch)?
        .into_iter()
        .map(|(file, ptx)| (file.to_string(), ptx.to_src().len()))
        .collect())
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

/// The adapter slots of one layer in device memory, with the pointer, rank and scale tables
/// the kernels index by slot.
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

/// One CUDA device with the SGMV / BGMV kernels loaded.
#[derive(Debug)]
pub struct CudaSgmv {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<String, CudaFunction>,
}

impl CudaSgmv {
    /// Opens device `ordinal`, compiles the kernels for its architecture (once per architecture
    /// per process) and loads them.
    pub fn new(ordinal: usize) -> Result<Self, KernelError> {
        if !cuda_driver_available() {
            return Err(KernelError::NoCudaDriver);
        }
        if !nvrtc_available() {
            return Err(KernelError::NoNvrtc);
        }
        guard("CUDA initialisation", || {
            let ctx = CudaContext::new(ordinal).map_err(|e| KernelError::NoDevice {
                ordinal,
                message: e.to_string(),
            })?;
            let (major, minor) = ctx
                .compute_capability()
                .map_err(drv("cuDeviceGetAttribute"))?;
            let ptxs = cached_ptx(&format!("compute_{major}{minor}"))?;
            let stream = ctx.default_stream();
            let mut funcs = HashMap::new();
            for (file, ptx) in ptxs {
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
            Ok(Self { ctx, stream, funcs })
        })
    }

    /// The device's name.
    pub fn device_name(&self) -> Result<String, KernelError> {
        self.ctx.name().map_err(drv("cuDeviceGetName"))
    }

    /// Copies `host` to a new device buffer.
    pub fn upload<T: KernelElement>(&self, host: &[T]) -> Result<GpuBuffer<T>, KernelError> {
        guard("upload", || {
            Ok(GpuBuffer {
                inner: self.stream.clone_htod(host).map_err(drv("cuMemcpyHtoD"))?,
            })
        })
    }

    /// A new zeroed device buffer of `len` elements.
    pub fn zeros<T: KernelElement>(&self, len: usize) -> Result<GpuBuffer<T>, KernelError> {
        guard("alloc", || {
            Ok(GpuBuffer {
                inner: self.stream.alloc_zeros(len).map_err(drv("cuMemAlloc"))?,
            })
        })
    }

    /// Copies a device buffer back to the host.
    pub fn download<T: KernelElement>(&self, buf: &GpuBuffer<T>) -> Result<Vec<T>, KernelError> {
        guard("download", || {
            self.stream
                .clone_dtoh(&buf.inner)
                .map_err(drv("cuMemcpyDtoH"))
        })
    }

    /// Device-to-device copy of `src` into `dst` (same length).
    pub fn copy<T: KernelElement>(
        &self,
        src: &GpuBuffer<T>,
        dst: &mut GpuBuffer<T>,
    ) -> Result<(), KernelError> {
        if src.len() != dst.len() {
            return Err(KernelError::Length {
                buffer: "copy destination".into(),
                expected: src.len(),
                found: dst.len(),
            });
        }
        guard("copy", || {
            self.stream
                .memcpy_dtod(&src.inner, &mut dst.inner)
                .map_err(drv("cuMemcpyDtoD"))
        })
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))
    }

    /// Uploads one layer's adapter slots (`A` `[rank, in]`, `B` `[out, rank]`, row-major).
    pub fn upload_slots<T: KernelElement>(
        &self,
        in_features: usize,
        out_features: usize,
        slots: &[HostSlot<'_, T>],
    ) -> Result<GpuSlots<T>, KernelError> {
        for (i, s) in slots.iter().enumerate() {
            for (name, found, expected) in [
                ("A", s.a.len(), s.rank * in_features),
                ("B", s.b.len(), out_features * s.rank),
            ] {
                if found != expected || s.rank == 0 {
                    return Err(KernelError::Length {
                        buffer: format!("{name}[{i}] (rank {})", s.rank),
                        expected,
                        found,
                    });
                }
            }
        }
        for (what, value) in [("in_features", in_features), ("out_features", out_features)] {
            i32::try_from(value).map_err(|_| KernelError::TooLarge { what, value })?;
        }
        guard("upload_slots", || {
            let up = |h: &[T]| self.stream.clone_htod(h).map_err(drv("cuMemcpyHtoD"));
            let a: Vec<CudaSlice<T>> = slots.iter().map(|s| up(s.a)).collect::<Result<_, _>>()?;
            let b: Vec<CudaSlice<T>> = slots.iter().map(|s| up(s.b)).collect::<Result<_, _>>()?;
            let ptr = |s: &CudaSlice<T>| {
                let (p, _sync) = s.device_ptr(&self.stream);
                p as i64
            };
            let a_ptrs: Vec<i64> = a.iter().map(ptr).collect();
            let b_ptrs: Vec<i64> = b.iter().map(ptr).collect();
            let ranks: Vec<i32> = slots.iter().map(|s| s.rank as i32).collect();
            let scales: Vec<f32> = slots.iter().map(|s| s.scale).collect();
            let h2d = drv("cuMemcpyHtoD");
            Ok(GpuSlots {
                in_features,
                out_features,
                ranks: slots.iter().map(|s| s.rank).collect(),
                a_ptrs: self.stream.clone_htod(&a_ptrs).map_err(&h2d)?,
                b_ptrs: self.stream.clone_htod(&b_ptrs).map_err(&h2d)?,
                ranks_dev: self.stream.clone_htod(&ranks).map_err(&h2d)?,
                scales_dev: self.stream.clone_htod(&scales).map_err(&h2d)?,
                _a: a,
                _b: b,
            })
        })
    }

    fn func(&self, entry: &str, dtype: &str) -> Result<&CudaFunction, KernelError> {
        let name = format!("{entry}_{dtype}");
        self.funcs.get(&name).ok_or_else(|| KernelError::NvrtcCall {
            kernel: name,
            message: "kernel not loaded".into(),
        })
    }

    /// SGMV shrink: `v = x · Aᵀ` per segment, packed as `layout` says.
    pub fn sgmv_shrink<T: KernelElement>(
        &self,
        slots: &GpuSlots<T>,
        layout: &SegmentLayout,
        x: &GpuBuffer<T>,
        v: &mut GpuBuffer<f32>,
    ) -> Result<(), KernelError> {
        check_segments(slots, layout)?;
        check_len("x", layout.rows * slots.in_features, x.len())?;
        check_len("v", layout.v_len, v.len())?;
        if layout.starts.is_empty() {
            return Ok(());
        }
        guard("sgmv_shrink", || {
            let (starts, ends, segs, voff) = self.upload_segments(layout)?;
            let d = slots.in_features as i32;
            let cfg = LaunchConfig {
                grid_dim: grid3(
                    layout.starts.len(),
                    layout.max_rank,
                    layout.max_len.div_ceil(ROWS_PER_BLOCK),
                )?,
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let f = self.func("sgmv_shrink", T::NAME)?;
            let mut b = self.stream.launch_builder(f);
            b.arg(&mut v.inner)
                .arg(&x.inner)
                .arg(&slots.a_ptrs)
                .arg(&slots.ranks_dev);
            b.arg(&starts).arg(&ends).arg(&segs).arg(&voff).arg(&d);
            // SAFETY: argument types and order match `sgmv_shrink_*` in shrink.cu; every index
            // the kernel forms was validated against the buffer lengths above.
            unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel sgmv_shrink"))?;
            Ok(())
        })
    }

    /// SGMV expand: `y += scale · v · Bᵀ` per segment.
    pub fn sgmv_expand<T: KernelElement>(
        &self,
        slots: &GpuSlots<T>,
        layout: &SegmentLayout,
        v: &GpuBuffer<f32>,
        y: &mut GpuBuffer<T>,
    ) -> Result<(), KernelError> {
        check_segments(slots, layout)?;
        check_len("y", layout.rows * slots.out_features, y.len())?;
        check_len("v", layout.v_len, v.len())?;
        if layout.starts.is_empty() {
            return Ok(());
        }
        guard("sgmv_expand", || {
            let (starts, ends, segs, voff) = self.upload_segments(layout)?;
            let out = slots.out_features as i32;
            let cfg = LaunchConfig {
                grid_dim: grid3(
                    layout.starts.len(),
                    slots.out_features.div_ceil(BLOCK as usize),
                    layout.max_len.div_ceil(ROWS_PER_BLOCK),
                )?,
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let f = self.func("sgmv_expand", T::NAME)?;
            let mut b = self.stream.launch_builder(f);
            b.arg(&mut y.inner)
                .arg(&v.inner)
                .arg(&slots.b_ptrs)
                .arg(&slots.ranks_dev);
            b.arg(&slots.scales_dev)
                .arg(&starts)
                .arg(&ends)
                .arg(&segs)
                .arg(&voff)
                .arg(&out);
            // SAFETY: argument types and order match `sgmv_expand_*` in expand.cu; indices were
            // validated against the buffer lengths above.
            unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel sgmv_expand"))?;
            Ok(())
        })
    }

    /// BGMV shrink: one optional slot per row.
    pub fn bgmv_shrink<T: KernelElement>(
        &self,
        slots: &GpuSlots<T>,
        layout: &RowLayout,
        x: &GpuBuffer<T>,
        v: &mut GpuBuffer<f32>,
    ) -> Result<(), KernelError> {
        check_rows(slots, layout)?;
        check_len("x", layout.slots.len() * slots.in_features, x.len())?;
        check_len("v", layout.v_len, v.len())?;
        if layout.v_len == 0 {
            return Ok(());
        }
        guard("bgmv_shrink", || {
            let (row_slots, voff) = self.upload_rows(layout)?;
            let d = slots.in_features as i32;
            let cfg = LaunchConfig {
                grid_dim: grid3(layout.slots.len(), layout.max_rank, 1)?,
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let f = self.func("bgmv_shrink", T::NAME)?;
            let mut b = self.stream.launch_builder(f);
            b.arg(&mut v.inner)
                .arg(&x.inner)
                .arg(&slots.a_ptrs)
                .arg(&slots.ranks_dev);
            b.arg(&row_slots).arg(&voff).arg(&d);
            // SAFETY: argument types and order match `bgmv_shrink_*` in shrink.cu.
            unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel bgmv_shrink"))?;
            Ok(())
        })
    }

    /// BGMV expand: one optional slot per row.
    pub fn bgmv_expand<T: KernelElement>(
        &self,
        slots: &GpuSlots<T>,
        layout: &RowLayout,
        v: &GpuBuffer<f32>,
        y: &mut GpuBuffer<T>,
    ) -> Result<(), KernelError> {
        check_rows(slots, layout)?;
        check_len("y", layout.slots.len() * slots.out_features, y.len())?;
        check_len("v", layout.v_len, v.len())?;
        if layout.v_len == 0 {
            return Ok(());
        }
        guard("bgmv_expand", || {
            let (row_slots, voff) = self.upload_rows(layout)?;
            let out = slots.out_features as i32;
            let cfg = LaunchConfig {
                grid_dim: grid3(
                    layout.slots.len(),
                    slots.out_features.div_ceil(BLOCK as usize),
                    1,
                )?,
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let f = self.func("bgmv_expand", T::NAME)?;
            let mut b = self.stream.launch_builder(f);
            b.arg(&mut y.inner)
                .arg(&v.inner)
                .arg(&slots.b_ptrs)
                .arg(&slots.ranks_dev);
            b.arg(&slots.scales_dev)
                .arg(&row_slots)
                .arg(&voff)
                .arg(&out);
            // SAFETY: argument types and order match `bgmv_expand_*` in expand.cu.
            unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel bgmv_expand"))?;
            Ok(())
        })
    }

    #[allow(clippy::type_complexity)]
    fn upload_segments(
        &self,
        l: &SegmentLayout,
    ) -> Result<
        (
            CudaSlice<i32>,
            CudaSlice<i32>,
            CudaSlice<i32>,
            CudaSlice<i64>,
        ),
        KernelError,
    > {
        let h2d = drv("cuMemcpyHtoD");
        Ok((
            self.stream.clone_htod(&l.starts).map_err(&h2d)?,
            self.stream.clone_htod(&l.ends).map_err(&h2d)?,
            self.stream.clone_htod(&l.slots).map_err(&h2d)?,
            self.stream.clone_htod(&l.v_off).map_err(&h2d)?,
        ))
    }

    fn upload_rows(&self, l: &RowLayout) -> Result<(CudaSlice<i32>, CudaSlice<i64>), KernelError> {
        let h2d = drv("cuMemcpyHtoD");
        Ok((
            self.stream.clone_htod(&l.slots).map_err(&h2d)?,
            self.stream.clone_htod(&l.v_off).map_err(&h2d)?,
        ))
    }
}

fn grid3(x: usize, y: usize, z: usize) -> Result<(u32, u32, u32), KernelError> {
    let dim = |what, v: usize, max: usize| {
        if v == 0 || v > max {
            Err(KernelError::TooLarge { what, value: v })
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

fn check_len(buffer: &str, expected: usize, found: usize) -> Result<(), KernelError> {
    if expected == found {
        Ok(())
    } else {
        Err(KernelError::Length {
            buffer: buffer.to_string(),
            expected,
            found,
        })
    }
}

/// The layout's slots exist and its packing matches these slots' ranks.
fn check_segments<T>(slots: &GpuSlots<T>, l: &SegmentLayout) -> Result<(), KernelError> {
    let mut v_len = 0;
    for (i, (&s, (&a, &b))) in l.slots.iter().zip(l.starts.iter().zip(&l.ends)).enumerate() {
        let s = s as usize;
        let rank = *slots
            .ranks
            .get(s)
            .ok_or_else(|| KernelError::SlotOutOfRange {
                place: format!("segment {i}"),
                slot: s,
                slots: slots.ranks.len(),
            })?;
        if l.v_off[i] as usize != v_len {
            return Err(KernelError::Length {
                buffer: format!("v offset of segment {i}"),
                expected: v_len,
                found: l.v_off[i] as usize,
            });
        }
        v_len += (b - a) as usize * rank;
        if rank > l.max_rank {
            return Err(KernelError::Length {
                buffer: format!("rank of slot {s} (layout built for smaller ranks)"),
                expected: l.max_rank,
                found: rank,
            });
        }
    }
    check_len("v layout", v_len, l.v_len)
}

fn check_rows<T>(slots: &GpuSlots<T>, l: &RowLayout) -> Result<(), KernelError> {
    let mut v_len = 0;
    for (row, &s) in l.slots.iter().enumerate() {
        if s < 0 {
            continue;
        }
        let rank = *slots
            .ranks
            .get(s as usize)
            .ok_or_else(|| KernelError::SlotOutOfRange {
                place: format!("row {row}"),
                slot: s as usize,
                slots: slots.ranks.len(),
            })?;
        if l.v_off[row] as usize != v_len {
            return Err(KernelError::Length {
                buffer: format!("v offset of row {row}"),
                expected: v_len,
                found: l.v_off[row] as usize,
            });
        }
        v_len += rank;
        if rank > l.max_rank {
            return Err(KernelError::Length {
                buffer: format!("rank of slot {s} (layout built for smaller ranks)"),
                expected: l.max_rank,
                found: rank,
            });
        }
    }
    check_len("v layout", v_len, l.v_len)
}
