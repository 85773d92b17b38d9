"""Python-side benchmarks: each openledger call against a numpy baseline on the same data,
measured in the same run and printed as a ratio (> 1: openledger is faster).

Usage, with a release build installed (debug builds are ~50x slower and mean nothing here):

    OPENLEDGER_PY_PROFILE=release bash scripts/test-python.sh
    target/python-venv/bin/python bindings/python/bench/bench_bindings.py

The numpy baselines are not always the same computation: the split baseline is the naive float
share that the exact U256 split exists to replace, so that ratio is the price of exactness.
"""

import pathlib
import tempfile
import time

import numpy as np

import openledger as ol


def best(fn, repeat=7):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def report(name, ours, base):
    print(f"{name:<44} openledger {ours * 1e3:8.2f} ms   numpy {base * 1e3:8.2f} ms   ratio {base / ours:5.2f}x")


def bench_sgmv(root):
    mods = [ol.LoraAdapter.from_dir(root / n).module("model.layers.0.self_attn.q_proj")
            for n in ("qv-r4", "all-r8-rslora", "attn-patterns")]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 64)).astype(np.float32)
    y = np.zeros((4096, 64), dtype=np.float32)
    segs = [(0, 1500, 0), (1500, 3000, 1), (3000, 4096, 2)]
    fac = [(m.a, m.b, np.float32(m.scale)) for m in mods]

    def base():
        out = np.zeros_like(y)
        for (s, e, k) in segs:
            a, b, sc = fac[k]
            out[s:e] += sc * (x[s:e] @ a.T) @ b.T
        return out

    report("sgmv 4096 rows x 3 adapters (64 -> 64)", best(lambda: ol.sgmv(x, y, mods, segs)), best(base))


def bench_rag():
    rng = np.random.default_rng(1)
    n, dim = 20_000, 128
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    index = ol.RagIndex(dim, "dot")
    for i in range(n):
        index.add(ol.content_id(b"%d" % i), "0x%040x" % (i % 97 + 1), "r", emb[i])
    q = rng.normal(size=dim).astype(np.float32)

    def base():
        s = emb @ q
        top = np.argpartition(-s, 10)[:10]
        return top[np.argsort(-s[top])]

    report("RagIndex.search top-10 of 20k x 128", best(lambda: index.search(q, 10)), best(base))


def bench_store(tmp):
    rng = np.random.default_rng(2)
    n, c, p = 20_000, 2, 256
    grads = rng.normal(size=(n, c, p)).astype(np.float32)
    w = ol.FeatureStoreWriter.create(tmp / "s.olfs", input_dim=p, k=p, learning_rates=[0.5, 0.25],
                                     projection="identity", dtype="f32")
    w.extend([ol.content_id(b"%d" % i) for i in range(n)], ["0x" + "01" * 20] * n, grads)
    w.sync()
    store = ol.FeatureStore.open(tmp / "s.olfs")
    q = rng.normal(size=(c, p)).astype(np.float32)
    report("FeatureStore.score TracIn 20k x 2 x 256 (f32)", best(lambda: store.score(q)),
           best(lambda: 0.5 * (grads[:, 0, :] @ q[0]) + 0.25 * (grads[:, 1, :] @ q[1])))


def bench_split():
    rng = np.random.default_rng(3)
    n = 10_000
    accounts = ["0x%040x" % (i + 1) for i in range(n)]
    scores = rng.random(n)
    amount = 10**24 + 7

    def base():  # float shares with a floor, the naive approach the exact split replaces
        s = scores / scores.sum()
        return [int(v) for v in np.floor(s * float(amount))]

    report("split_scores 10k accounts (exact U256)", best(lambda: ol.split_scores(amount, accounts, scores)), best(base))


if __name__ == "__main__":
    root = pathlib.Path(__file__).resolve().parents[3] / "fixtures" / "peft" / "tiny-llama" / "adapters"
    bench_sgmv(root)
    bench_rag()
    with tempfile.TemporaryDirectory() as d:
        bench_store(pathlib.Path(d))
    bench_split()
