//! The GPU model's kernels (`kernels/src/layers.cu`, `rope_kv.cu`, `attention.cu`,
//! `prefill.cu`) against the CPU model's own functions (`model::ops`,
//! `serve::paged_attention`), the kernels' very CUDA C run on the host under `kernels/emulate`
//! (a thread per CUDA thread, barriers for `__syncthreads`, warp shuffles and the tensor cores'
//! `mma.sync`), built here as a shared library and loaded. This checks
//! what the kernels compute — indexing, the KV cache layout and block tables, the split over
//! the context, reductions, conversions — without a GPU; it does not stand for a run on one.
//!
//! Tolerances, `rel·|want| + abs`: f32 (1e-5, 1e-5): the same f32 arithmetic in other orders
//! (tree reductions, an online softmax); bf16 (2⁻⁷, 1e-3) and f16 (2⁻¹⁰, 1e-4): one rounding of
//! the output (half an ulp, 2⁻⁸ / 2⁻¹¹ relative) on each side of a comparison whose reference
//! is computed from the same rounded inputs in f32.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++`); a missing one is a failure, not a skip.

use half::{bf16, f16};
use libloading::Library;
use openledger_kernels::emulate::{EmulatedOutput, compile_emulated};
use openledger_lora::model::ops;
use openledger_lora::model::{Activation, RopeScaling};
use openledger_lora::serve::{
    AttentionParams, AttnSeq, KvDtype, KvLayout, PagedKvCache, SampleError, Sampler,
    SamplingParams, SeqId, paged_attention,
};
use openledger_lora::sgmv::LoraElement;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::sync::OnceLock;

/// The emulated kernels, compiled once per test binary.
fn library() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    LIB.get_or_init(|| {
        let so = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libkernels_emulated.so");
        compile_emulated("model_ffi.cpp", &so, EmulatedOutput::SharedLibrary)
            .unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: the library is ours; its initialisers do nothing but define the kernels.
        unsafe { Library::new(&so) }.expect("load the emulated kernels")
    })
}

/// The symbol `name` of the emulated kernels, as a function of type `F`.
///
/// # Safety
/// `F` is the symbol's C signature.
unsafe fn kernel<F: Copy>(name: &str) -> F {
    // SAFETY: as the caller promises.
    unsafe { *library().get::<F>(name.as_bytes()).unwrap() }
}

/// An element type of the kernels, with the tolerance of its comparisons.
trait Elem: LoraElement {
    const TOL: (f32, f32);
}
impl Elem for f32 {
    const TOL: (f32, f32) = (1e-5, 1e-5);
}
impl Elem for f16 {
    const TOL: (f32, f32) = (1.0 / 1024.0, 1e-4);
}
impl Elem for bf16 {
    const TOL: (f32, f32) = (1.0 / 128.0, 1e-3);
}

fn close<T: Elem>(what: &str, got: &[T], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let (rel, abs) = T::TOL;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let g = g.to_f32();
        assert!(
            (g - w).abs() <= rel * w.abs() + abs,
            "{what} [{}] element {i}: {g} vs the CPU's {w}",
            T::NAME
        );
    }
}

fn rand_vec<T: Elem>(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<T> {
    (0..n)
        .map(|_| T::from_f32(rng.random_range(-scale..scale)))
        .collect()
}

fn widen<T: Elem>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

type EmbedFn<T> = unsafe extern "C" fn(u32, u32, u32, u32, *mut T, *const T, *const i32, i32, f32);
type NormFn<T> =
    unsafe extern "C" fn(u32, u32, u32, u32, *mut T, *const T, *mut T, *const T, i32, f32, i32);
type GatedFn<T> = unsafe extern "C" fn(u32, u32, u32, u32, *mut T, *const T, i32, i32);
type RopeFn<T> = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    u32,
    *mut T,
    i64,
    *mut T,
    *mut T,
    *const f32,
    *const i32,
    *const i64,
    i32,
    i32,
    i32,
    i32,
);
type AttnFn<T> = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    u32,
    *mut T,
    i64,
    *const T,
    i64,
    *const T,
    *const T,
    *const i32,
    *const i64,
    *const i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    i32,
    i32,
    *mut f32,
    *mut f32,
    *mut f32,
    *const i32,
);
type ReduceFn<T> = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    u32,
    *mut T,
    i64,
    *const f32,
    *const f32,
    *const f32,
    i32,
    i32,
    *const i32,
);

