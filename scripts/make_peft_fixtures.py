#!/usr/bin/env python3
"""Regenerates the PEFT reference fixtures used by openledger-lora's parity tests.

Builds a tiny randomly initialised LlamaForCausalLM, saves it with ``save_pretrained``, makes the
LoRA adapters listed in fixtures/peft/README.md (``init_lora_weights=False``, then every LoRA
factor redrawn from N(0, 0.05)), and writes:

- ``reference.json``: the input sequences, the adapters' seeds and configs, and the 8 greedy
  next tokens per adapter and sequence (``greedy["<adapter>.<seq>"]``, ``base`` for no adapter);
- ``reference.safetensors``: float32 ``logits.<adapter>.<seq>`` ([seq_len, vocab]) and
  ``merged.<adapter>.<param>`` (the dense weight after ``merge_and_unload()``).

Needs torch, transformers and peft (not installed by CI). Everything runs in float32 on CPU.

Usage: python scripts/make_peft_fixtures.py --out fixtures/peft/tiny-llama --seed 0
"""

import argparse
import copy
import json
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

SEQUENCES = [
    [1, 17, 42, 99, 3, 250, 7],
    [1, 5, 6, 200, 31],
    [1, 300, 12, 12, 77, 8, 9, 64, 111],
]

ADAPTERS = {
    "qv-r4": {
        "seed": 11,
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    },
    "all-r8-rslora": {
        "seed": 12,
        "lora": {
            "r": 8,
            "lora_alpha": 16,
            "use_rslora": True,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
    },
    "attn-patterns": {
        "seed": 13,
        "lora": {
            "r": 8,
            "lora_alpha": 8,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "rank_pattern": {"o_proj": 2},
            "alpha_pattern": {"k_proj": 32},
        },
    },
}

MERGED_PARAMS = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
]

GREEDY_TOKENS = 8


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval().to(torch.float32)


def greedy(model, seq) -> list:
    ids = torch.tensor([seq])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=GREEDY_TOKENS,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(seq):].tolist()


@torch.no_grad()
def logits(model, seq) -> torch.Tensor:
    return model(torch.tensor([seq])).logits[0].float().contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. fixtures/peft/tiny-llama)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the base model's initialisation")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    base = tiny_llama(args.seed)
    base.save_pretrained(out, safe_serialization=True)
    base = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()

    tensors = {}
    greedy_tokens = {}
    for i, seq in enumerate(SEQUENCES):
        tensors[f"logits.base.{i}"] = logits(base, seq)
        greedy_tokens[f"base.{i}"] = greedy(base, seq)

    for name, spec in ADAPTERS.items():
        torch.manual_seed(spec["seed"])
        model = get_peft_model(
            copy.deepcopy(base),
            LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, lora_dropout=0.0, **spec["lora"]),
        )
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_" in pname:
                    p.normal_(0.0, 0.05)
        adapter_dir = out / "adapters" / name
        model.save_pretrained(adapter_dir, safe_serialization=True)

        # Reload as a user would, so the fixtures test the saved files.
        model = PeftModel.from_pretrained(copy.deepcopy(base), adapter_dir).eval()
        for i, seq in enumerate(SEQUENCES):
            tensors[f"logits.{name}.{i}"] = logits(model, seq)
            greedy_tokens[f"{name}.{i}"] = greedy(model, seq)
        merged = model.merge_and_unload()
        state = merged.state_dict()
        for param in MERGED_PARAMS:
            tensors[f"merged.{name}.{param}"] = state[param].float().contiguous().clone()

    save_file(tensors, out / "reference.safetensors")
    reference = {
        "base": out.name,
        "arch": "llama",
        "sequences": SEQUENCES,
        "adapters": ADAPTERS,
        "greedy": greedy_tokens,
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {len(tensors)} reference tensors and {len(ADAPTERS)} adapters to {out}")


if __name__ == "__main__":
    main()
