//! The pool under many threads: 16 threads hammer 64 real adapters through a budget that holds
//! 8. The budget is never exceeded (a watcher samples it; the pool also asserts it after every
//! insertion in debug builds), nothing deadlocks (a timeout guards the run), and every residency
//! costs exactly one fetch (single-flight).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::pool::{
    AdapterBytes, AdapterId, AdapterPool, AdapterSource, PoolStats, Source, SourceError,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama/adapters/qv-r4")
}

/// Serves the real `qv-r4` fixture under every id, counting fetches; optionally slow.
struct Counting {
    config_json: Vec<u8>,
    safetensors: Vec<u8>,
    fetches: AtomicU64,
    delay: Duration,
}

impl Counting {
    fn new(delay: Duration) -> Self {
        let dir = fixture_dir();
        Self {
            config_json: std::fs::read(dir.join("adapter_config.json")).unwrap(),
            safetensors: std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
            fetches: AtomicU64::new(0),
            delay,
        }
    }
}

impl AdapterSource for Counting {
    fn fetch(&self, _: &AdapterId) -> Result<AdapterBytes, SourceError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        Ok(AdapterBytes {
            config_json: self.config_json.clone(),
            safetensors: self.safetensors.clone(),
        })
    }
}

/// Runs `f` on its own thread and fails the test if it takes longer than `limit` (deadlock).
fn with_timeout<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("no result within {limit:?} (deadlock?): {e}"))
}

fn adapter_size() -> usize {
    LoraAdapter::from_dir(&fixture_dir(), &LoadOptions::default())
        .unwrap()
        .resident_bytes()
}