fn embed<T: Elem>() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (vocab, dim) = (50, 37);
    let table: Vec<T> = rand_vec(&mut rng, vocab * dim, 1.0);
    let ids: Vec<i32> = vec![3, 0, 49, 3, 17];
    // Scale 1 copies as stored; Gemma's √hidden multiplies in f32 and rounds once.
    for scale in [1.0f32, 45.25] {
        let mut out = vec![T::from_f32(0.0); ids.len() * dim];
        // SAFETY: the signature of emu_embed_*; out holds ids.len() rows, every id < vocab.
        unsafe {
            let f: EmbedFn<T> = kernel(&format!("emu_embed_{}", T::NAME));
            f(
                ids.len() as u32,
                1,
                1,
                64,
                out.as_mut_ptr(),
                table.as_ptr(),
                ids.as_ptr(),
                dim as i32,
                scale,
            );
        }
        for (r, &id) in ids.iter().enumerate() {
            let want = &table[id as usize * dim..][..dim];
            assert!(
                out[r * dim..][..dim].iter().zip(want).all(|(a, b)| {
                    a.to_f32().to_bits() == T::from_f32(b.to_f32() * scale).to_f32().to_bits()
                }),
                "row {r}, scale {scale}"
            );
        }
    }
}

/// Runs the RMSNorm kernel over `rows` rows of `dim`: `out` may be `x`; `residual` null for
/// none.
///
/// # Safety
/// `out`, `x` (and `residual` when not null) hold `rows × dim` elements, `w` holds `dim`.
#[allow(clippy::too_many_arguments)]
unsafe fn run_rms_norm<T: Elem>(
    rows: usize,
    dim: usize,
    out: *mut T,
    x: *const T,
    residual: *mut T,
    w: &[T],
    eps: f32,
    one_plus: bool,
) {
    // SAFETY: the signature of emu_rms_norm_*; the buffers as the caller promises.
    unsafe {
        let f: NormFn<T> = kernel(&format!("emu_rms_norm_{}", T::NAME));
        f(
            rows as u32,
            1,
            1,
            128,
            out,
            x,
            residual,
            w.as_ptr(),
            dim as i32,
            eps,
            i32::from(one_plus),
        );
    }
}

fn rms_norm<T: Elem>() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (rows, dim, eps) = (5, 300, 1e-6f32);
    let x: Vec<T> = rand_vec(&mut rng, rows * dim, 2.0);
    let residual: Vec<T> = rand_vec(&mut rng, rows * dim, 2.0);
    let w: Vec<T> = rand_vec(&mut rng, dim, 1.0);
    for one_plus in [false, true] {
        // Without a residual: the CPU's rms_norm of the same inputs.
        let mut want = widen(&x);
        ops::rms_norm(&mut want, &widen(&w), eps, one_plus);
        let mut out = vec![T::from_f32(0.0); rows * dim];
        // SAFETY: every buffer holds rows × dim, w dim.
        unsafe {
            let (o, n) = (out.as_mut_ptr(), std::ptr::null_mut());
            run_rms_norm(rows, dim, o, x.as_ptr(), n, &w, eps, one_plus);
        }
        close(&format!("rms_norm one_plus={one_plus}"), &out, &want);
        // Fused with the residual add, in place: residual = x + residual (in T), x = norm.
        let summed: Vec<T> = x
            .iter()
            .zip(&residual)
            .map(|(a, b)| T::from_f32(a.to_f32() + b.to_f32()))
            .collect();
        let mut want = widen(&summed);
        ops::rms_norm(&mut want, &widen(&w), eps, one_plus);
        let (mut xs, mut res) = (x.clone(), residual.clone());
        // SAFETY: as above; out and x are the same buffer, which the kernel allows.
        unsafe {
            let xp = xs.as_mut_ptr();
            run_rms_norm(rows, dim, xp, xp, res.as_mut_ptr(), &w, eps, one_plus);
        }
        close("fused add + rms_norm", &xs, &want);
        assert!(
            res.iter()
                .zip(&summed)
                .all(|(a, b)| a.to_f32().to_bits() == b.to_f32().to_bits()),
            "the residual holds x + residual"
        );
    }
}

