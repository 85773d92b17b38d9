//! NVRTC compilation of the kernel sources: a cubin for the device's own architecture
//! (`sm_XY`, loaded as it is), PTX for a virtual one (`compute_XY`, which the driver compiles
//! when it loads it) and as the fallback where NVRTC cannot emit a cubin for the architecture.
//! Each program is compiled once per architecture per process, with line info (so
//! compute-sanitizer can name source lines). NVRTC is loaded at run time: its absence is
//! [`KernelError::NoNvrtc`] naming the library names looked for, never a panic.

use crate::error::KernelError;
use crate::image::Image;
use crate::sources::{SOURCES, dtypes, entry_points, program};
use cudarc::nvrtc::{result, sys};
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};

/// `(source file, image)` of every kernel program for one architecture.
pub type ProgramSet = Arc<Vec<(&'static str, Image)>>;

/// The message of a caught panic's payload.
pub fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, turning a panic into its message (cudarc panics where a library it loads lazily
/// is missing; the CUDA entry points guard their calls with this).
pub fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(panic_message)
}

/// The library names cudarc tries for `lib` (`"nvrtc"`, `"cuda"`), in order, each once.
pub fn library_candidates(lib: &str) -> Vec<String> {
    let mut names = cudarc::get_lib_name_candidates(lib);
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Whether the NVRTC library can be loaded.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library; no symbol is called.
    std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false)
}

fn no_nvrtc() -> KernelError {
    KernelError::NoNvrtc {
        searched: library_candidates("nvrtc"),
    }
}

/// Whether an architecture name is a real one (`sm_XY`: a cubin) rather than a virtual one
/// (`compute_XY`: PTX); [`KernelError::BadArch`] for anything else.
fn is_real_arch(arch: &str) -> Result<bool, KernelError> {
    let (real, rest) = match (arch.strip_prefix("sm_"), arch.strip_prefix("compute_")) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        (None, None) => (false, ""),
    };
    let digits = rest.trim_end_matches(['a', 'f']);
    if digits.len() >= 2 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(real)
    } else {
        Err(KernelError::BadArch {
            arch: arch.to_string(),
        })
    }
}

/// NVRTC's text for a failed call.
fn nvrtc_message(e: result::NvrtcError) -> String {
    format!("{e:?}")
}

/// Compiles `file` for `arch` (`--gpu-architecture`, with line info): a cubin where `cubin`,
/// else PTX.
fn compile_program(file: &str, arch: &str, cubin: bool) -> Result<Image, KernelError> {
    let call = |message: String| KernelError::NvrtcCall {
        kernel: file.to_string(),
        message,
    };
    let src = program(file).ok_or_else(|| call("no such kernel source".into()))?;
    let src = CString::new(src).map_err(|_| call("source holds a NUL byte".into()))?;
    let name = CString::new(file).map_err(|_| call("name holds a NUL byte".into()))?;
    let prog = result::create_program(&src, Some(&name)).map_err(|e| call(nvrtc_message(e)))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++14".to_string(),
        "-lineinfo".to_string(),
    ];
    // SAFETY: `prog` was created above and is destroyed once, below; the buffers handed to
    // NVRTC are sized by the size calls that precede them.
    let out = unsafe {
        let compiled = result::compile_program(prog, &options);
        let image = match compiled {
            Err(_) => {
                let log = result::get_program_log(prog)
                    .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                    .unwrap_or_default();
                Err(KernelError::Nvrtc {
                    kernel: file.to_string(),
                    log,
                })
            }
            Ok(()) if cubin => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| call(nvrtc_message(e)))
                    .and_then(|()| {
                        let mut buf = vec![0 as c_char; size];
                        sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr())
                            .result()
                            .map_err(|e| call(nvrtc_message(e)))?;
                        Ok(Image::Cubin(buf.into_iter().map(|c| c as u8).collect()))
                    })
            }
            Ok(()) => result::get_ptx(prog)
                .map(|p| Image::Ptx(CStr::from_ptr(p.as_ptr()).to_string_lossy().into_owned()))
                .map_err(|e| call(nvrtc_message(e))),
        };
        let _ = result::destroy_program(prog);
        image
    }?;
    for entry in entry_points(file) {
        for d in dtypes(file) {
            let name = format!("{entry}_{d}");
            if !out.defines(&name) {
                return Err(call(format!(
                    "the compiled program lacks entry point {name}"
                )));
            }
        }
    }
    Ok(out)
}

/// Every kernel program compiled for `arch` (`"sm_90"`: cubins; `"compute_80"`: PTX), once per
/// architecture per process. Needs libnvrtc, no GPU and no driver.
pub fn programs(arch: &str) -> Result<ProgramSet, KernelError> {
    static CACHE: OnceLock<Mutex<HashMap<String, ProgramSet>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(arch) {
        return Ok(hit.clone());
    }
    let real = is_real_arch(arch)?;
    if !nvrtc_available() {
        return Err(no_nvrtc());
    }
    let compiled = std::panic::catch_unwind(AssertUnwindSafe(|| {
        SOURCES
            .iter()
            .map(|(file, _)| Ok((*file, compile_program(file, arch, real)?)))
            .collect::<Result<Vec<_>, KernelError>>()
    }))
    .unwrap_or_else(|p| {
        Err(KernelError::Panicked {
            what: "NVRTC compilation",
            message: panic_message(p),
        })
    })?;
    let set = Arc::new(compiled);
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(arch.to_string(), set.clone());
    Ok(set)
}

/// The programs for a device of compute capability `major.minor`: cubins for `sm_XY`, or, where
/// NVRTC cannot emit them (an NVRTC older than the architecture), PTX for `compute_XY`.
pub fn programs_for_device(major: u32, minor: u32) -> Result<ProgramSet, KernelError> {
    match programs(&format!("sm_{major}{minor}")) {
        Ok(set) => Ok(set),
        Err(KernelError::Nvrtc { .. } | KernelError::NvrtcCall { .. }) => {
            programs(&format!("compute_{major}{minor}"))
        }
        Err(e) => Err(e),
    }
}

/// Compiles every kernel source for `arch` (`"compute_80"`, `"sm_90"` …) and returns
/// `(source file, image bytes)` for each.
pub fn compile_all_kernels(arch: &str) -> Result<Vec<(String, usize)>, KernelError> {
    Ok(programs(arch)?
        .iter()
        .map(|(file, image)| (file.to_string(), image.len()))
        .collect())
}
