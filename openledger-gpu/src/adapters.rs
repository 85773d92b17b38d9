//! Adapters in device memory: every LoRA module of every attached adapter in pages of one slab
//! (`A` and `Bᵀ` in the SGMV kernels' padded layout, [`SlotLayout`]), and one persistent slot
//! table the kernels index by (layer, projection, device slot): `[layers · 7][slots][4]` words
//! of `A`'s address, `Bᵀ`'s address, the rank and the scale's bits. Attaching an adapter
//! writes its pages and its table entries once; a step only uploads its launch tiles. DoRA's
//! magnitudes (turned into its factors on the device by the model) and LoRA biases live in a
//! small f32 buffer of the adapter's, behind a second table of two addresses per (layer,
//! projection, slot) that the epilogue kernel reads. Saved parameters the GPU model swaps in for
//! an adapter's rows (the embeddings, the output head, the norms, projection weights; saved
//! biases as their difference from the base's, added by the epilogue kernel through a table of
//! the adapter's) are buffers of the adapter's ([`SavedAt`]).

use crate::error::GpuError;
use crate::runtime::{Buffer, DevicePtr, Dtype, Runtime, Scatter, UploadId};
use openledger_lora::adapter::{LoraAdapter, ModuleKind};
use openledger_lora::model::{ModelConfig, PROJECTIONS};
use openledger_lora::sgmv::{BLayout, LoraSlot, PageAllocator, PageRun, SlotLayout};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// A `modules_to_save` parameter the GPU model swaps in for an adapter's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SavedAt {
    /// `model.embed_tokens.weight`.
    Embed,
    /// `lm_head.weight`.
    Head,
    /// `model.layers.{l}.input_layernorm.weight`.
    InputNorm(usize),
    /// `model.layers.{l}.post_attention_layernorm.weight`.
    PostNorm(usize),
    /// `model.norm.weight`.
    FinalNorm,
    /// A projection's weight (`model.layers.{l}.self_attn.q_proj.weight`, …), `[out, in]` in
    /// the model's type: the adapter's rows are projected through it instead.
    Weight(usize, usize),
    /// What to add to a projection's outputs for the adapter's rows, f32: its saved bias minus
    /// the base's, or (with a saved weight) its saved bias, else the base's.
    BiasAdd(usize, usize),
}

impl SavedAt {
    /// The parameter a saved tensor's key names, among those the GPU model swaps in.
    fn parse(key: &str, layers: usize) -> Option<Self> {
        match key {
            "model.embed_tokens.weight" => return Some(Self::Embed),
            "lm_head.weight" => return Some(Self::Head),
            "model.norm.weight" => return Some(Self::FinalNorm),
            _ => {}
        }
        if let Some(module) = key.strip_suffix(".weight")
            && let Some((l, p)) = parse_module(module, layers)
        {
            return Some(Self::Weight(l, p));
        }
        if let Some(module) = key.strip_suffix(".bias")
            && let Some((l, p)) = parse_module(module, layers)
        {
            return Some(Self::BiasAdd(l, p));
        }
        let rest = key.strip_prefix("model.layers.")?;
        let (l, param) = rest.split_once('.')?;
        let l: usize = l.parse().ok().filter(|&l| l < layers)?;
        match param {
            "input_layernorm.weight" => Some(Self::InputNorm(l)),
            "post_attention_layernorm.weight" => Some(Self::PostNorm(l)),
            _ => None,
        }
    }

    /// Values the parameter holds in a model of `cfg`.
    fn len(self, cfg: &ModelConfig) -> usize {
        match self {
            Self::Embed | Self::Head => cfg.vocab_size * cfg.hidden_size,
            Self::Weight(_, p) => {
                let (din, dout) = proj_dims(cfg, p);
                din * dout
            }
            Self::BiasAdd(_, p) => proj_dims(cfg, p).1,
            _ => cfg.hidden_size,
        }
    }
}

/// Words per slot table entry (`SLOT_WORDS` in common.cuh).
const SLOT_WORDS: usize = 4;
/// Projections per layer ([`PROJECTIONS`]).
pub(crate) const NPROJ: usize = PROJECTIONS.len();

