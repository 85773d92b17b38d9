//! Hostile and broken inputs to the pool: each gets its typed error naming the culprit, and the
//! pool's state and statistics stay as they were (a failed load adds one to `load_failures`,
//! nothing else).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::error::LoraError;
use openledger_lora::pool::{
    AdapterBytes, AdapterId, AdapterPool, AdapterSource, HubDir, IdProblem, PoolError, PoolStats,
    Source, SourceError,
};

fn adapters_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama/adapters")
}

fn id(s: &str) -> AdapterId {
    AdapterId::new(s).unwrap()
}

fn fixture_bytes(name: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = adapters_root().join(name);
    (
        std::fs::read(dir.join("adapter_config.json")).unwrap(),
        std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
    )
}

fn fixture_size(name: &str) -> usize {
    LoraAdapter::from_dir(&adapters_root().join(name), &LoadOptions::default())
        .unwrap()
        .resident_bytes()
}

/// A pool holding the three fixtures (all resident) under a roomy budget.
fn busy_pool() -> AdapterPool {
    let pool: AdapterPool = AdapterPool::new(16 << 20);
    pool.register_hub(&HubDir::open(adapters_root()).unwrap())
        .unwrap();
    for name in ["qv-r4", "all-r8-rslora", "attn-patterns"] {
        pool.get(&id(name)).unwrap();
    }
    pool
}

/// Everything observable about the pool's contents.
fn snapshot(pool: &AdapterPool) -> (PoolStats, Vec<AdapterId>) {
    (pool.stats(), pool.resident_ids())
}

/// `after` equals `before` except for `load_failures`, which grew by `failures`.
fn assert_unchanged_but_failures(
    before: &(PoolStats, Vec<AdapterId>),
    after: &(PoolStats, Vec<AdapterId>),
    failures: u64,
) {
    assert_eq!(after.1, before.1, "resident set changed");
    assert_eq!(after.0.load_failures, before.0.load_failures + failures);
    let normalised = PoolStats {
        load_failures: before.0.load_failures,
        ..after.0.clone()
    };
    assert_eq!(normalised, before.0);
}

#[test]
fn path_traversal_ids_are_rejected_before_reaching_the_pool() {
    let pool = busy_pool();
    let before = snapshot(&pool);
    let cases = [
        ("../qv-r4", IdProblem::ParentComponent),
        ("qv-r4/../../etc", IdProblem::ParentComponent),
        ("..", IdProblem::ParentComponent),
        ("/etc/passwd", IdProblem::Absolute),
        ("..\\..\\windows", IdProblem::Backslash),
        ("qv-r4\0", IdProblem::Nul),
        ("C:\\adapters", IdProblem::Backslash),
        ("C:adapters", IdProblem::DrivePrefix),
        ("org//name", IdProblem::EmptyComponent),
        ("./qv-r4", IdProblem::CurrentComponent),
        ("", IdProblem::Empty),
    ];
    for (input, reason) in cases {
        let err: PoolError = AdapterId::new(input).unwrap_err().into();
        match &err {
            PoolError::InvalidId(e) => {
                assert_eq!(e.reason, reason, "{input:?}");
                assert_eq!(e.id, input.chars().take(80).collect::<String>());
            }
            other => panic!("{input:?}: unexpected {other:?}"),
        }
    }
    assert_unchanged_but_failures(&before, &snapshot(&pool), 0);
}

#[cfg(unix)]
fn symlinked_hub() -> (tempfile::TempDir, tempfile::TempDir, HubDir) {
    let hub_root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (cfg, st) = fixture_bytes("qv-r4");
    for dir in [hub_root.path().join("good"), outside.path().join("secret")] {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("adapter_config.json"), &cfg).unwrap();
        std::fs::write(dir.join("adapter_model.safetensors"), &st).unwrap();
    }
    std::os::unix::fs::symlink(outside.path().join("secret"), hub_root.path().join("evil"))
        .unwrap();
    let hub = HubDir::open(hub_root.path()).unwrap();
    (hub_root, outside, hub)
}

