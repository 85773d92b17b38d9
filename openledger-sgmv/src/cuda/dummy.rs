//! The GPU backend of a build without the `cuda` feature: the same types and functions as the
//! CUDA backend, every entry point answering [`SgmvError::NotCompiledWithCuda`], so callers need
//! no `cfg` of their own.

use crate::element::LoraElement;
use crate::error::SgmvError;
use crate::plan::{AdapterSlots, SgmvPlan};
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
    ) -> Result<(), SgmvError> {
        Err(SgmvError::NotCompiledWithCuda)
    }
}
