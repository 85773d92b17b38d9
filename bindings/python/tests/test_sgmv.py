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


def _as_dtype(adapter_dir, dtype):
    """The adapter at `adapter_dir` with every factor stored as `dtype` ("F16" or "BF16"),
    written as safetensors here (round to nearest even, as torch's `.to()` does)."""
    import json
    import struct

    raw = (adapter_dir / "adapter_model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out_header, chunks, offset = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        values = np.frombuffer(body[start:end], dtype="<f4")
        if dtype == "F16":
            data = values.astype("<f2").tobytes()
        else:
            bits = values.view("<u4").astype(np.uint64)
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            data = rounded.astype("<u2").tobytes()
        out_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(out_header).encode()
    head += b" " * (-len(head) % 8)
    st = struct.pack("<Q", len(head)) + head + b"".join(chunks)
    config = (adapter_dir / "adapter_config.json").read_bytes()
    return ol.LoraAdapter.from_bytes(config, st)


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_half_precision_factors_run_as_stored_and_mixed_with_f32(adapters_root, dtype):
    names = ["qv-r4", "all-r8-rslora"]
    half = [_as_dtype(adapters_root / n, dtype).module(Q0) for n in names]
    assert {m.dtype for m in half} == {dtype.lower()}
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 64)).astype(np.float32)
    y0 = rng.normal(size=(6, 64)).astype(np.float32)
    rows = [0, 0, 1, None, 1, 1]
    y = y0.copy()
    ol.sgmv(x, y, half, [(0, 2, 0), (2, 3, 1), (4, 6, 1)])
    # The reference multiplies the stored half-precision values (read back as float32).
    np.testing.assert_allclose(y, reference(x, y0, half, rows), rtol=1e-5, atol=1e-5)
    # One module in f32 beside one in half precision: both widened to f32, same result.
    mixed = [half[0], layer(adapters_root)[1]]
    y = y0.copy()
    ol.bgmv(x, y, mixed, rows)
    np.testing.assert_allclose(y, reference(x, y0, mixed, rows), rtol=1e-5, atol=1e-5)