fn gated<T: Elem>() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (rows, inter) = (3, 333);
    let gate_up: Vec<T> = rand_vec(&mut rng, rows * 2 * inter, 4.0);
    for (code, act) in [
        (0, Activation::Silu),
        (1, Activation::GeluTanh),
        (2, Activation::Gelu),
    ] {
        let mut want = Vec::with_capacity(rows * inter);
        for r in gate_up.chunks_exact(2 * inter) {
            let mut g = widen(&r[..inter]);
            ops::gated(act, &mut g, &widen(&r[inter..]));
            want.extend(g);
        }
        let mut out = vec![T::from_f32(0.0); rows * inter];
        // SAFETY: the signature of emu_gated_*; out is rows × inter, gate_up rows × 2·inter.
        unsafe {
            let f: GatedFn<T> = kernel(&format!("emu_gated_{}", T::NAME));
            f(
                rows as u32,
                inter.div_ceil(128) as u32,
                1,
                128,
                out.as_mut_ptr(),
                gate_up.as_ptr(),
                inter as i32,
                code,
            );
        }
        close(&format!("gated {act:?}"), &out, &want);
    }
}

fn rope_kv<T: Elem>() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (heads, kv_heads, hd, bs, blocks) = (4, 2, 64, 16, 8);
    let scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };
    for scaling in [RopeScaling::Default, scaling] {
        let inv_freq = ops::rope_inv_freq(hd, 500_000.0, scaling);
        let positions: Vec<i32> = vec![0, 1, 5, 17, 1000, 4095];
        // Token 3 writes nothing (padding).
        let slots: Vec<i64> = vec![0, 17, 35, -1, 127, 64];
        let ld = (heads + 2 * kv_heads) * hd;
        let qkv0: Vec<T> = rand_vec(&mut rng, positions.len() * ld, 1.0);
        let sentinel = T::from_f32(-7.0);
        let cache_len = blocks * kv_heads * bs * hd;
        let (mut kc, mut vc) = (vec![sentinel; cache_len], vec![sentinel; cache_len]);
        let mut qkv = qkv0.clone();
        // SAFETY: the signature of emu_rope_kv_*; every slot < blocks · bs.
        unsafe {
            let f: RopeFn<T> = kernel(&format!("emu_rope_kv_{}", T::NAME));
            f(
                positions.len() as u32,
                1,
                1,
                128,
                qkv.as_mut_ptr(),
                ld as i64,
                kc.as_mut_ptr(),
                vc.as_mut_ptr(),
                inv_freq.as_ptr(),
                positions.as_ptr(),
                slots.as_ptr(),
                heads as i32,
                kv_heads as i32,
                hd as i32,
                bs as i32,
            );
        }
        let mut written = vec![false; cache_len];
        for (t, (&pos, &slot)) in positions.iter().zip(&slots).enumerate() {
            let row = &qkv0[t * ld..][..ld];
            let mut q = widen(&row[..heads * hd]);
            ops::apply_rope(&mut q, heads, &inv_freq, pos as usize);
            close(
                &format!("rope q token {t} {scaling:?}"),
                &qkv[t * ld..][..heads * hd],
                &q,
            );
            let mut k = widen(&row[heads * hd..][..kv_heads * hd]);
            ops::apply_rope(&mut k, kv_heads, &inv_freq, pos as usize);
            if slot < 0 {
                continue;
            }
            let (blk, off) = (slot as usize / bs, slot as usize % bs);
            for h in 0..kv_heads {
                let at = ((blk * kv_heads + h) * bs + off) * hd;
                close(
                    &format!("rope k in the cache, token {t} head {h}"),
                    &kc[at..at + hd],
                    &k[h * hd..][..hd],
                );
                let v = &row[(heads + kv_heads) * hd + h * hd..][..hd];
                assert!(
                    vc[at..at + hd]
                        .iter()
                        .zip(v)
                        .all(|(a, b)| a.to_f32() == b.to_f32()),
                    "v of token {t} head {h} copied as is"
                );
                written[at..at + hd].fill(true);
            }
        }
        for (i, w) in written.iter().enumerate() {
            if !w {
                assert_eq!(kc[i].to_f32(), -7.0, "k cache element {i} not written");
                assert_eq!(vc[i].to_f32(), -7.0, "v cache element {i} not written");
            }
        }
    }
}

