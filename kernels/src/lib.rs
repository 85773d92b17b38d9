//! CUDA kernels of the SGMV / BGMV multi-LoRA operators (Punica's semantics, with per-slot
//! ranks and a packed f32 intermediate — the same math and packing as the CPU operators of
//! `openledger-lora`): shrink `v = x · Aᵀ` (the input dimension split over a block's threads,
//! then reduced) and expand `y += scale · v · Bᵀ`, in f32, f16 and bf16.
//!
//! The CUDA C sources are embedded ([`sources`]) and compiled by NVRTC at run time for the
//! device's architecture, once per architecture per process; the driver and NVRTC are loaded
//! dynamically, so `--features cuda` builds without a CUDA toolkit. A missing library or device
//! is a [`KernelError`], never a panic. Without the `cuda` feature the same API exists and
//! answers [`KernelError::NotCompiledWithCuda`].
//!
//! ```
//! use openledger_kernels::{CudaSgmv, KernelError, SegmentLayout};
//!
//! let layout = SegmentLayout::new(&[(0, 3, 0)], &[16], 4).unwrap();
//! assert_eq!(layout.intermediate_len(), 3 * 16);
//! match CudaSgmv::new(0) {
//!     Ok(gpu) => println!("running on {}", gpu.device_name().unwrap()),
//!     Err(KernelError::NotCompiledWithCuda | KernelError::NoCudaDriver | KernelError::NoNvrtc) => {}
//!     Err(KernelError::NoDevice { .. }) => {}
//!     Err(other) => panic!("unexpected: {other}"),
//! }
//! ```

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(not(feature = "cuda"))]
mod dummy;
mod error;
mod layout;
pub mod sources;

#[cfg(feature = "cuda")]
pub use cuda::{
    CudaSgmv, GpuBuffer, GpuSlots, KernelElement, compile_all_kernels, cuda_driver_available,
    nvrtc_available,
};
#[cfg(not(feature = "cuda"))]
pub use dummy::{
    CudaSgmv, GpuBuffer, GpuSlots, KernelElement, compile_all_kernels, cuda_driver_available,
    nvrtc_available,
};
pub use error::KernelError;
pub use layout::{RowLayout, SegmentLayout};

/// One adapter slot on the host, to upload: `A` `[rank, in]` and `B` `[out, rank]` row-major.
#[derive(Debug, Clone, Copy)]
pub struct HostSlot<'a, T> {
    /// `A`, `[rank, in_features]`.
    pub a: &'a [T],
    /// `B`, `[out_features, rank]`.
    pub b: &'a [T],
    /// The rank.
    pub rank: usize,
    /// The scale.
    pub scale: f32,
}
