"""Shared fixtures: the same PEFT and Merkle reference data the Rust tests use."""

import json
import os
import pathlib
import struct

from openledger.ray import LOCAL_ENV

# Ray reads these when it is imported (test_ray.py): a local cluster on loopback only, no
# auth-token file, no usage report.
for _k, _v in LOCAL_ENV.items():
    os.environ.setdefault(_k, _v)

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
TINY = REPO / "fixtures" / "peft" / "tiny-llama"
ADAPTERS = TINY / "adapters"
MERKLE_VECTORS = REPO / "openledger-chain" / "tests" / "vectors" / "merkle.json"


#: 127.0.0.1 as /proc/net/tcp writes it, or as an IPv4-mapped IPv6 address.
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}


def listening_hosts(pids):
    """The addresses the processes `pids` listen on (TCP, from /proc), as hex."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                found.append(cols[1].split(":")[0])
    return found


@pytest.fixture
def tiny_llama() -> pathlib.Path:
    return TINY


@pytest.fixture
def adapters_root() -> pathlib.Path:
    return ADAPTERS


@pytest.fixture
def merkle_vectors():
    return json.loads(MERKLE_VECTORS.read_text())["cases"]


def read_safetensors(path: pathlib.Path) -> dict:
    """An independent safetensors reader (numpy only), the peer the bindings are checked against."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n :]
    out = {}
    for key, meta in header.items():
        assert meta["dtype"] == "F32", key
        start, end = meta["data_offsets"]
        out[key] = np.frombuffer(data[start:end], dtype="<f4").reshape(meta["shape"])
    return out


def to_bf16_bits(arr) -> np.ndarray:
    """bfloat16 bit patterns of float32 values, truncated (exact for values already bf16)."""
    return (np.ascontiguousarray(arr, dtype="<f4").view("<u4") >> 16).astype("<u2")


def from_bf16_bits(bits) -> np.ndarray:
    return (bits.astype("<u4") << 16).view("<f4")


def write_safetensors(tensors: dict, dtype: str = "F32") -> bytes:
    """Encodes arrays as a safetensors file of float32 or bfloat16 (`dtype="BF16"`)."""
    header, blobs, offset = {}, [], 0
    for key, arr in tensors.items():
        if dtype == "BF16":
            b = to_bf16_bits(arr).tobytes()
        else:
            b = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[key] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


# A feature store for the sharding tests (test_sharded.py, test_ray.py): N rows of f16
# Rademacher sketches (k = 32) of 64-dim gradients at two checkpoints, seven contributors.
BLOCK = 1024
N = 4 * BLOCK + 300
CONTRIBUTORS = ["0x" + f"{i:040x}" for i in range(1, 8)]
LAYERS = [(0, 16), (16, 32)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The sharding tests' store, and a query's gradients."""
    import openledger as ol

    d = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(7)
    w = ol.FeatureStoreWriter.create(d / "all.olfs", input_dim=64, k=32, learning_rates=[0.1, 0.05], seed=3)
    grads = rng.standard_normal((N, 2, 64), dtype=np.float32)
    records = [ol.content_id(i.to_bytes(8, "little")) for i in range(N)]
    who = [CONTRIBUTORS[(i * 5 + i // 9) % len(CONTRIBUTORS)] for i in range(N)]
    assert w.extend(records, who, grads) == N
    w.sync()
    query = rng.standard_normal((2, 64), dtype=np.float32)
    return ol.FeatureStore.open(d / "all.olfs"), query, d