fn kv_dtype<T: Elem>() -> KvDtype {
    match T::NAME {
        "bf16" => KvDtype::Bf16,
        "f16" => KvDtype::F16,
        _ => KvDtype::F32,
    }
}

/// A KV cache of one layer holding random keys and values for sequences of `lens` positions
/// (blocks scattered through the pool: a first sequence is taken and freed), twice: the CPU
/// model's `PagedKvCache`, and the device layout the kernels read (`[blocks, kv_heads,
/// block_size, hd]`) with every sequence's block table one after another.
struct PagedFixture<T> {
    cpu: PagedKvCache,
    seqs: Vec<SeqId>,
    k: Vec<T>,
    v: Vec<T>,
    tables: Vec<i32>,
    /// Each sequence's offset in `tables`.
    table_at: Vec<i64>,
}

impl<T: Elem> PagedFixture<T> {
    fn new(rng: &mut ChaCha8Rng, lens: &[usize], kv_heads: usize, hd: usize, bs: usize) -> Self {
        let layout = KvLayout {
            n_layers: 1,
            n_kv_heads: kv_heads,
            head_dim: hd,
            block_size: bs,
        };
        let blocks = 40;
        let mut cpu = PagedKvCache::with_dtype(layout, blocks, kv_dtype::<T>()).unwrap();
        let seqs: Vec<SeqId> = (0..lens.len() as u64).map(SeqId).collect();
        cpu.add_sequence(SeqId(99)).unwrap();
        cpu.append_slots(SeqId(99), 40).unwrap();
        for (&s, &n) in seqs.iter().zip(lens) {
            cpu.add_sequence(s).unwrap();
            cpu.append_slots(s, n).unwrap();
        }
        cpu.free(SeqId(99)).unwrap();
        let kv_dim = kv_heads * hd;
        let cache_len = blocks * kv_heads * bs * hd;
        let (mut kc, mut vc) = (
            vec![T::from_f32(0.0); cache_len],
            vec![T::from_f32(0.0); cache_len],
        );
        let mut tables: Vec<i32> = Vec::new();
        let mut table_at = Vec::new();
        for (&s, &n) in seqs.iter().zip(lens) {
            let table = cpu.block_table(s).unwrap().to_vec();
            table_at.push(tables.len() as i64);
            tables.extend(table.iter().map(|&b| b as i32));
            for pos in 0..n {
                let k: Vec<T> = rand_vec(rng, kv_dim, 1.0);
                let v: Vec<T> = rand_vec(rng, kv_dim, 1.0);
                cpu.write(s, 0, pos, &widen(&k), &widen(&v)).unwrap();
                let blk = table[pos / bs] as usize;
                for h in 0..kv_heads {
                    let at = ((blk * kv_heads + h) * bs + pos % bs) * hd;
                    kc[at..at + hd].copy_from_slice(&k[h * hd..][..hd]);
                    vc[at..at + hd].copy_from_slice(&v[h * hd..][..hd]);
                }
            }
        }
        Self {
            cpu,
            seqs,
            k: kc,
            v: vc,
            tables,
            table_at,
        }
    }
}

