//! GGUF files, llama.cpp's model format: the header, the metadata, the tensor directory, and
//! tensors dequantized to f32 (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K:
//! what llama.cpp's Q4_K_M and Q5_K_M files hold too), so a llama-family GGUF model
//! (SmolLM2, Llama, Mistral …) becomes a [`Model`] with the names, shapes and Q/K layout of its
//! Hugging Face checkpoint.
//!
//! The layout follows the GGUF specification (version 2 and 3): little-endian; a `GGUF` magic,
//! the version, the tensor and key/value counts; the key/values (typed, arrays included); the
//! tensor infos (name, dimensions innermost first, type, offset); the tensor data from the next
//! multiple of `general.alignment` (default 32). Every count, length and offset is checked
//! against the file before it is used, so a truncated or hostile file is a
//! [`ModelError::InvalidConfig`] naming what is wrong, never a panic or a huge allocation.
//!
//! llama.cpp stores `attn_q` and `attn_k` with the rows of each head permuted for its rotary
//! embedding; loading undoes that (as transformers' GGUF loader does), so the logits equal
//! those of the Hugging Face model dequantized from the same file.
//!
//! Held as [`WeightFormat::Stored`] (or `int8-g32`), a projection whose blocks of 32 values
//! are `scale · q + min` with small integers `q` is not dequantized: Q8_0, Q4_0 and Q5_0
//! blocks (an f16 scale and 32 integers) are the SDK's int8 weights in groups of 32, and
//! Q4_1, Q5_1, Q4_K and Q5_K ones the same with a minimum per group (the k-quants' 6-bit
//! scales and minimums of each 32 multiplied out by the super-block's `d` and `dmin`), served
//! by the int8 kernels with their exact values, one byte per value where the file packs four
//! or five bits. Q6_K (a scale per 16 values) is dequantized, and requantised for `int8-g32`.
//! Tensors are decoded one at a time as the model takes them, each one's pages of the mapped
//! file released after, so loading peaks at what the model holds plus one tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use openledger_core::DType;
use serde_json::{Value, json};

use super::{BaseWeight, Int8Weight, Model, ModelConfig, ModelError, Tokenizer, WeightFormat};
use crate::adapter::tensors::HostTensor;
use crate::error::LoraError;

