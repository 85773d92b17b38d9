"""A feature store split into shards (whole blocks of 1024 rows): the shards merge back into
the store's bytes, and DataInf's passes over them (norms, λ, residuals, weights, scores) equal
the whole store's scores bit for bit. No Ray needed (openledger.ray runs the same passes in Ray
tasks: test_ray.py)."""

import pathlib

import numpy as np
import pytest

import openledger as ol

from conftest import BLOCK, LAYERS


def test_shards_merge_back_and_datainf_passes_equal_the_whole_store(store, tmp_path):
    whole, query, _ = store
    paths = whole.split(tmp_path, 3)
    assert [pathlib.Path(p).name for p in paths] == [f"all.shard-{j:03}-of-003.olfs" for j in range(3)]
    shards = [ol.FeatureStore.open(p) for p in paths]
    assert [len(s) for s in shards] == [2 * BLOCK, 2 * BLOCK, 300]
    merged = ol.FeatureStore.merge(paths, tmp_path / "merged.olfs")
    assert (tmp_path / "merged.olfs").read_bytes() == pathlib.Path(whole.path).read_bytes()
    assert merged.contributors() == whole.contributors()

    single = whole.score(query, method="datainf", layers=LAYERS, lambda_scale=0.1)
    norms = [s.datainf_norms(layers=LAYERS) for s in shards]
    assert norms[0]["sums"].shape == (2, 4)  # 2 blocks × (2 checkpoints · 2 layers)
    lambdas = ol.datainf_lambdas(norms, lambda_scale=0.1)
    residuals = [s.datainf_residual(query, lambdas.tolist(), layers=LAYERS) for s in shards]
    w = shards[2].datainf_weights(query, residuals, lambdas.tolist(), layers=LAYERS)
    sharded = np.concatenate([s.score_weights(w) for s in shards])
    assert np.array_equal(sharded, single)

    # Out of order, misaligned or malformed parts are named.
    with pytest.raises(ol.InvalidArgumentError, match="whole blocks"):
        ol.datainf_lambdas([norms[2], norms[0]])
    with pytest.raises(ol.InvalidArgumentError, match=r"norms\[1\]"):
        ol.datainf_lambdas([norms[0], {"rows": 3}])
    with pytest.raises(ol.InvalidArgumentError, match="shards"):
        whole.split(tmp_path / "x", 6)
    with pytest.raises(FileExistsError):
        whole.split(tmp_path, 3)
    with pytest.raises(ol.InvalidArgumentError, match="method"):
        whole.score(query, method="trak")


