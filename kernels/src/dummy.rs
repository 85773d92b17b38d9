//! The backend of a build without the `cuda` feature: the same types and functions as the CUDA
//! backend, every entry point answering [`KernelError::NotCompiledWithCuda`], so callers need no
//! `cfg` of their own.

use crate::HostSlot;
use crate::error::KernelError;
use crate::layout::{RowLayout, SegmentLayout};
use std::marker::PhantomData;

/// A storage type the kernels are instantiated for: `f32`, `half::f16`, `half::bf16`.
pub trait KernelElement: Copy + Default + Send + Sync + 'static {
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

/// Whether the NVRTC library can be loaded (never, without the `cuda` feature).
pub fn nvrtc_available() -> bool {
    false
}

/// Whether the CUDA driver library can be loaded (never, without the `cuda` feature).
pub fn cuda_driver_available() -> bool {
    false
}

/// Compiles every kernel source through NVRTC; without the `cuda` feature, refuses.
pub fn compile_all_kernels(_arch: &str) -> Result<Vec<(String, usize)>, KernelError> {
    Err(KernelError::NotCompiledWithCuda)
}

/// A buffer in device memory (never created without the `cuda` feature).
#[derive(Debug)]
pub struct GpuBuffer<T> {
    len: usize,
    _t: PhantomData<T>,
}

impl<T> GpuBuffer<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The adapter slots of one layer in device memory (never created without the `cuda` feature).
#[derive(Debug)]
pub struct GpuSlots<T> {
    ranks: Vec<usize>,
    _t: PhantomData<T>,
}

impl<T> GpuSlots<T> {
    /// The rank of each slot.
    pub fn ranks(&self) -> &[usize] {
        &self.ranks
    }
}

/// One CUDA device with the kernels loaded (cannot be opened without the `cuda` feature).
#[derive(Debug)]
pub struct CudaSgmv {
    _private: (),
}

impl CudaSgmv {
    /// Opens a device; without the `cuda` feature, refuses.
    pub fn new(_ordinal: usize) -> Result<Self, KernelError> {
        Err(KernelError::NotCompiledWithCuda)
    }

    /// The device's name.
    pub fn device_name(&self) -> Result<String, KernelError> {
        Err(KernelError::NotCompiledWithCuda)
    }

    /// Copies `host` to a new device buffer.
    pub fn upload<T: KernelElement>(&self, _host: &[T]) -> Result<GpuBuffer<T>, KernelError> {
        Err(KernelError::NotCompiledWithCuda)
    }

    /// A new zeroed device buffer.
    pub fn zeros<T: KernelElement>(&self, _len: usize) -> Result<GpuBuffer<T>, KernelError> {
        Err(KernelError::NotCompiledWithCuda)
    }

    /// Copies a device buffer back to the host.
    pub fn download<T: KernelElement>(&self, _buf: &GpuBuffer<T>) -> Result<Vec<T>, KernelError> {
        Err(KernelError::NotCompiledWithCuda)
    }

    /// Device-to-device copy.
    pub fn copy<T: KernelElement>(
        &self,
        _src: &GpuBuffer<T>,
        _dst: &mut GpuBuffer<T>,
    ) -> Result<(), KernelError> {
        Err(KernelError::NotCompiledWithCuda)
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        Err(KernelError::NotCompiledWithCuda)
    }

    /// Uploads one layer's adapter slots.
    pub fn upload_slots<T: KernelElement>(
        &self,
        _in_features: usize,
        _out_features: usize,
        _slots: &[HostSlot<'_, T>],
    ) -> Result<GpuSlots<T>, KernelError> {
        Err(KernelError::NotCompiledWithCuda)
    }

    /// SGMV shrink.
    pub fn sgmv_shrink<T: KernelElement>(
        &self,
        _slots: &GpuSlots<T>,
        _layout: &SegmentLayout,
        _x: &GpuBuffer<T>,
        _v: &mut GpuBuffer<f32>,
    ) -> Result<(), KernelError> {
        Err(KernelError::NotCompiledWithCuda)
    }

    /// SGMV expand.
    pub fn sgmv_expand<T: KernelElement>(
        &self,
        _slots: &GpuSlots<T>,
        _layout: &SegmentLayout,
        _v: &GpuBuffer<f32>,
        _y: &mut GpuBuffer<T>,
    ) -> Result<(), KernelError> {
        Err(KernelError::NotCompiledWithCuda)
    }

    /// BGMV shrink.
    pub fn bgmv_shrink<T: KernelElement>(
        &self,
        _slots: &GpuSlots<T>,
        _layout: &RowLayout,
        _x: &GpuBuffer<T>,
        _v: &mut GpuBuffer<f32>,
    ) -> Result<(), KernelError> {
        Err(KernelError::NotCompiledWithCuda)
    }

    /// BGMV expand.
    pub fn bgmv_expand<T: KernelElement>(
        &self,
        _slots: &GpuSlots<T>,
        _layout: &RowLayout,
        _v: &GpuBuffer<f32>,
        _y: &mut GpuBuffer<T>,
    ) -> Result<(), KernelError> {
        Err(KernelError::NotCompiledWithCuda)
    }
}