const MAGIC: &[u8; 4] = b"GGUF";
/// Most key/values or tensors a file may declare (real files hold hundreds).
const MAX_ENTRIES: u64 = 1 << 20;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float32`.
    F32(f32),
    /// `float64`.
    F64(f64),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values of one type.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(x) => Some(x.into()),
            Self::U16(x) => Some(x.into()),
            Self::U32(x) => Some(x.into()),
            Self::U64(x) => Some(x),
            Self::I8(x) => u64::try_from(x).ok(),
            Self::I16(x) => u64::try_from(x).ok(),
            Self::I32(x) => u64::try_from(x).ok(),
            Self::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(x) => Some(x.into()),
            Self::F64(x) => Some(x),
            _ => self.as_u64().map(|x| x as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A tensor's element type (the ggml types this reader dequantizes, and the others by number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)] // ggml's names
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: an f16 scale and 32 signed 4-bit values (offset 8).
    Q4_0,
    /// Blocks of 32: an f16 scale, an f16 minimum and 32 unsigned 4-bit values.
    Q4_1,
    /// Blocks of 32: an f16 scale, 32 high bits and 32 low 4-bit values (5-bit, offset 16).
    Q5_0,
    /// Blocks of 32: an f16 scale, an f16 minimum, 32 high bits and 32 low 4-bit values.
    Q5_1,
    /// Blocks of 32: an f16 scale and 32 signed bytes.
    Q8_0,
    /// Super-blocks of 256: f16 `d` and `dmin`, eight 6-bit scales and minimums, 256 4-bit
    /// values; each 32 is `d·scale·q − dmin·min`.
    Q4_K,
    /// [`GgmlType::Q4_K`] with a fifth bit per value.
    Q5_K,
    /// Super-blocks of 256: 6-bit values (offset 32), a signed 8-bit scale per 16 and an f16
    /// `d`.
    Q6_K,
    /// Another ggml type (Q2_K, Q3_K, the i-quants …): listed, not dequantized.
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// Elements per block and bytes per block.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::BF16 => Some((1, 2)),
            Self::Q4_0 => Some((32, 18)),
            Self::Q4_1 => Some((32, 20)),
            Self::Q5_0 => Some((32, 22)),
            Self::Q5_1 => Some((32, 24)),
            Self::Q8_0 => Some((32, 34)),
            Self::Q4_K => Some((256, 144)),
            Self::Q5_K => Some((256, 176)),
            Self::Q6_K => Some((256, 210)),
            Self::Other(_) => None,
        }
    }

    /// Whether each block of 32 values is `scale · q + min` with `q` a small integer: the
    /// types held as int8 weights in groups of 32 without dequantizing ([`Self::blocks_of_32`]).
    fn in_blocks_of_32(self) -> bool {
        matches!(
            self,
            Self::Q4_0
                | Self::Q4_1
                | Self::Q5_0
                | Self::Q5_1
                | Self::Q8_0
                | Self::Q4_K
                | Self::Q5_K
        )
    }

    /// Whether [`Self::blocks_of_32`] gives minimums.
    fn has_mins(self) -> bool {
        matches!(self, Self::Q4_1 | Self::Q5_1 | Self::Q4_K | Self::Q5_K)
    }

    /// Calls `f(q, scale, min)` for each block of 32 values of `data` (whole blocks of this
    /// type), whose values are `scale · q + min` (`min` absent for the symmetric types), in
    /// the order llama.cpp and the `gguf` package dequantize them; `false` (and no call) for a
    /// type not in [`Self::in_blocks_of_32`].
    fn blocks_of_32(self, data: &[u8], mut f: impl FnMut(&[i8; 32], f32, Option<f32>)) -> bool {
        let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        let mut q = [0i8; 32];
        // Low nibbles give values 0..16, high nibbles 16..32; `high` the fifth bits.
        let nibbles = |q: &mut [i8; 32], qs: &[u8], high: u32, offset: i8| {
            for i in 0..16 {
                let bit = |j: usize| (((high >> j) & 1) << 4) as u8;
                q[i] = ((qs[i] & 0xf) | bit(i)) as i8 - offset;
                q[i + 16] = ((qs[i] >> 4) | bit(i + 16)) as i8 - offset;
            }
        };
        match self {
            Self::Q8_0 => data.chunks_exact(34).for_each(|b| {
                q.iter_mut().zip(&b[2..]).for_each(|(d, &v)| *d = v as i8);
                f(&q, half(b), None)
            }),
            Self::Q4_0 => data.chunks_exact(18).for_each(|b| {
                nibbles(&mut q, &b[2..], 0, 8);
                f(&q, half(b), None)
            }),
            Self::Q4_1 => data.chunks_exact(20).for_each(|b| {
                nibbles(&mut q, &b[4..], 0, 0);
                f(&q, half(b), Some(half(&b[2..])))
            }),
            Self::Q5_0 => data.chunks_exact(22).for_each(|b| {
                let high = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                nibbles(&mut q, &b[6..], high, 16);
                f(&q, half(b), None)
            }),
            Self::Q5_1 => data.chunks_exact(24).for_each(|b| {
                let high = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                nibbles(&mut q, &b[8..], high, 0);
                f(&q, half(b), Some(half(&b[2..])))
            }),
            Self::Q4_K | Self::Q5_K => {
                let size = if self == Self::Q4_K { 144 } else { 176 };
                for b in data.chunks_exact(size) {
                    let (d, dmin, scales) = (half(b), half(&b[2..]), &b[4..16]);
                    let (qh, qs) = if self == Self::Q4_K {
                        (None, &b[16..144])
                    } else {
                        (Some(&b[16..48]), &b[48..176])
                    };
                    for j in 0..8 {
                        let (sc, m) = k_scale_min(scales, j);
                        // Sub-blocks 2c and 2c + 1 are the low and high nibbles of 32 bytes.
                        let bytes = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                        for (i, v) in q.iter_mut().enumerate() {
                            let low = if j % 2 == 0 {
                                bytes[i] & 0xf
                            } else {
                                bytes[i] >> 4
                            };
                            let high = qh.map_or(0, |h| ((h[i] >> j) & 1) << 4);
                            *v = (low | high) as i8;
                        }
                        f(&q, d * f32::from(sc), Some(-(dmin * f32::from(m))));
                    }
                }
            }
            _ => return false,
        }
        true
    }
}

/// Scale and minimum `j` (0..8) of a Q4_K / Q5_K super-block's twelve bytes of 6-bit values
/// (llama.cpp's `get_scale_min_k4`).
fn k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// Its name (`blk.0.attn_q.weight` …).
    pub name: String,
    /// Its dimensions, innermost first (ggml's order: the reverse of the row-major shape).
    pub dims: Vec<u64>,
    /// Its element type.
    pub ggml_type: GgmlType,
    /// Where its data starts, from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// The row-major shape (outermost first), as PyTorch would hold it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Its number of elements.
    pub fn len(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }

    /// Whether it has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A GGUF file, memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn bad(&self, reason: String) -> ModelError {
        ModelError::InvalidConfig {
            file: self.path.display().to_string(),
            reason,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.bad(format!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                self.at,
                self.bytes.len()
            )));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).map_err(|_| self.bad(format!("{what}: length {n}")))?;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.bad(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<GgufValue, ModelError> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(what)?[0]),
            1 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.bad(format!("{what}: bool byte {b}"))),
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(self.bad(format!("{what}: arrays nested too deep")));
                }
                let item = self.u32(what)?;
                let n = self.u64(what)?;
                // Every item takes at least one byte: a count past the rest of the file is a lie.
                if n > (self.bytes.len() - self.at) as u64 {
                    return Err(self.bad(format!(
                        "{what}: an array of {n} items cannot fit the {} bytes left",
                        self.bytes.len() - self.at
                    )));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(item, what, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(self.bad(format!("{what}: unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Opens and parses `path` (the tensor data is read only when asked for).
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and lives as long as `self`; a file changed underneath
        // gives wrong numbers, not undefined behaviour of this reader (every read is checked
        // against the map's length, fixed at mapping time).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let mut c = Cursor {
            bytes: &map,
            at: 0,
            path,
        };
        if c.take(4, "magic")? != MAGIC {
            return Err(c.bad("not a GGUF file (no GGUF magic)".into()));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(c.bad(format!("GGUF version {version} (2 and 3 are read)")));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("key/value count")?;
        if n_tensors > MAX_ENTRIES || n_kv > MAX_ENTRIES {
            return Err(c.bad(format!(
                "{n_tensors} tensors and {n_kv} key/values: too many"
            )));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("key {i}"))?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor {i} name"))?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(c.bad(format!("tensor {name}: {n_dims} dimensions")));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&name))
                .collect::<Result<Vec<u64>, _>>()?;
            let ggml_type = GgmlType::from_id(c.u32(&name)?);
            let offset = c.u64(&name)?;
            tensors.push(GgufTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let align = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|&a| a > 0 && a.is_power_of_two() && a <= 1 << 16)
                .ok_or_else(|| c.bad(format!("general.alignment {v:?}")))?
                as usize,
        };
        let data_start = c.at.next_multiple_of(align);
        let me = Self {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
            data_start,
        };
        for t in &me.tensors {
            me.data_range(t)?;
        }
        Ok(me)
    }

    fn bad(&self, reason: String) -> ModelError {
        ModelError::InvalidConfig {
            file: self.path.display().to_string(),
            reason,
        }
    }

    /// The file's GGUF version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata key and value.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The directory entry of `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of `t`, checked to lie inside the file.
    fn data_range(&self, t: &GgufTensorInfo) -> Result<&[u8], ModelError> {
        let n = t
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= 1 << 40)
            .ok_or_else(|| {
                self.bad(format!(
                    "tensor {}: dimensions {:?} overflow",
                    t.name, t.dims
                ))
            })?;
        let Some((per, bytes)) = t.ggml_type.block() else {
            // Not dequantized: its size is unknown here, only its start is checked.
            return if self.data_start as u64 + t.offset <= self.map.len() as u64 {
                Ok(&[])
            } else {
                Err(self.bad(format!(
                    "tensor {}: offset past the end of the file",
                    t.name
                )))
            };
        };
        if !t.dims[0].is_multiple_of(per as u64) {
            return Err(self.bad(format!(
                "tensor {}: {} elements per row is not a multiple of the block of {per}",
                t.name, t.dims[0]
            )));
        }
        let size = n / per as u64 * bytes as u64;
        let start = self.data_start as u64 + t.offset;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= self.map.len() as u64)
            .ok_or_else(|| {
                self.bad(format!(
                    "tensor {}: {size} bytes at offset {start} run past the end of the file ({} bytes)",
                    t.name,
                    self.map.len()
                ))
            })?;
        Ok(&self.map[start as usize..end as usize])
    }

    /// Drops the pages of `t`'s bytes from this process's resident memory (they stay in the
    /// page cache, and are read again if asked for): a model built from the file then peaks at
    /// what it holds plus one tensor, not plus the whole file.
    fn release(&self, t: &GgufTensorInfo) {
        #[cfg(unix)]
        if let Ok(bytes) = self.data_range(t) {
            let offset = bytes.as_ptr() as usize - self.map.as_ptr() as usize;
            // SAFETY: the map is a read-only shared mapping of a file: MADV_DONTNEED drops
            // pages that later reads fault in again from the file, unchanged; no reference into
            // the map is written through. A failure only leaves the pages resident.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    offset,
                    bytes.len(),
                )
            };
        }
        #[cfg(not(unix))]
        let _ = t;
    }

    /// The tensor `t` (`[rows, cols]`, of a type [`GgmlType::in_blocks_of_32`]) as int8
    /// weights in groups of 32: its integers, scales and minimums as stored (rows unpermuted
    /// for `heads > 0`), so the values are the dequantized ones exactly. A Q8_0 block holding
    /// -128 (which llama.cpp's quantiser never writes, and the int8 kernels do not take) is
    /// requantised from its values instead; a scale or minimum that is not finite is an error.
    fn int8_weight(&self, t: &GgufTensorInfo, heads: usize) -> Result<BaseWeight, ModelError> {
        let shape = t.shape();
        let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
        let data = self.data_range(t)?;
        let mut q = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(rows * cols / 32);
        let mut mins = Vec::with_capacity(if t.ggml_type.has_mins() {
            rows * cols / 32
        } else {
            0
        });
        let mut bad = None;
        let mut minus_128 = false;
        let decoded = t.ggml_type.blocks_of_32(data, |b, scale, min| {
            if bad.is_none() {
                bad = [Some(scale), min]
                    .into_iter()
                    .flatten()
                    .find(|v| !v.is_finite())
                    .map(|v| (scales.len() * 32, v));
            }
            minus_128 |= b.contains(&i8::MIN);
            q.extend_from_slice(b);
            scales.push(scale);
            mins.extend(min);
        });
        debug_assert!(decoded, "{:?} is not in blocks of 32", t.ggml_type);
        if let Some((index, value)) = bad {
            return Err(ModelError::Weights(LoraError::NonFinite {
                key: t.name.clone(),
                index,
                value,
            }));
        }
        if minus_128 {
            drop(q);
            let values = unpermute(&self.dequantize(t)?, rows, cols, heads);
            self.release(t);
            return Ok(BaseWeight::from_f32(
                values,
                rows,
                cols,
                WeightFormat::Int8 { group: 32 },
            ));
        }
        self.release(t);
        let q = unpermute(&q, rows, cols, heads);
        let scales = unpermute(&scales, rows, cols / 32, heads);
        let mins = (!mins.is_empty()).then(|| unpermute(&mins, rows, cols / 32, heads));
        Ok(BaseWeight::Int8(Int8Weight::from_parts(
            q, scales, mins, 32, cols,
        )))
    }

    /// The tensor `t` as f32 values, row-major in [`GgufTensorInfo::shape`].
    pub fn dequantize(&self, t: &GgufTensorInfo) -> Result<Vec<f32>, ModelError> {
        let data = self.data_range(t)?;
        let n = t.len();
        let mut out = Vec::with_capacity(n);
        let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        match t.ggml_type {
            GgmlType::F32 => out.extend(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            GgmlType::F16 => out.extend(data.chunks_exact(2).map(half)),
            GgmlType::BF16 => out.extend(
                data.chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            GgmlType::Q6_K => {
                for b in data.chunks_exact(210) {
                    let (ql, qh, scales, d) =
                        (&b[..128], &b[128..192], &b[192..208], half(&b[208..]));
                    // Value e: half h = e / 128, quarter s, index i; four bits from `ql` (low
                    // nibbles for quarters 0 and 1), two from `qh`; one scale per 16 values.
                    for e in 0..256 {
                        let (h, s, i) = (e / 128, (e % 128) / 32, e % 32);
                        let byte = ql[h * 64 + (s % 2) * 32 + i];
                        let low = if s < 2 { byte & 0xf } else { byte >> 4 };
                        let high = (qh[h * 32 + i] >> (2 * s)) & 3;
                        let q = i32::from(low | (high << 4)) - 32;
                        let scale = d * f32::from(scales[e / 16] as i8);
                        out.push(scale * q as f32);
                    }
                }
            }
            ty if ty.in_blocks_of_32() => {
                ty.blocks_of_32(data, |q, scale, min| match min {
                    Some(m) => out.extend(q.iter().map(|&v| scale * f32::from(v) + m)),
                    None => out.extend(q.iter().map(|&v| scale * f32::from(v))),
                });
            }
            ty => {
                let what = match ty {
                    GgmlType::Other(id) => format!("ggml type {id}"),
                    known => format!("{known:?}"),
                };
                return Err(ModelError::Unsupported {
                    what: format!("GGUF tensor {} of {what}", t.name),
                });
            }
        }
        debug_assert_eq!(out.len(), n);
        Ok(out)
    }

    fn meta_u64(&self, key: &str) -> Result<u64, ModelError> {
        self.metadata
            .get(key)
            .and_then(GgufValue::as_u64)
            .ok_or_else(|| self.bad(format!("metadata {key} is missing or not an integer")))
    }

    /// The Hugging Face `config.json` of a llama-family model (`general.architecture` llama).
    pub fn llama_config_json(&self) -> Result<Value, ModelError> {
        let arch = self
            .metadata
            .get("general.architecture")
            .and_then(GgufValue::as_str)
            .unwrap_or_default();
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture {
                model_type: arch.to_owned(),
                architectures: vec![format!("GGUF {arch}")],
            });
        }
        let k = |s: &str| format!("llama.{s}");
        let heads = self.meta_u64(&k("attention.head_count"))?;
        let hidden = self.meta_u64(&k("embedding_length"))?;
        let vocab = match self
            .metadata
            .get(&k("vocab_size"))
            .and_then(GgufValue::as_u64)
        {
            Some(v) => v,
            None => match self.metadata.get("tokenizer.ggml.tokens") {
                Some(GgufValue::Array(t)) => t.len() as u64,
                _ => return Err(self.bad("no vocabulary size".into())),
            },
        };
        let head_dim = match self.metadata.get(&k("rope.dimension_count")) {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| self.bad("rope.dimension_count".into()))?,
            None => hidden / heads.max(1),
        };
        let f = |key: &str, default: f64| {
            self.metadata
                .get(&k(key))
                .and_then(GgufValue::as_f64)
                .unwrap_or(default)
        };
        Ok(json!({
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": self.meta_u64(&k("feed_forward_length"))?,
            "num_hidden_layers": self.meta_u64(&k("block_count"))?,
            "num_attention_heads": heads,
            "num_key_value_heads": self.metadata.get(&k("attention.head_count_kv")).and_then(GgufValue::as_u64).unwrap_or(heads),
            "head_dim": head_dim,
            "rms_norm_eps": f("attention.layer_norm_rms_epsilon", 1e-5),
            "rope_theta": f("rope.freq_base", 10_000.0),
            "max_position_embeddings": self.metadata.get(&k("context_length")).and_then(GgufValue::as_u64).unwrap_or(2048),
            "tie_word_embeddings": self.tensor("output.weight").is_none(),
            "bos_token_id": self.metadata.get("tokenizer.ggml.bos_token_id").and_then(GgufValue::as_u64),
            "eos_token_id": self.metadata.get("tokenizer.ggml.eos_token_id").and_then(GgufValue::as_u64),
            "torch_dtype": "float32",
        }))
    }

    /// The model's configuration (what [`llama_config_json`](Self::llama_config_json) writes).
    pub fn model_config(&self) -> Result<ModelConfig, ModelError> {
        ModelConfig::from_value(&self.llama_config_json()?)
    }

    /// The tensor the Hugging Face model names `hf` (`model.layers.0.self_attn.q_proj.weight`):
    /// its GGUF type, shape and values dequantized to f32, llama.cpp's rotary permutation of Q
    /// and K undone, as [`to_model`](Self::to_model) reads it; `None` when the file holds no
    /// such tensor. For a loader that takes tensors one at a time (a GPU's): the file's pages
    /// of the tensor are released once read.
    #[allow(clippy::type_complexity)]
    pub fn hf_tensor_f32(
        &self,
        hf: &str,
    ) -> Result<Option<(GgmlType, Vec<usize>, Vec<f32>)>, ModelError> {
        let Some(t) = self
            .tensors
            .iter()
            .find(|t| hf_name(&t.name).as_deref() == Some(hf))
        else {
            return Ok(None);
        };
        // Heads of the rotary permutation to undo (0: none); the configuration is read only
        // for Q and K.
        let permuted = if t.name.ends_with("attn_q.weight") {
            self.model_config()?.num_heads
        } else if t.name.ends_with("attn_k.weight") {
            self.model_config()?.num_kv_heads
        } else {
            0
        };
        let data = self.dequantize(t)?;
        self.release(t);
        let shape = t.shape();
        let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
        Ok(Some((
            t.ggml_type,
            shape,
            unpermute(&data, rows, cols, permuted),
        )))
    }

    /// The model: every tensor dequantized to f32 under its Hugging Face name, Q and K
    /// un-permuted. `progress` sees each tensor as `(done, total)`.
    pub fn to_model(&self, progress: &mut dyn FnMut(usize, usize)) -> Result<Model, ModelError> {
        self.to_model_with_format(WeightFormat::F32, progress)
    }

    /// [`GgufFile::to_model`] with the projections held as `format` asks: with
    /// [`WeightFormat::Stored`] F16 and BF16 tensors stay 16-bit, and those in blocks of 32
    /// (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q4_K, Q5_K) int8 in groups of 32 with their scales and
    /// minimums (as with `int8-g32`), Q6_K is dequantized to f32; with [`WeightFormat::Int8`]
    /// every other projection is requantised.
    pub fn to_model_with_format(
        &self,
        format: WeightFormat,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Model, ModelError> {
        let cfg_json = self.llama_config_json()?;
        let config = ModelConfig::from_value(&cfg_json)?;
        let heads = config.num_heads;
        let kv_heads = config.num_kv_heads;
        // The tensors are decoded one at a time as the model takes them (from a second map of
        // the same file, shared by the decoders), so loading peaks at what the model holds plus
        // one tensor.
        let file = std::rc::Rc::new(Self::open(&self.path)?);
        let total = self.tensors.len();
        let mut headers = Vec::new();
        let mut tensors: BTreeMap<String, crate::model::load::Deferred> = BTreeMap::new();
        for (i, t) in self.tensors.iter().enumerate() {
            let Some(name) = hf_name(&t.name) else {
                // rope_freqs and the like: not weights of the HF model.
                continue;
            };
            // F16 and BF16 values come back exactly from f32: kept 16-bit when asked.
            let dtype = match (format, t.ggml_type) {
                (WeightFormat::Stored, GgmlType::F16) => DType::F16,
                (WeightFormat::Stored, GgmlType::BF16) => DType::BF16,
                _ => DType::F32,
            };
            headers.push((
                name.clone(),
                crate::adapter::tensors::TensorMeta {
                    dtype: format!("{dtype:?}").to_uppercase(),
                    shape: t.shape(),
                },
            ));
            // Heads of the rotary permutation to undo (0: none).
            let permuted = if t.name.ends_with("attn_q.weight") {
                heads
            } else if t.name.ends_with("attn_k.weight") {
                kv_heads
            } else {
                0
            };
            let decode: crate::model::load::DecodeTensor = {
                let file = file.clone();
                Box::new(move || {
                    let t = &file.tensors[i];
                    let data = file.dequantize(t)?;
                    file.release(t);
                    let shape = t.shape();
                    let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
                    let data = unpermute(&data, rows, cols, permuted);
                    Ok(HostTensor::from_f32(dtype, shape, &data))
                })
            };
            // Q8_0, Q4_0, Q5_0 blocks (an f16 scale and 32 small integers) are int8 weights in
            // groups of 32, and Q4_1, Q5_1, Q4_K, Q5_K ones with a minimum per group: kept as
            // they are for `stored` and `int8-g32`.
            let direct = (t.ggml_type.in_blocks_of_32() && t.dims.len() == 2).then(|| {
                let applies: fn(WeightFormat) -> bool =
                    |f| matches!(f, WeightFormat::Stored | WeightFormat::Int8 { group: 32 });
                let file = file.clone();
                let build: crate::model::load::DirectWeight =
                    Box::new(move || file.int8_weight(&file.tensors[i], permuted));
                (applies, build)
            });
            tensors.insert(
                name,
                crate::model::load::Deferred {
                    shape: t.shape(),
                    decode,
                    direct,
                },
            );
        }
        Model::from_deferred(config, headers, tensors, format, &mut |p| {
            if let crate::model::LoadProgress::LayerBuilt {
                done,
                total: layers,
            } = p
            {
                progress(done * total / layers.max(1), total);
            }
        })
    }
}

