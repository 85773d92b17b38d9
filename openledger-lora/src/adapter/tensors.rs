//! Host tensors in their file dtype (f32, f16 or bf16) and the safetensors decoding behind
//! adapter loading and base-model header reading.
//!
//! Decoding copies each tensor's bytes once, straight from the file buffer (a memory map when
//! loading from disk) into a typed, aligned `Vec`; f16/bf16 stay 16-bit in memory. Every failure
//! of the `safetensors` parser is mapped to a [`LoraError`] that names the file and, where one is
//! to blame, the tensor key.
//!
//! ```
//! use openledger_core::DType;
//! use openledger_lora::adapter::tensors::HostTensor;
//!
//! let t = HostTensor::from_f32(DType::BF16, vec![2, 2], &[1.0, 2.0, 3.0, 0.5]);
//! assert_eq!(t.dtype(), DType::BF16);
//! assert_eq!(t.size_in_bytes(), 8);
//! assert_eq!(t.to_f32().as_ref(), &[1.0, 2.0, 3.0, 0.5]);
//! ```

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use half::{bf16, f16};
use openledger_core::DType;
use openledger_core::fsx::{open_regular, read_regular};
use safetensors::tensor::{Dtype, Metadata, SafeTensorError};
use serde_json::Value;

use crate::error::LoraError;

/// Element storage in the file's dtype; 16-bit types are kept as raw bits.
#[derive(Clone, Debug, PartialEq)]
enum Data {
    F32(Vec<f32>),
    F16(Vec<u16>),
    BF16(Vec<u16>),
}

/// A dense, row-major tensor in host memory, held in the dtype it was stored in.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    shape: Vec<usize>,
    data: Data,
}

impl HostTensor {
    /// Encodes f32 values into a tensor of `dtype` (round to nearest even for 16-bit types).
    ///
    /// # Panics
    /// When `values.len()` is not the product of `shape` (a programming error, not bad input).
    pub fn from_f32(dtype: DType, shape: Vec<usize>, values: &[f32]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape {shape:?} does not hold {} values",
            values.len()
        );
        let data = match dtype {
            DType::F32 => Data::F32(values.to_vec()),
            DType::F16 => Data::F16(values.iter().map(|v| f16::from_f32(*v).to_bits()).collect()),
            DType::BF16 => Data::BF16(
                values
                    .iter()
                    .map(|v| bf16::from_f32(*v).to_bits())
                    .collect(),
            ),
        };
        HostTensor { shape, data }
    }

    /// Decodes little-endian bytes of `dtype` (one copy; no per-element conversion).
    fn from_le_bytes(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Self {
        let n = bytes.len() / dtype.size_in_bytes();
        let data = match dtype {
            DType::F32 => {
                let mut v = vec![0f32; n];
                bytemuck::cast_slice_mut::<f32, u8>(&mut v).copy_from_slice(bytes);
                if cfg!(target_endian = "big") {
                    v.iter_mut()
                        .for_each(|x| *x = f32::from_bits(x.to_bits().swap_bytes()));
                }
                Data::F32(v)
            }
            DType::F16 | DType::BF16 => {
                let mut v = vec![0u16; n];
                bytemuck::cast_slice_mut::<u16, u8>(&mut v).copy_from_slice(bytes);
                if cfg!(target_endian = "big") {
                    v.iter_mut().for_each(|x| *x = x.swap_bytes());
                }
                if dtype == DType::F16 {
                    Data::F16(v)
                } else {
                    Data::BF16(v)
                }
            }
        };
        HostTensor { shape, data }
    }

    /// The transpose of a 2-D tensor (same dtype); other ranks are returned unchanged.
    pub fn transposed(&self) -> HostTensor {
        let [rows, cols] = self.shape[..] else {
            return self.clone();
        };
        fn t<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(v.len());
            for c in 0..cols {
                out.extend((0..rows).map(|r| v[r * cols + c]));
            }
            out
        }
        let data = match &self.data {
            Data::F32(v) => Data::F32(t(v, rows, cols)),
            Data::F16(v) => Data::F16(t(v, rows, cols)),
            Data::BF16(v) => Data::BF16(t(v, rows, cols)),
        };
        HostTensor {
            shape: vec![cols, rows],
            data,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::F16(v) | Data::BF16(v) => v.len(),
        }
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type it is held in.
    pub fn dtype(&self) -> DType {
        match &self.data {
            Data::F32(_) => DType::F32,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
        }
    }

    /// Bytes of element data held in memory.
    pub fn size_in_bytes(&self) -> usize {
        self.len() * self.dtype().size_in_bytes()
    }

    /// The elements when held as f32 (no copy).
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements when held as bf16 (no copy).
    pub fn as_bf16(&self) -> Option<&[bf16]> {
        match &self.data {
            Data::BF16(v) => Some(bytemuck::cast_slice(v)),
            _ => None,
        }
    }

    /// The elements when held as f16 (no copy).
    pub fn as_f16(&self) -> Option<&[f16]> {
        match &self.data {
            Data::F16(v) => Some(bytemuck::cast_slice(v)),
            _ => None,
        }
    }

    /// The elements as f32: borrowed when held as f32, converted otherwise.
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match &self.data {
            Data::F32(v) => Cow::Borrowed(v),
            Data::F16(v) => Cow::Owned(v.iter().map(|b| f16::from_bits(*b).to_f32()).collect()),
            Data::BF16(v) => Cow::Owned(v.iter().map(|b| bf16::from_bits(*b).to_f32()).collect()),
        }
    }

    /// The elements as little-endian bytes of the held dtype.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F16(v) | Data::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// The first non-finite element (flat index and value), if any.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        match &self.data {
            Data::F32(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i])),
            Data::F16(v) => v
                .iter()
                .position(|b| b & 0x7c00 == 0x7c00)
                .map(|i| (i, f16::from_bits(v[i]).to_f32())),
            Data::BF16(v) => v
                .iter()
                .position(|b| b & 0x7f80 == 0x7f80)
                .map(|i| (i, bf16::from_bits(v[i]).to_f32())),
        }
    }
}

