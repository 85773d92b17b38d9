"""SGMV / BGMV over the tiny-llama adapters against numpy's y += scale · (x·Aᵀ)·Bᵀ."""

import numpy as np
import pytest

import openledger as ol

Q0 = "model.layers.0.self_attn.q_proj"


def layer(adapters_root):
    names = ["qv-r4", "all-r8-rslora", "attn-patterns"]
    return [ol.LoraAdapter.from_dir(adapters_root / n).module(Q0) for n in names]


def reference(x, y, modules, row_slots):
    out = y.astype(np.float64).copy()
    for i, s in enumerate(row_slots):
        if s is None:
            continue
        m = modules[s]
        out[i] += m.scale * (x[i].astype(np.float64) @ m.a.T.astype(np.float64)) @ m.b.T.astype(np.float64)
    return out


def test_sgmv_segments_match_numpy(adapters_root):
    mods = layer(adapters_root)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 64)).astype(np.float32)
    y = rng.normal(size=(10, 64)).astype(np.float32)
    y0 = y.copy()
    segments = [(0, 3, 1), (3, 4, 0), (6, 10, 2)]
    ol.sgmv(x, y, mods, segments)
    rows = [1, 1, 1, 0, None, None, 2, 2, 2, 2]
    np.testing.assert_allclose(y, reference(x, y0, mods, rows), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y[4:6], y0[4:6])  # rows without an adapter are untouched


def test_bgmv_row_slots_match_numpy(adapters_root):
    mods = layer(adapters_root)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 64)).astype(np.float32)
    y = np.zeros((5, 64), dtype=np.float32)
    rows = [2, None, 0, 1, 2]
    ol.bgmv(x, y, mods, rows)
    np.testing.assert_allclose(y, reference(x, np.zeros((5, 64)), mods, rows), rtol=1e-5, atol=1e-5)


def test_bad_batches_are_invalid_arguments_and_leave_y_alone(adapters_root):
    mods = layer(adapters_root)
    x = np.ones((4, 64), dtype=np.float32)
    y = np.zeros((4, 64), dtype=np.float32)
    for bad_x in [np.ones((4, 64)), np.ones(64, dtype=np.float32), None]:
        with pytest.raises(ol.InvalidArgumentError, match="x"):
            ol.sgmv(bad_x, y, mods, [(0, 4, 0)])
    with pytest.raises(ol.InvalidArgumentError, match="y"):
        ol.sgmv(x, x, mods, [(0, 4, 0)])  # y aliasing x
    frozen = np.zeros((4, 64), dtype=np.float32)
    frozen.setflags(write=False)
    with pytest.raises(ol.InvalidArgumentError, match="y"):
        ol.sgmv(x, frozen, mods, [(0, 4, 0)])
    with pytest.raises(ol.InvalidArgumentError, match="slot"):
        ol.sgmv(x, y, mods, [(0, 4, 3)])  # no slot 3
    with pytest.raises(ol.InvalidArgumentError):
        ol.sgmv(x, y, mods, [(0, 9, 0)])  # past the last row
    with pytest.raises(ol.InvalidArgumentError, match="slot 0"):
        ol.sgmv(np.ones((4, 32), dtype=np.float32), y, mods, [(0, 4, 0)])  # in = 32, A is [r, 64]
    with pytest.raises(ol.InvalidArgumentError, match="C-contiguous"):
        ol.sgmv(np.ones((64, 4), dtype=np.float32).T, y, mods, [(0, 4, 0)])
    with pytest.raises(ol.InvalidArgumentError, match="C-contiguous"):
        ol.sgmv(x, np.zeros((64, 4), dtype=np.float32).T, mods, [(0, 4, 0)])
    with pytest.raises(TypeError):
        ol.bgmv(x, y, [None], [0])
    np.testing.assert_array_equal(y, 0.0)
