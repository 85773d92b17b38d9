//! SGMV on the CPU against baselines measured in the same run:
//! (a) the PEFT-style mixed batch, as PEFT's `_mixed_batch_forward` does it — a loop over the
//!     adapters, each gathering its rows (`index_select`), two candle matmuls (`x_k · Aᵀ`, then
//!     `· Bᵀ`), scaled; the deltas are scattered back into `y` (`index_add`, once for all);
//! (a′) the same loop without the gather and scatter (each adapter's rows are one contiguous
//!     range here, so `narrow` views and one add stand in for them): the loop's bare matmuls;
//! (b) a dense 4096 × 4096 GEMM of 256 rows in candle, the machine's compute roofline;
//! (c) a copy of 64 MiB, and a read of 256 MiB spread over every pool thread: the machine's
//!     memory bandwidth (the read gives the K = 64 weights' lower bound);
//! (d) independent FMA chains on every pool thread, the CPU's f32 multiply-add peak with the
//!     instructions the kernels use (8-lane AVX2 FMAs where the CPU has them): no kernel built
//!     from them can pass it.
//!
//! Shapes: d = 4096, r = 16, T ∈ {1, 32, 256} tokens, K ∈ {1, 8, 64} distinct adapters (rows
//! split evenly, K ≤ T), f32 and bf16. SGMV runs with `Bᵀ` stored in padded rows
//! (`BLayout::RankOutStrided` with `padded_b_stride`, what the model keeps for attached adapters)
//! and, beside it, with `B` as PEFT stores it (`OutRank`) and with unpadded `Bᵀ` (`RankOut`).
//! Every case runs in three sweeps over all cases, and each figure is the median over the
//! sweeps (the lowest and highest sweep's speedup are recorded beside it). Prints each figure and
//! ratio, saves `sgmv.json` and a plot `sgmv.png` (time against the number of distinct adapters)
//! under `target/bench-results/` (or `$OPENLEDGER_BENCH_OUT`).
//!
//! Target for many adapters: T = 256 with K = 64 within 1.2× of the time (c)'s read rate takes
//! to stream the 64 adapters' weights once (`*_vs_weight_stream`), in f32 and bf16.
//!
//! `cargo bench -p openledger-benches --bench sgmv`

use candle_core::{DType, Device, Tensor};
use half::bf16;
use openledger_benches::{Report, median, median_secs};
use openledger_lora::sgmv::{
    AdapterSlots, BLayout, LoraElement, LoraSlot, Segments, detected_isa, padded_b_stride, sgmv,
    transpose_b, transpose_b_strided,
};
use plotters::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;

const D: usize = 4096;
const R: usize = 16;
const TOKENS: [usize; 3] = [1, 32, 256];
const ADAPTERS: [usize; 3] = [1, 8, 64];

/// Timings of one case, in seconds.
struct Case {
    /// `Bᵀ` stored in padded rows (`BLayout::RankOutStrided`), as the model keeps attached
    /// adapters.
    sgmv: f64,
    /// `B` as PEFT stores it (`BLayout::OutRank`), transposed on the fly.
    sgmv_out_rank: f64,
    /// `Bᵀ` stored without padding (`BLayout::RankOut`).
    sgmv_unpadded: f64,
    peft: f64,
    peft_contiguous: f64,
}

fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-0.05f32..0.05)).collect()
}

/// Runs enough repetitions for a stable median without spending more than ~0.2 s on a variant.
fn runs_for(estimate: f64) -> usize {
    ((0.2 / estimate.max(1e-6)) as usize).clamp(3, 200)
}

/// Median seconds per call of `f`, after calling it for 50 ms first: the thread pool and the
/// caches then hold what this variant needs rather than what the one timed before it left.
fn time(mut f: impl FnMut()) -> f64 {
    let warm = std::time::Instant::now();
    let mut calls = 0u32;
    while calls < 2 || warm.elapsed().as_secs_f64() < 0.05 {
        f();
        calls += 1;
    }
    let est = warm.elapsed().as_secs_f64() / f64::from(calls);
    median_secs(runs_for(est), f)
}