#[test]
fn sixteen_threads_over_64_adapters_never_exceed_a_budget_for_8_and_load_once_per_residency() {
    const THREADS: usize = 16;
    const REQUESTS: usize = 2_000;
    const ADAPTERS: usize = 64;
    let size = adapter_size();
    let budget = 8 * size;
    let src = Arc::new(Counting::new(Duration::ZERO));
    let pool: AdapterPool = AdapterPool::new(budget);
    let ids: Vec<AdapterId> = (0..ADAPTERS)
        .map(|i| AdapterId::new(&format!("tenant-{}/adapter-{i}", i % 4)).unwrap())
        .collect();
    for id in &ids {
        pool.register(id.clone(), Source::Custom(src.clone()))
            .unwrap();
    }

    let (pool2, ids2, src2) = (pool.clone(), ids.clone(), src.clone());
    let (stats, max_seen, samples) = with_timeout(Duration::from_secs(120), move || {
        let done = AtomicBool::new(false);
        let max_seen = AtomicUsize::new(0);
        let samples = AtomicU64::new(0);
        let start = Barrier::new(THREADS);
        std::thread::scope(|s| {
            let watcher = s.spawn(|| {
                while !done.load(Ordering::SeqCst) {
                    let st: PoolStats = pool2.stats();
                    assert!(
                        st.resident_bytes <= budget,
                        "{} > {budget}",
                        st.resident_bytes
                    );
                    max_seen.fetch_max(st.resident_bytes, Ordering::SeqCst);
                    samples.fetch_add(1, Ordering::SeqCst);
                    std::thread::yield_now();
                }
            });
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (pool, ids, start) = (&pool2, &ids2, &start);
                    s.spawn(move || {
                        let mut rng = ChaCha8Rng::seed_from_u64(t as u64);
                        start.wait();
                        for _ in 0..REQUESTS {
                            // Skewed: half the requests go to 8 hot adapters.
                            let i = if rng.random_bool(0.5) {
                                rng.random_range(0..8)
                            } else {
                                rng.random_range(0..ADAPTERS)
                            };
                            let a = pool.get(&ids[i]).unwrap();
                            assert_eq!(a.resident_bytes(), size);
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
            }
            done.store(true, Ordering::SeqCst);
            watcher.join().unwrap();
        });
        let _ = &src2;
        (pool2.stats(), max_seen.into_inner(), samples.into_inner())
    });

    assert!(samples > 0);
    assert!(max_seen <= budget);
    assert!(stats.resident_bytes <= budget);
    assert_eq!(stats.hits + stats.misses, (THREADS * REQUESTS) as u64);
    assert_eq!(stats.load_failures, 0);
    // One fetch per load, one load per residency: every load is either still resident or was
    // evicted exactly once.
    assert_eq!(src.fetches.load(Ordering::SeqCst), stats.loads);
    assert_eq!(stats.loads, stats.evictions + stats.resident_count as u64);
    assert_eq!(stats.resident_bytes, stats.resident_count * size);
    assert!(stats.evictions > 0, "the budget forced evictions");
    assert_eq!(stats.load_latency.count, stats.loads);
    assert_eq!(stats.registered_count, ADAPTERS);
}

#[test]
fn sixteen_threads_asking_for_one_adapter_at_once_load_it_once() {
    let src = Arc::new(Counting::new(Duration::from_millis(100)));
    let pool: AdapterPool = AdapterPool::new(1 << 20);
    let id = AdapterId::new("shared").unwrap();
    pool.register(id.clone(), Source::Custom(src.clone()))
        .unwrap();
    let (pool2, id2) = (pool.clone(), id.clone());
    let got = with_timeout(Duration::from_secs(60), move || {
        let start = Barrier::new(16);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        pool2.get(&id2).unwrap()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    });
    assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
    assert!(
        got.iter().all(|a| Arc::ptr_eq(a, &got[0])),
        "all share one adapter"
    );
    let s = pool.stats();
    assert_eq!(s.loads, 1);
    assert_eq!(s.hits + s.misses, 16);
    assert!(s.misses >= 1);
}

#[test]
fn sixteen_threads_share_one_failed_load_and_it_is_counted_once() {
    struct Failing(AtomicU64);
    impl AdapterSource for Failing {
        fn fetch(&self, _: &AdapterId) -> Result<AdapterBytes, SourceError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            Err("object store unavailable".into())
        }
    }
    let src = Arc::new(Failing(AtomicU64::new(0)));
    let pool: AdapterPool = AdapterPool::new(1 << 20);
    let id = AdapterId::new("down").unwrap();
    pool.register(id.clone(), Source::Custom(src.clone()))
        .unwrap();
    let (pool2, id2) = (pool.clone(), id.clone());
    let errors = with_timeout(Duration::from_secs(60), move || {
        let start = Barrier::new(16);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        pool2.get(&id2).unwrap_err()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    });
    for e in &errors {
        assert_eq!(
            e.to_string(),
            "source of adapter \"down\" failed: object store unavailable"
        );
    }
    let fetches = src.0.load(Ordering::SeqCst);
    let s = pool.stats();
    assert_eq!(
        s.load_failures, fetches,
        "one failure per load, not per caller"
    );
    assert!(
        fetches < 16,
        "waiters shared the failed load ({fetches} fetches)"
    );
    assert_eq!((s.loads, s.hits, s.misses, s.resident_count), (0, 0, 0, 0));
}

#[test]
fn mixed_gets_pins_prefetches_and_reregistrations_keep_the_books_balanced() {
    use openledger_lora::pool::PoolError;
    const THREADS: usize = 8;
    const OPS: usize = 1_500;
    const ADAPTERS: usize = 32;
    let size = adapter_size();
    let budget = 6 * size;
    let src = Arc::new(Counting::new(Duration::ZERO));
    let pool: AdapterPool = AdapterPool::new(budget);
    let ids: Vec<AdapterId> = (0..ADAPTERS)
        .map(|i| AdapterId::new(&format!("m{i}")).unwrap())
        .collect();
    for id in &ids {
        pool.register(id.clone(), Source::Custom(src.clone()))
            .unwrap();
    }
    let (pool2, ids2, src2) = (pool.clone(), ids.clone(), src.clone());
    with_timeout(Duration::from_secs(120), move || {
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (pool, ids, src) = (&pool2, &ids2, &src2);
                s.spawn(move || {
                    let mut rng = ChaCha8Rng::seed_from_u64(100 + t as u64);
                    for _ in 0..OPS {
                        let id = &ids[rng.random_range(0..ADAPTERS)];
                        match rng.random_range(0..10) {
                            // Pins are short-lived, at most one per thread; while they fill
                            // the budget, loads fail with `BudgetExhaustedByPinned`.
                            0 => match pool.pin(id) {
                                Ok(_) => {
                                    let _ = pool.get(&ids[rng.random_range(0..ADAPTERS)]);
                                    pool.unpin(id).unwrap();
                                }
                                Err(
                                    PoolError::BudgetExhaustedByPinned { .. }
                                    | PoolError::UnknownId { .. }
                                    | PoolError::UnregisteredWhileLoading { .. },
                                ) => {}
                                Err(e) => panic!("pin: {e}"),
                            },
                            1 => {
                                if let Ok(p) = pool.prefetch(id) {
                                    let _ = p.wait();
                                }
                            }
                            2 if t < 2 => match pool.unregister(id) {
                                Ok(()) => pool
                                    .register(id.clone(), Source::Custom(src.clone()))
                                    .unwrap(),
                                Err(PoolError::Pinned { .. } | PoolError::UnknownId { .. }) => {}
                                Err(e) => panic!("unregister: {e}"),
                            },
                            _ => match pool.get(id) {
                                Ok(a) => assert_eq!(a.resident_bytes(), size),
                                Err(
                                    PoolError::BudgetExhaustedByPinned { .. }
                                    | PoolError::UnknownId { .. }
                                    | PoolError::UnregisteredWhileLoading { .. },
                                ) => {}
                                Err(e) => panic!("get: {e}"),
                            },
                        }
                        assert!(pool.stats().resident_bytes <= budget);
                    }
                });
            }
        });
    });
    let s = pool.stats();
    assert_eq!(s.pinned_count, 0, "every pin was undone");
    assert_eq!(s.registered_count, ADAPTERS);
    assert_eq!(s.resident_bytes, s.resident_count * size);
    // Every fetch ended as a load or a counted failure; every load is accounted for.
    assert_eq!(
        src.fetches.load(Ordering::SeqCst),
        s.loads + s.load_failures
    );
    assert_eq!(
        s.loads,
        s.evictions + s.unregistered_resident + s.resident_count as u64
    );
    assert_eq!(s.load_latency.count, s.loads);
}
