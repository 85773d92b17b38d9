#!/usr/bin/env python3
"""The GPU model's kernels (layers.cu, rope_kv.cu, attention.cu, prefill.cu) run alone through
CuPy on a GPU machine and checked against torch: RMSNorm (alone and fused with the residual add),
the gated activations, RoPE with the paged KV write, paged attention in one part and split over
the context, and the tensor-core prefill attention (f16 / bf16) over chunked prompts. A way to
debug these kernels on a device before (or without) the Rust engine.

    python3 cupy_layers.py KERNEL_DIR OUT.json
"""

import json
import math
import sys
from pathlib import Path

import cupy as cp
import numpy as np
import torch
import torch.nn.functional as F

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# (rel, abs), as openledger-lora/tests/gpu_kernels_emulated.rs.
TOL = {"f32": (1e-5, 1e-5), "f16": (2.0**-10, 1e-4), "bf16": (2.0**-7, 1e-3)}
# The prefill kernel rounds the softmax weights to the type before P·V: half an ulp of each
# weight more (values within ±1), as the emulated test states.
PREFILL_TOL = {"f16": (2.0**-10, 1e-4 + 2.0**-12), "bf16": (2.0**-7, 1e-3 + 2.0**-9)}


def dev(t):
    """A CuPy view of a CUDA torch tensor (bf16 as int16 bits)."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return cp.asarray(t)


def check(name, dt, got, want, report, tol=None):
    rel, ab = (tol or TOL)[dt]
    got, want = got.double(), want.double()
    excess = ((got - want).abs() - (rel * want.abs() + ab)).max().item()
    ok = excess <= 0
    report.append({"check": name, "dtype": dt, "ok": ok, "worst_excess": excess})
    print(f"{name} [{dt}]: {'ok' if ok else 'FAILED'} ({excess:.3g})", flush=True)
    return ok


def scattered_tables(lens, nblocks, bs):
    """Block tables for sequences of `lens` positions over a shuffled pool of `nblocks` blocks
    of `bs` positions: every table one after another, and each sequence's offset in them."""
    perm = torch.randperm(nblocks).tolist()
    tables, at, offs = [], 0, []
    for n in lens:
        nb = (n + bs - 1) // bs
        offs.append(len(tables))
        tables += perm[at:at + nb]
        at += nb
    return tables, offs


