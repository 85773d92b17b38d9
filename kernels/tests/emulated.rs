//! The kernels' CUDA C run on the host: `emulate/check.cpp` includes the very sources NVRTC
//! compiles, under `emulate/cuda_host.h` (a thread per CUDA thread, barriers for
//! `__syncthreads` and warp shuffles), lays out adapters, slot and tile tables as
//! `openledger-sgmv` does for the GPU, and compares the SGMV and BGMV kernels, in f32, f16 and
//! bf16, with a double-precision reference (ranks 1–128, rows with and without adapters, rows
//! wider than a shrink chunk, outputs inside a fused row; the tolerances of the backends test).
//! This checks indexing, tables, reductions and conversions without a GPU; it does not stand
//! for a run on one.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++`); a missing one is a failure, not a skip.

use std::path::Path;
use std::process::Command;

#[test]
fn the_kernels_match_the_reference_under_the_host_emulation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernels-emulated");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let built = Command::new(&cxx)
        .args([
            "-std=c++20",
            "-O2",
            "-pthread",
            "-Wall",
            "-Wno-unknown-pragmas",
        ])
        .arg("-I")
        .arg(root.join("src"))
        .arg("-I")
        .arg(root.join("emulate"))
        .arg(root.join("emulate/check.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler `{cxx}`: {e}"));
    assert!(
        built.status.success(),
        "{cxx} failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe)
        .output()
        .expect("run the emulated kernels");
    let report = String::from_utf8_lossy(&run.stdout);
    println!("{report}");
    assert!(run.status.success(), "{report}");
    assert!(
        report.contains("all kernels match the reference"),
        "{report}"
    );
}
