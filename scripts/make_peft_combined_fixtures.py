#!/usr/bin/env python3
"""Reference logits of adapters combined by PEFT's ``add_weighted_adapter``, on the tiny-llama
fixtures.

Loads ``fixtures/peft/tiny-llama`` as ``scripts/make_peft_fixtures.py`` saved it (the base and
its adapters), makes one more adapter (``qv-r4-b``: r 4, lora_alpha 16, q_proj and v_proj, LoRA
factors from N(0, 0.05) after ``torch.manual_seed(14)``, saved to ``combined/qv-r4-b``), combines
adapters with PEFT and writes, under ``combined/``:

- ``reference.json``: each combination (its adapters, weights and ``combination_type``) and the
  8 greedy next tokens of each combination on each of the fixture's sequences;
- ``reference.safetensors``: float32 ``logits.<combination>.<seq>`` ([seq_len, vocab]) from
  the PeftModel with the combined adapter active.

Needs torch, transformers and peft (not installed by CI). Everything runs in float32 on CPU.

Usage: python scripts/make_peft_combined_fixtures.py [--fixture fixtures/peft/tiny-llama]
"""

import argparse
import copy
import json
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

EXTRA = {
    "name": "qv-r4-b",
    "seed": 14,
    "lora": {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
}

# name -> (adapters, weights, combination_type)
COMBINATIONS = {
    # ranks 4 and 8, rsLoRA on the second, targets united
    "cat-qv-all": (["qv-r4", "all-r8-rslora"], [0.7, 0.4], "cat"),
    # a rank pattern (o_proj r 2) and an alpha pattern (k_proj alpha 32): rows zero-padded
    "cat-qv-patterns": (["qv-r4", "attn-patterns"], [0.5, 1.5], "cat"),
    # equal ranks: the sqrt(w * scale)-weighted sums of the A's and of the B's
    "linear-qv": (["qv-r4", "qv-r4-b"], [0.7, 0.4], "linear"),
}

GREEDY_TOKENS = 8


def greedy(model, seq) -> list:
    ids = list(seq)
    with torch.no_grad():
        for _ in range(GREEDY_TOKENS):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(torch.argmax(logits)))
    return ids[len(seq):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixture", type=Path, default=Path(__file__).resolve().parent.parent / "fixtures/peft/tiny-llama")
    args = parser.parse_args()
    fx: Path = args.fixture
    out = fx / "combined"
    out.mkdir(parents=True, exist_ok=True)
    sequences = json.loads((fx / "reference.json").read_text())["sequences"]
    base = LlamaForCausalLM.from_pretrained(fx, torch_dtype=torch.float32).eval()

    torch.manual_seed(EXTRA["seed"])
    extra = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, lora_dropout=0.0, **EXTRA["lora"]),
    )
    with torch.no_grad():
        for pname, p in extra.named_parameters():
            if "lora_" in pname:
                p.normal_(0.0, 0.05)
    extra.save_pretrained(out / EXTRA["name"], safe_serialization=True)
    (out / EXTRA["name"] / "README.md").unlink(missing_ok=True)  # PEFT's model-card template
    # Name the base as the other fixture adapters do, not by the folder it was loaded from.
    config_path = out / EXTRA["name"] / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "tiny-llama"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    def adapter_dir(name: str) -> Path:
        return out / name if name == EXTRA["name"] else fx / "adapters" / name

    tensors, greedy_tokens = {}, {}
    for combo, (adapters, weights, kind) in COMBINATIONS.items():
        model = PeftModel.from_pretrained(copy.deepcopy(base), adapter_dir(adapters[0]), adapter_name=adapters[0])
        for name in adapters[1:]:
            model.load_adapter(adapter_dir(name), adapter_name=name)
        model.add_weighted_adapter(adapters=adapters, weights=weights, adapter_name=combo, combination_type=kind)
        model.set_adapter(combo)
        model.eval()
        with torch.no_grad():
            for i, seq in enumerate(sequences):
                tensors[f"logits.{combo}.{i}"] = model(torch.tensor([seq])).logits[0].float().contiguous()
                greedy_tokens[f"{combo}.{i}"] = greedy(model, seq)

    save_file(tensors, out / "reference.safetensors")
    doc = {
        "extra_adapter": EXTRA,
        "combinations": {k: {"adapters": a, "weights": w, "combination_type": t} for k, (a, w, t) in COMBINATIONS.items()},
        "greedy": greedy_tokens,
        "versions": {"torch": torch.__version__, "peft": __import__("peft").__version__,
                     "transformers": __import__("transformers").__version__},
    }
    (out / "reference.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(tensors)} logits tensors to {out}")


if __name__ == "__main__":
    main()
