#!/usr/bin/env python3
"""The PEFT baseline of openledger-gpu's gpu_model bench, on the same GPU: a Llama-2-7B-shaped
LlamaForCausalLM (random bf16 weights) with rank-16 LoRA adapters on q, k, v, o, serving a mixed
batch the way PEFT's docs show it (`adapter_names=` per row), prompts of 128 tokens and 128 new
greedy tokens with transformers' KV cache; decode tokens/s for 1 and 32 distinct adapters.

    python3 peft_baseline.py OUT.json [BATCH]
"""

import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

PROMPT, NEW = 128, 128


def main():
    out = sys.argv[1]
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
    )
    with torch.device("cuda"):
        base = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      init_lora_weights=False)
    model = get_peft_model(base, lora, adapter_name="a0")
    results = {"batch": batch}
    for distinct in [1, 32]:
        for k in range(1, distinct):
            if f"a{k}" not in model.peft_config:
                model.add_adapter(f"a{k}", lora)
        names = [f"a{i % distinct}" for i in range(batch)]
        ids = torch.randint(0, 32000, (batch, PROMPT), device="cuda")
        with torch.no_grad():
            out_ = model(input_ids=ids, adapter_names=names, use_cache=True)
            past = out_.past_key_values
            tok = out_.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(NEW - 1):
                out_ = model(input_ids=tok, past_key_values=past, adapter_names=names, use_cache=True)
                past = out_.past_key_values
                tok = out_.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            secs = time.perf_counter() - t0
        results[f"decode_tokens_per_s_{distinct}_adapters"] = batch * (NEW - 1) / secs
        print(distinct, results[f"decode_tokens_per_s_{distinct}_adapters"], flush=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