def paged_reference(q, kc, vc, tables, offs, rows, heads, window):
    """Attention of each (sequence, position) row of `rows` over the paged cache `kc` / `vc`
    ([blocks, kv_heads, block_size, hd]) through the block tables, in f32."""
    _, kvh, bs, hd = kc.shape
    tt = torch.tensor(tables, device="cuda")
    want = torch.empty(len(rows), heads * hd, device="cuda")
    for r, (si, p) in enumerate(rows):
        lo = max(0, p - window + 1) if window else 0
        js = torch.arange(lo, p + 1, device="cuda")
        blk = tt[offs[si] + js // bs]
        for h in range(heads):
            k = kc[blk, h // (heads // kvh), js % bs].float()
            v = vc[blk, h // (heads // kvh), js % bs].float()
            a = torch.softmax(k @ q[r, h * hd:(h + 1) * hd].float() / math.sqrt(hd), 0)
            want[r, h * hd:(h + 1) * hd] = a @ v
    return want


def dora_and_bias(mod, dt, g, report):
    """DoRA's factor (dora_norm) against torch's weight norm, and the epilogue (lora_epilogue):
    y = b + g·(y − b + c) on the rows of a DoRA tile, y + c on a bias-only tile, nothing on a
    plain one, within a 100-wide output at column 10."""
    ok, out, din, rank, scale = True, 48, 64, 4, 2.0
    w = g(out, din)
    a = torch.rand(rank, din, device="cuda") - 0.5
    b = torch.rand(out, rank, device="cuda") - 0.5
    mag = torch.rand(out, device="cuda") + 0.5
    gv = mag.clone()
    mod.get_function(f"dora_norm_{dt}")(
        (out,), (256,), (dev(gv), dev(w), np.int32(din), dev(a), dev(b), np.int32(rank),
                         np.float32(scale), dev(gv)))
    torch.cuda.synchronize()
    want_g = mag / torch.linalg.norm(w.float() + scale * (b @ a), dim=1)
    ok &= check("dora_norm", "f32", gv, want_g, report)
    rows, ldy, col = 7, 100, 10
    y, bias = g(rows, ldy), g(out)
    c = (torch.rand(out, device="cuda") - 0.5) * 0.2
    y0 = y.clone()
    # Slot 0: DoRA and a bias; slot 1: a bias alone; slot 2: neither.
    table = cp.asarray(np.array([gv.data_ptr(), c.data_ptr(), 0, c.data_ptr(), 0, 0], np.int64))
    tiles = cp.asarray(np.array([0, 3, 0, 0, 3, 2, 1, 0, 5, 2, 2, 0], np.int64))
    mod.get_function(f"lora_epilogue_{dt}")(
        (3, 1), (256,), (dev(y), np.int64(ldy), np.int64(col), np.int32(out), dev(bias), tiles,
                         table))
    torch.cuda.synchronize()
    want = y0.float().clone()
    bf = bias.float()
    seg = want[:, col:col + out]
    seg[0:3] = bf + gv * (seg[0:3] - bf + c)
    seg[3:5] = seg[3:5] + c
    ok &= check("lora_epilogue", dt, y.float(), want, report)
    return ok


def prefill(mod, dt, g, report):
    """The tensor-core prefill: a 140-row chunk from position 10 and a 70-row prompt, in tiles
    of 64 rows, GQA 4:2, head sizes 64 and 128, with and without a sliding window."""
    ok, bs, heads, kvh = True, 16, 4, 2
    for hd in (64, 128):
        lens, nblocks = [150, 70], 40
        tables, offs = scattered_tables(lens, nblocks, bs)
        kc, vc = g(nblocks, kvh, bs, hd), g(nblocks, kvh, bs, hd)
        rows, tiles = [], []
        for si, start, n in ((0, 10, 140), (1, 0, 70)):
            for i in range(0, n, 64):
                tiles += [len(rows) + i, min(64, n - i)]
            rows += [(si, p) for p in range(start, start + n)]
        q = g(len(rows), heads * hd)
        scale = 1.0 / math.sqrt(hd)
        for window in (0, 50):
            want = paged_reference(q, kc, vc, tables, offs, rows, heads, window)
            out = torch.zeros(len(rows), heads * hd, dtype=q.dtype, device="cuda")
            args = (dev(out), np.int64(heads * hd), dev(q), np.int64(heads * hd), dev(kc),
                    dev(vc), cp.asarray(np.array(tables, np.int32)),
                    cp.asarray(np.array([offs[s] for s, _ in rows], np.int64)),
                    cp.asarray(np.array([p for _, p in rows], np.int32)),
                    cp.asarray(np.array(tiles, np.int32)), np.int32(kvh),
                    np.int32(heads // kvh), np.int32(hd), np.int32(bs), np.float32(scale),
                    np.int32(window))
            mod.get_function(f"prefill_attention_{dt}")((len(tiles) // 2, heads), (128,), args)
            torch.cuda.synchronize()
            ok &= check(f"prefill hd={hd} window={window}", dt, out.float(), want, report,
                        PREFILL_TOL)
    return ok


def main():
    kdir, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    common = (kdir / "common.cuh").read_text()
    mods = {n: cp.RawModule(code=common + "\n" + (kdir / f"{n}.cu").read_text(),
                            options=("-lineinfo",))
            for n in ("layers", "rope_kv", "attention", "prefill", "expand")}
    torch.manual_seed(0)
    report, ok = [], True
    for dt, tdt in DTYPES.items():
        g = lambda *s, scale=1.0: ((torch.rand(*s, device="cuda") * 2 - 1) * scale).to(tdt)
        # RMSNorm, alone and fused with the residual add (Gemma's 1 + w too).
        rows, dim, eps = 5, 300, 1e-6
        x, res, w = g(rows, dim, scale=2.0), g(rows, dim, scale=2.0), g(dim)
        for one_plus in (0, 1):
            gw = (1 + w.float()) if one_plus else w.float()
            for fused in (False, True):
                xs, rs = x.clone(), res.clone()
                h = (x.float() + res.float()).to(tdt).float() if fused else x.float()
                want = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * gw
                out = xs if fused else torch.empty_like(x)
                mods["layers"].get_function(f"rms_norm_{dt}")(
                    (rows,), (128,),
                    (dev(out), dev(xs), dev(rs) if fused else np.uint64(0), dev(w),
                     np.int32(dim), np.float32(eps), np.int32(one_plus)))
                torch.cuda.synchronize()
                ok &= check(f"rms_norm one_plus={one_plus} fused={fused}", dt, out.float(),
                            want, report)
        # Gated activations.
        inter = 333
        gu = g(3, 2 * inter, scale=4.0)
        gate, up = gu[:, :inter].float(), gu[:, inter:].float()
        for code, ref in ((0, F.silu(gate)), (1, F.gelu(gate, approximate="tanh")),
                          (2, F.gelu(gate))):
            out = torch.empty(3, inter, dtype=tdt, device="cuda")
            mods["layers"].get_function(f"gated_{dt}")(
                (3, (inter + 127) // 128), (128,), (dev(out), dev(gu), np.int32(inter),
                                                    np.int32(code)))
            torch.cuda.synchronize()
            ok &= check(f"gated act={code}", dt, out.float(), ref * up, report)
        # RoPE + the paged KV write.
        heads, kvh, hd, bs, blocks = 4, 2, 64, 16, 8
        inv_freq = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, device="cuda").float() / hd))
        pos = torch.tensor([0, 1, 5, 17, 1000, 4095], device="cuda", dtype=torch.int32)
        slots = torch.tensor([0, 17, 35, -1, 127, 64], device="cuda", dtype=torch.int64)
        ld = (heads + 2 * kvh) * hd
        qkv0 = g(len(pos), ld)
        qkv = qkv0.clone()
        kc = torch.zeros(blocks, kvh, bs, hd, dtype=tdt, device="cuda")
        vc = torch.zeros_like(kc)
        mods["rope_kv"].get_function(f"rope_kv_{dt}")(
            (len(pos),), (128,),
            (dev(qkv), np.int64(ld), dev(kc), dev(vc), cp.asarray(inv_freq), cp.asarray(pos),
             cp.asarray(slots), np.int32(heads), np.int32(kvh), np.int32(hd), np.int32(bs)))
        torch.cuda.synchronize()
        ang = pos.float()[:, None] * inv_freq[None, :]
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

        def rot(t):  # [tokens, n, hd], HF's rotate_half
            t = t.float()
            half = torch.cat([-t[..., hd // 2:], t[..., : hd // 2]], -1)
            return t * cos[:, None] + half * sin[:, None]

        q_want = rot(qkv0[:, : heads * hd].view(-1, heads, hd))
        ok &= check("rope q", dt, qkv[:, : heads * hd].view(-1, heads, hd).float(), q_want,
                    report)
        k_want = rot(qkv0[:, heads * hd:(heads + kvh) * hd].view(-1, kvh, hd))
        for t, s in enumerate(slots.tolist()):
            if s >= 0:
                ok &= check(f"rope k token {t}", dt, kc[s // bs, :, s % bs].float(), k_want[t],
                            report)
                ok &= check(f"v token {t}", dt, vc[s // bs, :, s % bs].float(),
                            qkv0[t, (heads + kvh) * hd:].view(kvh, hd).float(), report)
        # Paged attention: three sequences in scattered blocks, GQA 4:2.
        lens, nblocks = [1, 37, 300], 40
        tables, offs = scattered_tables(lens, nblocks, bs)
        kc, vc = g(nblocks, kvh, bs, hd), g(nblocks, kvh, bs, hd)
        rows = [(i, n - 1) for i, n in enumerate(lens)] + [(2, p) for p in range(100, 104)]
        q = g(len(rows), heads * hd)
        scale = 1.0 / math.sqrt(hd)
        for window in (0, 50):
            want = paged_reference(q, kc, vc, tables, offs, rows, heads, window)
            for part_len in (1024, 64, 7):
                parts = (300 + part_len - 1) // part_len
                out = torch.empty(len(rows), heads * hd, dtype=tdt, device="cuda")
                n = len(rows) * heads * parts
                pm, pl = cp.zeros(n, cp.float32), cp.zeros(n, cp.float32)
                pa = cp.zeros(n * hd, cp.float32)
                args = (dev(out), np.int64(heads * hd), dev(q), np.int64(heads * hd), dev(kc),
                        dev(vc), cp.asarray(np.array(tables, np.int32)),
                        cp.asarray(np.array([offs[s] for s, _ in rows], np.int64)),
                        cp.asarray(np.array([p for _, p in rows], np.int32)), np.int32(kvh),
                        np.int32(heads // kvh), np.int32(hd), np.int32(bs), np.float32(scale),
                        np.int32(window), np.int32(part_len), pm, pl, pa, np.uint64(0))
                mods["attention"].get_function(f"attention_{dt}")(
                    (len(rows), heads, parts), (128,), args)
                if parts > 1:
                    mods["attention"].get_function(f"attention_reduce_{dt}")(
                        (len(rows), heads), (64,),
                        (dev(out), np.int64(heads * hd), pm, pl, pa, np.int32(parts),
                         np.int32(hd), np.uint64(0)))
                torch.cuda.synchronize()
                ok &= check(f"attention window={window} parts={parts}", dt, out.float(), want,
                            report)
        if dt != "f32":
            ok &= prefill(mods["prefill"], dt, g, report)
        ok &= dora_and_bias(mods["expand"], dt, g, report)
        out_path.write_text(json.dumps({"ok": ok, "checks": report}, indent=1))
    out_path.write_text(json.dumps({"ok": ok, "checks": report}, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
