//! Where a served model runs: [`Device`] (`cpu`, `cuda`, `cuda:N`), and [`serve`], which loads a
//! model folder onto it behind the same [`ServedModel`] the CPU engine uses, so the bindings and
//! the server take a device by name and serve the same API on either.
//!
//! On a CUDA device the weights are held in the type the folder stores them in
//! ([`WeightFormat::Stored`]) or widened to f32 ([`WeightFormat::F32`], the default, as on the
//! CPU); the KV cache is held in that type. Int8 weights are CPU-only. A build without the `cuda`
//! feature, a machine without the driver, NVRTC or cuBLAS, and an ordinal with no device are each
//! a [`ServedError::Device`] naming what is missing; nothing panics.
//!
//! ```
//! use openledger_gpu::Device;
//!
//! assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
//! assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
//! assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
//! assert!("tpu".parse::<Device>().is_err());
//! assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
//! ```

use crate::adapters::AdapterBudget;
use crate::error::GpuError;
use crate::model::{GpuModel, GpuOptions};
use crate::runtime::{Dtype, Runtime};
use crate::serving::GpuPagedModel;
use openledger_core::error::Classify;
use openledger_lora::adapter::LoraAdapter;
use openledger_lora::model::{
    GgufFile, LoadProgress, ModelMetric, ServableModel, ServeOptions, ServedError, ServedModel,
    Tokenizer, WeightFormat,
};
use openledger_lora::pool::{AdapterId, AdapterPool};
use openledger_lora::serve::{KvDtype, KvLayout};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// A device a model is served on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The host's cores (the CPU model, `openledger_lora::model::Model`).
    #[default]
    Cpu,
    /// CUDA device `ordinal` (the GPU model, [`GpuModel`]).
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A device name that is not `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device {given:?}: expected \"cpu\", \"cuda\" or \"cuda:N\"")]
pub struct UnknownDevice {
    /// The name given (at most 64 characters of it).
    pub given: String,
}

impl FromStr for Device {
    type Err = UnknownDevice;

    /// `cpu`, `cuda` (device 0) or `cuda:N`, in any case, surrounding spaces ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        let unknown = || UnknownDevice {
            given: s.chars().take(64).collect(),
        };
        match name.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => {
                let n = name.strip_prefix("cuda:").ok_or_else(unknown)?;
                // Digits only: `+1` and `0x1` are not ordinals.
                if n.is_empty() || n.len() > 4 || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(unknown());
                }
                n.parse().map(Device::Cuda).map_err(|_| unknown())
            }
        }
    }
}

/// A [`GpuError`] as the served model's error, naming the device.
pub fn device_error(device: impl fmt::Display, e: GpuError) -> ServedError {
    ServedError::Device {
        device: device.to_string(),
        kind: e.kind(),
        source: Box::new(e),
    }
}

impl ServableModel for GpuPagedModel {
    fn kv_layout(&self, block_size: usize) -> KvLayout {
        self.model().kv_layout(block_size)
    }

    fn kv_dtype(&self) -> KvDtype {
        GpuPagedModel::kv_dtype(self)
    }

    fn attach_adapter(
        &mut self,
        id: &AdapterId,
        adapter: &Arc<LoraAdapter>,
    ) -> Result<(), ServedError> {
        self.attach(id, Arc::clone(adapter))
            .map_err(|e| device_error(self.model().runtime().device_name(), e))
    }

    fn adapter_names(&self) -> Vec<String> {
        let names = self.model().adapter_names();
        names.into_iter().map(str::to_string).collect()
    }

    /// The device's memory by component, its adapter tier and its decode graphs, each labelled
    /// with the device's name.
    fn metrics(&self) -> Vec<ModelMetric> {
        let m = self.model();
        let device = m.runtime().device_name();
        let memory = m.memory();
        let graphs = m.graph_stats();
        let tier = self.tier_stats();
        const MEMORY: &str = "Device memory the model holds, by component (the KV cache is \
                              openledger_kv_cache_bytes).";
        let memory_of = |component: &'static str, bytes: usize| {
            ModelMetric::gauge("openledger_device_memory_bytes", MEMORY, bytes as f64)
                .with_label("component", component)
        };
        let metrics = [
            memory_of("weights", memory.weights),
            memory_of("scratch", memory.scratch),
            memory_of("adapters", memory.adapters),
            ModelMetric::gauge(
                "openledger_device_adapters_resident",
                "Adapters (and ensembles) on the device or copying to it.",
                tier.resident as f64,
            ),
            ModelMetric::gauge(
                "openledger_device_adapter_slots",
                "Adapters the device tier holds at most.",
                m.adapter_slots() as f64,
            ),
            ModelMetric::gauge(
                "openledger_device_adapter_pages_free",
                "Free pages of the device adapter slab.",
                m.free_adapter_pages() as f64,
            ),
            ModelMetric::gauge(
                "openledger_device_adapter_uploads_in_flight",
                "Adapter copies to the device not yet landed.",
                m.adapters_in_flight() as f64,
            ),
            ModelMetric::counter(
                "openledger_device_adapter_uploads_total",
                "Adapter copies to the device started.",
                tier.uploads as f64,
            ),
            ModelMetric::counter(
                "openledger_device_adapter_evictions_total",
                "Adapters evicted from the device to make room.",
                tier.evictions as f64,
            ),
            ModelMetric::gauge(
                "openledger_device_graphs_held",
                "Decode-step CUDA graphs held.",
                graphs.held as f64,
            ),
            ModelMetric::counter(
                "openledger_device_graph_captures_total",
                "Decode-step CUDA graphs captured.",
                graphs.captures as f64,
            ),
            ModelMetric::counter(
                "openledger_device_graph_replays_total",
                "Decode steps run by replaying a graph.",
                graphs.replays as f64,
            ),
            ModelMetric::gauge(
                "openledger_device_graphs_off",
                "1 when a failed capture turned graphs off (decode steps run launch by launch).",
                f64::from(u8::from(graphs.failed_capture.is_some())),
            ),
        ];
        metrics
            .into_iter()
            .map(|x| x.with_label("device", device.clone()))
            .collect()
    }
}

/// The GPU type weights are held in for a [`WeightFormat`]: f32 widens, `stored` keeps the
/// checkpoint's type; int8 is not done on the GPU.
pub fn gpu_dtype(format: WeightFormat) -> Result<Option<Dtype>, GpuError> {
    match format {
        WeightFormat::F32 => Ok(Some(Dtype::F32)),
        WeightFormat::Stored => Ok(None),
        WeightFormat::Int8 { .. } => Err(GpuError::Unsupported {
            what: "int8 weights (use \"stored\" or \"f32\")".into(),
        }),
    }
}

/// Loads the HF model folder `model_dir` onto `device` and starts its engine: on
/// [`Device::Cpu`], [`ServedModel::load`]; on [`Device::Cuda`], the folder's weights on that
/// device ([`GpuModel`] with [`gpu_options`]: the type `options.weights` asks for, an adapter
/// tier of `options.device_adapter_bytes` and `device_adapter_slots`, decode steps of up to
/// `device_graph_max_batch` sequences as graphs) served by [`serve_model`]. `progress` sees
/// each weight file or tensor as it is read.
pub fn serve(
    model_dir: &Path,
    device: Device,
    pool: Option<AdapterPool>,
    options: &ServeOptions,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<ServedModel, ServedError> {
    let ordinal = match device {
        Device::Cpu => return ServedModel::load(model_dir, pool, options, progress),
        Device::Cuda(n) => n,
    };
    let fail = |e| device_error(device, e);
    let opts = gpu_options(options).map_err(fail)?;
    let rt = crate::cuda_runtime(ordinal).map_err(fail)?;
    let tokenizer = Tokenizer::in_model_dir(model_dir)?.map(Arc::new);
    let model = load_model(rt, model_dir, opts, progress).map_err(fail)?;
    serve_model(model, tokenizer, model_dir, pool, options)
}

/// The GPU model's options for a served model's: the weights' type ([`gpu_dtype`]), the device
/// tier of adapters and the largest decode step run as a graph; the rest are
/// [`GpuOptions::default`]'s.
pub fn gpu_options(options: &ServeOptions) -> Result<GpuOptions, GpuError> {
    Ok(GpuOptions {
        dtype: gpu_dtype(options.weights)?,
        adapters: AdapterBudget {
            slots: options.device_adapter_slots,
            slab_bytes: options.device_adapter_bytes,
            ..AdapterBudget::default()
        },
        graph_max_batch: options.device_graph_max_batch,
        ..GpuOptions::default()
    })
}

/// Loads the llama-family GGUF file `path` onto `device` and starts its engine, with the
/// file's tokenizer: on [`Device::Cpu`], the CPU model in the format `options.weights` asks
/// for ([`GgufFile::to_model_with_format`]); on [`Device::Cuda`], [`GpuModel::from_gguf`]
/// (the tensors dequantized on the host one at a time and copied in the type
/// `options.weights` asks for: f32 by default; `stored`, the embedding's type, f16 where the
/// file is quantized). The device is opened before the file is read. `progress` sees each
/// tensor as it is read.
pub fn serve_gguf(
    path: &Path,
    device: Device,
    pool: Option<AdapterPool>,
    options: &ServeOptions,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<ServedModel, ServedError> {
    let mut report = |done, total| progress(LoadProgress::LayerBuilt { done, total });
    let ordinal = match device {
        Device::Cpu => {
            let file = GgufFile::open(path)?;
            let tokenizer = Arc::new(file.tokenizer()?);
            let model = file.to_model_with_format(options.weights, &mut report)?;
            return ServedModel::start(model, Some(tokenizer), path, pool, options);
        }
        Device::Cuda(n) => n,
    };
    let fail = |e| device_error(device, e);
    let opts = gpu_options(options).map_err(fail)?;
    let rt = crate::cuda_runtime(ordinal).map_err(fail)?;
    let file = GgufFile::open(path)?;
    let tokenizer = Arc::new(file.tokenizer()?);
    let model = GpuModel::from_gguf(rt, &file, opts, &mut report).map_err(fail)?;
    serve_model(model, Some(tokenizer), path, pool, options)
}

/// [`GpuModel::load`] reporting each tensor copied as [`LoadProgress::LayerBuilt`].
pub fn load_model(
    rt: Arc<dyn Runtime>,
    model_dir: &Path,
    opts: GpuOptions,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<GpuModel, GpuError> {
    GpuModel::load(rt, model_dir, opts, &mut |done, total| {
        progress(LoadProgress::LayerBuilt { done, total })
    })
}

/// Starts an engine serving `model` (loaded from `model_dir`, named in errors) behind a
/// [`ServedModel`]: the same calls as the CPU engine, its KV cache in device memory in the
/// model's type, adapters from `pool` copied to the device tier on first use.
pub fn serve_model(
    model: GpuModel,
    tokenizer: Option<Arc<Tokenizer>>,
    model_dir: &Path,
    pool: Option<AdapterPool>,
    options: &ServeOptions,
) -> Result<ServedModel, ServedError> {
    let paged = match &pool {
        Some(p) => GpuPagedModel::with_pool(model, p.clone()),
        None => GpuPagedModel::new(model),
    };
    ServedModel::start_model(paged, tokenizer, model_dir, pool, options)
}
