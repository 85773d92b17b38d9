//! The kernels crate: host layouts, NVRTC compilation of every kernel source (needs libnvrtc,
//! no GPU), and GPU results against the CPU operators of `openledger-lora` (needs a GPU; without
//! one the typed no-device error is asserted instead).
//!
//! Set `OPENLEDGER_REQUIRE_NVRTC=1` (CI does, after installing NVRTC) to make a missing NVRTC a
//! failure, and `OPENLEDGER_REQUIRE_GPU=1` on a GPU machine to make a missing device a failure.

use openledger_kernels::{CudaSgmv, KernelError, RowLayout, SegmentLayout};

#[test]
fn segment_layout_packs_rows_in_row_order_with_per_slot_ranks() {
    let l = SegmentLayout::new(&[(5, 9, 0), (0, 2, 1), (3, 3, 1)], &[4, 16], 10).unwrap();
    assert_eq!(l.segment_count(), 2, "the empty segment is dropped");
    assert_eq!(l.intermediate_len(), 2 * 16 + 4 * 4);
    assert_eq!(l.rows(), 10);
    let r = RowLayout::new(&[Some(1), None, Some(0)], &[4, 16]).unwrap();
    assert_eq!((r.rows(), r.intermediate_len()), (3, 20));
}

#[test]
fn bad_layouts_are_typed_errors() {
    assert!(matches!(
        SegmentLayout::new(&[(0, 4, 0), (3, 5, 0)], &[4], 6),
        Err(KernelError::SegmentsOverlap {
            first: 0,
            second: 1
        })
    ));
    assert!(matches!(
        SegmentLayout::new(&[(0, 7, 0)], &[4], 6),
        Err(KernelError::SegmentOutOfRange {
            segment: 0,
            end: 7,
            rows: 6,
            ..
        })
    ));
    assert!(matches!(
        SegmentLayout::new(&[(0, 1, 3)], &[4], 6),
        Err(KernelError::SlotOutOfRange {
            slot: 3,
            slots: 1,
            ..
        })
    ));
    assert!(matches!(
        RowLayout::new(&[None, Some(2)], &[4, 4]),
        Err(KernelError::SlotOutOfRange {
            slot: 2,
            slots: 2,
            ..
        })
    ));
}

#[cfg(not(feature = "cuda"))]
#[test]
fn without_the_cuda_feature_entry_points_answer_not_compiled_with_cuda() {
    assert!(matches!(
        CudaSgmv::new(0),
        Err(KernelError::NotCompiledWithCuda)
    ));
    assert!(matches!(
        openledger_kernels::compile_all_kernels("compute_80"),
        Err(KernelError::NotCompiledWithCuda)
    ));
}

#[cfg(feature = "cuda")]
fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

#[cfg(feature = "cuda")]
#[test]
fn nvrtc_compiles_every_kernel_source_for_ampere_and_hopper() {
    use openledger_kernels::{compile_all_kernels, sources};
    for arch in ["compute_80", "sm_90"] {
        match compile_all_kernels(arch) {
            Ok(list) => {
                let files: Vec<&str> = list.iter().map(|(f, _)| f.as_str()).collect();
                let want: Vec<&str> = sources::SOURCES.iter().map(|(f, _)| *f).collect();
                assert_eq!(files, want);
                for (file, bytes) in &list {
                    assert!(*bytes > 1000, "{arch} {file}: only {bytes} bytes of PTX");
                }
                println!("{arch}: {list:?}");
            }
            Err(KernelError::NoNvrtc) if !required("OPENLEDGER_REQUIRE_NVRTC") => {
                eprintln!("libnvrtc not found: compilation not exercised (typed NoNvrtc error)");
                assert!(!openledger_kernels::nvrtc_available());
            }
            Err(e) => panic!("{arch}: {e}"),
        }
    }
}