/// Attention of decode and prefill rows of three sequences (1, 37 and 300 positions, blocks
/// scattered through the pool) over one layer, GQA 4:2, with and without a sliding window, in
/// one part and split over the context: the kernel against `serve::paged_attention` over a CPU
/// cache holding the same keys and values; and over a subset of the rows named by the row map,
/// the others left untouched.
fn attention<T: Elem>() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (heads, kv_heads, hd, bs) = (4, 2, 64, 16);
    let lens = [1usize, 37, 300];
    let fx = PagedFixture::<T>::new(&mut rng, &lens, kv_heads, hd, bs);
    // Rows: each sequence's last position (decode), and four prefill positions of the longest.
    let mut calls = Vec::new();
    let mut row_seq = Vec::new();
    let mut row_pos = Vec::new();
    for (i, &n) in lens.iter().enumerate() {
        calls.push(AttnSeq {
            seq: fx.seqs[i],
            start_pos: n - 1,
            n_queries: 1,
        });
        row_seq.push(i);
        row_pos.push(n as i32 - 1);
    }
    calls.push(AttnSeq {
        seq: fx.seqs[2],
        start_pos: 100,
        n_queries: 4,
    });
    for p in 100..104 {
        row_seq.push(2);
        row_pos.push(p);
    }
    let rows = row_pos.len();
    let q: Vec<T> = rand_vec(&mut rng, rows * heads * hd, 1.0);
    let table_off: Vec<i64> = row_seq.iter().map(|&s| fx.table_at[s]).collect();
    let scale = 1.0 / (hd as f32).sqrt();
    // Every row, then rows 1, 4 and 6 alone (the others keep the 7s they start with).
    let subset: Vec<i32> = vec![1, 4, 6];
    for window in [None, Some(50)] {
        let params = AttentionParams {
            n_heads: heads,
            scale,
            sliding_window: window,
        };
        let mut want = vec![0f32; rows * heads * hd];
        paged_attention(&fx.cpu, 0, &params, &calls, &widen(&q), &mut want).unwrap();
        for part_len in [1024usize, 64, 7] {
            for map in [None, Some(&subset)] {
                let parts = 300usize.div_ceil(part_len);
                let grid = map.map_or(rows, |m| m.len());
                let mut out = vec![T::from_f32(7.0); rows * heads * hd];
                let n = grid * heads * parts;
                let (mut pm, mut pl, mut pa) = (vec![0f32; n], vec![0f32; n], vec![0f32; n * hd]);
                let rows_ptr = map.map_or(std::ptr::null(), |m| m.as_ptr());
                // SAFETY: the signatures of emu_attention_* / emu_attention_reduce_*; every
                // table entry is a block < blocks, every position is stored, the part buffers
                // hold grid × heads × parts (× hd) values, the row map names rows < rows.
                unsafe {
                    let f: AttnFn<T> = kernel(&format!("emu_attention_{}", T::NAME));
                    f(
                        grid as u32,
                        heads as u32,
                        parts as u32,
                        128,
                        out.as_mut_ptr(),
                        (heads * hd) as i64,
                        q.as_ptr(),
                        (heads * hd) as i64,
                        fx.k.as_ptr(),
                        fx.v.as_ptr(),
                        fx.tables.as_ptr(),
                        table_off.as_ptr(),
                        row_pos.as_ptr(),
                        kv_heads as i32,
                        (heads / kv_heads) as i32,
                        hd as i32,
                        bs as i32,
                        scale,
                        window.map_or(0, |w| w as i32),
                        part_len as i32,
                        pm.as_mut_ptr(),
                        pl.as_mut_ptr(),
                        pa.as_mut_ptr(),
                        rows_ptr,
                    );
                    if parts > 1 {
                        let r: ReduceFn<T> = kernel(&format!("emu_attention_reduce_{}", T::NAME));
                        r(
                            grid as u32,
                            heads as u32,
                            1,
                            64,
                            out.as_mut_ptr(),
                            (heads * hd) as i64,
                            pm.as_ptr(),
                            pl.as_ptr(),
                            pa.as_ptr(),
                            parts as i32,
                            hd as i32,
                            rows_ptr,
                        );
                    }
                }
                let what = format!("attention window {window:?}, {parts} parts, rows {map:?}");
                let row = heads * hd;
                for r in 0..rows {
                    let (got, w) = (&out[r * row..][..row], &want[r * row..][..row]);
                    if map.is_none_or(|m| m.contains(&(r as i32))) {
                        close(&format!("{what}, row {r}"), got, w);
                    } else {
                        assert!(
                            got.iter().all(|x| x.to_f32() == 7.0),
                            "{what}: row {r} is not in the map but was written"
                        );
                    }
                }
            }
        }
    }
}

