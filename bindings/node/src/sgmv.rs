//! JavaScript face of `openledger_lora::sgmv`: many LoRA adapters applied to one batch in one
//! pass. `y[i] += scale_s · (x[i] · A_sᵀ) · B_sᵀ` for each row `i` with adapter slot `s`, slots
//! being `LoraModule`s of one layer. Activations are float32 (`Float32Array`) or the bit
//! patterns of f16 / bf16 values (`Uint16Array` with `dtype`); the result is a new array (`y`
//! is left as it was).

use std::borrow::Cow;
use std::sync::Arc;

use half::{bf16, f16};
use napi::Either;
use napi::bindgen_prelude::{AsyncTask, Float32Array, Uint16Array};
use napi_derive::napi;
use openledger_lora::adapter::LoraAdapter as RustAdapter;
use openledger_lora::adapter::tensors::HostTensor;
use openledger_lora::sgmv::{self as rs, AdapterSlots, LoraElement, LoraSlot, Segments, SgmvError};

use crate::adapters::LoraModule;
use crate::error::{ErrorCode, JsResult, Result, invalid_arg};
use crate::task::{count, task};

task!(
    /// Resolves to the updated activations.
    BatchTask => Either<Float32Array, Uint16Array>
);

/// A row range `[start, end)` of the batch that runs with the adapter `modules[slot]`.
#[napi(object)]
pub struct Segment {
    /// First row.
    pub start: f64,
    /// One past the last row.
    pub end: f64,
    /// Index into `modules`.
    pub slot: f64,
}

/// The element type of a batch.
#[napi(object)]
#[derive(Default)]
pub struct BatchOptions {
    /// `"f32"` (the default, with `Float32Array`s), `"f16"` or `"bf16"` (with `Uint16Array`s
    /// holding the bit patterns).
    pub dtype: Option<String>,
}

/// An element type whose values can be read from an adapter's factors.
trait Element: LoraElement {
    /// The factor in this type: borrowed when stored so, converted otherwise.
    fn factor(t: &HostTensor) -> Cow<'_, [Self]> {
        match Self::stored(t) {
            Some(v) => Cow::Borrowed(v),
            None => Cow::Owned(t.to_f32().iter().map(|v| Self::from_f32(*v)).collect()),
        }
    }
    /// The factor when it is stored in this type.
    fn stored(t: &HostTensor) -> Option<&[Self]>;
}

impl Element for f32 {
    fn stored(t: &HostTensor) -> Option<&[f32]> {
        t.as_f32()
    }
}

impl Element for f16 {
    fn stored(t: &HostTensor) -> Option<&[f16]> {
        t.as_f16()
    }
}

impl Element for bf16 {
    fn stored(t: &HostTensor) -> Option<&[bf16]> {
        t.as_bf16()
    }
}

type Module = (Arc<RustAdapter>, String);

/// How the batch is laid out across the slots.
enum Rows {
    Segments(Segments),
    Indices(Vec<Option<usize>>),
}

/// Runs SGMV or BGMV over `x` and a copy of `y` with the factors of `modules`.
fn run<T: Element>(x: &[T], mut y: Vec<T>, modules: &[Module], rows: &Rows) -> Result<Vec<T>> {
    let mut factors = Vec::with_capacity(modules.len());
    for (i, (adapter, name)) in modules.iter().enumerate() {
        let m = adapter
            .module(name)
            .ok_or_else(|| invalid_arg(&format!("modules[{i}]"), format!("no module {name:?}")))?;
        factors.push((T::factor(m.a()), T::factor(m.b()), m.rank(), m.scale()));
    }
    let (in_features, out_features) = match modules.first() {
        Some((a, n)) => a
            .module(n)
            .map_or((0, 0), |m| (m.in_features(), m.out_features())),
        None => return Err(invalid_arg("modules", "at least one module is needed")),
    };
    let slots = factors
        .iter()
        .map(|(a, b, rank, scale)| LoraSlot {
            a,
            b,
            rank: *rank,
            scale: *scale,
        })
        .collect();
    let slots = AdapterSlots::new(in_features, out_features, slots).js()?;
    let r: std::result::Result<(), SgmvError> = match rows {
        Rows::Segments(s) => rs::sgmv(x, &slots, s, &mut y),
        Rows::Indices(ix) => rs::bgmv(x, &slots, ix, &mut y),
    };
    r.js()?;
    Ok(y)
}

