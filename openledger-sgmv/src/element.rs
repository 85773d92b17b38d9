//! The element types the operators accept (f32, f16, bf16) and their conversions to and from the
//! f32 accumulator.

use half::{bf16, f16};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A storage type of activations and LoRA weights: `f32`, `half::f16` or `half::bf16`.
/// Arithmetic always runs in f32; values are widened on load and rounded once on store.
pub trait LoraElement: sealed::Sealed + Copy + Send + Sync + Default + 'static {
    /// Short name of the type (`"f32"`, `"f16"`, `"bf16"`).
    const NAME: &'static str;
    /// Whether the type is `f32` (no conversion needed).
    const IS_F32: bool;
    /// Widens one value to f32 (exact).
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type (round to nearest even).
    fn from_f32(v: f32) -> Self;
    /// Widens `src` into `dst` (same length).
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
    /// Views a slice as f32 when the type is f32.
    fn as_f32_slice(src: &[Self]) -> Option<&[f32]>;
    /// Views a mutable slice as f32 when the type is f32.
    fn as_f32_slice_mut(src: &mut [Self]) -> Option<&mut [f32]>;
}

impl LoraElement for f32 {
    const NAME: &'static str = "f32";
    const IS_F32: bool = true;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn as_f32_slice(src: &[Self]) -> Option<&[f32]> {
        Some(src)
    }
    fn as_f32_slice_mut(src: &mut [Self]) -> Option<&mut [f32]> {
        Some(src)
    }
}

impl LoraElement for f16 {
    const NAME: &'static str = "f16";
    const IS_F32: bool = false;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    fn as_f32_slice(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_slice_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

impl LoraElement for bf16 {
    const NAME: &'static str = "bf16";
    const IS_F32: bool = false;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        // bf16 is the upper half of an f32: a shift the compiler vectorises.
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
    }
    fn as_f32_slice(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_slice_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}
