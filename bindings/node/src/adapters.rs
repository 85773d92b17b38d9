//! JavaScript face of `openledger_lora::adapter` and `openledger_lora::adapter::base`: inspect a PEFT LoRA
//! adapter (rank, alpha, per-module scale, targets, dtype, resident bytes, the A/B factors as
//! typed arrays), validate it against a base model folder, combine adapters as PEFT's
//! `add_weighted_adapter` does, and merge one into a model folder.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use napi::Either;
use napi::bindgen_prelude::{AsyncTask, Buffer, Float32Array, Uint16Array};
use napi_derive::napi;
use openledger_core::DType;
use openledger_lora::adapter::base::BaseModel as RustBaseModel;
use openledger_lora::adapter::combine::{
    Combination, CombineOptions as RustCombineOptions, MajoritySign,
    add_weighted_adapter as rust_add_weighted,
};
use openledger_lora::adapter::config::TargetModules;
use openledger_lora::adapter::tensors::HostTensor;
use openledger_lora::adapter::{
    LoadOptions as RustLoadOptions, LoraAdapter as RustAdapter, LoraModule as RustModule,
    ModuleKind,
};
use openledger_lora::model::merge_adapter_into_dir;

use crate::error::{ErrorCode, JsResult, Result};
use crate::task::{VoidTask, task};

/// How adapter weights are checked when loaded.
#[napi(object)]
#[derive(Default)]
pub struct LoadOptions {
    /// Accept NaN / infinite weights (default `false`: they are an `AdapterFormat` error).
    pub allow_non_finite: Option<bool>,
}

fn load_options(o: Option<LoadOptions>) -> RustLoadOptions {
    RustLoadOptions {
        allow_non_finite: o.and_then(|o| o.allow_non_finite).unwrap_or(false),
    }
}

task!(
    /// Resolves to a `LoraAdapter`.
    LoraAdapterTask => LoraAdapter
);
task!(
    /// Resolves to a `BaseModel`.
    BaseModelTask => BaseModel
);
task!(
    /// Resolves to a `ValidationReport`.
    ValidationTask => ValidationReport
);

/// A loaded PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`).
#[napi]
pub struct LoraAdapter {
    pub(crate) inner: Arc<RustAdapter>,
}

#[napi]
impl LoraAdapter {
    /// Loads the adapter folder `path`.
    #[napi(catch_unwind)]
    pub fn from_dir(path: String, options: Option<LoadOptions>) -> AsyncTask<LoraAdapterTask> {
        let opts = load_options(options);
        LoraAdapterTask::spawn(move || {
            let inner = RustAdapter::from_dir(&PathBuf::from(path), &opts).js()?;
            Ok(LoraAdapter {
                inner: Arc::new(inner),
            })
        })
    }

    /// Parses an adapter from the bytes of its config and of its safetensors file.
    #[napi(catch_unwind)]
    pub fn from_bytes(
        config_json: Buffer,
        safetensors: Buffer,
        options: Option<LoadOptions>,
    ) -> AsyncTask<LoraAdapterTask> {
        let opts = load_options(options);
        let (config, tensors) = (config_json.to_vec(), safetensors.to_vec());
        LoraAdapterTask::spawn(move || {
            let inner = RustAdapter::from_bytes(&config, &tensors, &opts).js()?;
            Ok(LoraAdapter {
                inner: Arc::new(inner),
            })
        })
    }

    /// The configured rank `r`.
    #[napi(getter, catch_unwind)]
    pub fn r(&self) -> u32 {
        self.inner.config().r() as u32
    }

    /// The configured `lora_alpha`.
    #[napi(getter, catch_unwind)]
    pub fn lora_alpha(&self) -> f64 {
        self.inner.config().lora_alpha()
    }

    /// Whether rsLoRA scaling (`alpha / sqrt(r)`) is on.
    #[napi(getter, catch_unwind)]
    pub fn use_rslora(&self) -> bool {
        self.inner.config().spec().use_rslora
    }

    /// Whether the adapter is DoRA (weight-decomposed: a magnitude per output feature).
    #[napi(getter, catch_unwind)]
    pub fn use_dora(&self) -> bool {
        self.inner.config().spec().use_dora
    }

