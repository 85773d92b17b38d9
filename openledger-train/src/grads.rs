//! Reading and writing the trainable parameters as one flat vector, and the per-example
//! gradients attribution builds on: the gradient of one example's (or one query's) loss with
//! respect to every LoRA parameter, in the fixed order of [`Trainer::gradient_layout`].

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::data::{Example, validate};
use crate::error::TrainError;
use crate::net::Mode;
use crate::trainer::pack;

/// Tokens per packed pass of [`Trainer::example_gradients`] (a longer example gets a pass of
/// its own).
const PASS_TOKENS: usize = 2048;
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
            capture: None,
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
        if self.lora.iter().any(|p| p.m.is_some()) {
            // DoRA's magnitude gradient does not split by rows: one backward pass per example.
            let mut out = Vec::with_capacity(examples.len());
            for (i, ex) in examples.iter().enumerate() {
                out.push(self.example_gradient(ex)?);
                progress(i + 1, examples.len());
            }
            return Ok(out);
        }
        self.packed_all(examples, progress)
    }

    /// [`Trainer::example_gradients`] without DoRA: packed passes of at most `PASS_TOKENS`
    /// tokens, examples taken by length so that sequences of one length sit
    /// together and attend as one batch.
    fn packed_all(
        &self,
        examples: &[Example],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.sort_by_key(|&i| examples[i].tokens.len());
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; examples.len()];
        let mut done = 0;
        let mut rest = &order[..];
        while !rest.is_empty() {
            let mut tokens = 0;
            let take = rest
                .iter()
                .take_while(|&&i| {
                    tokens += examples[i].tokens.len();
                    tokens <= PASS_TOKENS
                })
                .count()
                .max(1);
            let (pass, tail) = rest.split_at(take);
            let batch: Vec<&Example> = pass.iter().map(|&i| &examples[i]).collect();
            for (&i, g) in pass.iter().zip(self.packed_gradients(&batch)?) {
                grads[i] = Some(g);
            }
            done += take;
            progress(done, examples.len());
            rest = tail;
        }
        Ok(grads.into_iter().flatten().collect())
    }

    /// The per-example gradients of `examples` (no DoRA) from one forward and one backward
    /// pass over them packed together: the loss is `Σₑ NLLₑ / targetsₑ`, whose gradient on
    /// example `e`'s rows is example `e`'s own, and each module's probe (see
    /// [`Probe`](crate::net::Probe)) turns those rows into `∂/∂A` and `∂/∂B`. Equal to
    /// [`Trainer::example_gradient`] of each, up to the order of float sums.
    fn packed_gradients(&self, examples: &[&Example]) -> Result<Vec<Vec<f32>>, TrainError> {
        let (rows, targets) = pack(examples);
        let weights: Vec<f32> = examples
            .iter()
            .flat_map(|e| std::iter::repeat_n(1.0 / e.targets() as f32, e.targets()))
            .collect();
        let mut spans = Vec::with_capacity(examples.len());
        let mut start = 0usize;
        for e in examples {
            spans.push((start, e.tokens.len()));
            start += e.tokens.len();
        }
        let mut probes = Vec::with_capacity(self.lora.len());
        let net = self.net();
        let loss = {
            let mut mode = Mode {
                grad: true,
                dropout: None,
                capture: Some(&mut probes),
            };
            let hidden = net.hidden(&rows, &mut mode)?;
            let per_target = net.nll_per_target(&hidden, &targets)?;
            let w = Tensor::from_vec(weights, (targets.len(), 1), &Device::Cpu)?;
            (per_target * w)?.sum_all()?
        };
        let store = loss.backward()?;
        let layout = self.gradient_layout();
        let mut out = vec![vec![0.0f32; self.num_parameters()]; examples.len()];
        for probe in &probes {
            let p = &self.lora[probe.module];
            let Some(g) = store.get(probe.g.as_tensor()) else {
                continue;
            };
            // `A` then `B` of module `m` are entries 2m and 2m + 1 of the layout (no DoRA).
            let (a_at, b_at) = (
                layout[2 * probe.module].offset,
                layout[2 * probe.module + 1].offset,
            );
            let (a_len, b_len) = (p.a.elem_count(), p.b.elem_count());
            let scale = p.scale;
            // On the host: a few rows per example, small factors; candle's per-op cost would
            // dominate slicing per example.
            let (g, u, x, b) = (
                host(g)?,
                host(&probe.u)?,
                host(&probe.x)?,
                host(p.b.as_tensor())?,
            );
            let (r, d_out) = (p.b.dims()[1], p.b.dims()[0]);
            let d_in = a_len / r;
            // Examples are independent: each writes only its own gradient.
            out.par_iter_mut()
                .zip(&spans)
                .for_each(|(grad, &(first, len))| {
                    let (da, db) = grad[a_at..b_at + b_len].split_at_mut(a_len);
                    debug_assert_eq!(db.len(), b_len);
                    let mut h = vec![0.0f32; r];
                    for t in first..first + len {
                        let gt = &g[t * d_out..(t + 1) * d_out];
                        let ut = &u[t * r..(t + 1) * r];
                        let xt = &x[t * d_in..(t + 1) * d_in];
                        // ∂B[o, k] += s·g[o]·u[k];  h = s·Bᵀg;  ∂A[k, i] += h[k]·x[i].
                        h.fill(0.0);
                        for (o, &go) in gt.iter().enumerate() {
                            let sg = scale * go;
                            let brow = &b[o * r..(o + 1) * r];
                            let drow = &mut db[o * r..(o + 1) * r];
                            for k in 0..r {
                                drow[k] += sg * ut[k];
                                h[k] += sg * brow[k];
                            }
                        }
                        for (k, &hk) in h.iter().enumerate() {
                            let drow = &mut da[k * d_in..(k + 1) * d_in];
                            for (dv, &xv) in drow.iter_mut().zip(xt) {
                                *dv += hk * xv;
                            }
                        }
                    }
                });
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
