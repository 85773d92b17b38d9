//! The paged KV cache and paged attention against dense causal attention computed naively.

use half::{bf16, f16};
use openledger_lora::serve::{
    AttentionParams, AttnSeq, KvDtype, KvError, KvLayout, PagedKvCache, SeqId, paged_attention,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn layout(n_layers: usize, n_kv_heads: usize, head_dim: usize, block_size: usize) -> KvLayout {
    KvLayout {
        n_layers,
        n_kv_heads,
        head_dim,
        block_size,
    }
}

/// Dense causal attention for one sequence: `q` `[n, n_heads, hd]` at positions
/// `start..start+n`, `k`/`v` `[len, n_kv, hd]`.
#[allow(clippy::too_many_arguments)]
fn dense(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    start: usize,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    scale: f32,
    window: Option<usize>,
) -> Vec<f32> {
    let n = q.len() / (n_heads * hd);
    let mut out = vec![0.0f32; q.len()];
    for i in 0..n {
        let p = start + i;
        for h in 0..n_heads {
            let kvh = h / (n_heads / n_kv);
            let qh = &q[(i * n_heads + h) * hd..][..hd];
            let mut s = Vec::new();
            for j in 0..=p {
                if let Some(w) = window
                    && p - j >= w
                {
                    s.push(f64::NEG_INFINITY);
                    continue;
                }
                let kj = &k[(j * n_kv + kvh) * hd..][..hd];
                let dot: f64 = qh.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum();
                s.push(dot * scale as f64);
            }
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                let acc: f64 = (0..=p)
                    .map(|j| e[j] / z * v[(j * n_kv + kvh) * hd + d] as f64)
                    .sum();
                out[(i * n_heads + h) * hd + d] = acc as f32;
            }
        }
    }
    out
}

/// `x` rounded as the cache stores it.
fn stored(dtype: KvDtype, x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&v| match dtype {
            KvDtype::F16 => f16::from_f32(v).to_f32(),
            KvDtype::Bf16 => bf16::from_f32(v).to_f32(),
            _ => v,
        })
        .collect()
}

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn paged_attention_equals_dense_causal_attention(
        seed in 0u64..1_000_000,
        block_size in 1usize..6,
        n_kv in 1usize..3,
        group in 1usize..4,
        // Widths below one vector, and ones through the SIMD kernels' 8-, 16- and 32-wide steps
        // with tails.
        hd in prop_oneof![1usize..9, Just(24), Just(37), Just(64)],
        lens in proptest::collection::vec(1usize..20, 1..4),
        window in proptest::option::of(1usize..8),
        layer in 0usize..2,
        dtype in prop_oneof![Just(KvDtype::F32), Just(KvDtype::F16), Just(KvDtype::Bf16)],
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n_heads = n_kv * group;
        let lay = layout(2, n_kv, hd, block_size);
        let total: usize = lens.iter().map(|l| lay.blocks_for(*l)).sum();
        let mut kv = PagedKvCache::with_dtype(lay, total + 3, dtype).unwrap();
        let kvd = n_kv * hd;
        // Interleave the sequences' appends so their blocks are not contiguous.
        let mut dense_kv = Vec::new();
        for (i, _) in lens.iter().enumerate() {
            kv.add_sequence(SeqId(i as u64)).unwrap();
            dense_kv.push((Vec::new(), Vec::new()));
        }
        let max_len = *lens.iter().max().unwrap();
        for p in 0..max_len {
            for (i, &len) in lens.iter().enumerate() {
                if p < len {
                    let s = SeqId(i as u64);
                    kv.append_slots(s, 1).unwrap();
                    for l in 0..2 {
                        let k = random(&mut rng, kvd);
                        let v = random(&mut rng, kvd);
                        kv.write(s, l, p, &k, &v).unwrap();
                        // the reference sees the values as stored
                        let (k, v) = (stored(dtype, &k), stored(dtype, &v));
                        if l == layer {
                            dense_kv[i].0.extend_from_slice(&k);
                            dense_kv[i].1.extend_from_slice(&v);
                        }
                    }
                }
            }
        }
        // Each sequence: a chunk of queries ending at its last position.
        let mut seqs = Vec::new();
        let mut q = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let n = rng.random_range(1..=len);
            seqs.push(AttnSeq { seq: SeqId(i as u64), start_pos: len - n, n_queries: n });
            q.extend(random(&mut rng, n * n_heads * hd));
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let params = AttentionParams { n_heads, scale, sliding_window: window };
        let mut out = vec![0.0f32; q.len()];
        paged_attention(&kv, layer, &params, &seqs, &q, &mut out).unwrap();
        let mut off = 0;
        for (i, s) in seqs.iter().enumerate() {
            let n = s.n_queries * n_heads * hd;
            let want = dense(&q[off..off + n], &dense_kv[i].0, &dense_kv[i].1, s.start_pos,
                n_heads, n_kv, hd, scale, window);
            for (a, b) in out[off..off + n].iter().zip(&want) {
                prop_assert!((a - b).abs() <= 1e-5, "paged {a} vs dense {b}");
            }
            off += n;
        }
    }
}

