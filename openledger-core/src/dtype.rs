//! Element types of weights and activations: f32, f16 and bf16 (through `half`).
//!
//! ```
//! use openledger_core::DType;
//!
//! assert_eq!(DType::from_safetensors("BF16").unwrap(), DType::BF16);
//! let bytes = half::bf16::from_f32(1.5).to_le_bytes();
//! assert_eq!(DType::BF16.decode_le(&bytes).unwrap(), vec![1.5]);
//! ```

use std::fmt;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::CoreError;

/// A floating-point element type the SDK stores weights in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    BF16,
}

impl DType {
    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The safetensors header name (`"F32"`, `"F16"`, `"BF16"`).
    pub const fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }

    /// Parses a safetensors dtype name; any other dtype is [`CoreError::UnsupportedDType`].
    pub fn from_safetensors(name: &str) -> Result<Self, CoreError> {
        match name {
            "F32" => Ok(DType::F32),
            "F16" => Ok(DType::F16),
            "BF16" => Ok(DType::BF16),
            other => Err(CoreError::UnsupportedDType(other.to_string())),
        }
    }

    /// Decodes little-endian elements of this dtype into f32.
    ///
    /// A byte length that is not a multiple of the element size is [`CoreError::Truncated`].
    pub fn decode_le(self, bytes: &[u8]) -> Result<Vec<f32>, CoreError> {
        let size = self.size_in_bytes();
        if !bytes.len().is_multiple_of(size) {
            return Err(CoreError::Truncated {
                what: format!("{self} buffer"),
                expected: bytes.len().div_ceil(size) * size,
                found: bytes.len(),
            });
        }
        let chunks = bytes.chunks_exact(size);
        Ok(match self {
            DType::F32 => chunks
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => chunks
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => chunks
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }

    /// Encodes f32 values as little-endian elements of this dtype (round to nearest even).
    pub fn encode_le(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size_in_bytes());
        for &v in values {
            match self {
                DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
                DType::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                DType::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
            }
        }
        out
    }
}

impl std::str::FromStr for DType {
    type Err = CoreError;

    /// The inverse of `Display` (`"f32"`, `"f16"`, `"bf16"`), or a safetensors name (`"BF16"`).
    fn from_str(s: &str) -> Result<Self, CoreError> {
        match s {
            "f32" => Ok(DType::F32),
            "f16" => Ok(DType::F16),
            "bf16" => Ok(DType::BF16),
            other => Self::from_safetensors(other),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trips_every_dtype() {
        let values = [0.0f32, 1.0, -2.5, 65504.0, 1e-3];
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let back = dt.decode_le(&dt.encode_le(&values)).unwrap();
            for (a, b) in values.iter().zip(&back) {
                let tol = match dt {
                    DType::F32 => 0.0,
                    DType::F16 => a.abs() * 1e-3,
                    DType::BF16 => a.abs() * 8e-3,
                };
                assert!((a - b).abs() <= tol, "{dt}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn odd_length_is_truncated_error() {
        let err = DType::F32.decode_le(&[0, 0, 0]).unwrap_err();
        assert!(matches!(
            err,
            CoreError::Truncated {
                found: 3,
                expected: 4,
                ..
            }
        ));
    }

    #[test]
    fn unknown_safetensors_dtype_is_named() {
        let err = DType::from_safetensors("F8_E4M3").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported dtype F8_E4M3 (expected F32, F16 or BF16)"
        );
    }
}