#[cfg(unix)]
#[test]
fn hub_symlink_pointing_outside_the_root_is_refused_at_registration() {
    let (_root, outside, hub) = symlinked_hub();
    assert_eq!(hub.ids().unwrap(), [id("good")], "symlinks are not listed");
    let pool = busy_pool();
    let before = snapshot(&pool);
    let err = pool
        .register(id("evil"), Source::Hub(hub.clone()))
        .unwrap_err();
    match &err {
        PoolError::PathEscapesRoot { id, path, root } => {
            assert_eq!(id.as_str(), "evil");
            assert_eq!(path, &outside.path().join("secret").canonicalize().unwrap());
            assert_eq!(root, hub.root());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!pool.is_registered(&id("evil")));
    assert_unchanged_but_failures(&before, &snapshot(&pool), 0);
}

#[cfg(unix)]
#[test]
fn hub_folder_swapped_for_an_escaping_symlink_after_registration_fails_the_load() {
    let (root, outside, hub) = symlinked_hub();
    let pool = busy_pool();
    pool.register(id("good"), Source::Hub(hub)).unwrap();
    let good = root.path().join("good");
    std::fs::remove_dir_all(&good).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), &good).unwrap();
    let before = snapshot(&pool);
    let err = pool.get(&id("good")).unwrap_err();
    assert!(
        matches!(&err, PoolError::PathEscapesRoot { id, .. } if id.as_str() == "good"),
        "{err:?}"
    );
    assert_unchanged_but_failures(&before, &snapshot(&pool), 1);
}

