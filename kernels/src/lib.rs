//! The CUDA C sources of the SDK's GPU kernels and their compilation: the SGMV / BGMV
//! multi-LoRA kernels (Punica's semantics, with per-slot ranks and a packed f32 intermediate)
//! and the GPU model's per-layer kernels (embedding gather, RMSNorm fused with the residual add,
//! gated activations, RoPE fused with the paged KV write, paged attention split over the
//! context, sampling), each in f32, f16 and bf16, embedded in the library ([`sources`]) and
//! compiled by NVRTC at run time — a cubin for the device's own architecture, PTX as the
//! fallback — once per architecture per process, with line info. This crate holds no layout
//! and launches nothing: `openledger-sgmv` builds the launch tables from its plan and runs the
//! SGMV kernels. The same sources also compile as C++ under `emulate/cuda_host.h`, a host
//! emulation of blocks, warps and barriers, which the tests use to check what the kernels
//! compute without a GPU.
//!
//! NVRTC is loaded dynamically (`--features cuda` builds without a CUDA toolkit): its absence
//! is [`KernelError::NoNvrtc`] naming the library names looked for, never a panic. Without the
//! `cuda` feature the same functions exist and answer [`KernelError::NotCompiledWithCuda`].
//!
//! ```
//! use openledger_kernels::{KernelError, compile_all_kernels};
//!
//! match compile_all_kernels("sm_90") {
//!     Ok(programs) => assert_eq!(programs.len(), openledger_kernels::sources::SOURCES.len()),
//!     Err(KernelError::NotCompiledWithCuda | KernelError::NoNvrtc { .. }) => {}
//!     Err(other) => panic!("unexpected: {other}"),
//! }
//! ```

#[cfg(feature = "cuda")]
mod compile;
pub mod emulate;
mod error;
mod image;
pub mod sources;

#[cfg(feature = "cuda")]
pub use compile::{
    ProgramSet, catch_panic, compile_all_kernels, library_candidates, nvrtc_available,
    panic_message, programs, programs_for_device,
};
pub use error::KernelError;
pub use image::Image;
pub use sources::entry_points;

/// Compiles every kernel source for `arch`; without the `cuda` feature, refuses.
#[cfg(not(feature = "cuda"))]
pub fn compile_all_kernels(_arch: &str) -> Result<Vec<(String, usize)>, KernelError> {
    Err(KernelError::NotCompiledWithCuda)
}

/// Whether the NVRTC library can be loaded (never, without the `cuda` feature).
#[cfg(not(feature = "cuda"))]
pub fn nvrtc_available() -> bool {
    false
}
