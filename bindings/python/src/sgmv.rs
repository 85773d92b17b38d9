//! Python face of `openledger_lora::sgmv`: many LoRA adapters applied to one batch in one pass.
//! `y[i] += scale_s · (x[i] · A_sᵀ) · B_sᵀ` for each row `i` with adapter slot `s`, slots being
//! `LoraModule`s of one layer (float32 factors, read in place); `y` is updated in place.

use numpy::{PyReadonlyArray2, PyReadwriteArray2, PyUntypedArrayMethods};
use openledger_lora::sgmv::{AdapterSlots, LoraSlot, Segments, bgmv, sgmv};
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

/// Runs `op` on `x` (`[rows, in]`), the slots of `modules`, and `y` (`[rows, out]`, in place),
/// with the GIL released.
fn with_batch(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    modules: &[PyRef<'_, PyLoraModule>],
    op: impl FnOnce(
        &[f32],
        &AdapterSlots<'_, f32>,
        &mut [f32],
    ) -> std::result::Result<(), openledger_lora::sgmv::SgmvError>
    + Send,
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
    let mut slots = Vec::with_capacity(modules.len());
    for (i, m) in modules.iter().enumerate() {
        let module = m.get()?;
        let (Some(a), Some(b)) = (module.a().as_f32(), module.b().as_f32()) else {
            return Err(invalid_arg(
                &format!("modules[{i}]"),
                format!(
                    "factors are {}, only float32 modules run here",
                    module.a().dtype()
                ),
            ));
        };
        slots.push(LoraSlot {
            a,
            b,
            rank: module.rank(),
            scale: module.scale(),
        });
    }
    let slots = AdapterSlots::new(in_features, out_features, slots)?;
    // Row-major only: a Fortran-ordered array is "contiguous" too, but its rows are columns.
    if !xs.is_c_contiguous() {
        return Err(invalid_arg("x", "must be C-contiguous (row-major)"));
    }
    if !ys.is_c_contiguous() {
        return Err(invalid_arg("y", "must be C-contiguous (row-major)"));
    }
    let xv = xs
        .as_slice()
        .map_err(|_| invalid_arg("x", "must be C-contiguous (row-major)"))?;
    let yv = ys
        .as_slice_mut()
        .map_err(|_| invalid_arg("y", "must be C-contiguous (row-major)"))?;
    py.detach(|| op(xv, &slots, yv))?;
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
    let segs = Segments::from_triples(&segments);
    with_batch(py, x, y, &modules, |x, slots, y| sgmv(x, slots, &segs, y))
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
    with_batch(py, x, y, &modules, |x, slots, y| {
        bgmv(x, slots, &indices, y)
    })
}

/// Adds the SGMV functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_sgmv, m)?)?;
    m.add_function(wrap_pyfunction!(py_bgmv, m)?)?;
    Ok(())
}