type PrefillFn<T> = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    u32,
    *mut T,
    i64,
    *const T,
    i64,
    *const T,
    *const T,
    *const i32,
    *const i64,
    *const i32,
    *const i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    i32,
);

/// Tolerance of the tensor-core prefill, `rel·|want| + abs`: that of the element type, plus the
/// rounding of the softmax weights to it before P·V (as flash-attention-2 does): each weight is
/// off by at most half an ulp of itself (2⁻⁹ bf16, 2⁻¹² f16, relative), so the output, a
/// weighted mean of values within ±1 divided by the unrounded sum, moves by at most that much.
fn prefill_tol<T: Elem>() -> (f32, f32) {
    let (rel, abs) = T::TOL;
    match T::NAME {
        "bf16" => (rel, abs + 1.0 / 512.0),
        _ => (rel, abs + 1.0 / 4096.0),
    }
}

/// The tensor-core prefill (`prefill.cu`, its `mma.sync` run by the emulation's m16n8k16):
/// a 140-row chunk of a prompt whose first 10 positions are already in the cache (three tiles:
/// 64, 64, 12 rows) and a 70-row prompt from position 0 (64 + 6), GQA 4:2, with and without a
/// sliding window (head size 64; 128, the largest, without; 48 with): against
/// `serve::paged_attention` over the same cache.
fn prefill<T: Elem>() {
    let configs: [(u64, usize, &[Option<usize>]); 3] = [
        (11, 64, &[None, Some(50)]),
        (12, 128, &[None]),
        (13, 48, &[Some(50)]),
    ];
    for (seed, hd, windows) in configs {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (heads, kv_heads, bs) = (4, 2, 16);
        let lens = [150usize, 70];
        let fx = PagedFixture::<T>::new(&mut rng, &lens, kv_heads, hd, bs);
        let chunks = [(0usize, 10usize, 140usize), (1, 0, 70)];
        let mut calls = Vec::new();
        let (mut table_off, mut row_pos, mut tiles) = (Vec::new(), Vec::new(), Vec::new());
        for &(s, start, n) in &chunks {
            calls.push(AttnSeq {
                seq: fx.seqs[s],
                start_pos: start,
                n_queries: n,
            });
            let first = row_pos.len();
            for i in (0..n).step_by(64) {
                tiles.extend([(first + i) as i32, (n - i).min(64) as i32]);
            }
            for p in start..start + n {
                row_pos.push(p as i32);
                table_off.push(fx.table_at[s]);
            }
        }
        assert_eq!(tiles.len() / 2, 5);
        let rows = row_pos.len();
        let q: Vec<T> = rand_vec(&mut rng, rows * heads * hd, 1.0);
        let scale = 1.0 / (hd as f32).sqrt();
        for &window in windows {
            let params = AttentionParams {
                n_heads: heads,
                scale,
                sliding_window: window,
            };
            let mut want = vec![0f32; rows * heads * hd];
            paged_attention(&fx.cpu, 0, &params, &calls, &widen(&q), &mut want).unwrap();
            let mut out = vec![T::from_f32(7.0); rows * heads * hd];
            // SAFETY: the signature of emu_prefill_attention_*; every tile is rows of one
            // sequence at consecutive positions, all stored, behind blocks < blocks.
            unsafe {
                let f: PrefillFn<T> = kernel(&format!("emu_prefill_attention_{}", T::NAME));
                f(
                    (tiles.len() / 2) as u32,
                    heads as u32,
                    1,
                    128,
                    out.as_mut_ptr(),
                    (heads * hd) as i64,
                    q.as_ptr(),
                    (heads * hd) as i64,
                    fx.k.as_ptr(),
                    fx.v.as_ptr(),
                    fx.tables.as_ptr(),
                    table_off.as_ptr(),
                    row_pos.as_ptr(),
                    tiles.as_ptr(),
                    kv_heads as i32,
                    (heads / kv_heads) as i32,
                    hd as i32,
                    bs as i32,
                    scale,
                    window.map_or(0, |w| w as i32),
                );
            }
            let (rel, abs) = prefill_tol::<T>();
            for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                let g = g.to_f32();
                assert!(
                    (g - w).abs() <= rel * w.abs() + abs,
                    "prefill hd {hd} window {window:?} [{}] row {} element {}: {g} vs the \
                     CPU's {w}",
                    T::NAME,
                    i / (heads * hd),
                    i % (heads * hd)
                );
            }
        }
    }
}