#[cfg(feature = "cuda")]
#[test]
fn an_unknown_architecture_is_a_typed_error() {
    match openledger_kernels::compile_all_kernels("ampere") {
        Err(KernelError::BadArch { arch }) => assert_eq!(arch, "ampere"),
        Err(KernelError::NoNvrtc) if !required("OPENLEDGER_REQUIRE_NVRTC") => {}
        other => panic!("expected BadArch, got {other:?}"),
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use half::{bf16, f16};
    use openledger_kernels::{HostSlot, KernelElement};
    use openledger_lora::sgmv::{self, AdapterSlots, LoraElement, LoraSlot, Segments};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Opens device 0, or checks that its absence is a typed error.
    fn device() -> Option<CudaSgmv> {
        match CudaSgmv::new(0) {
            Ok(g) => Some(g),
            Err(
                e @ (KernelError::NoCudaDriver
                | KernelError::NoDevice { .. }
                | KernelError::NoNvrtc),
            ) if !required("OPENLEDGER_REQUIRE_GPU") => {
                eprintln!("no GPU: {e}");
                None
            }
            Err(e) => panic!("opening the GPU: {e}"),
        }
    }

    /// GPU vs CPU tolerance: both round the output once; their f32 sums differ in order.
    fn tol<T: LoraElement>(cpu: f32) -> f32 {
        let (rel, abs) = match <T as LoraElement>::NAME {
            "f16" => (2.0 * 2f32.powi(-11), 1e-3),
            "bf16" => (2.0 * 2f32.powi(-8), 1e-2),
            _ => (1e-4, 1e-4),
        };
        rel * cpu.abs() + abs
    }

    fn compare<T: LoraElement + KernelElement>(gpu: &CudaSgmv) {
        let (d, out, rows) = (4096, 1000, 37);
        let ranks = [16usize, 8, 64];
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut rand = |n: usize| -> Vec<T> {
            (0..n)
                .map(|_| T::from_f32(rng.random_range(-0.5f32..0.5)))
                .collect()
        };
        let x = rand(rows * d);
        let y0 = rand(rows * out);
        let a: Vec<Vec<T>> = ranks.iter().map(|&r| rand(r * d)).collect();
        let b: Vec<Vec<T>> = ranks.iter().map(|&r| rand(out * r)).collect();
        let scales = [0.5f32, 2.0, 0.125];
        let triples = [(0usize, 10usize, 2usize), (12, 13, 0), (13, 37, 1)];
        let indices: Vec<Option<usize>> =
            (0..rows).map(|i| (i % 5 != 0).then_some(i % 3)).collect();

        let cpu_slots = AdapterSlots::new(
            d,
            out,
            (0..3)
                .map(|i| LoraSlot {
                    a: &a[i],
                    b: &b[i],
                    rank: ranks[i],
                    scale: scales[i],
                })
                .collect(),
        )
        .unwrap();
        let mut want_s = y0.clone();
        sgmv::sgmv(
            &x,
            &cpu_slots,
            &Segments::from_triples(&triples),
            &mut want_s,
        )
        .unwrap();
        let mut want_b = y0.clone();
        sgmv::bgmv(&x, &cpu_slots, &indices, &mut want_b).unwrap();

        let host: Vec<HostSlot<'_, T>> = (0..3)
            .map(|i| HostSlot {
                a: &a[i],
                b: &b[i],
                rank: ranks[i],
                scale: scales[i],
            })
            .collect();
        let slots = gpu.upload_slots(d, out, &host).unwrap();
        let xg = gpu.upload(&x).unwrap();

        let seg = SegmentLayout::new(&triples, &ranks, rows).unwrap();
        let mut v = gpu.zeros::<f32>(seg.intermediate_len()).unwrap();
        let mut y = gpu.upload(&y0).unwrap();
        gpu.sgmv_shrink(&slots, &seg, &xg, &mut v).unwrap();
        gpu.sgmv_expand(&slots, &seg, &v, &mut y).unwrap();
        let got_s = gpu.download(&y).unwrap();

        let rl = RowLayout::new(&indices, &ranks).unwrap();
        let mut v = gpu.zeros::<f32>(rl.intermediate_len()).unwrap();
        let mut y = gpu.upload(&y0).unwrap();
        gpu.bgmv_shrink(&slots, &rl, &xg, &mut v).unwrap();
        gpu.bgmv_expand(&slots, &rl, &v, &mut y).unwrap();
        let got_b = gpu.download(&y).unwrap();

        for (name, got, want) in [("sgmv", &got_s, &want_s), ("bgmv", &got_b, &want_b)] {
            for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                let (g, w) = (g.to_f32(), w.to_f32());
                assert!(
                    (g - w).abs() <= tol::<T>(w),
                    "{name} [{}] element {i}: gpu {g}, cpu {w}",
                    <T as LoraElement>::NAME
                );
            }
        }
    }

    #[test]
    fn gpu_sgmv_and_bgmv_match_the_cpu_operators_in_every_dtype() {
        let Some(gpu) = device() else { return };
        compare::<f32>(&gpu);
        compare::<f16>(&gpu);
        compare::<bf16>(&gpu);
    }
}
