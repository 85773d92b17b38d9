//! The GPU backend of a build without the `cuda` feature: the same types and functions as the
//! CUDA backend, every entry point answering [`SgmvError::NotCompiledWithCuda`], so callers need
//! no `cfg` of their own.

use crate::element::LoraElement;
use crate::error::SgmvError;
use crate::plan::{AdapterSlots, OutputWindow, SgmvPlan};
use std::marker::PhantomData;

/// An element type the kernels are instantiated for (`f32`, `half::f16`, `half::bf16`).
pub trait GpuElement: LoraElement {}
impl GpuElement for f32 {}
impl GpuElement for half::f16 {}
impl GpuElement for half::bf16 {}

/// Whether the NVRTC library can be loaded (never, without the `cuda` feature).
pub fn nvrtc_available() -> bool {
    false
}

/// Whether the CUDA driver library can be loaded (never, without the `cuda` feature).
pub fn cuda_driver_available() -> bool {
    false
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

/// One layer's adapter slots in device memory (never created without the `cuda` feature).
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

    /// Pages of the slab the slots hold.
    pub fn pages(&self) -> usize {
        0
    }
}

/// Adapters of one dtype in pages of a device slab (never created without the `cuda` feature).
#[derive(Debug, Clone)]
pub struct AdapterSlab<T> {
    _t: PhantomData<T>,
}

impl<T: GpuElement> AdapterSlab<T> {
    /// Bytes in each page.
    pub fn page_bytes(&self) -> usize {
        0
    }

    /// Pages in all.
    pub fn pages(&self) -> usize {
        0
    }

    /// Pages no slot holds.
    pub fn free_pages(&self) -> usize {
        0
    }

    /// Refuses: built without the `cuda` feature.
    pub fn upload(&self, _slots: &AdapterSlots<'_, T>) -> Result<GpuSlots<T>, SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }
}

/// One CUDA device (never opened without the `cuda` feature).
#[derive(Debug)]
pub struct CudaSgmv {
    _private: (),
}

impl CudaSgmv {
    /// Refuses: built without the `cuda` feature.
    pub fn new(_ordinal: usize) -> Result<Self, SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn device_name(&self) -> Result<String, SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn upload<T: GpuElement>(&self, _host: &[T]) -> Result<GpuBuffer<T>, SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn zeros<T: GpuElement>(&self, _len: usize) -> Result<GpuBuffer<T>, SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn download<T: GpuElement>(&self, _buf: &GpuBuffer<T>) -> Result<Vec<T>, SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn copy<T: GpuElement>(
        &self,
        _src: &GpuBuffer<T>,
        _dst: &mut GpuBuffer<T>,
    ) -> Result<(), SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn elapsed_ms(&self, _f: impl FnOnce() -> Result<(), SgmvError>) -> Result<f64, SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn synchronize(&self) -> Result<(), SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn adapter_slab<T: GpuElement>(
        &self,
        _bytes: usize,
        _page_bytes: usize,
    ) -> Result<AdapterSlab<T>, SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn upload_slots<T: GpuElement>(
        &self,
        _slots: &AdapterSlots<'_, T>,
    ) -> Result<GpuSlots<T>, SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn sgmv_shrink<T: GpuElement>(
        &self,
        _plan: &SgmvPlan,
        _slots: &GpuSlots<T>,
        _x: &GpuBuffer<T>,
        _v: &mut GpuBuffer<f32>,
    ) -> Result<(), SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn sgmv_expand<T: GpuElement>(
        &self,
        _plan: &SgmvPlan,
        _slots: &GpuSlots<T>,
        _v: &GpuBuffer<f32>,
        _y: &mut GpuBuffer<T>,
        _window: OutputWindow,
    ) -> Result<(), SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn bgmv_shrink<T: GpuElement>(
        &self,
        _plan: &SgmvPlan,
        _slots: &GpuSlots<T>,
        _x: &GpuBuffer<T>,
        _v: &mut GpuBuffer<f32>,
    ) -> Result<(), SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }

    /// Refuses: built without the `cuda` feature.
    pub fn bgmv_expand<T: GpuElement>(
        &self,
        _plan: &SgmvPlan,
        _slots: &GpuSlots<T>,
        _v: &GpuBuffer<f32>,
        _y: &mut GpuBuffer<T>,
        _window: OutputWindow,
    ) -> Result<(), SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }
}