/// How much device memory adapters may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterBudget {
    /// Adapters held at once (device slots).
    pub slots: usize,
    /// Bytes of the page slab.
    pub slab_bytes: usize,
    /// Bytes per page.
    pub page_bytes: usize,
}

impl Default for AdapterBudget {
    fn default() -> Self {
        Self {
            slots: 64,
            slab_bytes: 64 << 20,
            page_bytes: 16 << 10,
        }
    }
}

/// One module's factors, ready to pack: `a` is `[rank, in]`, `b` `[out, rank]`, row-major
/// (borrowed from an adapter that stores f32, owned where converted or combined); DoRA's
/// magnitude and the LoRA bias times the scale (`[out]`) where the adapter has them.
struct Factors<'a> {
    layer: usize,
    proj: usize,
    a: Cow<'a, [f32]>,
    b: Cow<'a, [f32]>,
    rank: usize,
    scale: f32,
    magnitude: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
}

/// DoRA's factor of one module to compute on the device once its adapter is attached:
/// `g = magnitude / ‖W + scale·B·A‖` per output row, into `g` (which holds the magnitude).
#[derive(Debug)]
pub(crate) struct NormJob {
    pub layer: usize,
    pub proj: usize,
    pub g: DevicePtr,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub rank: usize,
    pub scale: f32,
}

/// One attached adapter.
#[derive(Debug)]
struct Held {
    runs: Vec<PageRun>,
    /// Rank per (layer, projection); 0 where the adapter has no module.
    ranks: Vec<usize>,
    /// DoRA factors and LoRA biases (f32, `[out]` each) of the modules that have them.
    extras: Option<Buffer>,
    /// Per (layer, projection): whether the module has a DoRA factor or a LoRA bias.
    has_extras: Vec<bool>,
    /// `modules_to_save` parameters, in the model's type (bias additions in f32).
    saved: HashMap<SavedAt, Buffer>,
    /// Per (layer, projection), the two words the epilogue kernel reads for its bias
    /// addition (no factor; the addition's address, or 0), where the adapter has one.
    add_table: Option<Buffer>,
}

/// The device tier of adapters (see the module docs).
#[derive(Debug)]
pub(crate) struct DeviceAdapters {
    slab: Buffer,
    pages: PageAllocator,
    page_bytes: usize,
    table: Buffer,
    /// Per (layer, projection, slot): the addresses of the DoRA factor and of the LoRA bias
    /// (0: none), what `lora_epilogue` reads.
    extras_table: Buffer,
    slots: Vec<Option<Held>>,
    by_name: HashMap<String, usize>,
    layers: usize,
    rt: Arc<dyn Runtime>,
    /// Adapters whose pages are still being copied on the copy stream.
    pending: HashMap<String, UploadId>,
}

/// `(in, out)` features of projection `p` of a layer.
pub(crate) fn proj_dims(cfg: &ModelConfig, p: usize) -> (usize, usize) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    match p {
        0 => (h, q),
        1 | 2 => (h, kv),
        3 => (q, h),
        4 | 5 => (h, i),
        _ => (i, h),
    }
}

/// Device bytes (whole pages of `page_bytes`) one adapter of rank `rank` on projections
/// `targets` (names of [`PROJECTIONS`]) of every layer takes in the slab, held as `dtype`: what
/// to size an [`AdapterBudget`]'s slab with.
pub fn adapter_bytes(
    cfg: &ModelConfig,
    rank: usize,
    targets: &[&str],
    dtype: Dtype,
    page_bytes: usize,
) -> usize {
    let eb = dtype.bytes();
    let per_layer: usize = targets
        .iter()
        .filter_map(|t| PROJECTIONS.iter().position(|p| p == t))
        .map(|p| {
            let (din, dout) = proj_dims(cfg, p);
            SlotLayout::new(din, dout, rank, eb).pages(eb, page_bytes) * page_bytes
        })
        .sum();
    per_layer * cfg.num_layers
}

/// `(layer, projection)` of a module name of this model, if it is one.
fn parse_module(name: &str, layers: usize) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (l, rest) = rest.split_once('.')?;
    let l: usize = l.parse().ok()?;
    let (group, proj) = rest.split_once('.')?;
    let p = PROJECTIONS.iter().position(|&x| x == proj)?;
    let want = if p < 4 { "self_attn" } else { "mlp" };
    (l < layers && group == want).then_some((l, p))
}

