#!/usr/bin/env python3
"""Makes, on a GPU machine, the bigger parity reference of the GPU model: a 2-layer
LlamaForCausalLM at hidden 4096 (intermediate 11008, 32 heads, 8 key/value heads, vocabulary
32000) with random bf16 weights, four PEFT LoRA adapters of ranks 8, 16, 32 and 64 on every
projection (random non-zero A and B), and transformers + PEFT's bf16 logits for three prompts
with each adapter and with none. openledger-gpu's `big_parity` example compares the GPU model
against them.

    python3 make_big_reference.py OUTDIR

OUTDIR/model (save_pretrained, bf16 safetensors), OUTDIR/adapters/r{8,16,32,64},
OUTDIR/reference.json (prompts), OUTDIR/reference.safetensors (`logits.<adapter>.<i>`: the last
position's logits as f32; `base` for no adapter).
"""

import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

RANKS = [8, 16, 32, 64]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=2,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out / "model", safe_serialization=True)
    model = model.cuda().eval()
    for r in RANKS:
        torch.manual_seed(100 + r)
        lora = LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, init_lora_weights=False)
        peft = get_peft_model(LlamaForCausalLM(cfg).to(torch.bfloat16), lora)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_" in name:
                    p.normal_(0.0, 0.02)
        peft.save_pretrained(out / "adapters" / f"r{r}")
    prompts = [[1] + [(7 * i + 3 * k) % 32000 for i in range(n)] for k, n in enumerate([11, 37, 70])]
    logits = {}
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ids = torch.tensor([p], device="cuda")
            logits[f"logits.base.{i}"] = model(ids).logits[0, -1].float().cpu().contiguous()
        peft = PeftModel.from_pretrained(model, out / "adapters" / "r8", adapter_name="r8")
        for r in RANKS[1:]:
            peft.load_adapter(out / "adapters" / f"r{r}", adapter_name=f"r{r}")
        peft.eval()
        for r in RANKS:
            peft.set_adapter(f"r{r}")
            for i, p in enumerate(prompts):
                ids = torch.tensor([p], device="cuda")
                logits[f"logits.r{r}.{i}"] = peft(ids).logits[0, -1].float().cpu().contiguous()
    save_file(logits, out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps({"prompts": prompts, "ranks": RANKS}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
