//! Reading and writing the trainable parameters as one flat vector, and the per-example
//! gradients attribution builds on: the gradient of one example's (or one query's) loss with
//! respect to every LoRA parameter, in the fixed order of [`Trainer::gradient_layout`].

use candle_core::{Device, Tensor};

use crate::data::{Example, validate};
use crate::error::TrainError;
use crate::net::Mode;
use crate::trainer::{ParamSlice, Trainer, host};
use openledger_lora::model::greedy_token;

impl Trainer {
    /// The trainable tensors in the fixed order of every flattened vector the trainer returns:
    /// modules by layer, then by projection (`q, k, v, o, gate, up, down`); within a module
    /// `lora_A` (`[r, in]`), `lora_B` (`[out, r]`), then `lora_magnitude_vector` (`[out]`,
    /// DoRA only); each row-major.
    pub fn gradient_layout(&self) -> Vec<ParamSlice> {
        let mut out = Vec::new();
        let mut offset = 0;
        for p in &self.lora {
            let names = [
                "lora_A.weight",
                "lora_B.weight",
                "lora_magnitude_vector.weight",
            ];
            for (v, suffix) in p.vars().into_iter().zip(names) {
                out.push(ParamSlice {
                    name: format!("{}.{suffix}", p.module),
                    shape: v.dims().to_vec(),
                    offset,
                });
                offset += v.elem_count();
            }
        }
        out
    }

    /// Trainable parameters (the length of every flattened gradient).
    pub fn num_parameters(&self) -> usize {
        self.lora
            .iter()
            .flat_map(|p| p.vars().into_iter().map(|v| v.elem_count()))
            .sum()
    }

    /// The current parameters, flattened in [`Trainer::gradient_layout`] order.
    pub fn parameters(&self) -> Result<Vec<f32>, TrainError> {
        let mut out = Vec::with_capacity(self.num_parameters());
        for p in &self.lora {
            for v in p.vars() {
                out.extend(host(v.as_tensor())?);
            }
        }
        Ok(out)
    }

    /// Replaces the parameters with `flat` (in [`Trainer::gradient_layout`] order); the
    /// optimizer state is kept. A wrong length or a non-finite value is refused and nothing
    /// changes.
    pub fn set_parameters(&mut self, flat: &[f32]) -> Result<(), TrainError> {
        let n = self.num_parameters();
        if flat.len() != n {
            return Err(TrainError::InvalidConfig {
                field: "parameters",
                reason: format!("{} values given, the adapter has {n}", flat.len()),
            });
        }
        if let Some(i) = flat.iter().position(|v| !v.is_finite()) {
            return Err(TrainError::InvalidConfig {
                field: "parameters",
                reason: format!("value {i} is {}", flat[i]),
            });
        }
        let mut offset = 0;
        for p in &self.lora {
            for v in p.vars() {
                let k = v.elem_count();
                v.set(&Tensor::from_slice(
                    &flat[offset..offset + k],
                    v.dims(),
                    &Device::Cpu,
                )?)?;
                offset += k;
            }
        }
        Ok(())
    }

    /// Sets the parameters from `adapter` (a saved checkpoint, or any PEFT adapter of the same
    /// shape): it must adapt exactly this run's modules, with the same ranks and scales, and
    /// carry DoRA magnitudes exactly when this run trains them. Nothing changes on error.
    pub fn load_adapter(
        &mut self,
        adapter: &openledger_lora::adapter::LoraAdapter,
    ) -> Result<(), TrainError> {
        let bad = |reason: String| TrainError::InvalidConfig {
            field: "adapter",
            reason,
        };
        let held = adapter.modules().len();
        if held != self.lora.len() {
            return Err(bad(format!(
                "the adapter has {held} modules, this run trains {}",
                self.lora.len()
            )));
        }
        let mut flat = Vec::with_capacity(self.num_parameters());
        for p in &self.lora {
            let m = adapter
                .module(&p.module)
                .ok_or_else(|| bad(format!("the adapter does not adapt {}", p.module)))?;
            if (m.scale() - p.scale).abs() > 1e-6 * p.scale.abs() {
                return Err(bad(format!(
                    "{}: scale {} where this run uses {}",
                    p.module,
                    m.scale(),
                    p.scale
                )));
            }
            let parts = [
                Some(m.a_f32()),
                Some(m.b_f32()),
                m.magnitude().map(|t| t.to_f32()),
            ];
            let vars = p.vars();
            if parts.iter().flatten().count() != vars.len() {
                return Err(bad(format!(
                    "{}: DoRA magnitude present in the adapter: {}, trained here: {}",
                    p.module,
                    m.magnitude().is_some(),
                    p.m.is_some()
                )));
            }
            for (v, part) in vars.into_iter().zip(parts.into_iter().flatten()) {
                if part.len() != v.elem_count() {
                    return Err(bad(format!(
                        "{}: {} values where this run holds {:?}",
                        p.module,
                        part.len(),
                        v.dims()
                    )));
                }
                flat.extend_from_slice(&part);
            }
        }
        self.set_parameters(&flat)
    }

    /// The gradient of `example`'s mean target NLL with respect to every LoRA parameter at the
    /// current parameters (no dropout), flattened in [`Trainer::gradient_layout`] order.
    pub fn example_gradient(&self, example: &Example) -> Result<Vec<f32>, TrainError> {
        validate(
            "query",
            std::slice::from_ref(example),
            self.config.max_seq_len,
            self.base.cfg.vocab_size,
        )?;
        let mut mode = Mode {
            grad: true,
            dropout: None,
        };
        let sum = self.batch_nll(&[example], &mut mode)?;
        let loss = sum.affine(1.0 / example.targets() as f64, 0.0)?;
        Ok(self.grads_of(&loss)?.concat())
    }

    /// The gradient of a query: `prompt` followed by `answer` (the model's answer, or any
    /// response), loss on the answer tokens, as [`Trainer::example_gradient`].
    pub fn query_gradient(&self, prompt: &[u32], answer: &[u32]) -> Result<Vec<f32>, TrainError> {
        self.example_gradient(&Example::prompt_response(prompt, answer))
    }

    /// [`Trainer::example_gradient`] of each example, calling `progress(done, total)` after
    /// each. All examples are checked before the first gradient is computed.
    pub fn example_gradients(
        &self,
        examples: &[Example],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        validate(
            "query",
            examples,
            self.config.max_seq_len,
            self.base.cfg.vocab_size,
        )?;
        let mut out = Vec::with_capacity(examples.len());
        for (i, ex) in examples.iter().enumerate() {
            out.push(self.example_gradient(ex)?);
            progress(i + 1, examples.len());
        }
        Ok(out)
    }

    /// Greedy decoding of `n` tokens after `prompt` with the current adapter (each step
    /// recomputes the prefix; ties go to the lowest id), for building queries.
    pub fn greedy(&self, prompt: &[u32], n: usize) -> Result<Vec<u32>, TrainError> {
        self.base.cfg.check_context(prompt.len(), n)?;
        let vocab = self.base.cfg.vocab_size;
        let mut tokens = prompt.to_vec();
        for _ in 0..n {
            let logits = self.forward(&[&tokens])?;
            tokens.push(greedy_token(&logits[0][(tokens.len() - 1) * vocab..]));
        }
        Ok(tokens.split_off(prompt.len()))
    }
}
