//! A Hugging Face checkpoint folder (`model.safetensors`, or shards listed by
//! `model.safetensors.index.json`) read tensor by tensor from its memory maps, each tensor's
//! bytes as stored: nothing is widened on the host.

use crate::error::GpuError;
use crate::runtime::Dtype;
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The mapped files of a checkpoint and which file holds each tensor.
pub(crate) struct Checkpoint {
    maps: Vec<(PathBuf, Mmap)>,
    index: HashMap<String, usize>,
}

/// One tensor as stored: its type, shape and bytes (little-endian) in the map.
pub(crate) struct Stored<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> GpuError + '_ {
    move |source| GpuError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn weight_error(path: &Path, reason: String) -> GpuError {
    GpuError::Weight {
        key: path.display().to_string(),
        reason,
    }
}

impl Checkpoint {
    /// Maps the weight files of `dir` and indexes their tensors.
    pub fn open(dir: &Path) -> Result<Self, GpuError> {
        let index_file = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_file.exists() {
            let text = std::fs::read(&index_file).map_err(io(&index_file))?;
            let v: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| weight_error(&index_file, format!("not JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| weight_error(&index_file, "no weight_map object".into()))?;
            let mut shards = BTreeSet::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    weight_error(&index_file, format!("{name}: the shard is not a string"))
                })?;
                let p = Path::new(file);
                // A shard name is a file of this folder, never a path out of it.
                if p.components().count() != 1 || p.file_name().is_none() {
                    return Err(weight_error(
                        &index_file,
                        format!("shard {file:?} is not a file name of the checkpoint's folder"),
                    ));
                }
                shards.insert(file.to_string());
            }
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut maps = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let file = File::open(&path).map_err(io(&path))?;
            // SAFETY: the file is mapped read-only; a checkpoint changed under a running model
            // is outside what the loader defends against (as every mmap loader).
            let map = unsafe { Mmap::map(&file) }.map_err(io(&path))?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| weight_error(&path, format!("not a safetensors file: {e}")))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            maps.push((path, map));
        }
        Ok(Self { maps, index })
    }

    /// The tensor `key` as stored, its shape checked against `shape`.
    pub fn tensor(&self, key: &str, shape: &[usize]) -> Result<Stored<'_>, GpuError> {
        let bad = |reason: String| GpuError::Weight {
            key: key.to_string(),
            reason,
        };
        let &file = self
            .index
            .get(key)
            .ok_or_else(|| bad("missing from the checkpoint".into()))?;
        let (path, map) = &self.maps[file];
        let st = SafeTensors::deserialize(map)
            .map_err(|e| weight_error(path, format!("not a safetensors file: {e}")))?;
        let view = st.tensor(key).map_err(|e| bad(e.to_string()))?;
        let dtype = match view.dtype() {
            StDtype::F32 => Dtype::F32,
            StDtype::F16 => Dtype::F16,
            StDtype::BF16 => Dtype::Bf16,
            other => {
                return Err(bad(format!(
                    "stored as {other:?}; f32, f16 or bf16 expected"
                )));
            }
        };
        if view.shape() != shape {
            return Err(bad(format!("shape {:?}, expected {shape:?}", view.shape())));
        }
        // The view borrows `st`, which borrows the map: take the same bytes from the map.
        let data = view.data();
        let offset = data.as_ptr() as usize - map.as_ptr() as usize;
        Ok(Stored {
            dtype,
            shape: view.shape().to_vec(),
            bytes: &map[offset..offset + data.len()],
        })
    }
}

impl<'a> Stored<'a> {
    /// The values in `dtype`'s bytes: the stored bytes when the types agree, else converted
    /// (through f32, one rounding). The first value that is not finite is an error naming
    /// `key`.
    pub fn bytes_as(
        &self,
        key: &str,
        dtype: Dtype,
    ) -> Result<std::borrow::Cow<'a, [u8]>, GpuError> {
        const CHUNK: usize = 1 << 16;
        let n = self.shape.iter().product::<usize>();
        let eb = self.dtype.bytes();
        let mut converted = (dtype != self.dtype).then(|| Vec::with_capacity(n * dtype.bytes()));
        for (c, chunk) in self.bytes.chunks(CHUNK * eb).enumerate() {
            let values = self.dtype.decode(chunk);
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(GpuError::Weight {
                    key: key.to_string(),
                    reason: format!("value {} is {v}", c * CHUNK + i),
                });
            }
            if let Some(out) = converted.as_mut() {
                out.extend_from_slice(&dtype.encode(&values));
            }
        }
        Ok(match converted {
            Some(v) => std::borrow::Cow::Owned(v),
            None => std::borrow::Cow::Borrowed(self.bytes),
        })
    }
}
