#!/usr/bin/env python3
"""The SGMV / BGMV kernels run alone through CuPy, checked against a float64 reference computed
by torch: a way to debug a kernel on a GPU machine even when the Rust test binary cannot start.

It compiles the same CUDA C the Rust backend does (common.cuh followed by shrink.cu or
expand.cu, through NVRTC, with line info) and lays out its inputs as openledger-sgmv does:
each slot's A as [rank, lda] and B transposed as [rank, ldb], rows zero-padded to the
16-byte vector, B 256 bytes aligned after A (openledger_sgmv::SlotLayout); the slot table of
four int64 words per slot (A's address, B's address, rank, the scale's f32 bits) and the tile
table of four words per tile (first row, rows, slot, offset of the intermediate) that
SgmvPlan::launch_tiles builds. Tolerances are those of the Rust backends test.

    python3 cupy_sgmv.py KERNEL_DIR OUT.json
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

VEC_BYTES = 16
ALIGN = 256
TILE_ROWS = {"sgmv": 8, "bgmv": 1}
SHRINK_WARPS = 4
THREADS = 128
# (rel, abs) per dtype, as tests/backends.rs.
TOL = {"f32": (1e-5, 1e-4), "f16": (2.0**-10, 1e-3), "bf16": (2.0**-7, 1e-2)}


def to_bf16_bits(a):
    """float32 -> bfloat16 bits, round to nearest even (NaN kept quiet)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


class Dtype:
    def __init__(self, name):
        self.name = name
        self.size = 4 if name == "f32" else 2
        self.vec = VEC_BYTES // self.size

    def store(self, f32):
        """Host float32 values -> the array uploaded (and the float32 values it holds)."""
        if self.name == "f32":
            a = f32.astype(np.float32)
            return a, a
        if self.name == "f16":
            a = f32.astype(np.float16)
            return a, a.astype(np.float32)
        bits = to_bf16_bits(f32)
        return bits, from_bf16_bits(bits)

    def load(self, arr):
        if self.name == "bf16":
            return from_bf16_bits(arr)
        return arr.astype(np.float32)


def round_up(n, m):
    return (n + m - 1) // m * m


def groups_of(row_slots, ranks):
    """(start, end, slot, rank, v_off) runs of consecutive rows with the same slot, as SgmvPlan."""
    out, v = [], 0
    i = 0
    while i < len(row_slots):
        j = i + 1
        while j < len(row_slots) and row_slots[j] == row_slots[i]:
            j += 1
        s = row_slots[i]
        if s is not None:
            out.append((i, j, s, ranks[s], v))
            v += (j - i) * ranks[s]
        i = j
    return out, v


def tiles_of(groups, rows_per_tile):
    words = []
    for start, end, slot, rank, v_off in groups:
        row = start
        while row < end:
            n = min(rows_per_tile, end - row)
            words += [row, n, slot, v_off + (row - start) * rank]
            row += n
    return np.array(words, dtype=np.int64)


