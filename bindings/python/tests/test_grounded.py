"""Grounded answers from Python: SmolLM2-135M-Instruct (GGUF) answers from the records
all-MiniLM-L6-v2 retrieves from the shipped datanet, streams its text, and ContextCite credits
the record that holds the answer. The models come from `bash scripts/fetch-models.sh`; without
them these tests skip, unless OPENLEDGER_REQUIRE_MODELS=1."""

import os
import pathlib

import pytest

import openledger
from conftest import REPO

MODELS = pathlib.Path(os.environ.get("OPENLEDGER_MODELS", REPO / "target" / "models"))
SMOL = MODELS / "SmolLM2-135M-Instruct"
MINILM = MODELS / "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def grounded():
    for m in (SMOL, MINILM):
        if not (m / ".complete").exists():
            if os.environ.get("OPENLEDGER_REQUIRE_MODELS") == "1":
                pytest.fail(f"{m} is absent: run `bash scripts/fetch-models.sh`")
            pytest.skip(f"{m} is absent (run `bash scripts/fetch-models.sh`)")
    loaded = []
    g = openledger.Grounded.load(
        SMOL / "SmolLM2-135M-Instruct.Q4_1.gguf", MINILM, samples=24, held_out=8, progress=loaded.append
    )
    assert sum(loaded) == 272  # tensors in the file
    d = openledger.Datanet("drug-facts")
    d.import_jsonl((REPO / "openledger" / "data" / "drug-facts.jsonl").read_text())
    embedded = []
    indexed = g.index_datanet(d, progress=embedded.append)
    assert sum(embedded) == len(d)
    # Re-worded and copied records join their originals' clusters and are not indexed.
    assert g.records == len(indexed["kept"]) and len(indexed["copies"]) > 0
    assert len(indexed["kept"]) + len(indexed["copies"]) == len(d)
    return g


def test_a_grounded_answer_streams_and_context_cite_credits_its_record(grounded):
    sources = grounded.retrieve("what class is metformin?")
    assert [s["number"] for s in sources] == [1, 2, 3, 4]
    holder = next(s for s in sources if s["text"].startswith("Q: what class is metformin?"))
    pieces = []
    answer = grounded.answer("what class is metformin?", on_text=pieces.append)
    assert "".join(pieces) == answer.text
    assert "biguanide" in answer.text.lower()
    assert [s["record"] for s in answer.sources] == [s["record"] for s in sources]
    plain = grounded.answer("what class is metformin?", retrieve=False)
    assert plain.sources == [] and "biguanide" not in plain.text.lower()

    scored = []
    credit = grounded.cite(answer, progress=scored.append)
    assert sum(scored) == credit["prompts_scored"] == 24 + 8 + 2
    assert credit["top_source"] == holder["number"]
    assert abs(sum(credit["shares"]) - 1.0) < 1e-12
    assert credit["top_drop"] > 1.0


def test_stopping_the_stream_and_bad_input(grounded):
    pieces = []
    short = grounded.answer("what does aspirin treat?", on_text=lambda p: pieces.append(p) or False)
    assert len(pieces) == 1
    with pytest.raises(openledger.InvalidArgumentError, match="question"):
        grounded.retrieve("  ")
    plain = grounded.answer("what does aspirin treat?", retrieve=False)
    with pytest.raises(openledger.InvalidArgumentError, match="no sources"):
        grounded.cite(plain)

    def boom(_piece):
        raise ValueError("stop here")

    with pytest.raises(ValueError, match="stop here"):
        grounded.answer("what does aspirin treat?", on_text=boom)
    assert short.text.startswith(pieces[0])
