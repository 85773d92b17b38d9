//! The pool with the real PEFT fixtures and the real `LoraAdapter`: every kind of source yields
//! the same adapter as a direct load, and budgets are counted in the adapter's own bytes.

use std::path::PathBuf;
use std::sync::Arc;

use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::pool::{
    AdapterBytes, AdapterId, AdapterPool, AdapterSource, HubDir, Source, SourceError,
};

const NAMES: [&str; 3] = ["all-r8-rslora", "attn-patterns", "qv-r4"];

fn adapters_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama/adapters")
}

fn id(s: &str) -> AdapterId {
    AdapterId::new(s).unwrap()
}

fn direct(name: &str) -> LoraAdapter {
    LoraAdapter::from_dir(&adapters_root().join(name), &LoadOptions::default()).unwrap()
}

/// Same modules, ranks, scales and factor values.
fn assert_same_adapter(a: &LoraAdapter, b: &LoraAdapter) {
    assert_eq!(a.resident_bytes(), b.resident_bytes());
    let ma: Vec<_> = a.modules().collect();
    let mb: Vec<_> = b.modules().collect();
    assert_eq!(ma.len(), mb.len());
    for ((na, la), (nb, lb)) in ma.iter().zip(&mb) {
        assert_eq!(na, nb);
        assert_eq!(la.rank(), lb.rank(), "{na}");
        assert_eq!(la.scale(), lb.scale(), "{na}");
        assert_eq!(la.a_f32(), lb.a_f32(), "{na}");
        assert_eq!(la.b_f32(), lb.b_f32(), "{na}");
    }
}

struct FromDisk;

impl AdapterSource for FromDisk {
    fn fetch(&self, id: &AdapterId) -> Result<AdapterBytes, SourceError> {
        let dir = adapters_root().join(id.as_str());
        Ok(AdapterBytes {
            config_json: std::fs::read(dir.join("adapter_config.json"))?,
            safetensors: std::fs::read(dir.join("adapter_model.safetensors"))?,
        })
    }
}

#[test]
fn hub_registers_every_fixture_folder_and_loads_them_as_a_direct_load_does() {
    let hub = HubDir::open(adapters_root()).unwrap();
    assert_eq!(
        hub.ids()
            .unwrap()
            .iter()
            .map(AdapterId::as_str)
            .collect::<Vec<_>>(),
        NAMES
    );
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    assert_eq!(pool.register_hub(&hub).unwrap(), 3);
    let mut total = 0;
    for name in NAMES {
        let got = pool.get(&id(name)).unwrap();
        assert_same_adapter(&got, &direct(name));
        total += got.resident_bytes();
    }
    let s = pool.stats();
    assert_eq!((s.loads, s.misses, s.hits, s.resident_count), (3, 3, 0, 3));
    assert_eq!(s.resident_bytes, total);
    assert_eq!(s.load_latency.count, 3);
    assert!(s.load_latency.min <= s.load_latency.p50 && s.load_latency.p99 <= s.load_latency.max);
}

#[test]
fn folder_bytes_and_custom_sources_yield_the_same_adapter() {
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    let dir = adapters_root().join("attn-patterns");
    pool.register(id("dir"), Source::Dir(dir.clone())).unwrap();
    pool.register(
        id("bytes"),
        Source::bytes(
            std::fs::read(dir.join("adapter_config.json")).unwrap(),
            std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
        ),
    )
    .unwrap();
    pool.register(id("attn-patterns"), Source::Custom(Arc::new(FromDisk)))
        .unwrap();
    let want = direct("attn-patterns");
    for name in ["dir", "bytes", "attn-patterns"] {
        assert_same_adapter(&pool.get(&id(name)).unwrap(), &want);
    }
}

#[test]
fn budget_for_two_fixtures_keeps_the_two_most_recently_used() {
    let sizes: Vec<usize> = NAMES.iter().map(|n| direct(n).resident_bytes()).collect();
    // Room for the two smaller adapters only, plus the largest alone.
    let budget = sizes.iter().sum::<usize>() - sizes.iter().min().unwrap() - 1;
    let hub = HubDir::open(adapters_root()).unwrap();
    let pool: AdapterPool = AdapterPool::new(budget);
    pool.register_hub(&hub).unwrap();
    for name in NAMES {
        pool.get(&id(name)).unwrap();
        assert!(pool.stats().resident_bytes <= budget);
    }
    let resident = pool.resident_ids();
    assert_eq!(
        resident.last().unwrap().as_str(),
        "qv-r4",
        "the last one used stays"
    );
    assert!(
        !pool.is_resident(&id("all-r8-rslora")),
        "the first one used went first"
    );
    let s = pool.stats();
    assert_eq!(s.loads, s.evictions + s.resident_count as u64);
}

#[test]
fn evicted_adapter_lives_on_in_the_callers_arc_until_dropped() {
    let small = direct("qv-r4").resident_bytes();
    let pool: AdapterPool = AdapterPool::new(small);
    pool.register(id("qv-r4"), Source::Dir(adapters_root().join("qv-r4")))
        .unwrap();
    pool.register(id("copy"), Source::Dir(adapters_root().join("qv-r4")))
        .unwrap();
    let held = pool.get(&id("qv-r4")).unwrap();
    pool.get(&id("copy")).unwrap(); // evicts qv-r4 from the pool
    assert!(!pool.is_resident(&id("qv-r4")));
    assert_eq!(Arc::strong_count(&held), 1, "only the caller holds it now");
    assert_same_adapter(&held, &direct("qv-r4"));
    assert_eq!(pool.stats().resident_bytes, small);
}

#[test]
fn pinned_fixture_survives_pressure_from_the_others() {
    let hub = HubDir::open(adapters_root()).unwrap();
    let biggest = NAMES
        .iter()
        .map(|n| direct(n).resident_bytes())
        .max()
        .unwrap();
    let qv = direct("qv-r4").resident_bytes();
    let pool: AdapterPool = AdapterPool::new(qv + biggest);
    pool.register_hub(&hub).unwrap();
    pool.pin(&id("qv-r4")).unwrap();
    for _ in 0..3 {
        for name in NAMES {
            pool.get(&id(name)).unwrap();
            assert!(pool.is_resident(&id("qv-r4")));
        }
    }
    pool.unpin(&id("qv-r4")).unwrap();
    assert_eq!(pool.stats().pinned_count, 0);
}

#[test]
fn warm_up_reports_progress_for_each_adapter_and_carries_on_after_a_failure() {
    let hub = HubDir::open(adapters_root()).unwrap();
    let pool: AdapterPool = AdapterPool::new(64 << 20);
    pool.register_hub(&hub).unwrap();
    pool.register(id("broken"), Source::bytes(&b"{}"[..], &b""[..]))
        .unwrap();
    let order = [
        id("qv-r4"),
        id("broken"),
        id("attn-patterns"),
        id("all-r8-rslora"),
    ];
    let mut seen = Vec::new();
    let loaded = pool.warm_up(&order, |p| {
        seen.push((p.done, p.total, p.id.to_string(), p.outcome.is_ok()));
    });
    assert_eq!(loaded, 3);
    assert_eq!(
        seen,
        [
            (1, 4, "qv-r4".to_string(), true),
            (2, 4, "broken".to_string(), false),
            (3, 4, "attn-patterns".to_string(), true),
            (4, 4, "all-r8-rslora".to_string(), true),
        ]
    );
    let s = pool.stats();
    assert_eq!((s.loads, s.load_failures, s.hits, s.misses), (3, 1, 0, 0));
}
