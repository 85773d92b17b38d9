//! The differentiable forward pass of the trainer: the llama-family decoder written with candle
//! tensor ops, so that `Tensor::backward` yields the gradients of the LoRA factors (and DoRA
//! magnitudes), which are `candle_core::Var`s; the base weights are plain tensors.
//!
//! It follows the inference model ([`openledger_lora::model::Model`]) operation for operation: embedding
//! (×√hidden for Gemma), RMSNorm (`(1 + w)` for Gemma), rotary embeddings with the model's
//! inverse frequencies (LLaMA 3 scaling included), causal grouped-query attention with the
//! sliding window of Mistral / Qwen2, gated MLP (SwiGLU / GeGLU), q/k/v/o and MLP biases, tied
//! or separate output head. Sequences of a batch are concatenated row-wise (no padding): the
//! projections run over every row at once and attention runs per sequence.
//!
//! Frozen projections go through [`FrozenMatmul`], a custom op whose backward computes only the
//! gradient of its input (candle's matmul would also compute the unused gradient of the
//! frozen weight); RMSNorm and the rotary embedding are fused ops ([`crate::fused`]).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Storage, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::fused::{RmsNorm, Rope};
use openledger_lora::model::ops::rope_inv_freq;
use openledger_lora::model::{Activation, Architecture, Model, ModelConfig};
pub use openledger_lora::model::{PROJECTIONS, module_name};

/// `x · W` with `W` (`[in, out]`) frozen: backward returns only the gradient of `x`.
#[derive(Clone)]
pub(crate) struct FrozenMatmul {
    wt: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-matmul needs a contiguous input");
        };
        let data = &storage.as_slice::<f32>()?[start..end];
        let x = Tensor::from_slice(data, layout.shape(), &Device::Cpu)?;
        let y = x.matmul(&self.wt)?;
        let (guard, _) = y.storage_and_layout();
        match &*guard {
            Storage::Cpu(s) => Ok((s.clone(), y.shape().clone())),
            _ => candle_core::bail!("frozen-matmul runs on the CPU only"),
        }
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.wt.t()?)?))
    }
}

/// A frozen dense projection: `Wᵀ` `[in, out]` and its bias.
#[derive(Debug, Clone)]
pub(crate) struct Frozen {
    pub in_features: usize,
    pub out_features: usize,
    pub wt: Tensor,
    pub bias: Option<Tensor>,
}

impl Frozen {
    fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        if x.track_op() {
            x.apply_op1(FrozenMatmul {
                wt: self.wt.clone(),
            })
        } else {
            x.matmul(&self.wt)
        }
    }

    fn add_bias(&self, y: Tensor) -> candle_core::Result<Tensor> {
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// One frozen decoder layer; `proj` follows [`PROJECTIONS`].
#[derive(Debug, Clone)]
pub(crate) struct BaseLayer {
    pub input_norm: Tensor,
    pub post_norm: Tensor,
    /// The norms' effective weights (`1 + w` for Gemma), for [`RmsNorm`].
    pub input_norm_eff: Arc<Vec<f32>>,
    pub post_norm_eff: Arc<Vec<f32>>,
    pub proj: Vec<Frozen>,
}

/// The frozen base model as tensors.
#[derive(Debug, Clone)]
pub(crate) struct BaseNet {
    pub cfg: ModelConfig,
    pub embed: Tensor,
    pub layers: Vec<BaseLayer>,
    pub norm: Tensor,
    pub norm_eff: Arc<Vec<f32>>,
    pub lm_head: Frozen,
    pub inv_freq: Vec<f32>,
}

/// A norm's effective weight: `1 + w` for Gemma (as the inference model computes it), else `w`.
fn effective(cfg: &ModelConfig, w: &[f32]) -> Arc<Vec<f32>> {
    let gemma = cfg.arch == Architecture::Gemma;
    Arc::new(w.iter().map(|g| if gemma { 1.0 + g } else { *g }).collect())
}

fn vec_tensor(v: &[f32]) -> candle_core::Result<Tensor> {
    Tensor::from_slice(v, v.len(), &Device::Cpu)
}

impl BaseNet {
    /// Shares the model's weights (tensors are reference-counted; vectors are copied).
    pub fn from_model(model: &Model) -> candle_core::Result<Self> {
        let cfg = model.config().clone();
        let w = model.base_weights();
        let frozen = |in_features: usize,
                      out_features: usize,
                      wt: &Tensor,
                      bias: Option<&Vec<f32>>|
         -> candle_core::Result<Frozen> {
            Ok(Frozen {
                in_features,
                out_features,
                wt: wt.clone(),
                bias: bias.map(|b| vec_tensor(b)).transpose()?,
            })
        };
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            let mut proj = Vec::with_capacity(7);
            for lin in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
                proj.push(frozen(
                    lin.in_features,
                    lin.out_features,
                    &lin.wt().map_err(candle_core::Error::wrap)?,
                    lin.bias.as_ref(),
                )?);
            }
            layers.push(BaseLayer {
                input_norm: vec_tensor(&l.input_norm)?,
                post_norm: vec_tensor(&l.post_norm)?,
                input_norm_eff: effective(&cfg, &l.input_norm),
                post_norm_eff: effective(&cfg, &l.post_norm),
                proj,
            });
        }
        let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
        Ok(BaseNet {
            inv_freq: rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling),
            embed: Tensor::from_slice(&w.embed_f32(), (vocab, h), &Device::Cpu)?,
            layers,
            norm: vec_tensor(&w.norm)?,
            norm_eff: effective(&cfg, &w.norm),
            lm_head: frozen(
                w.lm_head.in_features,
                w.lm_head.out_features,
                &w.lm_head.wt().map_err(candle_core::Error::wrap)?,
                w.lm_head.bias.as_ref(),
            )?,
            cfg,
        })
    }

    fn rms_norm(&self, x: &Tensor, w: &Arc<Vec<f32>>) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1(RmsNorm {
            w: w.clone(),
            eps: self.cfg.rms_norm_eps,
        })
    }
}

