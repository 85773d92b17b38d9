//! GPU SGMV on d = 4096, r = 16, bf16: shrink + expand for T ∈ {1, 16, 64, 256, 1024} rows and
//! K ∈ {1, 16, 64, 512, T} distinct adapters (rows split evenly; BGMV where every row has its
//! own adapter, SGMV otherwise), timed with CUDA events (the median of 50 calls after 5 warm-up
//! calls). Eight adapter sets are uploaded into one adapter slab and used in turn, so the
//! working set is well past the L2 (60 MB on an H200) and every call streams its adapters from
//! device memory. Each case
//! is given as GB/s of the bytes it must move (the adapters' weights, `x` read, `y` read and
//! written) against a device-to-device copy measured in the same run.
//!
//! Targets: ≥ 60 % of the copy's bandwidth at K = 512, and K = 64 at ≤ 1.5× K = 1 at T = 64.
//!
//! `cargo bench -p openledger-sgmv --features cuda --bench gpu_sgmv`; writes `gpu_sgmv.json` and
//! `gpu_sgmv.png` (time against K, a line per T) under `target/bench-results/` (or
//! `$OPENLEDGER_BENCH_OUT`). Without a GPU it prints the typed error and exits.

use half::bf16;
use openledger_benches::{Report, median};
use openledger_sgmv::{
    AdapterSlots, CudaSgmv, DEFAULT_PAGE_BYTES, GpuSlots, LoraElement, LoraSlot, OutputWindow,
    Segments, SgmvError, SgmvPlan, SlotLayout,
};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

const D: usize = 4096;
const R: usize = 16;
/// Adapter sets used in turn.
const SETS: usize = 8;
const WARMUP: usize = 5;
const CALLS: usize = 50;

/// Median milliseconds of `CALLS` timed calls of `f(i)` after `WARMUP` untimed ones.
fn median_ms(
    gpu: &CudaSgmv,
    mut f: impl FnMut(usize) -> Result<(), SgmvError>,
) -> Result<f64, SgmvError> {
    for i in 0..WARMUP {
        f(i)?;
    }
    gpu.synchronize()?;
    let mut ms = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        ms.push(gpu.elapsed_ms(|| f(i))?);
    }
    Ok(median(&ms))
}

/// Milliseconds per shrink + expand call with `t` rows over `k` distinct adapters.
fn case(gpu: &CudaSgmv, t: usize, k: usize) -> Result<f64, SgmvError> {
    // Small values, different per set, so nothing overflows and no set is all zeros.
    let sets: Vec<Vec<bf16>> = (0..SETS)
        .map(|s| {
            (0..k * 2 * R * D)
                .map(|i| bf16::from_f32(((i * 7 + s * 13) % 17) as f32 / 1700.0 - 0.005))
                .collect()
        })
        .collect();
    let elem = std::mem::size_of::<bf16>();
    let slot_pages = SlotLayout::new(D, D, R, elem).pages(elem, DEFAULT_PAGE_BYTES);
    let slab = gpu.adapter_slab::<bf16>(
        SETS * k * slot_pages * DEFAULT_PAGE_BYTES,
        DEFAULT_PAGE_BYTES,
    )?;
    let uploaded: Vec<GpuSlots<bf16>> = sets
        .iter()
        .map(|w| {
            let slots = AdapterSlots::new(
                D,
                D,
                (0..k)
                    .map(|i| LoraSlot {
                        a: &w[i * 2 * R * D..i * 2 * R * D + R * D],
                        b: &w[i * 2 * R * D + R * D..(i + 1) * 2 * R * D],
                        rank: R,
                        scale: 0.5,
                    })
                    .collect(),
            )?;
            slab.upload(&slots)
        })
        .collect::<Result<_, _>>()?;
    let ranks = vec![R; k];
    let per_row = k == t;
    let plan = if per_row {
        let idx: Vec<Option<usize>> = (0..t).map(Some).collect();
        SgmvPlan::from_row_slots(&idx, &ranks)?
    } else {
        let per = t / k;
        let triples: Vec<(usize, usize, usize)> =
            (0..k).map(|i| (i * per, (i + 1) * per, i)).collect();
        SgmvPlan::from_segments(&Segments::from_triples(&triples), &ranks, t)?
    };
    let x = gpu.upload(&vec![bf16::from_f32(0.01); t * D])?;
    let mut y = gpu.zeros::<bf16>(t * D)?;
    let mut v = gpu.zeros::<f32>(plan.intermediate_len())?;
    median_ms(gpu, |i| {
        let slots = &uploaded[i % SETS];
        if per_row {
            gpu.bgmv_shrink(&plan, slots, &x, &mut v)?;
            gpu.bgmv_expand(&plan, slots, &v, &mut y, OutputWindow::dense(D))
        } else {
            gpu.sgmv_shrink(&plan, slots, &x, &mut v)?;
            gpu.sgmv_expand(&plan, slots, &v, &mut y, OutputWindow::dense(D))
        }
    })
}