impl DeviceAdapters {
    pub fn new(
        rt: &Arc<dyn Runtime>,
        cfg: &ModelConfig,
        budget: AdapterBudget,
    ) -> Result<Self, GpuError> {
        if budget.slots == 0 || budget.page_bytes < 256 || budget.slab_bytes < budget.page_bytes {
            return Err(GpuError::InvalidArgument {
                name: "adapter budget",
                reason: format!(
                    "{budget:?}: at least one slot, pages of 256 bytes or more, a slab of one page or more"
                ),
            });
        }
        let pages = budget.slab_bytes / budget.page_bytes;
        let slab = Buffer::new(rt, pages * budget.page_bytes)?;
        // One entry more than the slots per (layer, projection): the null slot, always zero.
        let table_bytes = cfg.num_layers * NPROJ * (budget.slots + 1) * SLOT_WORDS * 8;
        let table = Buffer::from_bytes(rt, &vec![0u8; table_bytes])?;
        let extras_table = Buffer::from_bytes(
            rt,
            &vec![0u8; cfg.num_layers * NPROJ * (budget.slots + 1) * 16],
        )?;
        Ok(Self {
            slab,
            pages: PageAllocator::new(pages),
            page_bytes: budget.page_bytes,
            table,
            extras_table,
            slots: (0..budget.slots).map(|_| None).collect(),
            by_name: HashMap::new(),
            layers: cfg.num_layers,
            rt: Arc::clone(rt),
            pending: HashMap::new(),
        })
    }

    /// Whether adapter `name`'s pages have landed (an adapter not attached has nothing in
    /// flight); asks the runtime without waiting.
    pub fn landed(&mut self, name: &str) -> Result<bool, GpuError> {
        let Some(&id) = self.pending.get(name) else {
            return Ok(true);
        };
        let done = self.rt.upload_done(id)?;
        if done {
            self.pending.remove(name);
        }
        Ok(done)
    }

    /// Waits until adapter `name`'s pages have landed.
    pub fn wait(&mut self, name: &str) -> Result<(), GpuError> {
        if let Some(id) = self.pending.remove(name) {
            self.rt.wait_upload(id)?;
        }
        Ok(())
    }

    /// Adapters still being copied.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The device slot of adapter `name`.
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Names of the attached adapters.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// Rank of slot `slot`'s module (layer, projection); 0 where it has none.
    pub fn rank(&self, slot: usize, layer: usize, proj: usize) -> usize {
        self.slots[slot]
            .as_ref()
            .map_or(0, |h| h.ranks[layer * NPROJ + proj])
    }

    /// Device slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Entries per (layer, projection) in the tables: the slots and the null slot.
    fn stride(&self) -> usize {
        self.slots.len() + 1
    }

    /// A slot index whose entries are always zero (rank 0, no DoRA factor, no bias): the
    /// kernels pass over a tile of it. A step captured as a graph gives it to rows with no
    /// adapter.
    pub fn null_slot(&self) -> usize {
        self.slots.len()
    }

    /// The slot table of (layer, projection).
    pub fn table(&self, layer: usize, proj: usize) -> DevicePtr {
        self.table
            .at((layer * NPROJ + proj) * self.stride() * SLOT_WORDS * 8)
    }

    /// Whether slot `slot`'s module (layer, projection) has a DoRA factor or a LoRA bias.
    pub fn has_extras(&self, slot: usize, layer: usize, proj: usize) -> bool {
        self.slots[slot]
            .as_ref()
            .is_some_and(|h| h.has_extras[layer * NPROJ + proj])
    }

    /// Slot `slot`'s copy of a `modules_to_save` parameter, where its adapter has one.
    pub fn saved(&self, slot: usize, at: SavedAt) -> Option<DevicePtr> {
        self.slots[slot]
            .as_ref()
            .and_then(|h| h.saved.get(&at))
            .map(Buffer::ptr)
    }