#[test]
fn hub_id_without_a_folder_is_a_source_error_naming_the_path() {
    let hub = HubDir::open(adapters_root()).unwrap();
    let pool = busy_pool();
    let before = snapshot(&pool);
    let err = pool
        .register(id("no-such-adapter"), Source::Hub(hub))
        .unwrap_err();
    match &err {
        PoolError::Source { id, message } => {
            assert_eq!(id.as_str(), "no-such-adapter");
            assert!(message.contains("no-such-adapter"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_unchanged_but_failures(&before, &snapshot(&pool), 0);
}

#[test]
fn missing_hub_root_is_a_typed_error() {
    let missing = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-hub-root");
    let err = HubDir::open(&missing).unwrap_err();
    assert!(
        matches!(&err, PoolError::HubRoot { path, .. } if *path == missing),
        "{err:?}"
    );
}

/// A source that serves the fixture `qv-r4` but can be told to fail or to truncate.
struct Flaky {
    fail: AtomicBool,
    truncate: AtomicBool,
}

impl AdapterSource for Flaky {
    fn fetch(&self, _: &AdapterId) -> Result<AdapterBytes, SourceError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err("connection reset after 4096 bytes".into());
        }
        let (config_json, mut safetensors) = fixture_bytes("qv-r4");
        if self.truncate.load(Ordering::SeqCst) {
            safetensors.truncate(safetensors.len() / 2);
        }
        Ok(AdapterBytes {
            config_json,
            safetensors,
        })
    }
}

#[test]
fn a_source_failing_mid_read_is_a_source_error_and_the_pool_is_unchanged() {
    let pool = busy_pool();
    let src = Arc::new(Flaky {
        fail: AtomicBool::new(true),
        truncate: AtomicBool::new(false),
    });
    pool.register(id("remote/qv"), Source::Custom(src.clone()))
        .unwrap();
    let before = snapshot(&pool);
    let err = pool.get(&id("remote/qv")).unwrap_err();
    match &err {
        PoolError::Source { id, message } => {
            assert_eq!(id.as_str(), "remote/qv");
            assert_eq!(message, "connection reset after 4096 bytes");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_unchanged_but_failures(&before, &snapshot(&pool), 1);
    // The failure is not cached: once the source recovers, the adapter loads.
    src.fail.store(false, Ordering::SeqCst);
    assert_eq!(
        pool.get(&id("remote/qv")).unwrap().resident_bytes(),
        fixture_size("qv-r4")
    );
}

#[test]
fn truncated_bytes_from_a_source_are_a_load_error_naming_the_adapter() {
    let pool = busy_pool();
    let src = Arc::new(Flaky {
        fail: AtomicBool::new(false),
        truncate: AtomicBool::new(true),
    });
    pool.register(id("remote/qv"), Source::Custom(src)).unwrap();
    let before = snapshot(&pool);
    let bytes = fixture_bytes("qv-r4").1;
    let full = bytes.len();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let err = pool.get(&id("remote/qv")).unwrap_err();
    match &err {
        PoolError::Load { id, source } => {
            assert_eq!(id.as_str(), "remote/qv");
            match &**source {
                LoraError::Truncated {
                    file,
                    found,
                    expected,
                    ..
                } => {
                    // Data-section bytes: the first tensor that overruns vs what arrived.
                    assert_eq!(file, "adapter_model.safetensors");
                    assert_eq!(*found, full / 2 - header);
                    assert!(
                        *expected > *found && *expected <= full - header,
                        "{expected}"
                    );
                }
                other => panic!("unexpected adapter error {other:?}"),
            }
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        std::error::Error::source(&err).is_some(),
        "the adapter error is the source"
    );
    assert_unchanged_but_failures(&before, &snapshot(&pool), 1);
}

#[test]
fn budget_smaller_than_one_adapter_refuses_it_with_both_sizes() {
    let size = fixture_size("all-r8-rslora");
    let pool: AdapterPool = AdapterPool::new(size - 1);
    pool.register(
        id("big"),
        Source::Dir(adapters_root().join("all-r8-rslora")),
    )
    .unwrap();
    let before = snapshot(&pool);
    let err = pool.get(&id("big")).unwrap_err();
    match &err {
        PoolError::AdapterLargerThanBudget {
            id,
            size: s,
            budget,
        } => {
            assert_eq!((id.as_str(), *s, *budget), ("big", size, size - 1));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_unchanged_but_failures(&before, &snapshot(&pool), 1);
}

#[test]
fn unknown_id_is_named_and_changes_nothing() {
    let pool = busy_pool();
    let before = snapshot(&pool);
    for result in [
        pool.get(&id("org/missing")).map(drop),
        pool.pin(&id("org/missing")).map(drop),
        pool.unpin(&id("org/missing")),
        pool.unregister(&id("org/missing")),
        pool.prefetch(&id("org/missing")).map(drop),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(&err, PoolError::UnknownId { id } if id.as_str() == "org/missing"),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"org/missing\""));
    }
    assert_unchanged_but_failures(&before, &snapshot(&pool), 0);
}

#[test]
fn duplicate_registration_is_refused_and_keeps_the_first_source() {
    let pool = busy_pool();
    let before = snapshot(&pool);
    let err = pool
        .register(
            id("qv-r4"),
            Source::Dir(adapters_root().join("all-r8-rslora")),
        )
        .unwrap_err();
    assert!(
        matches!(&err, PoolError::DuplicateId { id } if id.as_str() == "qv-r4"),
        "{err:?}"
    );
    // Registering the whole hub again is all-or-nothing.
    let err = pool
        .register_hub(&HubDir::open(adapters_root()).unwrap())
        .unwrap_err();
    assert!(matches!(&err, PoolError::DuplicateId { .. }), "{err:?}");
    assert_unchanged_but_failures(&before, &snapshot(&pool), 0);
    assert_eq!(
        pool.get(&id("qv-r4")).unwrap().resident_bytes(),
        fixture_size("qv-r4")
    );
}

#[test]
fn corrupt_adapter_in_a_busy_pool_fails_alone_and_the_residents_stay() {
    let pool = busy_pool();
    let (cfg, mut st) = fixture_bytes("attn-patterns");
    // Flip bytes inside the JSON header so it no longer parses.
    for b in &mut st[8..24] {
        *b = 0xFF;
    }
    pool.register(id("corrupt"), Source::bytes(cfg, st))
        .unwrap();
    let residents = pool.resident_ids();
    let held: Vec<_> = residents.iter().map(|r| pool.get(r).unwrap()).collect();
    let before = snapshot(&pool);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..500 {
                        for r in &residents {
                            pool.get(r).unwrap();
                        }
                    }
                })
            })
            .collect();
        let err = pool.get(&id("corrupt")).unwrap_err();
        match &err {
            PoolError::Load { id, source } => {
                assert_eq!(id.as_str(), "corrupt");
                assert!(
                    matches!(**source, LoraError::BadHeader { .. }),
                    "{source:?}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        for r in readers {
            r.join().unwrap();
        }
    });
    let after = snapshot(&pool);
    assert_eq!(after.0.load_failures, before.0.load_failures + 1);
    assert_eq!(
        after.0.hits,
        before.0.hits + 4 * 500 * residents.len() as u64
    );
    assert_eq!(
        (
            after.0.loads,
            after.0.evictions,
            after.0.resident_bytes,
            after.0.resident_count
        ),
        (
            before.0.loads,
            before.0.evictions,
            before.0.resident_bytes,
            before.0.resident_count
        )
    );
    let mut sorted_before = before.1.clone();
    let mut sorted_after = after.1.clone();
    sorted_before.sort();
    sorted_after.sort();
    assert_eq!(sorted_after, sorted_before, "every resident survived");
    for (r, h) in residents.iter().zip(&held) {
        assert!(
            Arc::ptr_eq(&pool.get(r).unwrap(), h),
            "{r} is the same resident adapter"
        );
    }
}