/// The Hugging Face name of a llama GGUF tensor (`None`: not a weight of the HF model).
fn hf_name(gguf: &str) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_owned());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's rotary permutation of a `[heads·d, cols]` projection (`rows` rows of
/// `cols` values): within each head, rows `(2i, 2i+1)` return to `(i, i + d/2)`. `heads = 0`:
/// no permutation.
fn unpermute<T: Copy + Default>(w: &[T], rows: usize, cols: usize, heads: usize) -> Vec<T> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return w.to_vec();
    }
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![T::default(); w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                // GGUF row h·d + 2i + j holds HF row h·d + j·half + i.
                let src = (h * d + 2 * i + j) * cols;
                let dst = (h * d + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

impl GgufFile {
    fn strings(&self, key: &str) -> Result<Vec<&str>, ModelError> {
        match self.metadata.get(key) {
            Some(GgufValue::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        self.bad(format!("{key} holds a value that is not a string"))
                    })
                })
                .collect(),
            _ => Err(self.bad(format!("metadata {key} is missing or not an array"))),
        }
    }

    /// The `tokenizer.json` of the file's byte-level BPE tokenizer (`tokenizer.ggml.model`
    /// `gpt2`): its tokens and merges, control and user-defined tokens as special added tokens,
    /// GPT-2's byte-level pre-tokenizer and decoder, and the BOS token prepended when
    /// `tokenizer.ggml.add_bos_token` says so.
    pub fn tokenizer_json(&self) -> Result<String, ModelError> {
        let model = self
            .metadata
            .get("tokenizer.ggml.model")
            .and_then(GgufValue::as_str)
            .unwrap_or_default();
        if model != "gpt2" {
            return Err(ModelError::Unsupported {
                what: format!("GGUF tokenizer model {model:?} (only gpt2 byte-level BPE is read)"),
            });
        }
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let merges = self.strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = match self.metadata.get("tokenizer.ggml.token_type") {
            Some(GgufValue::Array(t)) => t.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (id, tok) in tokens.iter().enumerate() {
            vocab.insert((*tok).to_owned(), json!(id));
            // 3: control, 4: user-defined.
            if matches!(types.get(id), Some(3 | 4)) {
                added.push(json!({"id": id, "content": tok, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
            }
        }
        let flag = |k: &str| matches!(self.metadata.get(k), Some(GgufValue::Bool(true)));
        let bos = self
            .metadata
            .get("tokenizer.ggml.bos_token_id")
            .and_then(GgufValue::as_u64)
            .and_then(|id| tokens.get(id as usize).map(|t| (id, *t)));
        let post = match bos {
            Some((id, t)) if flag("tokenizer.ggml.add_bos_token") => json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {t: {"id": t, "ids": [id], "tokens": [t]}}
            }),
            _ => Value::Null,
        };
        let v = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": flag("tokenizer.ggml.add_space_prefix"),
                              "trim_offsets": true, "use_regex": true},
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        Ok(v.to_string())
    }

    /// The file's tokenizer ([`tokenizer_json`](Self::tokenizer_json)).
    pub fn tokenizer(&self) -> Result<Tokenizer, ModelError> {
        Tokenizer::from_bytes(self.tokenizer_json()?.as_bytes())
    }

    /// The chat template the file carries (`tokenizer.chat_template`), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.metadata
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)
    }

    /// The end-of-sequence token ids the file names (`tokenizer.ggml.eos_token_id`): where
    /// generation stops by default.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(GgufValue::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .into_iter()
            .collect()
    }

    /// The text of special token `key` (`tokenizer.ggml.bos_token_id` …), if the file names one.
    pub fn special_token(&self, key: &str) -> Option<String> {
        let id = self.metadata.get(key)?.as_u64()?;
        match self.metadata.get("tokenizer.ggml.tokens")? {
            GgufValue::Array(t) => t.get(id as usize)?.as_str().map(str::to_owned),
            _ => None,
        }
    }
}

