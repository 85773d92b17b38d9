"""openledger.AdapterPool over the tiny-llama adapter hub."""

import threading

import pytest

import openledger as ol


def sizes(root):
    return {n: ol.LoraAdapter.from_dir(root / n).resident_bytes for n in ("qv-r4", "attn-patterns", "all-r8-rslora")}


def test_register_hub_get_and_stats(adapters_root):
    pool = ol.AdapterPool(64 << 20)
    assert pool.register_hub(adapters_root) == 3
    a = pool.get("qv-r4")
    b = pool.get("qv-r4")
    assert a.scales() == b.scales()
    s = pool.stats()
    assert (s.loads, s.misses, s.hits) == (1, 1, 1)
    assert s.resident_bytes == a.resident_bytes
    assert (s.registered_count, s.resident_count, s.pinned_count) == (3, 1, 0)
    d = s.as_dict()
    assert d["hits"] == 1 and d["budget_bytes"] == 64 << 20 and d["load_latency_count"] == 1
    assert pool.resident_ids() == ["qv-r4"]


def test_budget_evicts_least_recently_used_unpinned(adapters_root):
    sz = sizes(adapters_root)
    pool = ol.AdapterPool(sz["qv-r4"] + sz["attn-patterns"])
    pool.register_hub(adapters_root)
    pool.get("qv-r4")
    pool.get("attn-patterns")
    pool.get("qv-r4")  # attn-patterns is now the least recently used
    pool.register_dir("qv-copy", adapters_root / "qv-r4")
    pool.get("qv-copy")
    assert pool.is_resident("qv-r4") and pool.is_resident("qv-copy")
    assert not pool.is_resident("attn-patterns")
    s = pool.stats()
    assert s.evictions == 1 and s.resident_bytes <= s.budget_bytes


def test_pinned_adapter_stays_and_blocks_what_cannot_fit(adapters_root):
    sz = sizes(adapters_root)
    pool = ol.AdapterPool(sz["qv-r4"] + sz["attn-patterns"])
    pool.register_hub(adapters_root)
    pool.pin("attn-patterns")
    pool.get("qv-r4")
    assert pool.stats().pinned_count == 1
    with pytest.raises(ol.BudgetError, match="all-r8-rslora"):
        pool.get("all-r8-rslora")  # larger than the whole budget
    pool.register_dir("qv-copy", adapters_root / "qv-r4")
    pool.get("qv-copy")  # evicts qv-r4, never the pinned one
    assert pool.is_resident("attn-patterns") and not pool.is_resident("qv-r4")
    pool.unpin("attn-patterns")
    with pytest.raises(ol.StateError, match="not pinned"):
        pool.unpin("attn-patterns")


def test_budget_exhausted_by_pinned_evicts_nothing(adapters_root):
    sz = sizes(adapters_root)
    pool = ol.AdapterPool(sz["attn-patterns"] + sz["qv-r4"] // 2)
    pool.register_hub(adapters_root)
    pool.pin("attn-patterns")
    before = pool.stats()
    with pytest.raises(ol.BudgetError, match="pinned"):
        pool.get("qv-r4")
    after = pool.stats()
    assert after.resident_bytes == before.resident_bytes and pool.is_resident("attn-patterns")
    assert after.load_failures == before.load_failures + 1


def test_register_bytes_and_duplicate_id(adapters_root):
    d = adapters_root / "qv-r4"
    pool = ol.AdapterPool(1 << 20)
    pool.register_bytes("mem/qv", (d / "adapter_config.json").read_bytes(), (d / "adapter_model.safetensors").read_bytes())
    assert pool.get("mem/qv").r == 4
    with pytest.raises(ol.StateError, match="already registered"):
        pool.register_dir("mem/qv", d)


def test_bad_ids_unknown_ids_and_bad_bytes(adapters_root, tmp_path):
    pool = ol.AdapterPool(1 << 20)
    pool.register_hub(adapters_root)
    for bad in ["../etc/passwd", "/abs", "a//b", "a\\b", "", "x\0y"]:
        with pytest.raises(ol.InvalidIdError):
            pool.get(bad)
    with pytest.raises(ol.InvalidIdError):
        pool.register_dir("../escape", adapters_root / "qv-r4")
    with pytest.raises(ol.UnknownIdError, match="nobody"):
        pool.get("nobody")
    with pytest.raises(TypeError):
        pool.get(None)
    pool.register_bytes("broken", b"{}", b"\x00" * 4)
    with pytest.raises(ol.AdapterFormatError, match="broken"):
        pool.get("broken")
    pool.register_dir("gone", tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        pool.get("gone")
    with pytest.raises(FileNotFoundError):
        pool.register_hub(tmp_path / "no-hub")
    assert pool.stats().registered_count == 5


def test_warm_up_reports_progress_per_adapter_like_tqdm_update(adapters_root):
    pool = ol.AdapterPool(64 << 20)
    pool.register_hub(adapters_root)
    pool.register_bytes("broken", b"{}", b"")
    steps = []
    n = pool.warm_up(["qv-r4", "broken", "attn-patterns"], steps.append)
    assert n == 2 and steps == [1, 1, 1]
    assert pool.is_resident("attn-patterns")


def test_warm_up_progress_exception_is_raised_after_the_work(adapters_root):
    pool = ol.AdapterPool(64 << 20)
    pool.register_hub(adapters_root)

    def boom(_n):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        pool.warm_up(["qv-r4", "attn-patterns"], boom)
    assert pool.is_resident("attn-patterns")  # nothing half-done


def test_concurrent_gets_share_one_load(adapters_root):
    pool = ol.AdapterPool(64 << 20)
    pool.register_hub(adapters_root)
    results, errors = [], []

    def worker():
        try:
            results.append(pool.get("all-r8-rslora").resident_bytes)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and len(results) == 8
    s = pool.stats()
    assert s.loads == 1 and s.hits + s.misses == 8


def test_warm_up_progress_may_call_back_into_the_pool(adapters_root):
    pool = ol.AdapterPool(64 << 20)
    pool.register_hub(adapters_root)
    resident = []
    pool.warm_up(["qv-r4", "attn-patterns"], lambda n: resident.append(pool.stats().resident_count))
    assert resident == [1, 2]


def test_hub_symlinks_leaving_the_root_are_skipped_or_refused(adapters_root, tmp_path):
    hub, outside = tmp_path / "hub", tmp_path / "outside"
    for d in (hub / "good", outside):
        d.mkdir(parents=True)
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            (d / f).write_bytes((adapters_root / "qv-r4" / f).read_bytes())
    (hub / "evil").symlink_to(outside, target_is_directory=True)
    pool = ol.AdapterPool(1 << 20)
    assert pool.register_hub(hub) == 1  # the symlink is not listed
    assert not pool.is_registered("evil")
    # A registered folder swapped for a symlink after registration is refused at load.
    (hub / "good").rename(tmp_path / "moved")
    (hub / "good").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ol.InvalidIdError, match="outside the hub root"):
        pool.get("good")
    assert pool.stats().resident_count == 0
