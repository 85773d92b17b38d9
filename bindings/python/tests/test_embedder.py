"""The sentence embedder from Python: sentence-transformers' vectors (fixtures/minilm, made by
scripts/make_embedder_reference.py) to 1e-5, progress, and refusals. The model comes from
`bash scripts/fetch-models.sh`; without it these tests skip, unless OPENLEDGER_REQUIRE_MODELS=1."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

import openledger
from conftest import REPO

MODELS = pathlib.Path(os.environ.get("OPENLEDGER_MODELS", REPO / "target" / "models"))
MINILM = MODELS / "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def model_dir():
    if not (MINILM / ".complete").exists():
        if os.environ.get("OPENLEDGER_REQUIRE_MODELS") == "1":
            pytest.fail(f"{MINILM} is absent: run `bash scripts/fetch-models.sh`")
        pytest.skip(f"{MINILM} is absent (run `bash scripts/fetch-models.sh`)")
    return MINILM


def test_vectors_equal_sentence_transformers(model_dir):
    e = openledger.SentenceEmbedder.from_dir(model_dir)
    assert (e.dim, e.max_seq_len) == (384, 256)
    ref = json.loads((REPO / "fixtures" / "minilm" / "reference.json").read_text())
    texts = [c["text"] for c in ref["cases"]]
    want = np.array([c["vector"] for c in ref["cases"]], dtype=np.float32)
    seen = []
    got = e.embed(texts, progress=seen.append)
    assert got.dtype == np.float32 and got.shape == (len(texts), 384)
    assert np.abs(got - want).max() <= 1e-5
    assert sum(seen) == len(texts)
    # Paraphrases are closer than different facts.
    v = e.embed(["aspirin is used to treat pain and fever",
                 "what does aspirin treat => pain and fever",
                 "what does metformin treat => type 2 diabetes"])
    assert v[0] @ v[1] > 0.84 > v[0] @ v[2]


def test_broken_folders_are_refused(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError):
        openledger.SentenceEmbedder.from_dir(tmp_path / "absent")
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken, ignore=shutil.ignore_patterns("model.safetensors"))
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(openledger.ModelFormatError, match="truncated"):
        openledger.SentenceEmbedder.from_dir(broken)
    (broken / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(openledger.ModelFormatError, match="embeddings.word_embeddings.weight"):
        openledger.SentenceEmbedder.from_dir(broken)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["model_type"] = "llama"
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(openledger.ModelFormatError, match="llama"):
        openledger.SentenceEmbedder.from_dir(broken)


def test_the_loop_reports_its_embedder(model_dir, tmp_path):
    l = openledger.PayableAi(tmp_path, quick=True, counterfactual=False, embedder=model_dir)
    d = l.publish_datanet()
    assert d["embedder"].startswith("all-MiniLM-L6-v2 (384 dims)")
    assert d["paraphrases"] == 0
    with pytest.raises(FileNotFoundError):
        openledger.PayableAi(tmp_path, quick=True, embedder=tmp_path / "absent")