fn case<T: LoraElement + candle_core::WithDType>(
    dtype: DType,
    tokens: usize,
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Case {
    let conv = |v: Vec<f32>| -> Vec<T> { v.into_iter().map(T::from_f32).collect() };
    let x = conv(random(tokens * D, rng));
    let y0 = conv(random(tokens * D, rng));
    let a: Vec<Vec<T>> = (0..k).map(|_| conv(random(R * D, rng))).collect();
    let b: Vec<Vec<T>> = (0..k).map(|_| conv(random(D * R, rng))).collect();
    let scale = 2.0f32;
    let stride = padded_b_stride::<T>(D);
    let zero = T::from_f32(0.0);
    let b_t: Vec<Vec<T>> = b
        .iter()
        .map(|b| transpose_b_strided(b, D, R, stride, zero))
        .collect();
    fn slots_of<'s, T: LoraElement>(
        a: &'s [Vec<T>],
        bs: &'s [Vec<T>],
        scale: f32,
        layout: BLayout,
    ) -> AdapterSlots<'s, T> {
        let s = a
            .iter()
            .zip(bs)
            .map(|(a, b)| LoraSlot {
                a: &a[..],
                b: &b[..],
                rank: R,
                scale,
            })
            .collect();
        AdapterSlots::with_b_layout(D, D, s, layout).expect("slots")
    }
    let slots = slots_of(&a, &b_t, scale, BLayout::RankOutStrided { stride });
    let slots_out_rank = slots_of(&a, &b, scale, BLayout::OutRank);
    let b_unpadded: Vec<Vec<T>> = b.iter().map(|b| transpose_b(b, D, R)).collect();
    let slots_unpadded = slots_of(&a, &b_unpadded, scale, BLayout::RankOut);
    let bounds: Vec<(usize, usize)> = (0..k)
        .map(|i| (i * tokens / k, (i + 1) * tokens / k))
        .collect();
    let segs = Segments::from_triples(
        &bounds
            .iter()
            .enumerate()
            .map(|(i, &(s, e))| (s, e, i))
            .collect::<Vec<_>>(),
    );
    let mut y = y0.clone();
    let sgmv_s = time(|| sgmv(&x, &slots, &segs, &mut y).expect("sgmv"));
    let sgmv_out_rank_s = time(|| sgmv(&x, &slots_out_rank, &segs, &mut y).expect("sgmv"));
    let sgmv_unpadded_s = time(|| sgmv(&x, &slots_unpadded, &segs, &mut y).expect("sgmv"));

    // (a) PEFT-style: per adapter, its rows through two matmuls, then one add into y.
    let dev = Device::Cpu;
    let xt = Tensor::from_slice(&x, (tokens, D), &dev).expect("x");
    let yt = Tensor::from_slice(&y0, (tokens, D), &dev).expect("y");
    let at: Vec<Tensor> = a
        .iter()
        .map(|m| {
            Tensor::from_slice(m, (R, D), &dev)
                .expect("A")
                .t()
                .expect("Aᵀ")
        })
        .collect();
    let bt: Vec<Tensor> = b
        .iter()
        .map(|m| {
            Tensor::from_slice(m, (D, R), &dev)
                .expect("B")
                .t()
                .expect("Bᵀ")
        })
        .collect();
    let rows_of: Vec<Tensor> = bounds
        .iter()
        .map(|&(s, e)| {
            let idx: Vec<u32> = (s as u32..e as u32).collect();
            Tensor::from_vec(idx, e - s, &dev).expect("row indices")
        })
        .collect();
    let all_rows = Tensor::cat(&rows_of, 0).expect("row indices");
    // (a) as PEFT: gather each adapter's rows, two matmuls, scale; scatter-add into y.
    let peft = || -> candle_core::Result<Tensor> {
        let mut deltas = Vec::with_capacity(k);
        for (i, idx) in rows_of.iter().enumerate() {
            let rows = xt.index_select(idx, 0)?;
            let delta = rows
                .matmul(&at[i])?
                .matmul(&bt[i])?
                .affine(f64::from(scale), 0.0)?;
            deltas.push(delta);
        }
        yt.index_add(&all_rows, &Tensor::cat(&deltas, 0)?, 0)
    };
    // (a′) the same loop on contiguous row ranges: no gather, one add.
    let peft_contiguous = || -> candle_core::Result<Tensor> {
        let mut deltas = Vec::with_capacity(k);
        for (i, &(s, e)) in bounds.iter().enumerate() {
            let rows = xt.narrow(0, s, e - s)?;
            let delta = rows
                .matmul(&at[i])?
                .matmul(&bt[i])?
                .affine(f64::from(scale), 0.0)?;
            deltas.push(delta);
        }
        yt.add(&Tensor::cat(&deltas, 0)?)
    };
    // Both baselines compute what SGMV does (checked once, loosely: different summation orders).
    let mut want = y0.clone();
    sgmv(&x, &slots, &segs, &mut want).expect("sgmv");
    for out in [peft(), peft_contiguous()] {
        let out = out.expect("PEFT-style baseline");
        assert_eq!(out.dtype(), dtype);
        let got = out
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .expect("baseline values");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w.to_f32()).abs())
            .fold(0f32, f32::max);
        assert!(worst < 0.05, "baseline differs from SGMV by {worst}");
    }
    let peft_s = time(|| {
        peft().expect("PEFT-style baseline");
    });
    let peft_contiguous_s = time(|| {
        peft_contiguous().expect("PEFT-style baseline");
    });
    Case {
        sgmv: sgmv_s,
        sgmv_out_rank: sgmv_out_rank_s,
        sgmv_unpadded: sgmv_unpadded_s,
        peft: peft_s,
        peft_contiguous: peft_contiguous_s,
    }
}