impl Model {
    /// Loads a llama-family GGUF file (see [the module](self)).
    pub fn from_gguf(path: &Path) -> Result<Self, ModelError> {
        GgufFile::open(path)?.to_model(&mut |_, _| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF file of the given key/values and one Q4_1 tensor.
    fn tiny(version: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&2u64.to_le_bytes()); // key/values
        let s = |b: &mut Vec<u8>, x: &str| {
            b.extend_from_slice(&(x.len() as u64).to_le_bytes());
            b.extend_from_slice(x.as_bytes());
        };
        s(&mut b, "general.name");
        b.extend_from_slice(&8u32.to_le_bytes());
        s(&mut b, "tiny");
        s(&mut b, "list");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&9u32.to_le_bytes());
        s(&mut b, "t");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&32u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes()); // Q4_1
        b.extend_from_slice(&0u64.to_le_bytes());
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b.extend((0u8..16).map(|i| i | ((15 - i) << 4)));
        b
    }

    #[test]
    fn a_small_file_reads_back_and_q4_1_dequantizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        std::fs::write(&p, tiny(3)).unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.metadata()["general.name"].as_str(), Some("tiny"));
        assert_eq!(
            g.metadata()["list"],
            GgufValue::Array(vec![GgufValue::U32(7), GgufValue::U32(9)])
        );
        let t = g.tensor("t").unwrap();
        assert_eq!(t.shape(), [1, 32]);
        let v = g.dequantize(t).unwrap();
        // Low nibbles first (0..16), then high nibbles (15..0): x = q·0.5 − 1.
        assert_eq!(v[0], -1.0);
        assert_eq!(v[15], 6.5);
        assert_eq!(v[16], 6.5);
        assert_eq!(v[31], -1.0);
    }

    #[test]
    fn truncated_and_hostile_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        let good = tiny(3);
        for cut in [0, 3, 8, 20, 40, good.len() - 1] {
            std::fs::write(&p, &good[..cut]).unwrap();
            assert!(GgufFile::open(&p).is_err(), "cut at {cut}");
        }
        std::fs::write(&p, tiny(9)).unwrap();
        assert!(GgufFile::open(&p).is_err());
        // A huge array count, a huge string length.
        let mut bad = good.clone();
        let at = 4 + 4 + 8 + 8 + 8 + 12 + 4 + 8 + 4 + 8 + 4 + 4;
        bad[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&p, &bad).unwrap();
        assert!(GgufFile::open(&p).is_err());
        let mut bad = good;
        bad[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
        std::fs::write(&p, &bad).unwrap();
        assert!(GgufFile::open(&p).is_err());
    }

    /// A one-layer llama GGUF file (hidden 64, 2 heads of 32, 1 key-value head, MLP 64,
    /// vocabulary 32, tied head): f32 embeddings and norms, every projection Q8_0 from a seeded
    /// generator; `poke(name, bytes)` may alter a projection's blocks.
    fn q8_0_llama(poke: &dyn Fn(&str, &mut [u8])) -> Vec<u8> {
        quantised_llama(8, 64, poke)
    }

    /// [`q8_0_llama`] with projections of ggml type `ty` (seeded bytes, their f16 scales and
    /// minimums set to sizes llama.cpp writes) and hidden and MLP sizes `hidden` (2 heads of
    /// `hidden / 2`).
    fn quantised_llama(ty: u32, hidden: usize, poke: &dyn Fn(&str, &mut [u8])) -> Vec<u8> {
        let s = |b: &mut Vec<u8>, x: &str| {
            b.extend_from_slice(&(x.len() as u64).to_le_bytes());
            b.extend_from_slice(x.as_bytes());
        };
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let f32s = |n: usize, next: &mut dyn FnMut() -> u64, scale: f32| -> Vec<u8> {
            (0..n)
                .flat_map(|_| {
                    let v = ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale;
                    v.to_le_bytes()
                })
                .collect()
        };
        let blocks = |n: usize, next: &mut dyn FnMut() -> u64| -> Vec<u8> {
            let mut b = Vec::new();
            let ggml = GgmlType::from_id(ty);
            let (per, size) = ggml.block().unwrap();
            let half = |v: f32| f16::from_f32(v).to_le_bytes();
            for _ in 0..n / per {
                let d = 0.002 + (next() % 1000) as f32 * 2e-5;
                if ggml == GgmlType::Q8_0 {
                    b.extend_from_slice(&half(d));
                    b.extend((0..32).map(|_| ((next() % 255) as i32 - 127) as i8 as u8));
                    continue;
                }
                let mut block: Vec<u8> = (0..size).map(|_| next() as u8).collect();
                match ggml {
                    // 4- and 5-bit values about 8 or 16 steps above the minimum: centred.
                    GgmlType::Q4_1 => block[2..4].copy_from_slice(&half(-8.0 * d)),
                    GgmlType::Q5_1 => block[2..4].copy_from_slice(&half(-16.0 * d)),
                    // Each sub-block's 6-bit minimum equal to its scale, and `dmin` 7.5 (15.5)
                    // times `d`: the values centred, as llama.cpp's quantiser leaves them.
                    GgmlType::Q4_K | GgmlType::Q5_K => {
                        let top = if ggml == GgmlType::Q4_K { 7.5 } else { 15.5 };
                        block[..2].copy_from_slice(&half(d / 32.0));
                        block[2..4].copy_from_slice(&half(d / 32.0 * top));
                        let (sc, rest) = block[4..16].split_at_mut(4);
                        rest[..4].copy_from_slice(sc);
                        rest[4..]
                            .iter_mut()
                            .for_each(|v| *v = (*v & 0xf) | (*v << 4));
                    }
                    _ => {}
                }
                if !matches!(ggml, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K) {
                    block[..2].copy_from_slice(&half(d));
                } else if ggml == GgmlType::Q6_K {
                    block[208..].copy_from_slice(&half(d / 32.0));
                }
                b.extend(block);
            }
            b
        };
        let h = hidden as u64;
        let mut tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)> = vec![
            (
                "token_embd.weight".into(),
                vec![h, 32],
                0,
                f32s(hidden * 32, &mut next, 1.0),
            ),
            (
                "output_norm.weight".into(),
                vec![h],
                0,
                f32s(hidden, &mut next, 0.2),
            ),
            (
                "blk.0.attn_norm.weight".into(),
                vec![h],
                0,
                f32s(hidden, &mut next, 0.2),
            ),
            (
                "blk.0.ffn_norm.weight".into(),
                vec![h],
                0,
                f32s(hidden, &mut next, 0.2),
            ),
        ];
        for (name, rows) in [
            ("attn_q", h),
            ("attn_k", h / 2),
            ("attn_v", h / 2),
            ("attn_output", h),
            ("ffn_gate", h),
            ("ffn_up", h),
            ("ffn_down", h),
        ] {
            let name = format!("blk.0.{name}.weight");
            let mut bytes = blocks(hidden * rows as usize, &mut next);
            poke(&name, &mut bytes);
            tensors.push((name, vec![h, rows], ty, bytes));
        }
        let kv: [(&str, u32); 6] = [
            ("llama.block_count", 1),
            ("llama.embedding_length", hidden as u32),
            ("llama.attention.head_count", 2),
            ("llama.attention.head_count_kv", 1),
            ("llama.feed_forward_length", hidden as u32),
            ("llama.vocab_size", 32),
        ];
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(kv.len() as u64 + 1).to_le_bytes());
        s(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        s(&mut b, "llama");
        for (k, v) in kv {
            s(&mut b, k);
            b.extend_from_slice(&4u32.to_le_bytes());
            b.extend_from_slice(&v.to_le_bytes());
        }
        let mut offset = 0u64;
        for (name, dims, ty, bytes) in &tensors {
            s(&mut b, name);
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offset += (bytes.len() as u64).div_ceil(32) * 32;
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        for (_, _, _, bytes) in &tensors {
            b.extend_from_slice(bytes);
            while !b.len().is_multiple_of(32) {
                b.push(0);
            }
        }
        b
    }

    fn projections(m: &Model) -> Vec<&crate::model::Linear> {
        let l = &m.base_weights().layers[0];
        vec![&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
    }

    /// The file `bytes` (written as `name` in `dir`) loaded as `f32`, `stored` and `int8-g32`.
    fn three_formats(dir: &Path, name: &str, bytes: &[u8]) -> [Model; 3] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let g = GgufFile::open(&p).unwrap();
        [
            WeightFormat::F32,
            WeightFormat::Stored,
            WeightFormat::Int8 { group: 32 },
        ]
        .map(|f| g.to_model_with_format(f, &mut |_, _| {}).unwrap())
    }

    /// The logits of a fixed 7-token sequence.
    fn logits(m: &Model) -> Vec<f32> {
        let tokens = [3u32, 17, 5, 30, 11, 2, 9];
        m.forward(&[crate::model::SeqInput {
            adapter: None,
            tokens: &tokens,
        }])
        .unwrap()
        .remove(0)
    }

    /// `(largest |want − got|, standard deviation of want)`.
    fn gap_and_spread(want: &[f32], got: &[f32]) -> (f32, f32) {
        let mean = want.iter().sum::<f32>() / want.len() as f32;
        let std = (want.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / want.len() as f32).sqrt();
        let gap = want
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        (gap, std)
    }

    #[test]
    fn q8_0_projections_are_held_as_stored_int8() {
        let dir = tempfile::tempdir().unwrap();
        let [f32_model, stored, g32] =
            three_formats(dir.path(), "q8.gguf", &q8_0_llama(&|_, _| {}));
        for ((a, b), c) in projections(&f32_model)
            .into_iter()
            .zip(projections(&stored))
            .zip(projections(&g32))
        {
            assert_eq!(b.weight.dtype_name(), "int8", "{}", b.name);
            // The file's bytes times its scales: the dequantised (and unpermuted) values, exactly.
            let (n_in, n_out) = (a.in_features, a.out_features);
            let want = a.weight.to_f32_rows(n_in, n_out);
            assert_eq!(b.weight.to_f32_rows(n_in, n_out), want, "{}", b.name);
            assert_eq!(c.weight.to_f32_rows(n_in, n_out), want, "{}", c.name);
            assert_eq!(b.weight.bytes(), n_in * n_out + n_in * n_out / 32 * 4);
        }
        // Logits against the same weights in f32: on AVX2 the int8 projections quantise their
        // activations in blocks of 32 (a step of max|x| / 127), which moves this random
        // one-layer model's flat logits by up to 5 % of their spread (2.9 % measured; the
        // weights themselves are equal, above).
        let (gap, std) = gap_and_spread(&logits(&f32_model), &logits(&stored));
        assert!(gap <= 0.05 * std, "largest gap {gap}, logits' spread {std}");
        // The tied head follows the embeddings, f32 in this file: kept by `stored`, quantised
        // by `int8-g32`.
        assert_eq!(stored.base_weights().lm_head.weight.dtype_name(), "f32");
        assert_eq!(g32.base_weights().lm_head.weight.dtype_name(), "int8");
    }

    #[test]
    fn a_q8_0_block_of_minus_128_is_requantised_and_a_nan_scale_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q8.gguf");
        // -128 in the value proj's first block.
        std::fs::write(
            &p,
            q8_0_llama(&|name, b| {
                if name == "blk.0.attn_v.weight" {
                    b[2] = 0x80;
                }
            }),
        )
        .unwrap();
        let g = GgufFile::open(&p).unwrap();
        let f = g
            .to_model_with_format(WeightFormat::F32, &mut |_, _| {})
            .unwrap();
        let m = g
            .to_model_with_format(WeightFormat::Stored, &mut |_, _| {})
            .unwrap();
        let (a, b) = (&f.base_weights().layers[0].v, &m.base_weights().layers[0].v);
        assert_eq!(b.weight.dtype_name(), "int8");
        let (want, got) = (a.weight.to_f32_rows(64, 32), b.weight.to_f32_rows(64, 32));
        for (blk, (w, g)) in want.chunks(32).zip(got.chunks(32)).enumerate() {
            // Requantised: within half a step (max |w| / 127 / 2) of the file's values.
            let step = w.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (x, y) in w.iter().zip(g) {
                assert!(
                    (x - y).abs() <= step / 2.0 * 1.0001,
                    "block {blk}: {x} vs {y}"
                );
            }
        }
        // A NaN scale (f16 0x7e00) in the up proj.
        std::fs::write(
            &p,
            q8_0_llama(&|name, b| {
                if name == "blk.0.ffn_up.weight" {
                    b[34..36].copy_from_slice(&[0x00, 0x7e]);
                }
            }),
        )
        .unwrap();
        let g = GgufFile::open(&p).unwrap();
        for format in [
            WeightFormat::Stored,
            WeightFormat::F32,
            WeightFormat::Int8 { group: 0 },
        ] {
            let e = g.to_model_with_format(format, &mut |_, _| {}).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("up"), "{format}: {text}");
        }
    }

    /// Every quantised type decodes to the `gguf` package's values (llama.cpp's GGUF
    /// library; fixtures/gguf-quants, written by scripts/make_gguf_quant_fixture.py), exactly:
    /// the same f32 products and sums in the same order. Those in blocks of 32 are held as
    /// int8 weights with the same values.
    #[test]
    fn every_quantised_type_decodes_as_the_gguf_package_does() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gguf-quants");
        let g = GgufFile::open(&dir.join("quants.gguf")).unwrap();
        let bytes = std::fs::read(dir.join("dequantized.safetensors")).unwrap();
        let want = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let types = [
            ("q4_0", GgmlType::Q4_0),
            ("q4_1", GgmlType::Q4_1),
            ("q5_0", GgmlType::Q5_0),
            ("q5_1", GgmlType::Q5_1),
            ("q8_0", GgmlType::Q8_0),
            ("q4_k", GgmlType::Q4_K),
            ("q5_k", GgmlType::Q5_K),
            ("q6_k", GgmlType::Q6_K),
        ];
        for (name, ty) in types {
            let t = g.tensor(name).unwrap();
            assert_eq!(t.ggml_type, ty);
            let w = want.tensor(name).unwrap();
            assert_eq!(t.shape(), w.shape(), "{name}");
            let w: Vec<f32> = w
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let got = g.dequantize(t).unwrap();
            assert!(w.iter().any(|&v| v != 0.0), "{name}");
            for (i, (a, b)) in got.iter().zip(&w).enumerate() {
                assert!(a == b, "{name} value {i}: {a} vs the gguf package's {b}");
            }
            let (rows, cols) = (t.shape()[0], t.shape()[1]);
            if ty.in_blocks_of_32() {
                let held = g.int8_weight(t, 0).unwrap();
                assert_eq!(held.dtype_name(), "int8", "{name}");
                assert_eq!(held.to_f32_rows(cols, rows), got, "{name} as int8");
                let mins = if ty.has_mins() {
                    rows * cols / 32 * 4
                } else {
                    0
                };
                assert_eq!(held.bytes(), rows * cols + rows * cols / 32 * 4 + mins);
            }
        }
    }

    /// The projections of every type in blocks of 32 are held as int8 under `stored` and
    /// `int8-g32`, their values exactly the dequantized ones; Q6_K (a scale per 16) is
    /// dequantized for `stored` and requantised for `int8-g32`. The logits stay within 5 % of
    /// the spread of the f32 model's (the activations quantised in blocks of 32, as for Q8_0;
    /// measured: at most 1.8 % under `stored`, 4.7 % under `int8-g32`, which also quantises the
    /// f32 tied head and requantises Q6_K).
    #[test]
    fn quantised_projections_are_held_as_int8_with_their_minimums() {
        let dir = tempfile::tempdir().unwrap();
        for (ty, name) in [
            (2, "Q4_0"),
            (3, "Q4_1"),
            (6, "Q5_0"),
            (7, "Q5_1"),
            (12, "Q4_K"),
            (13, "Q5_K"),
            (14, "Q6_K"),
        ] {
            let [f32_model, stored, g32] = three_formats(
                dir.path(),
                &format!("{name}.gguf"),
                &quantised_llama(ty, 256, &|_, _| {}),
            );
            let direct = GgmlType::from_id(ty).in_blocks_of_32();
            for ((a, b), c) in projections(&f32_model)
                .into_iter()
                .zip(projections(&stored))
                .zip(projections(&g32))
            {
                let (n_in, n_out) = (a.in_features, a.out_features);
                let want = a.weight.to_f32_rows(n_in, n_out);
                assert_eq!(c.weight.dtype_name(), "int8", "{name} {}", c.name);
                if direct {
                    assert_eq!(b.weight.dtype_name(), "int8", "{name} {}", b.name);
                    assert_eq!(b.weight.to_f32_rows(n_in, n_out), want, "{name} {}", b.name);
                    assert_eq!(c.weight.to_f32_rows(n_in, n_out), want, "{name} {}", c.name);
                } else {
                    assert_eq!(b.weight.dtype_name(), "f32", "{name} {}", b.name);
                }
            }
            let want = logits(&f32_model);
            for (format, m) in [("stored", &stored), ("int8-g32", &g32)] {
                let (gap, std) = gap_and_spread(&want, &logits(m));
                eprintln!("{name} {format}: largest gap {gap}, spread {std}");
                assert!(
                    gap <= 0.05 * std,
                    "{name} {format}: largest gap {gap}, spread {std}"
                );
            }
        }
    }

    #[test]
    fn a_minimum_that_is_not_finite_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q4_1.gguf");
        // A NaN minimum (f16 0x7e00) in the gate proj's second block.
        std::fs::write(
            &p,
            quantised_llama(3, 64, &|name, b| {
                if name == "blk.0.ffn_gate.weight" {
                    b[22..24].copy_from_slice(&[0x00, 0x7e]);
                }
            }),
        )
        .unwrap();
        let g = GgufFile::open(&p).unwrap();
        for format in [WeightFormat::Stored, WeightFormat::F32] {
            let e = g.to_model_with_format(format, &mut |_, _| {}).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("gate"), "{format}: {text}");
        }
    }

    #[test]
    fn unpermute_inverts_llama_cpps_permutation() {
        // llama.cpp: w.reshape(heads, 2, d/2, cols).swapaxes(1, 2).reshape(rows, cols).
        let (heads, d, cols) = (2, 4, 3);
        let hf: Vec<f32> = (0..heads * d * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..heads {
            for i in 0..d / 2 {
                for j in 0..2 {
                    let src = (h * d + j * (d / 2) + i) * cols;
                    let dst = (h * d + 2 * i + j) * cols;
                    permuted[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
                }
            }
        }
        assert_eq!(unpermute(&permuted, heads * d, cols, heads), hf);
    }
}
