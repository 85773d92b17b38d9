//! Thin wrappers over the slice operators for candle CPU tensors: shapes, dtypes and devices are
//! checked, the tensors' storage is borrowed without copying, and a new `y` tensor is returned.

use crate::element::LoraElement;
use crate::error::SgmvError;
use crate::plan::{AdapterSlots, LoraSlot, Segments, SgmvPlan};
use candle_core::{DType, Device, Storage, Tensor, WithDType};
use half::{bf16, f16};

/// One adapter slot as tensors: `a` is `[rank, in]`, `b` is `[out, rank]`, same dtype as `x`.
#[derive(Debug, Clone)]
pub struct TensorSlot {
    /// `A`, `[rank, in_features]`.
    pub a: Tensor,
    /// `B`, `[out_features, rank]`.
    pub b: Tensor,
    /// The adapter's scale.
    pub scale: f32,
}

fn dims2(name: &str, t: &Tensor, expected: &str) -> Result<(usize, usize), SgmvError> {
    match t.dims() {
        &[r, c] => Ok((r, c)),
        other => Err(SgmvError::TensorShape {
            tensor: name.to_string(),
            expected: expected.to_string(),
            found: other.to_vec(),
        }),
    }
}

fn check_2d(name: String, t: &Tensor, rows: usize, cols: usize) -> Result<(), SgmvError> {
    if t.dims() == [rows, cols] {
        Ok(())
    } else {
        Err(SgmvError::TensorShape {
            tensor: name,
            expected: format!("[{rows}, {cols}]"),
            found: t.dims().to_vec(),
        })
    }
}

/// SGMV on candle CPU tensors: returns `y + Δ` where rows of segment `i` get
/// `scale_i · x · A_iᵀ · B_iᵀ` (the input `y` is not modified). `x` is `[rows, in]`, `y` is
/// `[rows, out]`, all tensors share one dtype (f32, f16 or bf16) and live on the CPU.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use openledger_sgmv::{sgmv_tensors, Segments, TensorSlot};
///
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
/// let y = Tensor::zeros((2, 2), candle_core::DType::F32, &dev).unwrap();
/// let slot = TensorSlot {
///     a: Tensor::new(&[[1f32, 1.0]], &dev).unwrap(),
///     b: Tensor::new(&[[1f32], [-1.0]], &dev).unwrap(),
///     scale: 2.0,
/// };
/// let out = sgmv_tensors(&x, &y, &[slot], &Segments::from_triples(&[(1, 2, 0)])).unwrap();
/// assert_eq!(out.to_vec2::<f32>().unwrap(), vec![vec![0.0, 0.0], vec![14.0, -14.0]]);
/// ```
pub fn sgmv_tensors(
    x: &Tensor,
    y: &Tensor,
    slots: &[TensorSlot],
    segments: &Segments,
) -> Result<Tensor, SgmvError> {
    let (rows, in_f) = dims2("x", x, "[rows, in_features]")?;
    let (_, out_f) = dims2("y", y, "[rows, out_features]")?;
    check_2d("y".into(), y, rows, out_f)?;
    let dtype = x.dtype();
    let mut all: Vec<(String, Tensor)> = vec![("x".into(), x.clone()), ("y".into(), y.clone())];
    for (i, s) in slots.iter().enumerate() {
        let (rank, _) = dims2(&format!("A[{i}]"), &s.a, "[rank, in_features]")?;
        check_2d(format!("A[{i}]"), &s.a, rank, in_f)?;
        check_2d(format!("B[{i}]"), &s.b, out_f, rank)?;
        all.push((format!("A[{i}]"), s.a.clone()));
        all.push((format!("B[{i}]"), s.b.clone()));
    }
    for (name, t) in &all {
        if !matches!(t.device(), Device::Cpu) {
            return Err(SgmvError::NotCpu {
                tensor: name.clone(),
                device: format!("{:?}", t.device().location()),
            });
        }
        if t.dtype() != dtype {
            return Err(SgmvError::TensorDtype {
                tensor: name.clone(),
                expected: format!("{dtype:?}"),
                found: format!("{:?}", t.dtype()),
            });
        }
    }
    match dtype {
        DType::F32 => run::<f32>(&all, slots, segments, rows, in_f, out_f),
        DType::F16 => run::<f16>(&all, slots, segments, rows, in_f, out_f),
        DType::BF16 => run::<bf16>(&all, slots, segments, rows, in_f, out_f),
        other => Err(SgmvError::TensorDtype {
            tensor: "x".into(),
            expected: "F32, F16 or BF16".into(),
            found: format!("{other:?}"),
        }),
    }
}

fn run<T: LoraElement + WithDType>(
    all: &[(String, Tensor)],
    slots: &[TensorSlot],
    segments: &Segments,
    rows: usize,
    in_f: usize,
    out_f: usize,
) -> Result<Tensor, SgmvError> {
    let contiguous: Vec<Tensor> = all
        .iter()
        .map(|(_, t)| t.contiguous())
        .collect::<candle_core::Result<_>>()?;
    let guards: Vec<_> = contiguous.iter().map(|t| t.storage_and_layout()).collect();
    let mut views: Vec<&[T]> = Vec::with_capacity(guards.len());
    for ((name, _), (storage, layout)) in all.iter().zip(&guards) {
        let Storage::Cpu(cpu) = &**storage else {
            return Err(SgmvError::NotCpu {
                tensor: name.clone(),
                device: "a non-CPU device".into(),
            });
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{name} is not contiguous")))?;
        views.push(&cpu.as_slice::<T>()?[start..end]);
    }
    let lora: Vec<LoraSlot<'_, T>> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| LoraSlot {
            a: views[2 + 2 * i],
            b: views[3 + 2 * i],
            rank: s.a.dims()[0],
            scale: s.scale,
        })
        .collect();
    let adapter_slots = AdapterSlots::new(in_f, out_f, lora)?;
    let plan = SgmvPlan::from_segments(segments, &adapter_slots.ranks(), rows)?;
    let mut y = views[1].to_vec();
    crate::apply_with_plan(&plan, views[0], &adapter_slots, &mut y)?;
    Ok(Tensor::from_vec(y, (rows, out_f), &Device::Cpu)?)
}
