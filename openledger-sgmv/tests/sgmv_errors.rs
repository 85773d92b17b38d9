//! Bad layouts and buffers are refused with typed errors naming the culprit, and the output is
//! left untouched.

use candle_core::{DType, Device, Tensor};
use openledger_sgmv::{
    AdapterSlots, LoraSlot, Segments, SgmvError, SgmvPlan, TensorSlot, bgmv, expand_with_plan,
    sgmv, sgmv_shrink, sgmv_tensors,
};

const IN: usize = 4;
const OUT: usize = 3;

fn weights() -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    (
        vec![0.5; 2 * IN],
        vec![0.25; OUT * 2],
        vec![1.0; IN],
        vec![2.0; OUT],
    )
}

fn slots<'a>(w: &'a (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)) -> AdapterSlots<'a, f32> {
    AdapterSlots::new(
        IN,
        OUT,
        vec![
            LoraSlot {
                a: &w.0,
                b: &w.1,
                rank: 2,
                scale: 1.0,
            },
            LoraSlot {
                a: &w.2,
                b: &w.3,
                rank: 1,
                scale: 1.0,
            },
        ],
    )
    .unwrap()
}

fn run_sgmv(segs: &Segments) -> (Result<(), SgmvError>, bool) {
    let w = weights();
    let s = slots(&w);
    let x = vec![1.0f32; 5 * IN];
    let y0 = vec![3.0f32; 5 * OUT];
    let mut y = y0.clone();
    let r = sgmv(&x, &s, segs, &mut y);
    (r, y == y0)
}

#[test]
fn sgmv_overlapping_segments_are_refused_naming_both() {
    let (r, untouched) = run_sgmv(&Segments::from_triples(&[(3, 5, 0), (0, 4, 1)]));
    assert!(untouched);
    match r {
        Err(SgmvError::SegmentsOverlap {
            first: 1,
            first_start: 0,
            first_end: 4,
            second: 0,
            ..
        }) => {}
        other => panic!("expected SegmentsOverlap, got {other:?}"),
    }
}

#[test]
fn sgmv_segment_past_the_batch_or_reversed_is_out_of_range() {
    let (r, untouched) = run_sgmv(&Segments::from_triples(&[(0, 1, 0), (2, 6, 1)]));
    assert!(untouched);
    assert!(matches!(
        r,
        Err(SgmvError::SegmentOutOfRange {
            segment: 1,
            start: 2,
            end: 6,
            rows: 5
        })
    ));
    let (r, _) = run_sgmv(&Segments::from_triples(&[(3, 2, 0)]));
    assert!(matches!(
        r,
        Err(SgmvError::SegmentOutOfRange { segment: 0, .. })
    ));
}

#[test]
fn sgmv_segment_naming_a_missing_slot_is_refused() {
    let (r, untouched) = run_sgmv(&Segments::from_triples(&[(0, 2, 2)]));
    assert!(untouched);
    match r {
        Err(SgmvError::SlotOutOfRange {
            place,
            slot: 2,
            slots: 2,
        }) => assert_eq!(place, "segment 0"),
        other => panic!("expected SlotOutOfRange, got {other:?}"),
    }
}

#[test]
fn sgmv_segment_arrays_of_different_lengths_are_refused() {
    let (r, _) = run_sgmv(&Segments::new(vec![0, 1], vec![1], vec![0, 0]));
    assert!(matches!(
        r,
        Err(SgmvError::SegmentArrays {
            starts: 2,
            ends: 1,
            slots: 2
        })
    ));
}

#[test]
fn sgmv_bgmv_row_naming_a_missing_slot_is_refused() {
    let w = weights();
    let s = slots(&w);
    let x = vec![1.0f32; 3 * IN];
    let mut y = vec![0.0f32; 3 * OUT];
    let r = bgmv(&x, &s, &[Some(0), None, Some(9)], &mut y);
    match r {
        Err(SgmvError::SlotOutOfRange {
            place,
            slot: 9,
            slots: 2,
        }) => assert_eq!(place, "row 2"),
        other => panic!("expected SlotOutOfRange, got {other:?}"),
    }
    assert!(y.iter().all(|&v| v == 0.0));
}

#[test]
fn sgmv_buffers_of_the_wrong_length_are_refused() {
    let w = weights();
    let s = slots(&w);
    let segs = Segments::from_triples(&[(0, 2, 0)]);
    // x not a whole number of rows
    let mut y = vec![0.0f32; 2 * OUT];
    let r = sgmv(&[1.0f32; 2 * IN + 1], &s, &segs, &mut y);
    assert!(matches!(r, Err(SgmvError::Length { buffer: "x", .. })));
    // y with a different row count than x
    let mut y = vec![0.0f32; 3 * OUT];
    let r = sgmv(&[1.0f32; 2 * IN], &s, &segs, &mut y);
    assert!(matches!(
        r,
        Err(SgmvError::Length {
            buffer: "y",
            expected: 6,
            found: 9
        })
    ));
    // v of the wrong size
    let mut v = vec![0.0f32; 3];
    let r = sgmv_shrink(&[1.0f32; 2 * IN], &s, &segs, &mut v);
    assert!(matches!(
        r,
        Err(SgmvError::Length {
            buffer: "v",
            expected: 4,
            found: 3
        })
    ));
    // bgmv: x rows differ from the number of indices
    let mut y = vec![0.0f32; 2 * OUT];
    let r = bgmv(&[1.0f32; 3 * IN], &s, &[Some(0), None], &mut y);
    assert!(matches!(
        r,
        Err(SgmvError::Length {
            buffer: "x",
            expected: 8,
            found: 12
        })
    ));
}

