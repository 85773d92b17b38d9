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

use openledger_kernels::emulate::{EmulatedOutput, compile_emulated};
use std::path::Path;
use std::process::Command;

#[test]
fn the_kernels_match_the_reference_under_the_host_emulation() {
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernels-emulated");
    compile_emulated("check.cpp", &exe, EmulatedOutput::Executable)
        .unwrap_or_else(|e| panic!("{e}"));
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
