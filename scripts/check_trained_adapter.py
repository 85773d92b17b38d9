#!/usr/bin/env python3
"""Checks an adapter saved by openledger's trainer against PEFT.

Loads the base model folder with transformers, the adapter folder with PEFT
(``PeftModel.from_pretrained``), runs the given token sequences in float32 on CPU and compares
the logits with those the openledger engine wrote through the ``logits`` example, printing the
largest absolute difference per sequence and overall. Exits non-zero when it exceeds ``--tol``.

Produce the engine's logits first (one ``--seq`` per sequence, all with the adapter):

    cargo run -p openledger-examples --example logits -- \\
        --model BASE --adapter trained=ADAPTER \\
        --seq trained:1,17,42,99 --seq trained:1,5,6 --out engine.safetensors

then:

    python scripts/check_trained_adapter.py --model BASE --adapter ADAPTER \\
        --seq 1,17,42,99 --seq 1,5,6 --logits engine.safetensors

The file holds ``logits.<i>`` ([len, vocab], float32) for the i-th ``--seq``. With
``--save-peft-logits OUT`` (and no ``--logits``) the script instead writes PEFT's logits in that
layout, which is how ``fixtures/peft/tiny-llama/trained/peft_logits.safetensors`` was made (keys
``logits.<adapter folder name>.<i>``). Needs torch, transformers and peft (not installed by CI).
"""

import argparse
import sys

import torch
from peft import PeftModel
from pathlib import Path

from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="HF base model folder")
    ap.add_argument("--adapter", required=True, help="PEFT adapter folder saved by the trainer")
    ap.add_argument("--seq", action="append", required=True, help="comma-separated token ids")
    ap.add_argument("--logits", help="safetensors written by the logits example")
    ap.add_argument("--save-peft-logits", help="write PEFT's logits here instead of comparing")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest |diff| accepted")
    args = ap.parse_args()

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, args.adapter)
    model.eval()
    if args.save_peft_logits:
        name = Path(args.adapter).name
        out = {}
        for i, text in enumerate(args.seq):
            ids = [int(t) for t in text.split(",")]
            with torch.no_grad():
                out[f"logits.{name}.{i}"] = model(torch.tensor([ids])).logits[0].float().contiguous()
        save_file(out, args.save_peft_logits)
        print(f"wrote {len(out)} tensors to {args.save_peft_logits}")
        return 0
    if not args.logits:
        ap.error("--logits or --save-peft-logits is required")
    ours = load_file(args.logits)

    worst = 0.0
    for i, text in enumerate(args.seq):
        ids = [int(t) for t in text.split(",")]
        with torch.no_grad():
            peft_logits = model(torch.tensor([ids])).logits[0].float()
        key = f"logits.{i}"
        if key not in ours:
            print(f"{args.logits} has no {key}", file=sys.stderr)
            return 2
        engine = ours[key]
        if engine.shape != peft_logits.shape:
            print(f"{key}: shape {tuple(engine.shape)} vs PEFT {tuple(peft_logits.shape)}",
                  file=sys.stderr)
            return 2
        diff = (engine - peft_logits).abs().max().item()
        scale = peft_logits.abs().max().item()
        print(f"seq {i} ({len(ids)} tokens): max |diff| = {diff:.3e} (max |logit| {scale:.3f})")
        worst = max(worst, diff)
    print(f"max |diff| over all sequences = {worst:.3e}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
