//! Getting results out of a [`Trainer`]: the trained adapter as a PEFT folder (or bytes, or a
//! loaded [`LoraAdapter`]), and the base with the adapter merged in ([`openledger_lora::adapter::merge`]) as a new
//! [`Model`] or an HF model folder, so that a trained adapter can become the base of the next
//! run.

use std::collections::BTreeMap;
use std::path::Path;

use openledger_core::DType;

use crate::error::TrainError;
use crate::trainer::Trainer;
use openledger_lora::adapter::build::AdapterBuilder;
use openledger_lora::adapter::config::ConfigSpec;
use openledger_lora::adapter::merge::{DenseTensor, merge};
use openledger_lora::adapter::tensors::HostTensor;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{Model, model_config_json, write_model_dir};

fn host(t: &candle_core::Tensor) -> Result<Vec<f32>, TrainError> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

impl Trainer {
    /// The PEFT config of the adapter being trained (targets listed by name, as PEFT saves a
    /// resolved `"all-linear"`).
    pub fn adapter_spec(&self) -> ConfigSpec {
        let l = &self.config.lora;
        let mut spec = ConfigSpec::new(l.r, l.alpha, &self.target_names());
        spec.use_rslora = l.use_rslora;
        spec.use_dora = l.use_dora;
        spec.rank_pattern = l.rank_pattern.clone();
        spec.alpha_pattern = l.alpha_pattern.clone();
        spec
    }

    pub(crate) fn adapter_builder(&self) -> Result<AdapterBuilder, TrainError> {
        let mut b = AdapterBuilder::new(self.adapter_spec());
        for p in &self.lora {
            let (r, n_in) = p.a.dims2()?;
            let n_out = p.b.dim(0)?;
            b.lora(
                &p.module,
                n_in,
                n_out,
                r,
                &host(p.a.as_tensor())?,
                &host(p.b.as_tensor())?,
            );
            if let Some(m) = &p.m {
                b.magnitude(&p.module, &host(m.as_tensor())?);
            }
        }
        Ok(b)
    }

    /// The trained adapter, loaded from its serialised form.
    pub fn adapter(&self) -> Result<LoraAdapter, TrainError> {
        Ok(self.adapter_builder()?.build(&LoadOptions::default())?)
    }

    /// `adapter_config.json` text and `adapter_model.safetensors` bytes (f32).
    pub fn adapter_files(&self) -> Result<(String, Vec<u8>), TrainError> {
        let b = self.adapter_builder()?;
        Ok((b.config_json(), b.safetensors_bytes()?))
    }

    /// Writes the adapter as a PEFT folder (`adapter_config.json` +
    /// `adapter_model.safetensors`) that PEFT and [`LoraAdapter::from_dir`] load.
    pub fn save_adapter(&self, dir: &Path) -> Result<(), TrainError> {
        Ok(self.adapter_builder()?.write_dir(dir)?)
    }

    /// The base weights as named f32 tensors in HF layout (`[out, in]` projections).
    fn base_tensors(&self) -> Result<BTreeMap<String, DenseTensor>, TrainError> {
        let b = &self.base;
        let cfg = &b.cfg;
        let mut out = BTreeMap::new();
        let mut put = |k: String, t: &candle_core::Tensor| -> Result<(), TrainError> {
            out.insert(k, DenseTensor::new(t.dims().to_vec(), host(t)?));
            Ok(())
        };
        put("model.embed_tokens.weight".into(), &b.embed)?;
        put("model.norm.weight".into(), &b.norm)?;
        for (l, layer) in b.layers.iter().enumerate() {
            put(
                format!("model.layers.{l}.input_layernorm.weight"),
                &layer.input_norm,
            )?;
            put(
                format!("model.layers.{l}.post_attention_layernorm.weight"),
                &layer.post_norm,
            )?;
            for (p, f) in layer.proj.iter().enumerate() {
                let name = crate::net::module_name(l, p);
                put(format!("{name}.weight"), &f.wt.t()?.contiguous()?)?;
                if let Some(bias) = &f.bias {
                    put(format!("{name}.bias"), bias)?;
                }
            }
        }
        if !cfg.tie_word_embeddings {
            put("lm_head.weight".into(), &b.lm_head.wt.t()?.contiguous()?)?;
        }
        Ok(out)
    }

    /// The base with the current adapter merged in (`W ← W + scale·B·A`, or the DoRA
    /// rescaling), as a new [`Model`]: the base of a next run ("train a base").
    pub fn merged_model(&self) -> Result<Model, TrainError> {
        let mut tensors = self.base_tensors()?;
        merge(&self.adapter()?, &mut tensors)?;
        let host: BTreeMap<String, HostTensor> = tensors
            .into_iter()
            .map(|(k, t)| (k, HostTensor::from_f32(DType::F32, t.shape, &t.data)))
            .collect();
        Ok(Model::from_tensors(self.base.cfg.clone(), host)?)
    }

    /// Writes the merged base ([`Trainer::merged_model`]'s weights) as an HF model folder:
    /// `config.json` and `model.safetensors` (f32).
    pub fn save_merged_base(&self, dir: &Path) -> Result<(), TrainError> {
        let mut tensors = self.base_tensors()?;
        merge(&self.adapter()?, &mut tensors)?;
        Ok(write_model_dir(
            dir,
            &model_config_json(&self.base.cfg),
            &tensors,
        )?)
    }
}