    /// `target_modules` as written in the config: a list of names, a regex string, or
    /// `"all-linear"`.
    #[napi(getter, catch_unwind)]
    pub fn target_modules(&self) -> Either<Vec<String>, String> {
        match &self.inner.config().spec().target_modules {
            TargetModules::Names(names) => Either::A(names.clone()),
            TargetModules::Regex(re) => Either::B(re.clone()),
            TargetModules::AllLinear => Either::B("all-linear".to_string()),
        }
    }

    /// Bytes the adapter's tensors occupy in memory (what a pool budget counts).
    #[napi(getter, catch_unwind)]
    pub fn resident_bytes(&self) -> f64 {
        self.inner.resident_bytes() as f64
    }

    /// The dtype of the factors (`"f32"`, `"f16"` or `"bf16"`), `"mixed"` when modules differ,
    /// or `null` for an adapter without modules.
    #[napi(getter, catch_unwind)]
    pub fn dtype(&self) -> Option<String> {
        let mut dtypes = self.inner.modules().map(|(_, m)| m.a().dtype());
        let first = dtypes.next()?;
        if dtypes.all(|d| d == first) {
            Some(first.to_string())
        } else {
            Some("mixed".to_string())
        }
    }

    /// Number of adapted modules.
    #[napi(getter, catch_unwind)]
    pub fn num_modules(&self) -> u32 {
        self.inner.num_modules() as u32
    }

    /// Names of the adapted modules, sorted.
    #[napi(catch_unwind)]
    pub fn module_names(&self) -> Vec<String> {
        self.inner.modules().map(|(n, _)| n.to_string()).collect()
    }

    /// The module `name`; an `UnknownId` error when the adapter has none of that name.
    #[napi(catch_unwind)]
    pub fn module(&self, name: String) -> Result<LoraModule> {
        crate::error::guard(|| {
            if self.inner.module(&name).is_none() {
                return Err(crate::error::Error::new(
                    ErrorCode::UnknownId,
                    format!("the adapter has no module {name:?}"),
                ));
            }
            Ok(LoraModule {
                adapter: self.inner.clone(),
                name,
            })
        })
    }

    /// The scale of each module (`alpha / r`, or `alpha / sqrt(r)` with rsLoRA, after the rank
    /// and alpha patterns), by module name.
    #[napi(catch_unwind)]
    pub fn scales(&self) -> HashMap<String, f64> {
        self.inner
            .modules()
            .map(|(n, m)| (n.to_string(), f64::from(m.scale())))
            .collect()
    }
}

/// One adapted module of a `LoraAdapter`: `y = x·Wᵀ + scale · (x·Aᵀ)·Bᵀ`.
#[napi]
pub struct LoraModule {
    pub(crate) adapter: Arc<RustAdapter>,
    pub(crate) name: String,
}

/// A factor's values in its own dtype: a `Float32Array` for f32, or the raw bit patterns in a
/// `Uint16Array` for f16 and bf16.
fn raw(t: &HostTensor) -> Either<Float32Array, Uint16Array> {
    if let Some(v) = t.as_f32() {
        return Either::A(Float32Array::new(v.to_vec()));
    }
    let bits: Vec<u16> = match (t.as_f16(), t.as_bf16()) {
        (Some(v), _) => v.iter().map(|x| x.to_bits()).collect(),
        (_, Some(v)) => v.iter().map(|x| x.to_bits()).collect(),
        // Every dtype is one of the three; widen to f32 should another ever appear.
        _ => return Either::A(Float32Array::new(t.to_f32().into_owned())),
    };
    Either::B(Uint16Array::new(bits))
}

impl LoraModule {
    /// The module itself. Its name was taken from the adapter's own (immutable) module table,
    /// so the lookup cannot fail; it is still checked rather than unwrapped.
    pub(crate) fn get(&self) -> Result<&RustModule> {
        self.adapter.module(&self.name).ok_or_else(|| {
            crate::error::Error::new(
                ErrorCode::UnknownId,
                format!("the adapter has no module {:?}", self.name),
            )
        })
    }
}

