//! Python face of `openledger_lora::sgmv`: many LoRA adapters applied to one batch in one pass.
//! `y[i] += scale_s · (x[i] · A_sᵀ) · B_sᵀ` for each row `i` with adapter slot `s`, slots being
//! `LoraModule`s of one layer; `y` is updated in place. Activations are float32; the factors are
//! read in place in the type they are stored in (f32, f16 or bf16, accumulated in f32) when
//! every module stores the same one, else widened to f32 once per call.

use std::borrow::Cow;

use numpy::{PyReadonlyArray2, PyReadwriteArray2, PyUntypedArrayMethods};
use openledger_core::DType;
use openledger_lora::adapter::LoraModule;
use openledger_lora::adapter::tensors::HostTensor;
use openledger_lora::sgmv::{AdapterSlots, LoraElement, LoraSlot, Segments, SgmvError, bgmv, sgmv};
use pyo3::prelude::*;

use crate::adapters::PyLoraModule;
use crate::error::{Result, invalid_arg};

fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<numpy::PyUntypedArray>() {
        Ok(a) => format!("{}-D {} of shape {:?}", a.ndim(), a.dtype(), a.shape()),
        Err(_) => obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into()),
    }
}

/// A factor in the element type a call runs with: borrowed when stored so.
type Factor<'a, W> = Cow<'a, [W]>;

/// How the batch's rows are laid out across the slots.
enum Rows {
    Segments(Segments),
    Indices(Vec<Option<usize>>),
}

/// Runs SGMV or BGMV over a batch of `features.0` inputs and `features.1` outputs with the
/// factors of `modules` read as `W` (`stored`: the factor when it is stored as `W`; the others
/// are converted).
fn run<W: LoraElement>(
    x: &[f32],
    features: (usize, usize),
    modules: &[&LoraModule],
    stored: impl Fn(&HostTensor) -> Option<&[W]>,
    rows: &Rows,
    y: &mut [f32],
) -> std::result::Result<(), SgmvError> {
    let factor = |t| match stored(t) {
        Some(v) => Cow::Borrowed(v),
        None => Cow::Owned(t.to_f32().iter().map(|&v| W::from_f32(v)).collect()),
    };
    let factors: Vec<(Factor<'_, W>, Factor<'_, W>)> = modules
        .iter()
        .map(|m| (factor(m.a()), factor(m.b())))
        .collect();
    let slots = modules
        .iter()
        .zip(&factors)
        .map(|(m, (a, b))| LoraSlot {
            a,
            b,
            rank: m.rank(),
            scale: m.scale(),
        })
        .collect();
    let slots = AdapterSlots::new(features.0, features.1, slots)?;
    match rows {
        Rows::Segments(s) => sgmv(x, &slots, s, y),
        Rows::Indices(ix) => bgmv(x, &slots, ix, y),
    }
}

/// Runs the batch `x` (`[rows, in]`) through the slots of `modules` into `y` (`[rows, out]`, in
/// place), with the GIL released.
fn with_batch(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    modules: &[PyRef<'_, PyLoraModule>],
    rows: Rows,
) -> Result<()> {
    let xs: PyReadonlyArray2<'_, f32> = x.extract().map_err(|_| {
        invalid_arg(
            "x",
            format!(
                "expected a 2-D float32 array [rows, in], found {}",
                describe(x)
            ),
        )
    })?;
    let mut ys: PyReadwriteArray2<'_, f32> = y.extract().map_err(|_| {
        invalid_arg(
            "y",
            format!(
                "expected a writeable 2-D float32 array [rows, out] not shared with x, found {}",
                describe(y)
            ),
        )
    })?;
    let (in_features, out_features) = (xs.shape()[1], ys.shape()[1]);
    let modules = modules
        .iter()
        .map(|m| m.get())
        .collect::<PyResult<Vec<&LoraModule>>>()?;
    // Row-major only: a Fortran-ordered array is "contiguous" too, but its rows are columns.
    if !xs.is_c_contiguous() {
        return Err(invalid_arg("x", "must be C-contiguous (row-major)"));
    }
    if !ys.is_c_contiguous() {
        return Err(invalid_arg("y", "must be C-contiguous (row-major)"));
    }
    // A buffer viewed at an odd offset (np.frombuffer(b, offset=1), say) is contiguous but not
    // aligned: it cannot be read as f32 in place.
    crate::types::aligned("x", &xs)?;
    crate::types::aligned::<f32, numpy::Ix2>("y", &ys)?;
    let xv = xs
        .as_slice()
        .map_err(|_| invalid_arg("x", "must be C-contiguous (row-major)"))?;
    let yv = ys
        .as_slice_mut()
        .map_err(|_| invalid_arg("y", "must be C-contiguous (row-major)"))?;
    // One element type for every slot: the stored one when they all share it, else f32.
    let dtypes = modules.iter().flat_map(|m| [m.a().dtype(), m.b().dtype()]);
    let shared = dtypes.reduce(|a, b| if a == b { a } else { DType::F32 });
    let features = (in_features, out_features);
    py.detach(|| match shared {
        Some(DType::BF16) => run(xv, features, &modules, HostTensor::as_bf16, &rows, yv),
        Some(DType::F16) => run(xv, features, &modules, HostTensor::as_f16, &rows, yv),
        _ => run(xv, features, &modules, HostTensor::as_f32, &rows, yv),
    })?;
    Ok(())
}

/// SGMV (prefill): `segments` is a list of `(start, end, slot)` row ranges, each using the
/// adapter `modules[slot]`; rows outside every segment are left as they are.
#[pyfunction(name = "sgmv")]
fn py_sgmv(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    modules: Vec<PyRef<'_, PyLoraModule>>,
    segments: Vec<(usize, usize, usize)>,
) -> Result<()> {
    let rows = Rows::Segments(Segments::from_triples(&segments));
    with_batch(py, x, y, &modules, rows)
}

/// BGMV (decode): `indices[i]` is the slot of row `i`, or `None` for no adapter.
#[pyfunction(name = "bgmv")]
fn py_bgmv(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    modules: Vec<PyRef<'_, PyLoraModule>>,
    indices: Vec<Option<usize>>,
) -> Result<()> {
    with_batch(py, x, y, &modules, Rows::Indices(indices))
}

/// Adds the SGMV functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_sgmv, m)?)?;
    m.add_function(wrap_pyfunction!(py_bgmv, m)?)?;
    Ok(())
}