    /// The epilogue table of slot `slot`'s bias additions for (layer, projection), read with
    /// slot index 0 (see [`Held::add_table`]).
    pub fn add_table(&self, slot: usize, layer: usize, proj: usize) -> Option<DevicePtr> {
        self.slots[slot]
            .as_ref()
            .and_then(|h| h.add_table.as_ref())
            .map(|t| t.at((layer * NPROJ + proj) * 16))
    }

    /// Whether slot `slot`'s adapter has `modules_to_save` parameters.
    pub fn has_saved(&self, slot: usize) -> bool {
        self.slots[slot]
            .as_ref()
            .is_some_and(|h| !h.saved.is_empty())
    }

    /// The DoRA / LoRA-bias table of (layer, projection): two words per slot.
    pub fn extras_table(&self, layer: usize, proj: usize) -> DevicePtr {
        self.extras_table
            .at((layer * NPROJ + proj) * self.stride() * 16)
    }

    /// Bytes of the slab, the tables and the adapters' DoRA factors and LoRA biases.
    pub fn bytes(&self) -> usize {
        self.slab.len()
            + self.table.len()
            + self.extras_table.len()
            + self
                .slots
                .iter()
                .flatten()
                .flat_map(|h| h.extras.iter().chain(h.saved.values()).chain(&h.add_table))
                .map(Buffer::len)
                .sum::<usize>()
    }

    /// Free pages of the slab.
    pub fn free_pages(&self) -> usize {
        self.pages.free_pages()
    }