#[napi]
impl LoraModule {
    /// The module's full name (`model.layers.0.self_attn.q_proj`).
    #[napi(getter, catch_unwind)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// `"linear"` or `"embedding"`.
    #[napi(getter, catch_unwind)]
    pub fn kind(&self) -> Result<String> {
        crate::error::guard(|| {
            Ok(match self.get()?.kind() {
                ModuleKind::Linear => "linear",
                ModuleKind::Embedding => "embedding",
            }
            .to_string())
        })
    }

    /// The rank of this module.
    #[napi(getter, catch_unwind)]
    pub fn rank(&self) -> Result<u32> {
        crate::error::guard(|| Ok(self.get()?.rank() as u32))
    }

    /// Input features (the vocabulary size for embeddings).
    #[napi(getter, catch_unwind)]
    pub fn in_features(&self) -> Result<u32> {
        crate::error::guard(|| Ok(self.get()?.in_features() as u32))
    }

    /// Output features.
    #[napi(getter, catch_unwind)]
    pub fn out_features(&self) -> Result<u32> {
        crate::error::guard(|| Ok(self.get()?.out_features() as u32))
    }

    /// The factor applied to `B·A`.
    #[napi(getter, catch_unwind)]
    pub fn scale(&self) -> Result<f64> {
        crate::error::guard(|| Ok(f64::from(self.get()?.scale())))
    }

    /// Whether the base weight is stored `[in, out]` (GPT-2 `Conv1D`).
    #[napi(getter, catch_unwind)]
    pub fn fan_in_fan_out(&self) -> Result<bool> {
        crate::error::guard(|| Ok(self.get()?.fan_in_fan_out()))
    }

    /// The dtype of the factors in memory (`"f32"`, `"f16"`, `"bf16"`).
    #[napi(getter, catch_unwind)]
    pub fn dtype(&self) -> Result<String> {
        crate::error::guard(|| Ok(self.get()?.a().dtype().to_string()))
    }

    /// `A` (`[rank, inFeatures]`, row-major) as float32 values (a copy, widened from f16/bf16).
    #[napi(catch_unwind)]
    pub fn a(&self) -> Result<Float32Array> {
        crate::error::guard(|| Ok(Float32Array::new(self.get()?.a_f32().into_owned())))
    }

    /// `B` (`[outFeatures, rank]`, row-major) as float32 values (a copy, widened from f16/bf16).
    #[napi(catch_unwind)]
    pub fn b(&self) -> Result<Float32Array> {
        crate::error::guard(|| Ok(Float32Array::new(self.get()?.b_f32().into_owned())))
    }

    /// `A` in its stored dtype: a `Float32Array` (f32) or the bit patterns in a `Uint16Array`
    /// (f16, bf16).
    #[napi(catch_unwind)]
    pub fn raw_a(&self) -> Result<Either<Float32Array, Uint16Array>> {
        crate::error::guard(|| Ok(raw(self.get()?.a())))
    }

    /// `B` in its stored dtype, as `rawA`.
    #[napi(catch_unwind)]
    pub fn raw_b(&self) -> Result<Either<Float32Array, Uint16Array>> {
        crate::error::guard(|| Ok(raw(self.get()?.b())))
    }
}

/// What `BaseModel.validate` checked.
#[napi(object)]
pub struct ValidationReport {
    /// Adapter modules checked against the base.
    pub modules_checked: u32,
    /// Base modules the config targets that carry no LoRA weights in the adapter (PEFT loads
    /// such adapters with a warning; the modules stay unchanged).
    pub targeted_without_weights: Vec<String>,
}

/// Module names and shapes of a base model folder (config.json + safetensors), without weights.
#[napi]
pub struct BaseModel {
    inner: Arc<RustBaseModel>,
}

#[napi]
impl BaseModel {
    /// Reads the safetensors headers (single file or sharded index) of the model folder `path`.
    #[napi(catch_unwind)]
    pub fn from_dir(path: String) -> AsyncTask<BaseModelTask> {
        BaseModelTask::spawn(move || {
            let inner = RustBaseModel::from_dir(&PathBuf::from(path)).js()?;
            Ok(BaseModel {
                inner: Arc::new(inner),
            })
        })
    }

