//! GPU SGMV bandwidth: shrink + expand on d = 4096, r = 16, as GB/s of the bytes they must move
//! (adapter weights, x, y read and written) against a device-to-device copy measured in the same
//! run, and the cost of 64 distinct adapters against 64 rows of one adapter.
//!
//! `cargo bench -p openledger-sgmv --features cuda --bench gpu_sgmv`. Without a GPU it prints
//! the typed error and exits.

use half::bf16;
use openledger_benches::{Report, median_secs};
use openledger_sgmv::{AdapterSlots, CudaSgmv, GpuElement, LoraSlot, Segments, SgmvPlan};

const D: usize = 4096;
const R: usize = 16;

fn case<T: GpuElement>(
    gpu: &CudaSgmv,
    report: &mut Report,
    tokens: usize,
    adapters: usize,
    copy_gbs: f64,
) -> f64 {
    let w: Vec<T> = vec![T::default(); R * D];
    let host = AdapterSlots::new(
        D,
        D,
        (0..adapters)
            .map(|_| LoraSlot {
                a: &w,
                b: &w,
                rank: R,
                scale: 1.0,
            })
            .collect(),
    )
    .expect("slots");
    let slots = gpu.upload_slots(&host).expect("upload slots");
    let per = tokens / adapters;
    let triples: Vec<(usize, usize, usize)> =
        (0..adapters).map(|i| (i * per, (i + 1) * per, i)).collect();
    let plan = SgmvPlan::from_segments(&Segments::from_triples(&triples), &host.ranks(), tokens)
        .expect("plan");
    let x = gpu.upload(&vec![T::default(); tokens * D]).expect("x");
    let mut y = gpu.upload(&vec![T::default(); tokens * D]).expect("y");
    let mut v = gpu.zeros::<f32>(plan.intermediate_len()).expect("v");
    let secs = median_secs(20, || {
        gpu.sgmv_shrink(&plan, &slots, &x, &mut v).expect("shrink");
        gpu.sgmv_expand(&plan, &slots, &v, &mut y).expect("expand");
        gpu.synchronize().expect("sync");
    });
    let elem = std::mem::size_of::<T>() as f64;
    let bytes = (adapters * 2 * R * D + 3 * tokens * D) as f64 * elem;
    let key = format!("{}_T{tokens}_K{adapters}", T::NAME);
    report.figure(&format!("{key}_us"), secs * 1e6);
    report.figure(&format!("{key}_gbs"), bytes / secs / 1e9);
    report.ratio(
        &format!("{key}_bandwidth_vs_copy"),
        bytes / secs / 1e9,
        copy_gbs,
        "as high as possible",
    );
    secs
}

fn main() {
    let gpu = match CudaSgmv::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("gpu_sgmv: not run: {e}");
            return;
        }
    };
    let mut report = Report::new("gpu_sgmv");
    println!("device: {}", gpu.device_name().unwrap_or_default());
    let n = 64 << 20;
    let src = gpu.zeros::<f32>(n).expect("alloc");
    let mut dst = gpu.zeros::<f32>(n).expect("alloc");
    let t = median_secs(10, || {
        gpu.copy(&src, &mut dst).expect("copy");
        gpu.synchronize().expect("sync");
    });
    let copy_gbs = 2.0 * (n * 4) as f64 / t / 1e9;
    report.figure("copy_d2d_gbs", copy_gbs);
    for tokens in [1usize, 64, 256] {
        for adapters in [1usize, 64] {
            if adapters <= tokens {
                case::<f32>(&gpu, &mut report, tokens, adapters, copy_gbs);
                case::<bf16>(&gpu, &mut report, tokens, adapters, copy_gbs);
            }
        }
    }
    let one = case::<bf16>(&gpu, &mut report, 64, 1, copy_gbs);
    let many = case::<bf16>(&gpu, &mut report, 64, 64, copy_gbs);
    report.ratio(
        "bf16_T64_K64_vs_K1_time",
        many,
        one,
        "64 distinct adapters vs one",
    );
    match report.save() {
        Ok(p) => println!("saved {}", p.display()),
        Err(e) => println!("could not save: {e}"),
    }
}