fn spawn(
    x: Either<Float32Array, Uint16Array>,
    y: Either<Float32Array, Uint16Array>,
    modules: Vec<&LoraModule>,
    rows: Rows,
    options: Option<BatchOptions>,
) -> Result<AsyncTask<BatchTask>> {
    let dtype = options
        .and_then(|o| o.dtype)
        .unwrap_or_else(|| "f32".into());
    let modules: Vec<Module> = modules
        .iter()
        .map(|m| (m.adapter.clone(), m.name.clone()))
        .collect();
    match (dtype.as_str(), x, y) {
        ("f32", Either::A(x), Either::A(y)) => {
            let (x, y) = (x.to_vec(), y.to_vec());
            Ok(BatchTask::spawn(move || {
                let out = run::<f32>(&x, y, &modules, &rows)?;
                Ok(Either::A(Float32Array::new(out)))
            }))
        }
        ("f16", Either::B(x), Either::B(y)) => {
            let x: Vec<f16> = x.iter().map(|b| f16::from_bits(*b)).collect();
            let y: Vec<f16> = y.iter().map(|b| f16::from_bits(*b)).collect();
            Ok(BatchTask::spawn(move || {
                let out = run::<f16>(&x, y, &modules, &rows)?;
                Ok(Either::B(Uint16Array::new(
                    out.iter().map(|v| v.to_bits()).collect(),
                )))
            }))
        }
        ("bf16", Either::B(x), Either::B(y)) => {
            let x: Vec<bf16> = x.iter().map(|b| bf16::from_bits(*b)).collect();
            let y: Vec<bf16> = y.iter().map(|b| bf16::from_bits(*b)).collect();
            Ok(BatchTask::spawn(move || {
                let out = run::<bf16>(&x, y, &modules, &rows)?;
                Ok(Either::B(Uint16Array::new(
                    out.iter().map(|v| v.to_bits()).collect(),
                )))
            }))
        }
        ("f32" | "f16" | "bf16", x, y) => {
            let kind = |v: &Either<Float32Array, Uint16Array>| match v {
                Either::A(_) => "Float32Array",
                Either::B(_) => "Uint16Array",
            };
            let want = if dtype == "f32" {
                "Float32Array"
            } else {
                "Uint16Array"
            };
            Err(crate::error::Error::new(
                ErrorCode::InvalidArg,
                format!(
                    "x, y: dtype {dtype:?} takes {want}s, found x: {}, y: {}",
                    kind(&x),
                    kind(&y)
                ),
            ))
        }
        (other, ..) => Err(invalid_arg(
            "dtype",
            format!("expected \"f32\", \"f16\" or \"bf16\", found {other:?}"),
        )),
    }
}

/// SGMV (prefill): `x` is `[rows, inFeatures]` and `y` `[rows, outFeatures]`, row-major; each
/// segment's rows use the adapter `modules[slot]`, rows outside every segment are copied as
/// they are. Resolves to the updated `y` (a new array of the same type).
#[napi(catch_unwind)]
pub fn sgmv(
    x: Either<Float32Array, Uint16Array>,
    y: Either<Float32Array, Uint16Array>,
    modules: Vec<&LoraModule>,
    segments: Vec<Segment>,
    options: Option<BatchOptions>,
) -> Result<AsyncTask<BatchTask>> {
    crate::error::guard(|| {
        let triples = segments
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let name = format!("segments[{i}]");
                Ok((
                    count(&name, s.start)?,
                    count(&name, s.end)?,
                    count(&name, s.slot)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = Rows::Segments(Segments::from_triples(&triples));
        spawn(x, y, modules, rows, options)
    })
}

/// BGMV (decode): `indices[i]` is the slot of row `i`, or `null` for no adapter. Resolves to
/// the updated `y`.
#[napi(catch_unwind)]
pub fn bgmv(
    x: Either<Float32Array, Uint16Array>,
    y: Either<Float32Array, Uint16Array>,
    modules: Vec<&LoraModule>,
    indices: Vec<Option<f64>>,
    options: Option<BatchOptions>,
) -> Result<AsyncTask<BatchTask>> {
    crate::error::guard(|| {
        let ix = indices
            .iter()
            .enumerate()
            .map(|(i, s)| s.map(|s| count(&format!("indices[{i}]"), s)).transpose())
            .collect::<Result<Vec<_>>>()?;
        spawn(x, y, modules, Rows::Indices(ix), options)
    })
}