#[test]
fn sgmv_slot_with_wrong_matrix_sizes_zero_rank_or_bad_scale_is_refused() {
    let a = vec![0.0f32; 2 * IN];
    let b = vec![0.0f32; OUT * 2];
    let r = AdapterSlots::new(
        IN,
        OUT,
        vec![LoraSlot {
            a: &a[..7],
            b: &b,
            rank: 2,
            scale: 1.0,
        }],
    );
    match r {
        Err(SgmvError::SlotShape {
            slot: 0,
            matrix: "A",
            expected: 8,
            found: 7,
            shape,
        }) => {
            assert_eq!(shape, "[2, 4]")
        }
        other => panic!("expected SlotShape, got {other:?}"),
    }
    let r = AdapterSlots::new(
        IN,
        OUT,
        vec![LoraSlot {
            a: &a,
            b: &b[..5],
            rank: 2,
            scale: 1.0,
        }],
    );
    assert!(matches!(
        r,
        Err(SgmvError::SlotShape {
            matrix: "B",
            expected: 6,
            found: 5,
            ..
        })
    ));
    let r = AdapterSlots::new(
        IN,
        OUT,
        vec![LoraSlot {
            a: &a[..0],
            b: &b[..0],
            rank: 0,
            scale: 1.0,
        }],
    );
    assert!(matches!(r, Err(SgmvError::ZeroRank { slot: 0 })));
    let r = AdapterSlots::new(
        IN,
        OUT,
        vec![LoraSlot {
            a: &a,
            b: &b,
            rank: 2,
            scale: f32::NAN,
        }],
    );
    assert!(matches!(r, Err(SgmvError::BadScale { slot: 0, .. })));
    let r = AdapterSlots::<f32>::new(0, OUT, vec![]);
    assert!(matches!(r, Err(SgmvError::ZeroDims { .. })));
}

#[test]
fn sgmv_plan_built_for_other_ranks_is_refused() {
    let w = weights();
    let s = slots(&w);
    let plan = SgmvPlan::from_segments(&Segments::from_triples(&[(0, 1, 0)]), &[3, 1], 1).unwrap();
    let mut y = vec![0.0f32; OUT];
    let r = expand_with_plan(&plan, &[0.0; 3], &s, &mut y);
    assert!(matches!(
        r,
        Err(SgmvError::PlanMismatch {
            slot: 0,
            planned: 3,
            found: 2
        })
    ));
}

#[test]
fn sgmv_tensor_wrapper_refuses_mixed_dtypes_and_wrong_shapes() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, IN), DType::F32, &dev).unwrap();
    let y = Tensor::zeros((2, OUT), DType::F32, &dev).unwrap();
    let segs = Segments::from_triples(&[(0, 2, 0)]);
    let good = TensorSlot {
        a: Tensor::zeros((2, IN), DType::F32, &dev).unwrap(),
        b: Tensor::zeros((OUT, 2), DType::F32, &dev).unwrap(),
        scale: 1.0,
    };
    assert!(sgmv_tensors(&x, &y, std::slice::from_ref(&good), &segs).is_ok());
    let bf = TensorSlot {
        a: good.a.to_dtype(DType::BF16).unwrap(),
        ..good.clone()
    };
    match sgmv_tensors(&x, &y, &[bf], &segs) {
        Err(SgmvError::TensorDtype { tensor, .. }) => assert_eq!(tensor, "A[0]"),
        other => panic!("expected TensorDtype, got {other:?}"),
    }
    let wrong = TensorSlot {
        b: Tensor::zeros((OUT, 3), DType::F32, &dev).unwrap(),
        ..good.clone()
    };
    match sgmv_tensors(&x, &y, &[wrong], &segs) {
        Err(SgmvError::TensorShape {
            tensor,
            expected,
            found,
        }) => {
            assert_eq!(
                (tensor.as_str(), expected.as_str(), found),
                ("B[0]", "[3, 2]", vec![OUT, 3])
            )
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }
    let y3 = Tensor::zeros((3, OUT), DType::F32, &dev).unwrap();
    assert!(matches!(
        sgmv_tensors(&x, &y3, &[good], &segs),
        Err(SgmvError::TensorShape { .. })
    ));
}

#[test]
fn sgmv_tensor_wrapper_equals_the_slice_operator() {
    let dev = Device::Cpu;
    let xs: Vec<f32> = (0..3 * IN).map(|i| (i as f32 * 0.37).sin()).collect();
    let ys: Vec<f32> = (0..3 * OUT).map(|i| (i as f32 * 0.11).cos()).collect();
    let w = weights();
    let s = slots(&w);
    let segs = Segments::from_triples(&[(2, 3, 0), (0, 1, 1)]);
    let mut want = ys.clone();
    sgmv(&xs, &s, &segs, &mut want).unwrap();
    let t = |v: &[f32], r: usize, c: usize| Tensor::from_slice(v, (r, c), &dev).unwrap();
    let out = sgmv_tensors(
        &t(&xs, 3, IN),
        &t(&ys, 3, OUT),
        &[
            TensorSlot {
                a: t(&w.0, 2, IN),
                b: t(&w.1, OUT, 2),
                scale: 1.0,
            },
            TensorSlot {
                a: t(&w.2, 1, IN),
                b: t(&w.3, OUT, 1),
                scale: 1.0,
            },
        ],
        &segs,
    )
    .unwrap();
    let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got, want);
}