    /// Each module of `adapter` (validated against the model) as factors to pack.
    fn factors<'a>(
        &self,
        cfg: &ModelConfig,
        name: &str,
        adapter: &'a LoraAdapter,
    ) -> Result<Vec<Factors<'a>>, GpuError> {
        let incompatible = |reason: String| GpuError::InvalidArgument {
            name: "adapter",
            reason: format!("{name}: {reason}"),
        };
        let unsupported = |what: &str| GpuError::Unsupported {
            what: format!("{what} (adapter {name})"),
        };
        let mut out = Vec::with_capacity(adapter.num_modules());
        for (module, m) in adapter.modules() {
            let Some((l, p)) = parse_module(module, self.layers) else {
                return Err(incompatible(format!(
                    "{module:?} is not a projection of this model"
                )));
            };
            if m.kind() != ModuleKind::Linear || m.fan_in_fan_out() {
                return Err(incompatible(format!(
                    "{module:?} is not an [out, in] linear layer"
                )));
            }
            let (din, dout) = proj_dims(cfg, p);
            if (m.in_features(), m.out_features()) != (din, dout) {
                return Err(incompatible(format!(
                    "{module:?} is {}→{}, the model's is {din}→{dout}",
                    m.in_features(),
                    m.out_features()
                )));
            }
            if !m.scale().is_finite() {
                return Err(incompatible(format!("{module:?}: scale {}", m.scale())));
            }
            let vector = |what: &str, t: &openledger_lora::adapter::tensors::HostTensor| {
                let v = t.to_f32().into_owned();
                if v.len() != dout {
                    return Err(incompatible(format!(
                        "{module:?}: {what} of {} values, the projection has {dout} outputs",
                        v.len()
                    )));
                }
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(incompatible(format!(
                        "{module:?}: {what} value {i} is {}",
                        v[i]
                    )));
                }
                Ok(v)
            };
            let magnitude = m.magnitude().map(|t| vector("magnitude", t)).transpose()?;
            let base_bias = match p {
                0..=2 => cfg.attention_bias || cfg.qkv_bias,
                3 => cfg.attention_bias,
                _ => cfg.mlp_bias,
            };
            if m.lora_bias().is_some() && !base_bias {
                // As the CPU model: PEFT folds a LoRA bias into the base layer's own.
                return Err(unsupported(&format!(
                    "lora_bias on {module:?}, whose base layer has no bias"
                )));
            }
            let bias = m
                .lora_bias()
                .map(|t| vector("lora bias", t))
                .transpose()?
                .map(|b| b.iter().map(|v| v * m.scale()).collect());
            out.push(Factors {
                layer: l,
                proj: p,
                a: m.a_f32(),
                b: m.b_f32(),
                rank: m.rank(),
                scale: m.scale(),
                magnitude,
                bias,
            });
        }
        Ok(out)
    }

    /// `adapter`'s `modules_to_save` parameters (and biases saved by its `bias` mode) as the
    /// GPU model holds them, checked against the model: the embeddings, the output head and
    /// norms in the model's type; a projection's weight in the model's type; a projection's
    /// bias as what to add to the base projection's outputs (its saved bias minus the base's
    /// `base_bias(layer, projection)`, or, with a saved weight, its saved bias or else the
    /// base's), in f32. Any other saved parameter is [`GpuError::Unsupported`].
    fn saved_params(
        &self,
        cfg: &ModelConfig,
        dtype: Dtype,
        name: &str,
        adapter: &LoraAdapter,
        base_bias: &mut dyn FnMut(usize, usize) -> Result<Option<Vec<f32>>, GpuError>,
    ) -> Result<Vec<(SavedAt, Vec<u8>)>, GpuError> {
        let mut out: Vec<(SavedAt, Vec<u8>)> = Vec::new();
        let mut biases: HashMap<(usize, usize), Vec<f32>> = HashMap::new();
        for (key, t) in adapter.saved_tensors() {
            let at = SavedAt::parse(key, self.layers).ok_or_else(|| GpuError::Unsupported {
                what: format!(
                    "modules_to_save parameter {key} of adapter {name} (the GPU model swaps in \
                     the embeddings, the output head, the norms and the projections)"
                ),
            })?;
            let bad = |reason: String| GpuError::InvalidArgument {
                name: "adapter",
                reason: format!("{name}: saved {key}: {reason}"),
            };
            let v = t.to_f32();
            if v.len() != at.len(cfg) {
                return Err(bad(format!(
                    "{} values, the model's has {}",
                    v.len(),
                    at.len(cfg)
                )));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!("value {i} is {}", v[i])));
            }
            match at {
                SavedAt::BiasAdd(l, p) => {
                    biases.insert((l, p), v.into_owned());
                }
                _ => out.push((at, dtype.encode(&v))),
            }
        }
        let weights: Vec<(usize, usize)> = out
            .iter()
            .filter_map(|(at, _)| match at {
                SavedAt::Weight(l, p) => Some((*l, *p)),
                _ => None,
            })
            .collect();
        let mut adds: Vec<((usize, usize), Vec<f32>)> = Vec::new();
        for (&(l, p), saved) in &biases {
            let add = if weights.contains(&(l, p)) {
                saved.clone()
            } else {
                let base = base_bias(l, p)?;
                match base {
                    Some(b) => saved.iter().zip(&b).map(|(s, b)| s - b).collect(),
                    None => saved.clone(),
                }
            };
            adds.push(((l, p), add));
        }
        for &(l, p) in &weights {
            if !biases.contains_key(&(l, p))
                && let Some(b) = base_bias(l, p)?
            {
                // A saved weight without its bias keeps the base's (the base GEMM's output,
                // which held it, is overwritten).
                adds.push(((l, p), b));
            }
        }
        out.extend(
            adds.into_iter()
                .map(|((l, p), v)| (SavedAt::BiasAdd(l, p), Dtype::F32.encode(&v))),
        );
        Ok(out)
    }

    /// Copies `adapter` to the device as `name` (replacing an adapter of that name, whose pages
    /// are freed once the new copy is written). Refused, changing nothing: a module that is not
    /// a projection of this model or of other dimensions, a LoRA bias where the base layer has
    /// none, a `modules_to_save` parameter other than the embeddings, the head, a norm or a
    /// projection's weight or bias (or of another shape, or not finite), no free slot, no run
    /// of free pages long enough. `base_bias` gives a projection's base bias (for saved
    /// biases). With `asynchronous`, the pages are copied on the runtime's copy stream and
    /// the adapter must not run before [`landed`](Self::landed) says so (or
    /// [`wait`](Self::wait) returns); the slot table is written at once (nothing reads a slot no
    /// batch names). Returns the slot and the DoRA factors the caller computes next.
    pub fn attach(
        &mut self,
        cfg: &ModelConfig,
        dtype: Dtype,
        name: &str,
        adapter: &LoraAdapter,
        asynchronous: bool,
        base_bias: &mut dyn FnMut(usize, usize) -> Result<Option<Vec<f32>>, GpuError>,
    ) -> Result<(usize, Vec<NormJob>), GpuError> {
        let factors = self.factors(cfg, name, adapter)?;
        let saved = self.saved_params(cfg, dtype, name, adapter, base_bias)?;
        self.attach_factors(cfg, dtype, name, factors, saved, asynchronous)
    }

    /// Copies the ensemble of `members` (each with its weight) to the device as `name`: one
    /// adapter whose every module concatenates the members' factors, `A = [w₁s₁A₁; w₂s₂A₂; …]`
    /// and `B = [B₁ B₂ …]` at scale 1, so that it adds `Σⱼ wⱼ·sⱼ·Bⱼ·Aⱼ·x` — what the CPU
    /// model's ensemble adds — in one SGMV segment (rank: the sum of the members'). Refused as
    /// [`attach`](Self::attach) refuses a member, for a weight that is not finite, and for a
    /// member with DoRA, a LoRA bias or `modules_to_save` parameters (not a sum of products;
    /// the CPU model refuses them too).
    pub fn attach_ensemble(
        &mut self,
        cfg: &ModelConfig,
        dtype: Dtype,
        name: &str,
        members: &[(&LoraAdapter, f32)],
        asynchronous: bool,
    ) -> Result<(usize, Vec<NormJob>), GpuError> {
        if members.is_empty() {
            return Err(GpuError::InvalidArgument {
                name: "members",
                reason: format!("the ensemble {name} names no adapter"),
            });
        }
        let mut by_module: std::collections::BTreeMap<(usize, usize), Vec<(Factors<'_>, f32)>> =
            std::collections::BTreeMap::new();
        for (j, &(adapter, weight)) in members.iter().enumerate() {
            if !weight.is_finite() {
                return Err(GpuError::InvalidArgument {
                    name: "members",
                    reason: format!("member {j} of {name} has weight {weight}"),
                });
            }
            if adapter.saved_tensors().len() > 0 {
                return Err(GpuError::Unsupported {
                    what: format!(
                        "member {j} of ensemble {name} has modules_to_save parameters (only \
                         plain LoRA members are summed)"
                    ),
                });
            }
            for f in self.factors(cfg, &format!("{name} (member {j})"), adapter)? {
                if f.magnitude.is_some() || f.bias.is_some() {
                    return Err(GpuError::Unsupported {
                        what: format!(
                            "member {j} of ensemble {name} has DoRA or a LoRA bias (only plain \
                             LoRA members are summed)"
                        ),
                    });
                }
                by_module
                    .entry((f.layer, f.proj))
                    .or_default()
                    .push((f, weight));
            }
        }
        let factors = by_module
            .into_iter()
            .map(|((layer, proj), parts)| {
                let rank: usize = parts.iter().map(|(f, _)| f.rank).sum();
                let (din, dout) = proj_dims(cfg, proj);
                let mut a = Vec::with_capacity(rank * din);
                for (f, w) in &parts {
                    let k = w * f.scale;
                    a.extend(f.a.iter().map(|v| v * k));
                }
                let mut b = Vec::with_capacity(dout * rank);
                for o in 0..dout {
                    for (f, _) in &parts {
                        b.extend_from_slice(&f.b[o * f.rank..(o + 1) * f.rank]);
                    }
                }
                Factors {
                    layer,
                    proj,
                    a: Cow::Owned(a),
                    b: Cow::Owned(b),
                    rank,
                    scale: 1.0,
                    magnitude: None,
                    bias: None,
                }
            })
            .collect();
        self.attach_factors(cfg, dtype, name, factors, Vec::new(), asynchronous)
    }

    /// Packs `factors` into pages of the slab and a slot (see [`attach`](Self::attach)).
    fn attach_factors(
        &mut self,
        cfg: &ModelConfig,
        dtype: Dtype,
        name: &str,
        modules: Vec<Factors<'_>>,
        saved: Vec<(SavedAt, Vec<u8>)>,
        asynchronous: bool,
    ) -> Result<(usize, Vec<NormJob>), GpuError> {
        // A replacement takes the slot of the adapter it replaces.
        let previous = self.by_name.get(name).copied();
        let slot = match previous {
            Some(s) => s,
            None => self.slots.iter().position(Option::is_none).ok_or_else(|| {
                GpuError::OutOfMemory {
                    what: format!(
                        "a device slot for adapter {name} (all {} are held)",
                        self.slots.len()
                    ),
                    bytes: 0,
                }
            })?,
        };
        // A replaced adapter's copy in flight lands before its pages can be given away.
        self.wait(name)?;
        // Saved parameters first: a failure here has changed nothing.
        let saved = saved
            .into_iter()
            .map(|(at, bytes)| Ok((at, Buffer::from_bytes(&self.rt, &bytes)?)))
            .collect::<Result<HashMap<SavedAt, Buffer>, GpuError>>()?;
        // The bias additions' epilogue table: per (layer, projection), no factor and the
        // addition's address.
        let add_table = if saved.keys().any(|k| matches!(k, SavedAt::BiasAdd(..))) {
            let mut words = vec![0i64; self.layers * NPROJ * 2];
            for (at, b) in &saved {
                if let SavedAt::BiasAdd(l, p) = *at {
                    words[(l * NPROJ + p) * 2 + 1] = b.ptr() as i64;
                }
            }
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            Some(Buffer::from_bytes(&self.rt, &bytes)?)
        } else {
            None
        };
        let eb = dtype.bytes();
        let mut runs = Vec::with_capacity(modules.len());
        // Every module's packed factors, one after another, and where each goes.
        let mut host: Vec<u8> = Vec::new();
        let mut copies: Vec<Scatter> = Vec::with_capacity(modules.len());
        let mut entries = Vec::with_capacity(modules.len());
        let mut ranks = vec![0usize; self.layers * NPROJ];
        // A replaced adapter keeps its pages until the new copy is written: a failed
        // replacement leaves it as it was.
        let result = (|| -> Result<(), GpuError> {
            for m in &modules {
                let (l, p) = (m.layer, m.proj);
                let (din, dout) = proj_dims(cfg, p);
                let layout = SlotLayout::new(din, dout, m.rank, eb);
                let npages = layout.pages(eb, self.page_bytes);
                let run = self
                    .pages
                    .alloc(npages)
                    .map_err(|e| GpuError::OutOfMemory {
                        what: format!("adapter {name} in the device slab: {e}"),
                        bytes: npages * self.page_bytes,
                    })?;
                runs.push(run);
                let slot = LoraSlot {
                    a: &m.a,
                    b: &m.b,
                    rank: m.rank,
                    scale: m.scale,
                };
                let packed = dtype.encode(&layout.pack(&slot, din, dout, BLayout::OutRank));
                let at = run.start * self.page_bytes;
                if at + packed.len() > self.slab.len() {
                    return Err(GpuError::BufferTooSmall {
                        what: "adapter slab",
                        needed: at + packed.len(),
                        len: self.slab.len(),
                    });
                }
                copies.push(Scatter {
                    dst: self.slab.at(at),
                    src_offset: host.len(),
                    len: packed.len(),
                });
                host.extend_from_slice(&packed);
                let a_addr = self.slab.at(at);
                let b_addr = a_addr + (layout.b_offset * eb) as u64;
                entries.push((
                    l,
                    p,
                    [
                        a_addr as i64,
                        b_addr as i64,
                        m.rank as i64,
                        i64::from(m.scale.to_bits()),
                    ],
                ));
                ranks[l * NPROJ + p] = m.rank;
            }
            if asynchronous {
                // SAFETY: every destination lies in the slab (checked above), in pages no
                // other adapter holds; `pending` keeps the adapter from running, and its pages
                // from being given away, until the copy has landed.
                let id = unsafe { self.rt.upload_async(&host, &copies)? };
                self.pending.insert(name.to_string(), id);
            } else {
                for c in &copies {
                    let at = (c.dst - self.slab.ptr()) as usize;
                    self.slab
                        .write(at, &host[c.src_offset..c.src_offset + c.len])?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            for r in runs {
                self.pages.free(r);
            }
            return Err(e);
        }
        // DoRA's magnitudes (made into its factors by the caller's norm jobs) and the LoRA
        // biases, in one f32 buffer of the adapter's.
        let mut has_extras = vec![false; self.layers * NPROJ];
        let mut values: Vec<f32> = Vec::new();
        let mut placed = Vec::new();
        for m in &modules {
            let at = |v: &Option<Vec<f32>>, values: &mut Vec<f32>| {
                v.as_ref().map(|v| {
                    let at = values.len();
                    values.extend_from_slice(v);
                    at
                })
            };
            let g = at(&m.magnitude, &mut values);
            let c = at(&m.bias, &mut values);
            if g.is_some() || c.is_some() {
                has_extras[m.layer * NPROJ + m.proj] = true;
                placed.push((m, g, c));
            }
        }
        let extras = if values.is_empty() {
            None
        } else {
            match Buffer::from_bytes(&self.rt, &Dtype::F32.encode(&values)) {
                Ok(b) => Some(b),
                Err(e) => {
                    for r in runs {
                        self.pages.free(r);
                    }
                    return Err(e);
                }
            }
        };
        let old = previous.and_then(|s| self.slots[s].take());
        let old_extras = old.as_ref().is_some_and(|h| h.extras.is_some());
        if let Some(old) = old {
            for r in old.runs {
                self.pages.free(r);
            }
            if old.extras.is_some() {
                // Nothing still running may read the old factors once they are freed.
                self.rt.synchronize()?;
            }
        }
        let cap = self.stride();
        // Every (layer, projection) of the slot is written, zero where the adapter has no
        // module: a step captured as a graph launches each one for every row, and the kernels
        // pass over rank 0, so no entry of an earlier adapter may be left.
        let mut words = vec![[0i64; SLOT_WORDS]; self.layers * NPROJ];
        for (l, p, w) in entries {
            words[l * NPROJ + p] = w;
        }
        for (lp, w) in words.iter().enumerate() {
            let off = (lp * cap + slot) * SLOT_WORDS * 8;
            let bytes: Vec<u8> = w.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.table.write(off, &bytes)?;
        }
        let mut jobs = Vec::new();
        if extras.is_some() || old_extras {
            // Every (layer, projection) of the slot: this adapter's addresses, or none.
            let mut words = vec![0i64; self.layers * NPROJ * 2];
            if let Some(buf) = &extras {
                for (m, g, c) in placed {
                    let k = (m.layer * NPROJ + m.proj) * 2;
                    if let Some(g) = g {
                        words[k] = buf.at(g * 4) as i64;
                        jobs.push(NormJob {
                            layer: m.layer,
                            proj: m.proj,
                            g: buf.at(g * 4),
                            a: m.a.to_vec(),
                            b: m.b.to_vec(),
                            rank: m.rank,
                            scale: m.scale,
                        });
                    }
                    if let Some(c) = c {
                        words[k + 1] = buf.at(c * 4) as i64;
                    }
                }
            }
            self.write_extras(slot, &words)?;
        }
        self.slots[slot] = Some(Held {
            runs,
            ranks,
            extras,
            has_extras,
            saved,
            add_table,
        });
        self.by_name.insert(name.to_string(), slot);
        Ok((slot, jobs))
    }

    /// Writes slot `slot`'s two words of every (layer, projection) of the extras table.
    fn write_extras(&mut self, slot: usize, words: &[i64]) -> Result<(), GpuError> {
        let cap = self.stride();
        for lp in 0..self.layers * NPROJ {
            let bytes: Vec<u8> = words[lp * 2..lp * 2 + 2]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            self.extras_table.write((lp * cap + slot) * 16, &bytes)?;
        }
        Ok(())
    }

    /// Frees adapter `name`'s pages and slot (once a copy of them in flight has landed); false
    /// when it is not attached.
    pub fn detach(&mut self, name: &str) -> Result<bool, GpuError> {
        self.wait(name)?;
        let Some(slot) = self.by_name.remove(name) else {
            return Ok(false);
        };
        if let Some(h) = self.slots[slot].take() {
            for r in h.runs {
                self.pages.free(r);
            }
            if h.extras.is_some() {
                self.write_extras(slot, &vec![0; self.layers * NPROJ * 2])?;
                // Nothing still running may read the factors once they are freed.
                self.rt.synchronize()?;
            }
        }
        Ok(true)
    }
}