/// The trainable factors of one targeted projection.
#[derive(Debug, Clone)]
pub(crate) struct LoraParam {
    pub module: String,
    pub layer: usize,
    pub proj: usize,
    pub scale: f32,
    /// `A`, `[r, in]`.
    pub a: Var,
    /// `B`, `[out, r]`.
    pub b: Var,
    /// DoRA magnitude, `[out]`.
    pub m: Option<Var>,
}

impl LoraParam {
    /// The parameters in gradient order: `A`, `B`, then the magnitude.
    pub fn vars(&self) -> Vec<&Var> {
        let mut v = vec![&self.a, &self.b];
        if let Some(m) = &self.m {
            v.push(m);
        }
        v
    }
}

/// Tensors of one module for one forward call (tracked, or detached for inference).
struct ModTensors<'a> {
    /// The module's position in the LoRA set.
    index: usize,
    p: &'a LoraParam,
    a: Tensor,
    b: Tensor,
    m: Option<Tensor>,
}

/// How a forward call runs.
pub(crate) struct Mode<'r> {
    /// Build the graph for `backward` (else every LoRA tensor is detached).
    pub grad: bool,
    /// LoRA dropout probability and its generator (training only).
    pub dropout: Option<(f32, &'r mut ChaCha8Rng)>,
    /// Where to record, for every LoRA module the forward call runs, what per-example
    /// gradients are computed from (see [`Probe`]); `None` records nothing.
    pub capture: Option<&'r mut Vec<Probe>>,
}

/// What a forward call records of one LoRA module `y = W x + s·B(A x)` (no DoRA, no dropout)
/// so that the gradient of each example in a packed batch can be read off one backward pass:
/// the module's input rows `x` and `u = A x` (values), and a zero variable `g` added to the
/// LoRA output, whose gradient is `∂L/∂(s·B A x)` row by row. Since every row belongs to one
/// example, example `e`'s gradients are `∂L/∂B = s·g[e]ᵀ u[e]` and `∂L/∂A = s·(g[e] B)ᵀ x[e]`.
pub(crate) struct Probe {
    /// The module's position in the LoRA set.
    pub module: usize,
    /// Input rows `[rows, in]`.
    pub x: Tensor,
    /// `A x`, `[rows, r]`.
    pub u: Tensor,
    /// The zero variable added to the LoRA output, `[rows, out]`.
    pub g: Var,
}

/// One batch: the token rows of every sequence, concatenated.
pub(crate) struct Rows<'s> {
    pub seqs: Vec<&'s [u32]>,
}

impl Rows<'_> {
    fn total(&self) -> usize {
        self.seqs.iter().map(|s| s.len()).sum()
    }
}

/// The LoRA set attached to the trainer's base: modules in [`PROJECTIONS`] order within layer
/// order.
pub(crate) struct Net<'n> {
    pub base: &'n BaseNet,
    pub lora: &'n [LoraParam],
}