/// Bytes per second of a 64 MiB copy (read and write counted): the memory bandwidth roofline.
fn copy_bandwidth() -> f64 {
    let src = vec![1u8; 64 << 20];
    let mut dst = vec![0u8; 64 << 20];
    let s = median_secs(5, || {
        dst.copy_from_slice(&src);
        dst[7]
    });
    2.0 * (64 << 20) as f64 / s
}

/// Lanes × chains of the FMA peak loop: 12 independent 8-lane chains hide the FMA latency on
/// every current x86 core (4 cycles, 2 per cycle at most).
const PEAK_CHAINS: usize = 12;

/// One thread's FMA chains, `iters` steps of [`PEAK_CHAINS`] 8-lane FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(std::hint::black_box(0.999_9));
    let c = _mm256_set1_ps(std::hint::black_box(1e-6));
    let mut acc = [_mm256_setzero_ps(); PEAK_CHAINS];
    for _ in 0..iters {
        for a in &mut acc {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    let mut sum = _mm256_setzero_ps();
    for a in acc {
        sum = _mm256_add_ps(sum, a);
    }
    // Every lane into the result, so no lane's chain can be left out.
    let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
    let pair = _mm_hadd_ps(half, half);
    _mm_cvtss_f32(_mm_hadd_ps(pair, pair))
}

/// One thread's multiply-add chains on a CPU without AVX2 and FMA: a multiply then an add, as
/// the portable kernels do (a fused `mul_add` would be a slow library call there).
fn fma_chains_portable(iters: usize) -> f32 {
    let (m, c) = (
        std::hint::black_box(0.999_9f32),
        std::hint::black_box(1e-6f32),
    );
    let mut acc = [[0f32; 8]; PEAK_CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut().flatten() {
            *a = *a * m + c;
        }
    }
    acc.iter().flatten().sum()
}

/// The f32 multiply-add peak of the pool in GFLOP/s with the kernels' instructions (8-lane AVX2
/// FMAs, or the portable multiply and add): every pool thread runs independent chains at once.
fn fma_peak_gflops() -> f64 {
    const ITERS: usize = 2_000_000;
    let chains = || {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { fma_chains_avx2(ITERS) };
        }
        fma_chains_portable(ITERS)
    };
    let secs = median_secs(5, || rayon::broadcast(|_| chains()));
    let flops = (rayon::current_num_threads() * ITERS * PEAK_CHAINS * 8 * 2) as f64;
    flops / secs / 1e9
}

/// Bytes per second read from memory by every pool thread at once, each summing its share of a
/// 256 MiB buffer (far beyond the caches): the rate adapter weights can stream in at.
fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let words = vec![1u64; (256 << 20) / 8];
    let per = words.len().div_ceil(rayon::current_num_threads());
    let s = median_secs(5, || {
        words
            .par_chunks(per)
            .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
            .sum::<u64>()
    });
    (256 << 20) as f64 / s
}

/// Dense GEMM of 256 rows by a 4096 × 4096 weight in candle: seconds per call.
fn dense<T: LoraElement + candle_core::WithDType>(rng: &mut ChaCha8Rng) -> f64 {
    let conv = |v: Vec<f32>| -> Vec<T> { v.into_iter().map(T::from_f32).collect() };
    let dev = Device::Cpu;
    let x = Tensor::from_vec(conv(random(256 * D, rng)), (256, D), &dev).expect("x");
    let w = Tensor::from_vec(conv(random(D * D, rng)), (D, D), &dev).expect("W");
    let wt = w.t().expect("Wᵀ");
    median_secs(3, || x.matmul(&wt).expect("dense GEMM"))
}