def run_case(cp, mods, dt, case, rng):
    d, out, rows, ranks = case["d"], case["out"], case["rows"], case["ranks"]
    before, after = case.get("fused", (0, 0))
    ld = before + out + after
    rand = lambda *shape: rng.uniform(-0.5, 0.5, size=shape).astype(np.float32)
    x_dev, x = dt.store(rand(rows, d))
    y_dev, y0 = dt.store(rand(rows, ld))
    lda, ldb = round_up(d, dt.vec), round_up(out, dt.vec)
    # One slab: each slot's A [rank, lda] then B^T [rank, ldb], 256-byte aligned.
    slab_parts, offsets, a_vals, b_vals = [], [], [], []
    at = 0
    for r in ranks:
        a_dev, a = dt.store(rand(r, d))
        b_dev, b = dt.store(rand(out, r))  # PEFT's [out, rank]
        a_vals.append(a)
        b_vals.append(b)
        a_pad = np.zeros((r, lda), dtype=a_dev.dtype)
        a_pad[:, :d] = a_dev
        b_off = round_up(r * lda * dt.size, ALIGN) // dt.size
        bt_pad = np.zeros((r, ldb), dtype=b_dev.dtype)
        bt_pad[:, :out] = b_dev.T
        region = np.zeros(round_up(b_off + r * ldb, ALIGN // dt.size), dtype=a_dev.dtype)
        region[: r * lda] = a_pad.ravel()
        region[b_off : b_off + r * ldb] = bt_pad.ravel()
        offsets.append((at, at + b_off))
        at += region.size
        slab_parts.append(region)
    slab = cp.asarray(np.concatenate(slab_parts))
    base = slab.data.ptr
    scales = [0.25 * (i + 1) for i in range(len(ranks))]
    table = []
    for (a_off, b_off), r, s in zip(offsets, ranks, scales):
        table += [base + a_off * dt.size, base + b_off * dt.size, r,
                  int(np.float32(s).view(np.uint32))]
    table = cp.asarray(np.array(table, dtype=np.int64))
    if case["segments"] is not None:
        row_slots = [None] * rows
        for s0, s1, slot in case["segments"]:
            row_slots[s0:s1] = [slot] * (s1 - s0)
    else:
        row_slots = [int(rng.integers(len(ranks))) if rng.random() < 0.8 else None
                     for _ in range(rows)]
    groups, v_len = groups_of(row_slots, ranks)
    # float64 reference through torch
    import torch
    want = torch.from_numpy(y0.astype(np.float64)).clone()
    for start, end, slot, rank, _ in groups:
        xs = torch.from_numpy(x[start:end].astype(np.float64))
        a = torch.from_numpy(a_vals[slot].astype(np.float64))
        b = torch.from_numpy(b_vals[slot].astype(np.float64))
        want[start:end, before:before + out] += scales[slot] * (xs @ a.T) @ b.T
    want = want.numpy()
    results = {}
    for kind in ("sgmv", "bgmv"):
        tiles_h = tiles_of(groups, TILE_ROWS[kind])
        y = cp.asarray(y_dev.copy())
        if len(tiles_h):
            tiles = cp.asarray(tiles_h)
            v = cp.zeros(v_len, dtype=cp.float32)
            xg = cp.asarray(x_dev)
            max_rank = max(g[3] for g in groups)
            n_tiles = len(tiles_h) // 4
            shrink = mods["shrink"].get_function(f"{kind}_shrink_{dt.name}")
            shrink((n_tiles, (max_rank + SHRINK_WARPS - 1) // SHRINK_WARPS), (THREADS,),
                   (v, xg, np.int64(d), table, tiles, np.int32(d), np.int32(lda)))
            expand = mods["expand"].get_function(f"{kind}_expand_{dt.name}")
            per_block = THREADS * dt.vec
            expand((n_tiles, (out + per_block - 1) // per_block), (THREADS,),
                   (y, np.int64(ld), np.int64(before), v, table, tiles, np.int32(out),
                    np.int32(ldb)),
                   shared_mem=TILE_ROWS[kind] * max_rank * 4)
            cp.cuda.runtime.deviceSynchronize()
        got = dt.load(cp.asnumpy(y)).astype(np.float64)
        rel, ab = TOL[dt.name]
        err = np.abs(got - want) - (rel * np.abs(want) + ab)
        worst = float(err.max()) if err.size else 0.0
        outside = np.ones_like(got, dtype=bool)
        outside[:, before:before + out] = False
        untouched = bool(np.array_equal(got[outside], y0.astype(np.float64)[outside]))
        results[kind] = {"ok": worst <= 0 and untouched, "worst_excess": worst,
                         "outside_window_untouched": untouched}
    return results


def main():
    kdir, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    import cupy as cp

    common = (kdir / "common.cuh").read_text()
    mods = {}
    for name in ("shrink", "expand"):
        code = common + "\n" + (kdir / f"{name}.cu").read_text()
        mods[name] = cp.RawModule(code=code, options=("-lineinfo",))
    rng = np.random.default_rng(7)
    cases = [
        {"name": "segments with gaps", "d": 4099, "out": 1001, "rows": 37,
         "ranks": [1, 7, 16, 64, 128],
         "segments": [(0, 10, 4), (10, 10, 0), (12, 13, 0), (13, 30, 2), (31, 37, 3)]},
        {"name": "one row", "d": 257, "out": 129, "rows": 1, "ranks": [3, 16],
         "segments": [(0, 1, 1)], "fused": (3, 5)},
        {"name": "one slot per row", "d": 1031, "out": 515, "rows": 29, "ranks": [5, 16, 33],
         "segments": None},
        {"name": "fused q|k|v row", "d": 96, "out": 40, "rows": 300, "ranks": [1, 8, 16, 128],
         "segments": None, "fused": (64, 40)},
    ]
    report = {"device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "cases": []}
    all_ok = True
    for case in cases:
        for name in ("f32", "f16", "bf16"):
            t0 = time.time()
            res = run_case(cp, mods, Dtype(name), case, rng)
            ok = all(r["ok"] for r in res.values())
            all_ok &= ok
            report["cases"].append({"case": case["name"], "dtype": name, "ok": ok,
                                    "seconds": round(time.time() - t0, 3), **res})
            print(f"{case['name']} [{name}]: {'ok' if ok else 'FAILED'} {res}", flush=True)
            out_path.write_text(json.dumps(report, indent=1))
    report["ok"] = all_ok
    out_path.write_text(json.dumps(report, indent=1))
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
