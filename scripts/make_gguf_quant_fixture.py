"""A GGUF file with one tensor of each quantised type the SDK reads, and the `gguf` package's
dequantization of each (llama.cpp's GGUF library, the reference for these block layouts), which
openledger-lora's GGUF tests compare with its own decoding.

Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 tensors are quantised by the `gguf` package from seeded normal
values; the package does not quantise the k-quants, so the Q4_K, Q5_K and Q6_K tensors are
seeded random bytes whose f16 scale fields are set to finite values of the size llama.cpp
writes. Writes fixtures/gguf-quants/quants.gguf and fixtures/gguf-quants/dequantized.safetensors
(one float32 tensor per GGUF tensor, the same name and row-major shape).

    python scripts/make_gguf_quant_fixture.py
"""
import importlib.metadata
import os

import gguf
import numpy as np
from safetensors.numpy import save_file

T = gguf.GGMLQuantizationType
ROWS, COLS = 3, 512
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "gguf-quants")


def f16_bytes(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(-1, 2)


def k_quant_bytes(rng, qtype, n_blocks):
    """Random super-blocks of `qtype` with finite f16 `d` (and `dmin`)."""
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    if qtype == T.Q6_K:
        b[:, 208:210] = f16_bytes(rng.uniform(1e-4, 1e-3, n_blocks))
    else:
        b[:, 0:2] = f16_bytes(rng.uniform(1e-4, 1e-3, n_blocks))
        b[:, 2:4] = f16_bytes(rng.uniform(1e-4, 1e-3, n_blocks))
    return b


def main():
    rng = np.random.default_rng(20261207)
    os.makedirs(OUT, exist_ok=True)
    w = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), "llama")
    w.add_string("general.name", "quantised tensors")
    expected = {}
    for qtype in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]:
        values = rng.standard_normal((ROWS, COLS)).astype(np.float32) * 0.05
        data = gguf.quants.quantize(values, qtype)
        name = qtype.name.lower()
        w.add_tensor(name, data, raw_dtype=qtype)
        expected[name] = gguf.quants.dequantize(data, qtype).astype(np.float32)
    for qtype in [T.Q4_K, T.Q5_K, T.Q6_K]:
        per, size = gguf.GGML_QUANT_SIZES[qtype]
        data = k_quant_bytes(rng, qtype, ROWS * COLS // per).reshape(ROWS, COLS // per * size)
        name = qtype.name.lower()
        w.add_tensor(name, data, raw_dtype=qtype)
        expected[name] = gguf.quants.dequantize(data, qtype).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for name, v in expected.items():
        assert v.shape == (ROWS, COLS), (name, v.shape)
    save_file(
        expected,
        os.path.join(OUT, "dequantized.safetensors"),
        metadata={
            "provenance": f"gguf {importlib.metadata.version('gguf')} quants.dequantize, "
            f"numpy {np.__version__}, by scripts/make_gguf_quant_fixture.py"
        },
    )


if __name__ == "__main__":
    main()
