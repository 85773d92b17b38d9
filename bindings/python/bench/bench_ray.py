"""Attribution over a sharded feature store on a local Ray cluster against one process, in the
same run: the whole store scored by `FeatureStore.score` (the baseline) and the same scores from
`openledger.ray.score` over 1, 2 and 4 shards, with each shard's task timed on its own (the time
a cluster of one node per shard would take). Prints the ratios (> 1: Ray faster) and writes
target/bench-results/ray_shards.json.

Usage, with a release build and Ray installed:

    OPENLEDGER_PY_PROFILE=release bash scripts/test-python.sh
    target/python-venv/bin/python bindings/python/bench/bench_ray.py [rows]

On one 2-core machine no speed-up is expected: the tasks share the two cores and the page cache
with the driver, and Ray adds its scheduling and the transfer of the scores.
"""

import json
import pathlib
import sys
import tempfile
import time

import numpy as np

import openledger as ol
import openledger.ray as olr

ROOT = pathlib.Path(__file__).resolve().parents[3]


def best(fn, repeat=5):
    times = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rng = np.random.default_rng(0)
    results = {"rows": rows, "k": 256, "checkpoints": 2, "dtype": "f16", "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        w = ol.FeatureStoreWriter.create(tmp / "all.olfs", input_dim=256, k=256, learning_rates=[0.1, 0.05])
        who = ["0x" + f"{i % 97 + 1:040x}" for i in range(rows)]
        t = time.perf_counter()
        for start in range(0, rows, 20_000):
            end = min(start + 20_000, rows)
            g = rng.standard_normal((end - start, 2, 256), dtype=np.float32)
            w.extend([ol.content_id(i.to_bytes(8, "little")) for i in range(start, end)], who[start:end], g)
        w.sync()
        whole = ol.FeatureStore.open(tmp / "all.olfs")
        results["build_s"] = time.perf_counter() - t
        results["store_mb"] = (tmp / "all.olfs").stat().st_size / 1e6
        query = rng.standard_normal((2, 256), dtype=np.float32)
        with olr.local_cluster(num_cpus=2, object_store_memory=300 * 1024 * 1024):
            lam = ol.datainf_lambdas([whole.datainf_norms()]).tolist()
            wts = whole.datainf_weights(query, [whole.datainf_residual(query, lam)], lam)
            for method in ("tracin", "datainf"):
                base, want = best(lambda: whole.score(query, method=method))
                m = {"single_process_s": base, "shards": {}}
                for n in (1, 2, 4):
                    d = tmp / f"{n}"
                    d.mkdir(exist_ok=True)
                    paths = sorted(d.glob("*.olfs")) or whole.split(d, n)
                    took, got = best(lambda: olr.score(paths, query, method=method))
                    assert np.array_equal(got, want), (method, n)
                    # Each shard alone, as one node per shard would run it (TracIn: one task;
                    # DataInf: its three passes, the driver's steps between them not counted),
                    # with both of this machine's cores, as a node of two cores would.
                    per_shard = []
                    # A worker opens its shard once (checking every row's CRC), so one open
                    # counts for each query's passes.
                    def alone(p):
                        s = ol.FeatureStore.open(p)
                        if method == "tracin":
                            s.score(query, method=method)
                        else:
                            s.datainf_norms()
                            s.datainf_residual(query, lam)
                            s.score_weights(wts)

                    for p in paths:
                        per_shard.append(best(lambda: alone(p))[0])
                    m["shards"][n] = {
                        "ray_s": took,
                        "single_over_ray": base / took,
                        "slowest_shard_alone_s": max(per_shard),
                        "single_over_slowest_shard": base / max(per_shard),
                        "per_shard_s": per_shard,
                    }
                    print(
                        f"{method:<8} {n} shard(s): one process {base * 1e3:8.1f} ms   Ray {took * 1e3:8.1f} ms "
                        f"({base / took:4.2f}x)   slowest shard alone {max(per_shard) * 1e3:7.1f} ms "
                        f"({base / max(per_shard):4.2f}x)"
                    )
                results["methods"][method] = m
    out = ROOT / "target" / "bench-results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_shards.json").write_text(json.dumps(results, indent=2))
    print(f"store: {rows} rows, {results['store_mb']:.0f} MB; results in {out / 'ray_shards.json'}")


if __name__ == "__main__":
    main()
