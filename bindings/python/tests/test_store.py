"""FeatureStore: TracIn and cosine scores against a numpy computation of the same formulas."""

import numpy as np
import pytest

import openledger as ol

LRS = [0.5, 0.25]


def make(tmp_path, n=300, p=24, dtype="f32", projection="identity", k=None, progress=None):
    rng = np.random.default_rng(5)
    grads = rng.normal(size=(n, len(LRS), p)).astype(np.float32)
    records = [ol.content_id(b"ex%d" % i) for i in range(n)]
    who = ["0x%040x" % (i % 5 + 1) for i in range(n)]
    path = tmp_path / "features.olfs"
    w = ol.FeatureStoreWriter.create(
        path, input_dim=p, k=k or p, learning_rates=LRS, projection=projection, dtype=dtype
    )
    assert w.extend(records, who, grads, progress=progress) == n
    w.sync()
    return path, grads, records, who


def test_tracin_equals_the_numpy_formula_with_identity_projection(tmp_path):
    steps = []
    path, grads, records, who = make(tmp_path, progress=steps.append)
    assert sum(steps) == 300 and len(steps) >= 2  # committed in batches
    store = ol.FeatureStore.open(path)
    assert len(store) == 300
    assert store.record(7) == records[7] and store.contributor(7) == who[7]
    np.testing.assert_array_equal(store.features(7), grads[7].reshape(-1))
    q = np.random.default_rng(6).normal(size=(len(LRS), 24)).astype(np.float32)
    seen = []
    s = store.score(q, progress=seen.append)
    assert s.dtype == np.float32 and s.shape == (300,)
    assert sum(seen) == 300
    ref = sum(lr * grads[:, c, :].astype(np.float64) @ q[c].astype(np.float64) for c, lr in enumerate(LRS))
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-5)
    top = store.top_k(s, 3)
    want = np.argsort(-s, kind="stable")[:3]
    assert [t["index"] for t in top] == list(want)
    assert top[0]["record"] == records[want[0]] and top[0]["contributor"] == who[want[0]]


def test_cosine_equals_the_numpy_formula(tmp_path):
    path, grads, _, _ = make(tmp_path, n=40)
    store = ol.FeatureStore.open(path)
    q = np.random.default_rng(8).normal(size=(len(LRS), 24)).astype(np.float32)
    s = store.score(q, method="cosine")
    g = grads.astype(np.float64)
    ref = sum(
        lr * (g[:, c, :] @ q[c]) / (np.linalg.norm(g[:, c, :], axis=1) * np.linalg.norm(q[c]))
        for c, lr in enumerate(LRS)
    )
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-5)


def test_f16_rademacher_store_is_close_to_f32(tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    pa, *_ = make(a_dir, n=50, projection="rademacher", k=8, dtype="f32")
    pb, *_ = make(b_dir, n=50, projection="rademacher", k=8, dtype="f16")
    q = np.random.default_rng(2).normal(size=(len(LRS), 24)).astype(np.float32)
    sa = ol.FeatureStore.open(pa).score(q)
    sb = ol.FeatureStore.open(pb).score(q)
    np.testing.assert_allclose(sb, sa, rtol=2e-2, atol=2e-2)  # f16 keeps ~3 significant digits


def test_bad_gradients_are_refused_and_the_store_is_unchanged(tmp_path):
    path = tmp_path / "s.olfs"
    w = ol.FeatureStoreWriter.create(path, input_dim=4, k=4, learning_rates=[1.0], projection="identity")
    rec, who = ol.content_id(b"x"), "0x" + "01" * 20
    w.append(rec, who, np.ones((1, 4), dtype=np.float32))
    for bad in [np.ones((1, 4)), np.ones(4, dtype=np.float32), [[1.0] * 4], None]:
        with pytest.raises(ol.InvalidArgumentError, match="gradients"):
            w.append(rec, who, bad)
    with pytest.raises(ol.InvalidArgumentError):
        w.append(rec, who, np.ones((1, 3), dtype=np.float32))
    with pytest.raises(ol.InvalidArgumentError, match="non-finite"):
        w.append(rec, who, np.array([[1, np.inf, 0, 0]], dtype=np.float32))
    with pytest.raises(ol.InvalidArgumentError, match="3 records"):
        w.extend([rec] * 3, [who] * 3, np.ones((2, 1, 4), dtype=np.float32))
    assert len(w) == 1
    store = ol.FeatureStore.open(path)
    assert len(store) == 1
    with pytest.raises(ol.InvalidArgumentError, match="out of range"):
        store.record(1)
    with pytest.raises(ol.InvalidArgumentError, match="method"):
        store.score(np.ones((1, 4), dtype=np.float32), method="trak")
    with pytest.raises(ol.InvalidArgumentError):
        store.score(np.ones((2, 4), dtype=np.float32))  # two checkpoints for a one-checkpoint store
    with pytest.raises(ol.InvalidArgumentError, match="scores"):
        store.top_k(np.ones(2, dtype=np.float32), 1)


def test_missing_and_hostile_store_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        ol.FeatureStore.open(tmp_path / "missing.olfs")
    junk = tmp_path / "junk.olfs"
    junk.write_bytes(b"not a feature store at all, just some bytes" * 4)
    with pytest.raises(ol.FeatureStoreError):
        ol.FeatureStore.open(junk)
    path, *_ = make(tmp_path, n=10)
    raw = path.read_bytes()
    cut = tmp_path / "cut.olfs"
    cut.write_bytes(raw[: len(raw) - 7])
    with pytest.raises(ol.FeatureStoreError):
        ol.FeatureStore.open(cut)
    with pytest.raises(ol.InvalidArgumentError, match="projection"):
        ol.FeatureStoreWriter.create(tmp_path / "x", input_dim=4, k=4, learning_rates=[1.0], projection="pca")
    with pytest.raises(ol.InvalidArgumentError, match="learning rates"):
        ol.FeatureStoreWriter.create(tmp_path / "y", input_dim=4, k=4, learning_rates=[])


def test_a_progress_callback_calling_back_into_its_writer_gets_busy_error_not_a_deadlock(tmp_path):
    w = ol.FeatureStoreWriter.create(tmp_path / "s.olfs", input_dim=4, k=4, learning_rates=[1.0], projection="identity")
    seen = []

    def progress(n):
        seen.append(n)
        len(w)

    with pytest.raises(ol.BusyError, match="writer"):
        w.extend([ol.content_id(b"%d" % i) for i in range(3)], ["0x" + "01" * 20] * 3,
                 np.ones((3, 1, 4), dtype=np.float32), progress=progress)
    assert seen == [3] and len(w) == 3  # the examples were committed; the callback's error is raised after