#[test]
fn append_takes_a_new_block_only_when_the_last_is_full() {
    let mut kv = PagedKvCache::new(layout(1, 1, 1, 4), 3).unwrap();
    let s = SeqId(1);
    kv.add_sequence(s).unwrap();
    assert_eq!(kv.append_slots(s, 4).unwrap(), 0..4);
    assert_eq!(kv.block_table(s).unwrap().len(), 1);
    assert_eq!(kv.append_slots(s, 1).unwrap(), 4..5);
    assert_eq!(kv.block_table(s).unwrap().len(), 2);
    assert_eq!(kv.free_blocks(), 1);
}

#[test]
fn out_of_blocks_changes_nothing() {
    let mut kv = PagedKvCache::new(layout(1, 1, 2, 2), 2).unwrap();
    let s = SeqId(1);
    kv.add_sequence(s).unwrap();
    kv.append_slots(s, 3).unwrap();
    kv.write(s, 0, 2, &[1.0, 2.0], &[3.0, 4.0]).unwrap();
    let table = kv.block_table(s).unwrap().to_vec();
    let err = kv.append_slots(s, 2).unwrap_err();
    assert_eq!(
        err,
        KvError::OutOfBlocks {
            seq: s,
            needed: 1,
            free: 0
        }
    );
    assert_eq!(kv.seq_len(s).unwrap(), 3);
    assert_eq!(kv.block_table(s).unwrap(), &table[..]);
    assert_eq!(kv.key(s, 0, 2).unwrap(), [1.0, 2.0]);
    // one more position still fits in the last block
    assert_eq!(kv.append_slots(s, 1).unwrap(), 3..4);
}

#[test]
fn freeing_a_sequence_returns_all_its_blocks() {
    let mut kv = PagedKvCache::new(layout(2, 1, 1, 3), 5).unwrap();
    kv.add_sequence(SeqId(0)).unwrap();
    kv.add_sequence(SeqId(1)).unwrap();
    kv.append_slots(SeqId(0), 7).unwrap();
    kv.append_slots(SeqId(1), 2).unwrap();
    assert_eq!(kv.free_blocks(), 1);
    kv.free(SeqId(0)).unwrap();
    assert_eq!(kv.free_blocks(), 4);
    assert_eq!(
        kv.free(SeqId(0)),
        Err(KvError::UnknownSequence { seq: SeqId(0) })
    );
}

#[test]
fn swap_out_then_in_restores_the_same_keys_and_values() {
    let lay = layout(2, 2, 3, 2);
    let mut kv = PagedKvCache::new(lay, 4).unwrap();
    let s = SeqId(9);
    kv.add_sequence(s).unwrap();
    kv.append_slots(s, 3).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut stored = Vec::new();
    for p in 0..3 {
        for l in 0..2 {
            let k = random(&mut rng, 6);
            let v = random(&mut rng, 6);
            kv.write(s, l, p, &k, &v).unwrap();
            stored.push((l, p, k, v));
        }
    }
    kv.swap_out(s).unwrap();
    assert_eq!(kv.free_blocks(), 4);
    assert!(kv.is_swapped(s) && !kv.contains(s));
    // Another sequence takes and overwrites the freed blocks.
    kv.add_sequence(SeqId(1)).unwrap();
    kv.append_slots(SeqId(1), 4).unwrap();
    for p in 0..4 {
        kv.write(SeqId(1), 0, p, &[9.0; 6], &[9.0; 6]).unwrap();
    }
    // Swapping in needs 2 blocks; 2 are free.
    kv.swap_in(s).unwrap();
    for (l, p, k, v) in stored {
        assert_eq!(kv.key(s, l, p).unwrap(), k);
        assert_eq!(kv.value(s, l, p).unwrap(), v);
    }
    assert_eq!(kv.seq_len(s).unwrap(), 3);
}