/// Sweeps over all cases of a dtype; each figure is the median over the sweeps.
const SWEEPS: usize = 3;

fn run_dtype<T: LoraElement + candle_core::WithDType>(
    dtype: DType,
    report: &mut Report,
    plot: &mut BTreeMap<String, Vec<(usize, f64)>>,
    rng: &mut ChaCha8Rng,
) {
    let name = T::NAME;
    // Every case SWEEPS times, one sweep over all cases after the other, and the median of each
    // timing: a stretch of noise from the machine then spoils one sweep, not a figure.
    let cases: Vec<(usize, usize)> = TOKENS
        .into_iter()
        .flat_map(|t| {
            ADAPTERS
                .into_iter()
                .filter(move |&k| k <= t)
                .map(move |k| (t, k))
        })
        .collect();
    let mut dense_runs = Vec::new();
    let mut runs: Vec<Vec<Case>> = cases.iter().map(|_| Vec::new()).collect();
    // The rooflines are measured in every sweep too, and the best of them kept: a peak is what
    // the machine reaches when nothing else takes it.
    let (mut read_bandwidth, mut fma_peak) = (0f64, 0f64);
    for _ in 0..SWEEPS {
        read_bandwidth = read_bandwidth.max(self::read_bandwidth());
        fma_peak = fma_peak.max(fma_peak_gflops());
        dense_runs.push(dense::<T>(rng));
        for (&(tokens, k), r) in cases.iter().zip(&mut runs) {
            r.push(case::<T>(dtype, tokens, k, rng));
        }
    }
    report.figure(&format!("{name}_read_bandwidth_gb_s"), read_bandwidth / 1e9);
    report.figure(&format!("{name}_fma_peak_f32_gflops"), fma_peak);
    let dense_gflops = 2.0 * 256.0 * (D * D) as f64 / median(&dense_runs) / 1e9;
    report.figure(&format!("{name}_dense_gemm_T256_gflops"), dense_gflops);
    let mut runs = runs.into_iter();
    for tokens in TOKENS {
        let mut by_k = BTreeMap::new();
        for k in ADAPTERS.into_iter().filter(|&k| k <= tokens) {
            let sweeps = runs.next().expect("one list of runs per case");
            let of = |f: fn(&Case) -> f64| median(&sweeps.iter().map(f).collect::<Vec<_>>());
            let c = Case {
                sgmv: of(|c| c.sgmv),
                sgmv_out_rank: of(|c| c.sgmv_out_rank),
                sgmv_unpadded: of(|c| c.sgmv_unpadded),
                peft: of(|c| c.peft),
                peft_contiguous: of(|c| c.peft_contiguous),
            };
            let key = format!("{name}_T{tokens}_K{k}");
            let speedups: Vec<f64> = sweeps.iter().map(|c| c.peft / c.sgmv).collect();
            let lowest = speedups.iter().copied().fold(f64::MAX, f64::min);
            let highest = speedups.iter().copied().fold(0.0, f64::max);
            report.figure(&format!("{key}_speedup_vs_peft_lowest_sweep"), lowest);
            report.figure(&format!("{key}_speedup_vs_peft_highest_sweep"), highest);
            report.figure(&format!("{key}_sgmv_us"), c.sgmv * 1e6);
            report.figure(&format!("{key}_sgmv_out_rank_us"), c.sgmv_out_rank * 1e6);
            report.figure(&format!("{key}_sgmv_unpadded_us"), c.sgmv_unpadded * 1e6);
            report.figure(&format!("{key}_peft_us"), c.peft * 1e6);
            report.figure(
                &format!("{key}_peft_contiguous_us"),
                c.peft_contiguous * 1e6,
            );
            report.ratio(&format!("{key}_speedup_vs_peft"), c.peft, c.sgmv, ">= 10x");
            report.ratio(
                &format!("{key}_out_rank_speedup_vs_peft"),
                c.peft,
                c.sgmv_out_rank,
                ">= 10x",
            );
            report.ratio(
                &format!("{key}_padding_speedup"),
                c.sgmv_unpadded,
                c.sgmv,
                "none; padded vs unpadded Bᵀ rows",
            );
            report.ratio(
                &format!("{key}_speedup_vs_peft_contiguous"),
                c.peft_contiguous,
                c.sgmv,
                "none; (a) without gather",
            );
            // What 10× the PEFT loop asks of the machine: the GFLOP/s SGMV would have to reach,
            // against the dense GEMM's (above 1× it is beyond this CPU's measured roofline).
            let flops = 4.0 * (tokens * R * D) as f64;
            report.ratio(
                &format!("{key}_10x_needs_vs_dense_gflops"),
                flops / (c.peft / 10.0) / 1e9,
                dense_gflops,
                "<= 1x for 10x to be reachable",
            );
            report.ratio(
                &format!("{key}_10x_needs_vs_fma_peak"),
                flops / (c.peft / 10.0) / 1e9,
                fma_peak,
                "< 1x for 10x to be possible at all",
            );
            if tokens == 256 {
                let gflops = 4.0 * (tokens * R * D) as f64 / c.sgmv / 1e9;
                report.figure(&format!("{key}_sgmv_gflops"), gflops);
                report.ratio(
                    &format!("{key}_gflops_vs_dense"),
                    gflops,
                    dense_gflops,
                    ">= 0.5x",
                );
                report.ratio(
                    &format!("{key}_gflops_vs_fma_peak"),
                    gflops,
                    fma_peak,
                    "none; the share of the CPU's multiply-add peak",
                );
            }
            plot.entry(format!("SGMV {name} T={tokens}"))
                .or_default()
                .push((k, c.sgmv * 1e6));
            plot.entry(format!("PEFT loop {name} T={tokens}"))
                .or_default()
                .push((k, c.peft * 1e6));
            by_k.insert(k, c.sgmv);
        }
        if let (Some(&one), Some((&kmax, &many))) = (by_k.get(&1), by_k.iter().next_back())
            && kmax > 1
        {
            report.ratio(
                &format!("{name}_T{tokens}_K{kmax}_vs_K1_cost"),
                many,
                one,
                "—",
            );
            // The least time to stream K adapters' weights once from memory at the read
            // bandwidth, against the one-adapter call: the floor of the cost above when the
            // weights do not stay in cache between calls.
            let weight_bytes = (kmax * 2 * R * D * std::mem::size_of::<T>()) as f64;
            report.figure(
                &format!("{name}_T{tokens}_K{kmax}_weights_mib"),
                weight_bytes / (1 << 20) as f64,
            );
            report.ratio(
                &format!("{name}_T{tokens}_K{kmax}_weight_stream_vs_K1"),
                weight_bytes / read_bandwidth,
                one,
                "—",
            );
            // The target: K adapters within 1.2x of streaming their weights once (the floor
            // when they do not stay in cache between calls).
            report.ratio(
                &format!("{name}_T{tokens}_K{kmax}_vs_weight_stream"),
                many,
                weight_bytes / read_bandwidth,
                "<= 1.2x",
            );
        }
    }
}