    /// Names of the linear modules.
    #[napi(catch_unwind)]
    pub fn linear_modules(&self) -> Vec<String> {
        self.inner
            .linear_modules()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Checks that every module of `adapter` exists in this model with matching shapes; rejects
    /// with a `BaseMismatch` (or `AdapterFormat`) error naming the module otherwise.
    #[napi(catch_unwind)]
    pub fn validate(&self, adapter: &LoraAdapter) -> AsyncTask<ValidationTask> {
        let (base, adapter) = (self.inner.clone(), adapter.inner.clone());
        ValidationTask::spawn(move || {
            let r = base.validate(&adapter).js()?;
            Ok(ValidationReport {
                modules_checked: r.modules_checked as u32,
                targeted_without_weights: r.targeted_without_weights,
            })
        })
    }
}

/// How `addWeightedAdapter` combines adapters (PEFT's `add_weighted_adapter` arguments).
#[napi(object)]
#[derive(Default)]
pub struct CombineOptions {
    /// `"svd"` (default), `"linear"`, `"cat"`, `"ties"`, `"ties_svd"`, `"dare_linear"`,
    /// `"dare_linear_svd"`, `"dare_ties"`, `"dare_ties_svd"`, `"magnitude_prune"` or
    /// `"magnitude_prune_svd"`.
    pub combination_type: Option<String>,
    /// Rank of the SVD result (default: the largest `r`).
    pub svd_rank: Option<u32>,
    /// Quantile in [0, 1] at which to clamp the SVD factors.
    pub svd_clamp: Option<f64>,
    /// Fraction of entries kept by TIES, DARE and magnitude pruning (required by them).
    pub density: Option<f64>,
    /// TIES sign election: `"total"` (default) or `"frequency"`.
    pub majority_sign_method: Option<String>,
    /// Seed of DARE's random masks (default 0).
    pub seed: Option<u32>,
    /// The new factors' dtype: `"f32"` (default), `"f16"` or `"bf16"`.
    pub dtype: Option<String>,
}

/// PEFT's `add_weighted_adapter`: resolves to a new adapter combining `adapters` with
/// `weights` as `options` say.
#[napi(catch_unwind)]
pub fn add_weighted_adapter(
    adapters: Vec<&LoraAdapter>,
    weights: Vec<f64>,
    options: Option<CombineOptions>,
) -> Result<AsyncTask<LoraAdapterTask>> {
    crate::error::guard(|| {
        let o = options.unwrap_or_default();
        let combination: Combination = o
            .combination_type
            .as_deref()
            .unwrap_or("svd")
            .parse()
            .js()?;
        let mut opts = RustCombineOptions::new(combination);
        opts.svd_rank = o.svd_rank.map(|r| r as usize);
        opts.svd_clamp = o.svd_clamp;
        opts.density = o.density.map(|d| d as f32);
        opts.majority_sign = o
            .majority_sign_method
            .as_deref()
            .unwrap_or("total")
            .parse::<MajoritySign>()
            .js()?;
        opts.seed = u64::from(o.seed.unwrap_or(0));
        opts.dtype = o.dtype.as_deref().unwrap_or("f32").parse::<DType>().js()?;
        let held: Vec<Arc<RustAdapter>> = adapters.iter().map(|a| a.inner.clone()).collect();
        let weights: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
        Ok(LoraAdapterTask::spawn(move || {
            let refs: Vec<&RustAdapter> = held.iter().map(Arc::as_ref).collect();
            let out = rust_add_weighted(&refs, &weights, &opts, None).js()?;
            Ok(LoraAdapter {
                inner: Arc::new(out),
            })
        }))
    })
}

/// Writes the HF model folder `modelDir` with `adapter` merged into its weights as a new
/// folder `outDir` (f32 weights, tokenizer and generation files copied), so the merged model
/// serves without the adapter; rejects with `BaseMismatch` (nothing written) when the adapter
/// does not fit the model.
#[napi(catch_unwind)]
pub fn merge_adapter_into_model(
    model_dir: String,
    adapter: &LoraAdapter,
    out_dir: String,
) -> AsyncTask<VoidTask> {
    let a = adapter.inner.clone();
    VoidTask::spawn(move || {
        merge_adapter_into_dir(
            &PathBuf::from(model_dir),
            &a,
            &PathBuf::from(out_dir),
            &mut |_| {},
        )
        .js()
    })
}