/// Shape and dtype of one tensor, read from a safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMeta {
    /// Safetensors dtype name (`"F32"`, `"BF16"`, `"I64"`, ...).
    pub dtype: String,
    /// The shape.
    pub shape: Vec<usize>,
}

fn dtype_name(d: Dtype) -> String {
    match serde_json::to_value(d) {
        Ok(Value::String(s)) => s,
        _ => format!("{d:?}"),
    }
}

/// Maps a `safetensors` error to ours, diagnosing the header again when the crate's error does
/// not name the culprit tensor.
fn map_error(
    file: &str,
    err: SafeTensorError,
    header: Option<&[u8]>,
    data_len: usize,
) -> LoraError {
    let bad = |key: Option<String>, reason: String| LoraError::BadHeader {
        file: file.to_string(),
        key,
        reason,
    };
    match err {
        SafeTensorError::HeaderTooSmall => LoraError::Truncated {
            file: file.to_string(),
            what: "header length".into(),
            expected: 8,
            found: data_len,
        },
        SafeTensorError::HeaderTooLarge => bad(None, "header length is over 100 MB".into()),
        SafeTensorError::InvalidHeaderLength => {
            bad(None, "header length points past the end of the file".into())
        }
        SafeTensorError::InvalidHeader(e) => bad(None, format!("header is not UTF-8: {e}")),
        SafeTensorError::InvalidHeaderDeserialization(e) | SafeTensorError::JsonError(e) => {
            // An unknown dtype name fails deserialization: find the tensor that holds it.
            let key = header.and_then(unknown_dtype_key);
            match key {
                Some((k, d)) => LoraError::UnsupportedDType {
                    file: file.to_string(),
                    key: k,
                    dtype: d,
                },
                None => bad(None, format!("header is not valid safetensors JSON: {e}")),
            }
        }
        SafeTensorError::InvalidOffset(k) => bad(
            Some(k),
            "data offsets overlap another tensor, leave a gap or run backwards".into(),
        ),
        SafeTensorError::TensorInvalidInfo
        | SafeTensorError::ValidationOverflow
        | SafeTensorError::MisalignedSlice
        | SafeTensorError::InvalidTensorView(..) => {
            let culprit = header.and_then(size_mismatch_key);
            bad(
                culprit.as_ref().map(|c| c.0.clone()),
                culprit.map(|c| c.1).unwrap_or_else(|| {
                    "a tensor's byte range does not match its shape and dtype".into()
                }),
            )
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            let culprit = header.and_then(|h| past_end_key(h, data_len));
            match culprit {
                Some((k, end)) => LoraError::Truncated {
                    file: file.to_string(),
                    what: format!("tensor data of {k:?}"),
                    expected: end,
                    found: data_len,
                },
                None => bad(
                    None,
                    format!("tensors do not cover the {data_len}-byte data section exactly"),
                ),
            }
        }
        other => bad(None, other.to_string()),
    }
}