impl Net<'_> {
    fn linear(
        &self,
        f: &Frozen,
        m: Option<&ModTensors<'_>>,
        x: &Tensor,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let base = f.matmul(x)?;
        let Some(m) = m else {
            return f.add_bias(base);
        };
        let (xd, dropped) = match &mut mode.dropout {
            Some((p, rng)) if *p > 0.0 => {
                let keep = 1.0 - *p;
                let n = x.elem_count();
                let mask: Vec<f32> = (0..n)
                    .map(|_| {
                        if rng.random::<f32>() < *p {
                            0.0
                        } else {
                            1.0 / keep
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?;
                (x.mul(&mask)?, true)
            }
            _ => (x.clone(), false),
        };
        let u = xd.matmul(&m.a.t()?)?;
        let mut lr = u.matmul(&m.b.t()?)?.affine(m.p.scale as f64, 0.0)?;
        if let Some(probes) = mode.capture.as_deref_mut() {
            if m.m.is_some() || dropped {
                candle_core::bail!("per-example gradient probes need LoRA without DoRA or dropout");
            }
            let g = Var::zeros(lr.shape(), lr.dtype(), lr.device())?;
            lr = (lr + g.as_tensor())?;
            probes.push(Probe {
                module: m.index,
                x: xd.detach(),
                u: u.detach(),
                g,
            });
        }
        let y = match &m.m {
            None => (base + lr)?,
            Some(mag) => {
                // PEFT: the norm of W + ΔW is detached; only m and the LoRA path get gradients.
                let delta = m.a.t()?.matmul(&m.b.t()?)?.affine(m.p.scale as f64, 0.0)?;
                let norm = (&f.wt + delta)?.sqr()?.sum(0)?.sqrt()?.detach();
                let factor = mag.div(&norm)?;
                if dropped {
                    let base_d = f.matmul(&xd)?;
                    let extra = base_d.broadcast_mul(&(&factor - 1.0)?)?;
                    ((base + extra)? + lr.broadcast_mul(&factor)?)?
                } else {
                    (base + lr)?.broadcast_mul(&factor)?
                }
            }
        };
        f.add_bias(y)
    }

    fn attention(
        &self,
        layer: usize,
        rows: &Rows<'_>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        masks: &mut HashMap<(usize, Option<usize>), Tensor>,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.base.cfg;
        let (h, kvh, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let rep = h / kvh;
        let window = cfg.layer_window(layer);
        let scale = 1.0 / (d as f32).sqrt();
        let mut outs = Vec::with_capacity(rows.seqs.len());
        let mut start = 0;
        let mut i = 0;
        // Consecutive sequences of one length attend as one batch `[n, heads, t, d]`: the same
        // arithmetic per sequence, far fewer operations than one sequence at a time.
        while i < rows.seqs.len() {
            let t = rows.seqs[i].len();
            let n = rows.seqs[i..].iter().take_while(|s| s.len() == t).count();
            let qs = q
                .narrow(0, start, n * t)?
                .reshape((n, t, h, d))?
                .transpose(1, 2)?;
            let expand = |x: &Tensor| -> candle_core::Result<Tensor> {
                let x = x
                    .narrow(0, start, n * t)?
                    .reshape((n, t, kvh, d))?
                    .transpose(1, 2)?;
                if rep == 1 {
                    return x.contiguous();
                }
                x.reshape((n, kvh, 1, t, d))?
                    .broadcast_as((n, kvh, rep, t, d))?
                    .contiguous()?
                    .reshape((n, h, t, d))
            };
            let ks = expand(k)?;
            let vs = expand(v)?;
            let scores = qs
                .contiguous()?
                .matmul(&ks.t()?)?
                .affine(scale as f64, 0.0)?;
            let mask = match masks.get(&(t, window)) {
                Some(m) => m.clone(),
                None => {
                    let m: Vec<f32> = (0..t * t)
                        .map(|ij| {
                            let (i, j) = (ij / t, ij % t);
                            if openledger_lora::model::ops::attends(i, j, window) {
                                0.0
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                        .collect();
                    let m = Tensor::from_vec(m, (t, t), &Device::Cpu)?;
                    masks.insert((t, window), m.clone());
                    m
                }
            };
            let scores = scores.broadcast_add(&mask)?;
            let max = scores.max_keepdim(3)?.detach();
            let e = scores.broadcast_sub(&max)?.exp()?;
            let p = e.broadcast_div(&e.sum_keepdim(3)?)?;
            let o = p.matmul(&vs)?.transpose(1, 2)?.reshape((n * t, h * d))?;
            outs.push(o);
            start += n * t;
            i += n;
        }
        Tensor::cat(&outs, 0)
    }

    /// The final-normed hidden states `[rows, hidden]` of the batch.
    pub fn hidden(&self, rows: &Rows<'_>, mode: &mut Mode<'_>) -> candle_core::Result<Tensor> {
        let base = self.base;
        let cfg = &base.cfg;
        let n = rows.total();
        let ids: Vec<u32> = rows.seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let ids = Tensor::from_vec(ids, n, &Device::Cpu)?;
        let mut x = base.embed.index_select(&ids, 0)?;
        if cfg.arch == Architecture::Gemma {
            x = x.affine((cfg.hidden_size as f64).sqrt() as f32 as f64, 0.0)?;
        }
        let half = cfg.head_dim / 2;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for s in &rows.seqs {
            for pos in 0..s.len() {
                for f in &base.inv_freq {
                    let (sv, cv) = (pos as f32 * f).sin_cos();
                    cos.push(cv);
                    sin.push(sv);
                }
            }
        }
        let rope = Rope {
            cos: Arc::new(cos),
            sin: Arc::new(sin),
            half,
            inverse: false,
        };
        let mods: Vec<ModTensors<'_>> = self
            .lora
            .iter()
            .enumerate()
            .map(|(index, p)| {
                // With probes capturing, the parameters' gradients come from the probes (on
                // the host), so the graph tracks only the probes.
                let t = |v: &Var| {
                    if mode.grad && mode.capture.is_none() {
                        v.as_tensor().clone()
                    } else {
                        v.as_tensor().detach()
                    }
                };
                ModTensors {
                    index,
                    p,
                    a: t(&p.a),
                    b: t(&p.b),
                    m: p.m.as_ref().map(t),
                }
            })
            .collect();
        let mut by_slot: HashMap<(usize, usize), &ModTensors<'_>> = HashMap::new();
        for m in &mods {
            by_slot.insert((m.p.layer, m.p.proj), m);
        }
        let mut masks = HashMap::new();
        for (l, layer) in base.layers.iter().enumerate() {
            let lora = |p: usize| by_slot.get(&(l, p)).copied();
            let xn = base.rms_norm(&x, &layer.input_norm_eff)?;
            let q = self.linear(&layer.proj[0], lora(0), &xn, mode)?;
            let k = self.linear(&layer.proj[1], lora(1), &xn, mode)?;
            let v = self.linear(&layer.proj[2], lora(2), &xn, mode)?;
            let q = q.contiguous()?.apply_op1(rope.clone())?;
            let k = k.contiguous()?.apply_op1(rope.clone())?;
            let attn = self.attention(l, rows, &q, &k, &v, &mut masks)?;
            let o = self.linear(&layer.proj[3], lora(3), &attn, mode)?;
            x = (x + o)?;
            let xn = base.rms_norm(&x, &layer.post_norm_eff)?;
            let gate = self.linear(&layer.proj[4], lora(4), &xn, mode)?;
            let up = self.linear(&layer.proj[5], lora(5), &xn, mode)?;
            let act = match cfg.activation {
                Activation::Silu => gate.silu()?,
                Activation::GeluTanh => gate.gelu()?,
                Activation::Gelu => gate.gelu_erf()?,
            };
            let down = self.linear(&layer.proj[6], lora(6), &(act * up)?, mode)?;
            x = (x + down)?;
        }
        base.rms_norm(&x, &base.norm_eff)
    }

    /// Logits `[rows, vocab]` of hidden rows.
    pub fn head(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        self.base
            .lm_head
            .add_bias(self.base.lm_head.matmul(hidden)?)
    }

    /// Summed negative log-likelihood (a scalar) of `targets` (`(row, token)`: the token the
    /// row predicts); the head runs on the target rows only.
    pub fn nll(&self, hidden: &Tensor, targets: &[(u32, u32)]) -> candle_core::Result<Tensor> {
        self.nll_per_target(hidden, targets)?.sum_all()
    }

    /// The negative log-likelihood of each of `targets`, `[targets, 1]`.
    pub fn nll_per_target(
        &self,
        hidden: &Tensor,
        targets: &[(u32, u32)],
    ) -> candle_core::Result<Tensor> {
        let idx: Vec<u32> = targets.iter().map(|t| t.0).collect();
        let tok: Vec<u32> = targets.iter().map(|t| t.1).collect();
        let n = targets.len();
        let sel = hidden.index_select(&Tensor::from_vec(idx, n, &Device::Cpu)?, 0)?;
        let logits = self.head(&sel)?;
        let max = logits.max_keepdim(1)?.detach();
        let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + max)?;
        let picked = logits.gather(&Tensor::from_vec(tok, (n, 1), &Device::Cpu)?, 1)?;
        lse - picked
    }
}