fn draw(
    path: &Path,
    series: &BTreeMap<String, Vec<(usize, f64)>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = series.values().flatten().map(|p| p.1).fold(1.0, f64::max) * 2.0;
    let ymin = series
        .values()
        .flatten()
        .map(|p| p.1)
        .fold(f64::MAX, f64::min)
        / 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "SGMV vs PEFT-style loop, d = {D}, r = {R}, 2-core CPU ({:?})",
                detected_isa()
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0.8f64..80.0).log_scale(), (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("distinct adapters in the batch (K)")
        .y_desc("time per call (µs)")
        .draw()?;
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = if label.starts_with("SGMV") {
            color.stroke_width(3)
        } else {
            color.stroke_width(1)
        };
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|&(k, t)| (k as f64, t)),
                style,
            ))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(
            pts.iter()
                .map(|&(k, t)| Circle::new((k as f64, t), 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    let t0 = std::time::Instant::now();
    let mut report = Report::new("sgmv");
    println!(
        "sgmv: CPU kernels {:?}, {} hardware threads",
        detected_isa(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut plot = BTreeMap::new();
    report.figure("copy_bandwidth_gb_s", copy_bandwidth() / 1e9);
    run_dtype::<f32>(DType::F32, &mut report, &mut plot, &mut rng);
    run_dtype::<bf16>(DType::BF16, &mut report, &mut plot, &mut rng);
    report.figure("bench_wall_s", t0.elapsed().as_secs_f64());
    match report.save() {
        Ok(json) => {
            println!("saved {}", json.display());
            let png = json.with_extension("png");
            plot.retain(|label, _| !label.ends_with("T=1"));
            match draw(&png, &plot) {
                Ok(()) => println!("saved {}", png.display()),
                Err(e) => println!("plot not written: {e}"),
            }
        }
        Err(e) => println!("results not saved: {e}"),
    }
}