#[test]
fn swap_in_without_room_fails_and_keeps_the_swapped_copy() {
    let mut kv = PagedKvCache::new(layout(1, 1, 1, 1), 2).unwrap();
    kv.add_sequence(SeqId(0)).unwrap();
    kv.append_slots(SeqId(0), 2).unwrap();
    kv.write(SeqId(0), 0, 1, &[5.0], &[6.0]).unwrap();
    kv.swap_out(SeqId(0)).unwrap();
    kv.add_sequence(SeqId(1)).unwrap();
    kv.append_slots(SeqId(1), 1).unwrap();
    assert!(matches!(
        kv.swap_in(SeqId(0)),
        Err(KvError::OutOfBlocks {
            needed: 2,
            free: 1,
            ..
        })
    ));
    assert!(kv.is_swapped(SeqId(0)));
    kv.free(SeqId(1)).unwrap();
    kv.swap_in(SeqId(0)).unwrap();
    assert_eq!(kv.value(SeqId(0), 0, 1).unwrap(), [6.0]);
}

#[test]
fn truncate_returns_blocks_past_the_new_length() {
    let mut kv = PagedKvCache::new(layout(1, 1, 1, 2), 3).unwrap();
    kv.add_sequence(SeqId(0)).unwrap();
    kv.append_slots(SeqId(0), 5).unwrap();
    kv.truncate(SeqId(0), 2).unwrap();
    assert_eq!(kv.free_blocks(), 2);
    assert_eq!(kv.seq_len(SeqId(0)).unwrap(), 2);
}

#[test]
fn bad_arguments_get_typed_errors() {
    assert!(matches!(
        PagedKvCache::new(layout(1, 0, 1, 1), 1),
        Err(KvError::InvalidLayout { .. })
    ));
    assert!(matches!(
        PagedKvCache::new(layout(1, 1, 1, 1), 0),
        Err(KvError::InvalidLayout { .. })
    ));
    let mut kv = PagedKvCache::new(layout(1, 2, 2, 2), 2).unwrap();
    let s = SeqId(0);
    kv.add_sequence(s).unwrap();
    assert_eq!(
        kv.add_sequence(s),
        Err(KvError::DuplicateSequence { seq: s })
    );
    kv.append_slots(s, 1).unwrap();
    assert!(matches!(
        kv.write(s, 0, 0, &[1.0; 3], &[1.0; 4]),
        Err(KvError::WrongLength {
            what: "key",
            expected: 4,
            found: 3
        })
    ));
    assert!(matches!(
        kv.write(s, 0, 1, &[1.0; 4], &[1.0; 4]),
        Err(KvError::PositionOutOfRange { pos: 1, len: 1, .. })
    ));
    assert!(matches!(
        kv.write(s, 1, 0, &[1.0; 4], &[1.0; 4]),
        Err(KvError::LayerOutOfRange {
            layer: 1,
            n_layers: 1
        })
    ));
    let q = [0.0f32; 6];
    let mut out = [0.0f32; 6];
    let one = [AttnSeq {
        seq: s,
        start_pos: 0,
        n_queries: 1,
    }];
    let p = |n_heads, w| AttentionParams {
        n_heads,
        scale: 1.0,
        sliding_window: w,
    };
    assert!(matches!(
        paged_attention(&kv, 0, &p(3, None), &one, &q, &mut out),
        Err(KvError::InvalidAttention { .. })
    ));
    assert!(matches!(
        paged_attention(&kv, 0, &p(2, Some(0)), &one, &q[..4], &mut out[..4]),
        Err(KvError::InvalidAttention { .. })
    ));
    assert!(matches!(
        paged_attention(&kv, 0, &p(2, None), &one, &q, &mut out),
        Err(KvError::WrongLength {
            what: "query",
            expected: 4,
            found: 6
        })
    ));
    let past = [AttnSeq {
        seq: s,
        start_pos: 0,
        n_queries: 2,
    }];
    assert!(matches!(
        paged_attention(&kv, 0, &p(2, None), &past, &[0.0; 8], &mut [0.0; 8]),
        Err(KvError::PositionOutOfRange { .. })
    ));
}