fn header_entries(header: &[u8]) -> Vec<(String, Value)> {
    match serde_json::from_slice::<serde_json::Map<String, Value>>(header) {
        Ok(m) => m.into_iter().filter(|(k, _)| k != "__metadata__").collect(),
        Err(_) => Vec::new(),
    }
}

fn unknown_dtype_key(header: &[u8]) -> Option<(String, String)> {
    header_entries(header).into_iter().find_map(|(k, v)| {
        let d = v.get("dtype")?.as_str()?.to_string();
        serde_json::from_value::<Dtype>(Value::String(d.clone()))
            .is_err()
            .then_some((k, d))
    })
}

fn entry_info(v: &Value) -> Option<(Dtype, Vec<usize>, usize, usize)> {
    let d = serde_json::from_value::<Dtype>(v.get("dtype")?.clone()).ok()?;
    let shape = v
        .get("shape")?
        .as_array()?
        .iter()
        .map(|x| x.as_u64().map(|n| n as usize))
        .collect::<Option<Vec<_>>>()?;
    let off = v.get("data_offsets")?.as_array()?;
    Some((
        d,
        shape,
        off.first()?.as_u64()? as usize,
        off.get(1)?.as_u64()? as usize,
    ))
}

fn size_mismatch_key(header: &[u8]) -> Option<(String, String)> {
    header_entries(header).into_iter().find_map(|(k, v)| {
        let (d, shape, s, e) = entry_info(&v)?;
        let n = shape.iter().try_fold(1usize, |a, b| a.checked_mul(*b));
        let bytes = n.and_then(|n| n.checked_mul(d.bitsize())).map(|b| b / 8);
        (bytes != Some(e.wrapping_sub(s))).then(|| {
            (
                k,
                format!(
                    "shape {shape:?} of {} needs {} bytes but data_offsets [{s}, {e}] span {}",
                    dtype_name(d),
                    bytes.map_or("an overflowing number of".to_string(), |b| b.to_string()),
                    e as i128 - s as i128
                ),
            )
        })
    })
}

fn past_end_key(header: &[u8], data_len: usize) -> Option<(String, usize)> {
    header_entries(header).into_iter().find_map(|(k, v)| {
        let (_, _, _, e) = entry_info(&v)?;
        (e > data_len).then_some((k, e))
    })
}

/// The header bytes of a safetensors buffer, when its length prefix is sane.
fn header_slice(buf: &[u8]) -> Option<&[u8]> {
    let n = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?) as usize;
    buf.get(8..8usize.checked_add(n)?)
}

/// Decodes every tensor of a whole safetensors file held in `buf`, in file order.
///
/// Tensors of a dtype other than F32/F16/BF16 are [`LoraError::UnsupportedDType`]; non-finite
/// values are [`LoraError::NonFinite`] unless `allow_non_finite`.
pub(crate) fn decode_all(
    file: &str,
    buf: &[u8],
    allow_non_finite: bool,
) -> Result<Vec<(String, HostTensor)>, LoraError> {
    decode_where(file, buf, allow_non_finite, &|_| true)
}

