"""Adapter combination (PEFT's add_weighted_adapter) and merging into a model folder, from
Python: deltas checked against numpy, the merged folder served without the adapter gives the
adapter's greedy tokens."""

import numpy as np
import pytest

import openledger as ol

from conftest import ADAPTERS, TINY


def delta(adapter, name):
    m = adapter.module(name)
    return m.scale * (m.b.astype(np.float64) @ m.a.astype(np.float64))


def test_linear_and_cat_combinations_have_pefts_deltas():
    qv = ol.LoraAdapter.from_dir(ADAPTERS / "qv-r4")
    name = "model.layers.0.self_attn.q_proj"
    seen = []
    cat = ol.add_weighted_adapter([qv, qv], [0.25, 0.5], "cat", progress=seen.append)
    assert cat.module(name).rank == 8 and sum(seen) == len(qv)
    np.testing.assert_allclose(delta(cat, name), 0.75 * delta(qv, name), atol=1e-6)
    linear = ol.add_weighted_adapter([qv, qv], [0.5, 0.5], "linear")
    # linear mixes the factors with √(w·s): here (√(0.5·s)·2)² / s = 2 times the delta.
    np.testing.assert_allclose(delta(linear, name), 2.0 * delta(qv, name), rtol=1e-5, atol=1e-6)
    bf16 = ol.add_weighted_adapter([qv], [1.0], "svd", dtype="bf16")
    assert bf16.dtype == "bf16"
    with pytest.raises(ol.InvalidArgumentError, match="F64"):
        ol.add_weighted_adapter([qv], [1.0], "svd", dtype="F64")
    with pytest.raises(ol.InvalidArgumentError, match="combination_type"):
        ol.add_weighted_adapter([qv], [1.0], "average")
    with pytest.raises(ol.InvalidArgumentError):
        ol.add_weighted_adapter([qv], [1.0, 2.0], "linear")
    with pytest.raises(ol.InvalidArgumentError):
        ol.add_weighted_adapter([qv, qv], [1.0, 1.0], "ties")  # ties needs a density


def test_a_merged_model_folder_serves_the_adapters_tokens_without_it(tmp_path):
    import json

    ref = json.loads((TINY / "reference.json").read_text())
    qv = ol.LoraAdapter.from_dir(ADAPTERS / "qv-r4")
    files = []
    ol.merge_adapter_into_model(TINY, qv, tmp_path / "merged", progress=files.append)
    assert sum(files) == 1
    with ol.Engine(tmp_path / "merged", max_context=64, block_size=4) as e:
        for i, prompt in enumerate(ref["sequences"]):
            assert e.generate(prompt, max_new_tokens=8).collect() == ref["greedy"][f"qv-r4.{i}"]
    wide = ol.add_weighted_adapter([qv, qv], [1.0, 1.0], "cat")
    assert wide.module("model.layers.0.self_attn.q_proj").rank == 8
    with pytest.raises(FileNotFoundError):
        ol.merge_adapter_into_model(tmp_path / "nowhere", qv, tmp_path / "out")