fn run(gpu: &CudaSgmv) -> Result<(), SgmvError> {
    let mut report = Report::new("gpu_sgmv");
    let name = gpu.device_name()?;
    println!("device: {name}");
    // A device-to-device copy of 1 GiB: read and written.
    let n = 256 << 20;
    let src = gpu.zeros::<f32>(n)?;
    let mut dst = gpu.zeros::<f32>(n)?;
    let copy_ms = median_ms(gpu, |_| gpu.copy(&src, &mut dst))?;
    let copy_gbs = 2.0 * (n * 4) as f64 / (copy_ms / 1e3) / 1e9;
    report.figure("copy_d2d_gbs", copy_gbs);
    let mut curves: BTreeMap<usize, Vec<(usize, f64)>> = BTreeMap::new();
    for t in [1usize, 16, 64, 256, 1024] {
        let mut ks = vec![1usize, 16, 64, 512, t];
        ks.retain(|&k| k <= t);
        ks.sort_unstable();
        ks.dedup();
        for k in ks {
            let ms = case(gpu, t, k)?;
            let elem = std::mem::size_of::<bf16>() as f64;
            let bytes = (k * 2 * R * D + 3 * t * D) as f64 * elem;
            let gbs = bytes / (ms / 1e3) / 1e9;
            let key = format!("{}_T{t}_K{k}", bf16::NAME);
            println!(
                "{key}: {:.1} µs, {gbs:.0} GB/s ({:.2} of the copy)",
                ms * 1e3,
                gbs / copy_gbs
            );
            report.figure(&format!("{key}_us"), ms * 1e3);
            report.figure(&format!("{key}_gbs"), gbs);
            let target = if k == 512 { "≥ 0.60" } else { "—" };
            report.ratio(&format!("{key}_bandwidth_vs_copy"), gbs, copy_gbs, target);
            curves.entry(t).or_default().push((k, ms * 1e3));
        }
    }
    let at64 = &curves[&64];
    let time = |k: usize| at64.iter().find(|p| p.0 == k).map_or(f64::NAN, |p| p.1);
    report.ratio("bf16_T64_K64_vs_K1_time", time(64), time(1), "≤ 1.5");
    report.save_with_plot(|png| draw(png, &name, &curves));
    Ok(())
}

/// Time per call against K (log-log), a line per T.
fn draw(
    path: &Path,
    device: &str,
    curves: &BTreeMap<usize, Vec<(usize, f64)>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = curves.values().flatten().map(|p| p.1).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("SGMV + BGMV, d = 4096, r = 16, bf16, on {device}"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..1024f64).log_scale(), (1f64..max * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("distinct adapters K")
        .y_desc("µs per shrink + expand")
        .draw()?;
    for (i, (t, points)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(k, us)| (k as f64, us)),
                color.stroke_width(2),
            ))?
            .label(format!("T = {t}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart.draw_series(
            points
                .iter()
                .map(|&(k, us)| Circle::new((k as f64, us), 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    let gpu = match CudaSgmv::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("gpu_sgmv: not run: {e}");
            return;
        }
    };
    if let Err(e) = run(&gpu) {
        println!("gpu_sgmv: failed: {e}");
        std::process::exit(1);
    }
}