/// [`decode_all`] for the tensors whose name `keep` accepts; the others are neither decoded nor
/// checked (their dtype may be one this crate does not hold, such as BERT's `I64`
/// `position_ids`). The header and every offset are still validated.
pub(crate) fn decode_where(
    file: &str,
    buf: &[u8],
    allow_non_finite: bool,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<(String, HostTensor)>, LoraError> {
    if let Some(len) = buf.get(..8) {
        let n = u64::from_le_bytes(len.try_into().unwrap_or([0; 8]));
        if n > (buf.len() - 8) as u64 {
            return Err(LoraError::Truncated {
                file: file.to_string(),
                what: "header (its length prefix points past the end of the file)".into(),
                expected: n.saturating_add(8).min(usize::MAX as u64) as usize,
                found: buf.len(),
            });
        }
    }
    let (n, meta) = safetensors::SafeTensors::read_metadata(buf).map_err(|e| {
        let data_len = header_slice(buf).map_or(buf.len(), |h| buf.len() - 8 - h.len());
        map_error(file, e, header_slice(buf), data_len)
    })?;
    let data = &buf[8 + n..];
    let mut out = Vec::with_capacity(meta.tensors().len());
    for key in meta.offset_keys() {
        let Some(info) = meta.info(&key) else {
            continue;
        };
        if !keep(&key) {
            continue;
        }
        let name = dtype_name(info.dtype);
        let dtype = DType::from_safetensors(&name).map_err(|_| LoraError::UnsupportedDType {
            file: file.to_string(),
            key: key.clone(),
            dtype: name.clone(),
        })?;
        let (s, e) = info.data_offsets;
        let bytes = data.get(s..e).ok_or_else(|| LoraError::BadHeader {
            file: file.to_string(),
            key: Some(key.clone()),
            reason: format!(
                "data_offsets [{s}, {e}] outside the {}-byte data section",
                data.len()
            ),
        })?;
        let t = HostTensor::from_le_bytes(dtype, info.shape.clone(), bytes);
        if !allow_non_finite && let Some((index, value)) = t.first_non_finite() {
            return Err(LoraError::NonFinite { key, index, value });
        }
        out.push((key, t));
    }
    Ok(out)
}

/// Reads and decodes a whole safetensors file (memory-mapped; one copy per tensor).
pub fn read_safetensors(
    path: &Path,
    allow_non_finite: bool,
) -> Result<Vec<(String, HostTensor)>, LoraError> {
    read_safetensors_where(path, allow_non_finite, &|_| true)
}

/// [`read_safetensors`] for the tensors whose name `keep` accepts; the others are skipped
/// undecoded (whatever their dtype).
pub fn read_safetensors_where(
    path: &Path,
    allow_non_finite: bool,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<(String, HostTensor)>, LoraError> {
    let file_name = path.display().to_string();
    let io = |source| LoraError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (f, len) = open_regular(path).map_err(io)?;
    if len < 8 {
        let bytes = read_regular(path, 8).map_err(io)?;
        return decode_where(&file_name, &bytes, allow_non_finite, keep);
    }
    // SAFETY: read-only map, dropped before returning; tensors are copied out of it.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
    decode_where(&file_name, &map, allow_non_finite, keep)
}

/// Reads only the header of a safetensors file (8-byte length + JSON), checking that the
/// offsets it declares fit the file's size. Tensor data is never read.
pub fn read_header(path: &Path) -> Result<Vec<(String, TensorMeta)>, LoraError> {
    let file_name = path.display().to_string();
    let io = |source| LoraError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (mut f, file_len) = open_regular(path).map_err(io)?;
    let file_len = file_len as usize;
    let mut len = [0u8; 8];
    if file_len < 8 {
        return Err(LoraError::Truncated {
            file: file_name,
            what: "header length".into(),
            expected: 8,
            found: file_len,
        });
    }
    f.read_exact(&mut len).map_err(io)?;
    let n = u64::from_le_bytes(len);
    if n > (file_len - 8) as u64 {
        return Err(LoraError::Truncated {
            file: file_name,
            what: "header".into(),
            expected: n.saturating_add(8).min(usize::MAX as u64) as usize,
            found: file_len,
        });
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let data_len = file_len - 8 - n as usize;
    let meta: Metadata = serde_json::from_slice(&header).map_err(|e| {
        map_error(
            &file_name,
            SafeTensorError::InvalidHeaderDeserialization(e),
            Some(&header),
            data_len,
        )
    })?;
    if meta.data_len() != data_len {
        return Err(map_error(
            &file_name,
            SafeTensorError::MetadataIncompleteBuffer,
            Some(&header),
            data_len,
        ));
    }
    Ok(meta
        .offset_keys()
        .into_iter()
        .filter_map(|k| {
            let info = meta.info(&k)?;
            let m = TensorMeta {
                dtype: dtype_name(info.dtype),
                shape: info.shape.clone(),
            };
            Some((k, m))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_is_found_in_every_dtype() {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let t = HostTensor::from_f32(dt, vec![3], &[1.0, f32::NAN, 2.0]);
            assert_eq!(t.first_non_finite().map(|p| p.0), Some(1), "{dt}");
            let t = HostTensor::from_f32(dt, vec![2], &[f32::NEG_INFINITY, 2.0]);
            assert_eq!(t.first_non_finite().map(|p| p.0), Some(0), "{dt}");
            let t = HostTensor::from_f32(dt, vec![2], &[65504.0, -1.0]);
            assert_eq!(t.first_non_finite(), None, "{dt}");
        }
    }

    #[test]
    fn le_bytes_round_trip() {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let t = HostTensor::from_f32(dt, vec![2, 2], &[1.0, -2.0, 0.5, 4.0]);
            let back = HostTensor::from_le_bytes(dt, vec![2, 2], &t.to_le_bytes());
            assert_eq!(back, t);
        }
    }
}
