"""openledger.ray: a feature store split into 2 and 4 shards, scored in Ray tasks on a local
cluster (2 CPUs, object store capped, loopback only, no dashboard), equals the single-process
scores and wei split exactly (TracIn, cosine, DataInf); the cluster leaves no process and no
auth-token file behind."""

import os
import pathlib

import numpy as np
import pytest

import openledger as ol

if os.environ.get("OPENLEDGER_REQUIRE_RAY"):
    import ray  # noqa: F401  (fails, rather than skips, when Ray is missing)
else:
    pytest.importorskip("ray")
import openledger.ray as olr  # noqa: E402

from conftest import LAYERS, LOOPBACK, listening_hosts  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for this module; on exit no process of it is left, and nothing is
    written to ~/.ray or /tmp/ray."""
    marks = [pathlib.Path.home() / ".ray", pathlib.Path("/tmp/ray")]
    snapshot = lambda: {p: sorted(p.rglob("*")) if p.exists() else None for p in marks}  # noqa: E731
    before = snapshot()
    cm = olr.local_cluster(num_cpus=2, object_store_memory=100 * 1024 * 1024)
    ray = cm.__enter__()
    try:
        yield ray
    finally:
        cm.__exit__(None, None, None)
    left = [p for p in olr._descendants(os.getpid()) if olr._alive(p)]
    assert left == [], [pathlib.Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left]
    assert snapshot() == before


def test_the_cluster_listens_on_loopback_only(cluster):
    ray = cluster
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    pids = [p for p in olr._descendants(os.getpid()) if olr._alive(p)]
    assert pids, "the cluster runs in processes of its own"
    hosts = listening_hosts(pids + [os.getpid()])
    assert hosts, "the cluster listens somewhere"
    assert set(hosts) <= LOOPBACK, hosts


@pytest.mark.parametrize("shards", [2, 4])
@pytest.mark.parametrize("method", ["tracin", "cosine", "datainf"])
def test_sharded_attribution_on_ray_equals_one_process(store, cluster, tmp_path, shards, method):
    whole, query, _ = store
    paths = whole.split(tmp_path, shards)
    pool = 10**15 + 7
    layers = LAYERS if method == "datainf" else None
    seen = []
    got = olr.attribute(paths, query, pool, method=method, layers=layers,
                        progress=lambda d, t: seen.append((d, t)), timeout=120)
    want = olr.attribute_local(whole, query, pool, method=method, layers=layers)
    assert np.array_equal(got["scores"], want["scores"])
    assert got["contributors"] == want["contributors"]
    assert got["split"] == want["split"]
    assert sum(got["split"].values()) == pool
    assert set(got["split"]) <= set(whole.contributors())
    # One round of tasks per pass: DataInf reads the shards three times.
    rounds = 3 if method == "datainf" else 1
    assert len(seen) == rounds * shards and seen[-1] == (shards, shards)


def test_bad_calls_are_named(store, cluster, tmp_path):
    whole, query, _ = store
    paths = whole.split(tmp_path, 2)
    with pytest.raises(ValueError, match="method"):
        olr.score(paths, query, method="trak")
    with pytest.raises(ValueError, match="shard"):
        olr.score([], query)
    import ray

    # A task's error comes back as Ray's wrapper of the SDK's typed error, naming the file.
    with pytest.raises(ray.exceptions.RayTaskError, match="nothing.olfs"):
        olr.score([tmp_path / "nothing.olfs"], query, timeout=120)


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """A LoRA run on the tiny llama with two saved checkpoints, and 23 examples with records
    and contributors."""
    from conftest import TINY

    d = tmp_path_factory.mktemp("run")
    spec = dict(model_dir=str(TINY), targets=["q_proj", "v_proj"], r=4, alpha=8.0, steps=6,
                batch_size=4, learning_rate=2e-2, seed=3)
    args = {k: v for k, v in spec.items() if k not in ("model_dir", "targets", "r", "alpha")}
    t = ol.Trainer(spec["model_dir"], spec["targets"], spec["r"], spec["alpha"], **args)
    examples = [([1, 10 + k % 50, 7], [100 + (k * 3) % 5]) for k in range(23)]
    checkpoints = []
    for c, lr in enumerate((2e-2, 1e-2)):
        t.train(examples)
        t.save_adapter(d / f"ckpt-{c}")
        checkpoints.append((str(d / f"ckpt-{c}"), lr))
    records = [ol.content_id(f"example {i}".encode()) for i in range(len(examples))]
    who = [["0x" + "a1" * 20, "0x" + "b2" * 20, "0x" + "c3" * 20][i % 3] for i in range(len(examples))]
    return spec, checkpoints, examples, records, who, d


@pytest.mark.parametrize("shards", [2, 4])
def test_featurisation_on_ray_writes_the_bytes_of_one_process(training_run, cluster, tmp_path, shards):
    spec, checkpoints, examples, records, who, _ = training_run
    local = olr.featurize_local(spec, checkpoints, examples, records, who, tmp_path / "local.olfs", k=16, seed=5)
    assert len(local) == len(examples) and local.contributors() == [ol.FeatureStore.open(local.path).contributor(i) for i in range(len(examples))]
    seen = []
    got = olr.featurize(spec, checkpoints, examples, records, who, tmp_path / "ray.olfs", shards=shards, k=16,
                        seed=5, progress=lambda d, t: seen.append((d, t)), timeout=300)
    assert (tmp_path / "ray.olfs").read_bytes() == (tmp_path / "local.olfs").read_bytes()
    assert seen[-1] == (shards, shards)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.olfs", "ray.olfs"], "the parts are removed"
    # The store scores like any other: a query at both checkpoints.
    args = {k: v for k, v in spec.items() if k not in ("model_dir", "targets", "r", "alpha")}
    p = ol.Trainer(spec["model_dir"], spec["targets"], spec["r"], spec["alpha"], **args).num_parameters
    q = np.ones((2, p), dtype=np.float32)
    assert np.array_equal(got.score(q), local.score(q))


def test_bad_featurisation_calls_are_named(training_run, cluster, tmp_path):
    spec, checkpoints, examples, records, who, _ = training_run
    with pytest.raises(ValueError, match="one each per example"):
        olr.featurize(spec, checkpoints, examples, records[:-1], who, tmp_path / "x.olfs", shards=2, k=16)
    with pytest.raises(ValueError, match="shards"):
        olr.featurize(spec, checkpoints, examples, records, who, tmp_path / "x.olfs", shards=0, k=16)
    (tmp_path / "taken.olfs").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        olr.featurize(spec, checkpoints, examples, records, who, tmp_path / "taken.olfs", shards=2, k=16)
    assert (tmp_path / "taken.olfs").read_bytes() == b"keep"
    (tmp_path / "z.olfs.part-001-of-002").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="part-001-of-002"):
        olr.featurize(spec, checkpoints, examples, records, who, tmp_path / "z.olfs", shards=2, k=16)
    assert (tmp_path / "z.olfs.part-001-of-002").read_bytes() == b"mine"
    (tmp_path / "z.olfs.part-001-of-002").unlink()
    import ray

    # A checkpoint of another shape fails in its task, named; no part is left behind.
    other = dict(spec, r=8)
    with pytest.raises(ray.exceptions.RayTaskError, match="scale|values|modules"):
        olr.featurize(other, checkpoints, examples, records, who, tmp_path / "y.olfs", shards=2, k=16, timeout=300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.olfs"]


def test_a_worker_reopens_a_shard_only_when_its_file_changed(store, tmp_path):
    whole, _, _ = store
    paths = whole.split(tmp_path, 2)
    first = olr._open(str(paths[1]))
    assert olr._open(str(paths[1])) is first
    # The same path, rewritten with other rows: opened again.
    pathlib.Path(paths[1]).unlink()
    ol.FeatureStore.merge([paths[0]], paths[1])
    again = olr._open(str(paths[1]))
    assert again is not first and len(again) == len(ol.FeatureStore.open(paths[0]))
