//! The openledger SDK's model on a GPU. [`GpuModel`] holds a llama-family checkpoint's weights
//! and its paged KV cache in device memory and runs each serving step through the kernels of
//! `openledger-kernels` (embedding gather, RMSNorm fused with the residual add, RoPE fused with
//! the KV write, paged attention split over the context, a prompt's attention in tiles on the
//! tensor cores, gated activations) and the device's GEMMs, returning logits only for the rows
//! that need them. It loads HF folders ([`GpuModel::load`]) and llama-family GGUF files
//! ([`GpuModel::from_gguf`], dequantized on the host).
//!
//! Everything it asks of a device goes through the [`Runtime`] interface: memory, launches by
//! name (cuLaunchKernel's argument convention) and GEMMs. Two runtimes implement it:
//! - [`CudaRuntime`] (the `cuda` feature): a CUDA device through cudarc, with the driver, NVRTC,
//!   cuBLAS and cuBLASLt loaded at run time, so the build needs no CUDA toolkit; a missing library or
//!   device is a typed [`GpuError`], never a panic;
//! - [`EmulatedRuntime`]: host memory and the very CUDA C kernels compiled for the host under
//!   `openledger-kernels`' emulation of blocks and warps. It checks the whole host side (weight
//!   layout, metadata, launch arguments, the device KV layout) without a GPU; it is slow and
//!   says nothing of speed.
//!
//! Adapters live in a device slab ([`AdapterBudget`]) and run through the SGMV / BGMV kernels
//! in the same mixed batch as the base model; DoRA's magnitude (its factor computed on the
//! device at attach time) and LoRA biases are applied after the module's product.
//!
//! [`GpuPagedModel`] is the serving engine's step model over it (the engine's KV cache in device
//! memory), and [`serve`] starts a [`ServedModel`](openledger_lora::model::ServedModel) on a
//! [`Device`] named `cpu`, `cuda` or `cuda:N`: what the bindings and the server call.
//!
//! Architectures: Llama (with `attention_bias` / `mlp_bias`), Mistral, Qwen2 (q/k/v biases,
//! its sliding window) and Gemma (`1 + w` norms, GeGLU, √hidden embedding scale, tied head).
//!
//! Decode steps of up to [`GpuOptions::graph_max_batch`] sequences run as graphs ([`Graph`]: a
//! CUDA graph on a device, recorded calls under the emulation), captured per batch-size bucket
//! ([`graph_bucket`]) and replayed with the step's metadata in device memory.
//!
//! An adapter's saved parameters (`modules_to_save` copies of the embeddings, the output head,
//! the norms and the projections, and saved biases) are swapped in for its rows; one the model
//! has no place for is refused with a typed [`GpuError::Unsupported`].

mod adapters;
mod checkpoint;
#[cfg(feature = "cuda")]
mod cuda;
mod device;
mod emulated;
mod error;
mod kv;
mod meta;
mod model;
mod runtime;
mod serving;

pub use adapters::{AdapterBudget, adapter_bytes};
#[cfg(feature = "cuda")]
pub use cuda::{CudaRuntime, cublas_available, cublaslt_available};
pub use device::{
    Device, UnknownDevice, device_error, gpu_dtype, gpu_options, load_model, serve, serve_gguf,
    serve_model,
};
pub use emulated::EmulatedRuntime;
pub use error::GpuError;
pub use kv::{DeviceKvStorage, DeviceSwapped};
pub use meta::{AttentionPlan, StepMeta, graph_bucket, graph_parts};
pub use model::{GpuModel, GpuOptions, GraphStats, MemoryUse, RowSampling};
pub use openledger_lora::sgmv::cuda_driver_available;
pub use runtime::{
    Arg, Buffer, DevicePtr, Dtype, Gemm, Graph, LaunchDims, Runtime, Scatter, UploadId,
};
pub use serving::{GpuPagedModel, TierStats, kv_dtype};

/// Opens CUDA device `ordinal` as a [`Runtime`]; without the `cuda` feature, refuses.
pub fn cuda_runtime(ordinal: usize) -> Result<std::sync::Arc<dyn Runtime>, GpuError> {
    #[cfg(feature = "cuda")]
    {
        Ok(std::sync::Arc::new(CudaRuntime::new(ordinal)?))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        Err(GpuError::NotCompiledWithCuda)
    }
}