#[test]
fn a_fork_shares_blocks_until_one_side_writes() {
    let mut kv = PagedKvCache::new(layout(1, 1, 1, 2), 6).unwrap();
    let (p, c) = (SeqId(0), SeqId(1));
    kv.add_sequence(p).unwrap();
    kv.append_slots(p, 3).unwrap();
    for pos in 0..3 {
        kv.write(p, 0, pos, &[pos as f32], &[10.0 + pos as f32])
            .unwrap();
    }
    kv.fork(p, c).unwrap();
    assert_eq!(kv.free_blocks(), 4, "forking takes no block");
    assert_eq!(kv.block_table(c).unwrap(), kv.block_table(p).unwrap());
    // Appending into the shared, partly filled last block copies it first.
    assert_eq!(kv.blocks_needed(c, 1).unwrap(), 1);
    kv.append_slots(c, 1).unwrap();
    assert_eq!(kv.free_blocks(), 3);
    assert_eq!(kv.block_table(c).unwrap()[0], kv.block_table(p).unwrap()[0]);
    assert_ne!(kv.block_table(c).unwrap()[1], kv.block_table(p).unwrap()[1]);
    assert_eq!(
        kv.key(c, 0, 2).unwrap(),
        [2.0],
        "the copy holds the shared data"
    );
    kv.write(c, 0, 3, &[7.0], &[8.0]).unwrap();
    // Overwriting a shared position copies that block; the parent keeps its data.
    kv.write(c, 0, 0, &[-1.0], &[-1.0]).unwrap();
    assert_eq!(kv.free_blocks(), 2);
    assert_eq!(kv.key(p, 0, 0).unwrap(), [0.0]);
    assert_eq!(kv.key(c, 0, 0).unwrap(), [-1.0]);
    assert_eq!(kv.value(c, 0, 1).unwrap(), [11.0]);
    kv.free(p).unwrap();
    assert_eq!(kv.key(c, 0, 3).unwrap(), [7.0]);
    kv.free(c).unwrap();
    assert_eq!(kv.free_blocks(), 6);
}

#[test]
fn freeing_a_parent_keeps_blocks_its_fork_still_holds() {
    let mut kv = PagedKvCache::new(layout(1, 1, 1, 2), 2).unwrap();
    kv.add_sequence(SeqId(0)).unwrap();
    kv.append_slots(SeqId(0), 4).unwrap();
    kv.write(SeqId(0), 0, 3, &[5.0], &[6.0]).unwrap();
    kv.fork(SeqId(0), SeqId(1)).unwrap();
    kv.free(SeqId(0)).unwrap();
    assert_eq!(kv.free_blocks(), 0);
    assert_eq!(kv.value(SeqId(1), 0, 3).unwrap(), [6.0]);
    assert_eq!(
        kv.fork(SeqId(1), SeqId(1)),
        Err(KvError::DuplicateSequence { seq: SeqId(1) })
    );
}

#[test]
fn a_copy_on_write_without_a_free_block_fails_and_changes_nothing() {
    let mut kv = PagedKvCache::new(layout(1, 1, 1, 2), 1).unwrap();
    kv.add_sequence(SeqId(0)).unwrap();
    kv.append_slots(SeqId(0), 1).unwrap();
    kv.write(SeqId(0), 0, 0, &[1.0], &[2.0]).unwrap();
    kv.fork(SeqId(0), SeqId(1)).unwrap();
    assert!(matches!(
        kv.write(SeqId(1), 0, 0, &[3.0], &[4.0]),
        Err(KvError::OutOfBlocks { .. })
    ));
    assert!(matches!(
        kv.append_slots(SeqId(1), 1),
        Err(KvError::OutOfBlocks { needed: 1, .. })
    ));
    assert_eq!(kv.seq_len(SeqId(1)).unwrap(), 1);
    assert_eq!(kv.key(SeqId(1), 0, 0).unwrap(), [1.0]);
    assert_eq!(kv.key(SeqId(0), 0, 0).unwrap(), [1.0]);
}

#[test]
fn half_precision_storage_rounds_once_and_survives_swap_and_fork() {
    for dtype in [KvDtype::F16, KvDtype::Bf16] {
        let mut kv = PagedKvCache::with_dtype(layout(1, 2, 2, 2), 4, dtype).unwrap();
        assert_eq!(kv.dtype(), dtype);
        let s = SeqId(0);
        kv.add_sequence(s).unwrap();
        kv.append_slots(s, 3).unwrap();
        let k = [0.1f32, -2.5, 3.0e3, 1.0 / 3.0];
        kv.write(s, 0, 2, &k, &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let want = stored(dtype, &k);
        assert_eq!(kv.key(s, 0, 2).unwrap(), want);
        assert_ne!(want, k.to_vec(), "{dtype:?} rounds");
        kv.swap_out(s).unwrap();
        kv.swap_in(s).unwrap();
        assert_eq!(kv.key(s, 0, 2).unwrap(), want);
        kv.fork(s, SeqId(1)).unwrap();
        kv.write(SeqId(1), 0, 2, &[0.0; 4], &[0.0; 4]).unwrap();
        assert_eq!(kv.key(s, 0, 2).unwrap(), want);
        assert_eq!(kv.value(s, 0, 2).unwrap(), [1.0, 2.0, 3.0, 4.0]);
    }
}
