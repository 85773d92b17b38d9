//! Builds the host emulation of the kernels: a C++ program of this crate's `emulate/` folder
//! (`check.cpp`, the SGMV check; `model_ffi.cpp`, the model kernels as a shared library) that
//! includes the very CUDA C sources NVRTC compiles, under `emulate/cuda_host.h` (a thread per
//! CUDA thread, barriers for `__syncthreads` and warp shuffles). The tests use it to check what
//! the kernels compute on machines without a GPU.

use std::path::Path;
use std::process::Command;

/// How a program of `emulate/` is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulatedOutput {
    /// An executable.
    Executable,
    /// A shared library (`-shared -fPIC`).
    SharedLibrary,
}

/// Compiles `emulate/<program>` with the C++20 compiler `$CXX` (else `c++`) into `output`;
/// the error names the compiler and holds its diagnostics.
pub fn compile_emulated(program: &str, output: &Path, kind: EmulatedOutput) -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let mut cmd = Command::new(&cxx);
    cmd.args([
        "-std=c++20",
        "-O2",
        "-pthread",
        "-Wall",
        "-Wno-unknown-pragmas",
    ]);
    if kind == EmulatedOutput::SharedLibrary {
        cmd.args(["-shared", "-fPIC"]);
    }
    let built = cmd
        .arg("-I")
        .arg(root.join("src"))
        .arg("-I")
        .arg(root.join("emulate"))
        .arg(root.join("emulate").join(program))
        .arg("-o")
        .arg(output)
        .output()
        .map_err(|e| format!("cannot run the C++ compiler `{cxx}`: {e}"))?;
    if built.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cxx} failed on {program}:\n{}",
            String::from_utf8_lossy(&built.stderr)
        ))
    }
}