type SampleFn<T> = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    u32,
    *mut i32,
    *const T,
    i32,
    *const i32,
    *const i64,
    *const f32,
    *const i32,
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
);

/// One row's sampling parameters (top-k 0: none) and history.
struct SampleRow {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    penalty: f32,
    seed: u64,
    history: Vec<u32>,
}

/// Device sampling against `serve::Sampler` on the same logits: greedy, temperature over the
/// whole vocabulary, top-k, top-k with top-p, the repetition penalty, masked (−∞) tokens and
/// ties (rounded logits), each row drawing with the first `u` of its seeded generator. The same
/// token must come out, except where `u` falls within 1e-4 of a boundary of the CPU's
/// cumulative distribution (the device sums in another order over the whole vocabulary). A NaN,
/// an all-masked row and top-p without top-k are refused with their codes.
fn sample<T: Elem>() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let vocab = 1000usize;
    let mut rows: Vec<SampleRow> = Vec::new();
    let shapes: [(f32, usize, f32, f32); 8] = [
        (0.0, 0, 1.0, 1.0),
        (0.7, 0, 1.0, 1.0),
        (1.0, 40, 1.0, 1.0),
        (0.8, 30, 0.9, 1.0),
        (1.0, 5, 1.0, 1.3),
        (1.5, 0, 1.0, 0.8),
        (1.0, 1, 1.0, 1.0),
        (0.0, 0, 1.0, 1.2),
    ];
    for (i, &(temperature, top_k, top_p, penalty)) in shapes.iter().enumerate() {
        for seed in 0..3u64 {
            let history: Vec<u32> = (0..20).map(|_| rng.random_range(0..vocab as u32)).collect();
            rows.push(SampleRow {
                temperature,
                top_k,
                top_p,
                penalty,
                seed: seed * 31 + i as u64,
                history,
            });
        }
    }
    let n = rows.len();
    let mut logits: Vec<T> = rand_vec(&mut rng, n * vocab, 4.0);
    // Masked tokens in every other row; the penalised tokens made likely, so they matter.
    for (r, row) in rows.iter().enumerate() {
        if r % 2 == 1 {
            for i in (0..vocab).step_by(3) {
                logits[r * vocab + i] = T::from_f32(f32::NEG_INFINITY);
            }
        }
        for &t in &row.history[..5] {
            logits[r * vocab + t as usize] = T::from_f32(5.0);
        }
    }
    let mut hist = Vec::new();
    let mut hist_off = vec![0i64];
    for row in &rows {
        let mut seen = std::collections::BTreeSet::new();
        hist.extend(
            row.history
                .iter()
                .filter(|&&t| seen.insert(t))
                .map(|&t| t as i32),
        );
        hist_off.push(hist.len() as i64);
    }
    let us: Vec<f32> = rows
        .iter()
        .map(|r| ChaCha8Rng::seed_from_u64(r.seed).random::<f32>())
        .collect();
    let temp: Vec<f32> = rows.iter().map(|r| r.temperature).collect();
    let top_k: Vec<i32> = rows.iter().map(|r| r.top_k as i32).collect();
    let top_p: Vec<f32> = rows.iter().map(|r| r.top_p).collect();
    let penalty: Vec<f32> = rows.iter().map(|r| r.penalty).collect();
    let run = |logits: &[T], top_p: &[f32]| {
        let mut out = vec![0i32; 2 * n];
        let mut scratch = vec![0f32; n * vocab];
        // SAFETY: the signature of emu_sample_*; every per-row array holds n entries,
        // hist_off n + 1, scratch n × vocab.
        unsafe {
            let f: SampleFn<T> = kernel(&format!("emu_sample_{}", T::NAME));
            f(
                n as u32,
                1,
                1,
                64,
                out.as_mut_ptr(),
                logits.as_ptr(),
                vocab as i32,
                hist.as_ptr(),
                hist_off.as_ptr(),
                temp.as_ptr(),
                top_k.as_ptr(),
                top_p.as_ptr(),
                penalty.as_ptr(),
                us.as_ptr(),
                scratch.as_mut_ptr(),
            );
        }
        out
    };
    let out = run(&logits, &top_p);
    let mut near_boundary = 0;
    for (r, row) in rows.iter().enumerate() {
        let params = SamplingParams {
            temperature: row.temperature,
            top_k: (row.top_k > 0).then_some(row.top_k),
            top_p: (row.top_p < 1.0).then_some(row.top_p),
            repetition_penalty: (row.penalty != 1.0).then_some(row.penalty),
            seed: row.seed,
            ..Default::default()
        };
        let l = widen(&logits[r * vocab..][..vocab]);
        let mut sampler = Sampler::new(&params).unwrap();
        let dist = sampler.distribution(&l, &row.history).unwrap();
        let want = sampler.sample(&l, &row.history).unwrap();
        let got = out[2 * r];
        if got == want as i32 {
            continue;
        }
        // Only a draw within rounding of a boundary may differ.
        let mut acc = 0f32;
        let close = dist.iter().any(|&(_, p)| {
            acc += p;
            (us[r] - acc).abs() < 1e-4
        });
        assert!(
            close && row.top_k == 0,
            "row {r} [{}]: the device drew {got}, the CPU {want} (u = {})",
            T::NAME,
            us[r]
        );
        near_boundary += 1;
    }
    assert!(
        near_boundary <= 2,
        "{near_boundary} draws differ near a boundary"
    );
    // Refusals: a NaN (its index), a row with every token masked, top-p without top-k.
    let mut bad = logits.clone();
    bad[3 * vocab + 17] = T::from_f32(f32::NAN);
    bad[5 * vocab..6 * vocab].fill(T::from_f32(f32::NEG_INFINITY));
    let mut p_only = top_p.clone();
    p_only[0] = 0.5;
    let out = run(&bad, &p_only);
    assert_eq!((out[6], out[7]), (-1, 17), "a NaN logit names its index");
    let cpu = Sampler::new(&SamplingParams::default())
        .unwrap()
        .sample(&widen(&bad[3 * vocab..4 * vocab]), &[]);
    assert!(matches!(
        cpu,
        Err(SampleError::NonFiniteLogit { index: 17, .. })
    ));
    assert_eq!(out[10], -2, "nothing to sample");
    // Row 0 is greedy: top-p does not matter there; row 8 (top-k 40) takes top-p 0.5 fine.
    let mut p_only = top_p.clone();
    p_only[4] = 0.5;
    let out = run(&logits, &p_only);
    assert_eq!(out[8], -3, "top-p without top-k is not done on the device");
}

macro_rules! every_dtype {
    ($($name:ident => $f:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            $f::<f32>();
            $f::<f16>();
            $f::<bf16>();
        }
    )*};
}

every_dtype! {
    embedding_rows_are_gathered_exactly => embed,
    rms_norm_alone_and_fused_with_the_residual_matches_the_cpu => rms_norm,
    gated_activations_match_the_cpu => gated,
    rope_rotates_q_and_writes_k_and_v_into_their_slots => rope_kv,
    paged_attention_matches_the_cpu_in_one_part_and_split_over_the_context => attention,
    sampling_draws_the_cpu_samplers_tokens => sample,
}

#[test]
fn tensor_core_prefill_matches_the_cpu_for_chunked_and_windowed_prompts() {
    prefill::<f16>();
    prefill::<bf16>();
}
