"""GGUF files for the llama.cpp side-by-side bench (benches/llama_cpp.rs), written with the
`gguf` package (llama.cpp's own Python GGUF library).

    python convert.py model SRC.gguf OUT.gguf TYPE
        Rewrites a llama GGUF file with every 2-D weight in TYPE (f32, f16, bf16 or q8_0; norms
        stay f32, as llama.cpp's converter keeps them): each tensor is dequantised to f32 and
        requantised, and all metadata (architecture, tokenizer, chat template) is copied. Both
        engines then load the same weights from the same file.

    python convert.py adapters SRC.gguf OUT_DIR COUNT RANK SEED
        Writes COUNT random LoRA adapters of rank RANK on q_proj and v_proj of every layer, each
        twice: as a PEFT folder (OUT_DIR/aK/adapter_config.json + adapter_model.safetensors, the
        Hugging Face layout the SDK loads) and as a GGUF LoRA file (OUT_DIR/aK.gguf, the layout
        llama.cpp's convert_lora_to_gguf.py writes: `blk.N.attn_q.weight.lora_a` = lora_A
        [r, in], `.lora_b` = lora_B [out, r], with lora_B of q_proj permuted as llama.cpp
        permutes q_proj's rows for its rotary embedding; `adapter.lora.alpha`).
"""
import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import dequantize, quantize

TYPES = {
    "f32": (Q.F32, LlamaFileType.ALL_F32),
    "f16": (Q.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}


def field_value(reader, key):
    return reader.fields[key].contents()


def tensors_f32(reader):
    """Each tensor of `reader` as f32, numpy-shaped (rows, cols) as ggml stores it."""
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        values = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        yield t.name, values


def convert_model(src, out, kind):
    qtype, file_type = TYPES[kind]
    reader = GGUFReader(src)
    arch = field_value(reader, "general.architecture")
    writer = GGUFWriter(out, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(file_type)
    for name, values in tensors_f32(reader):
        if values.ndim < 2 or kind == "f32":
            writer.add_tensor(name, values)
        elif kind == "f16":
            writer.add_tensor(name, values.astype(np.float16))
        else:
            writer.add_tensor(name, quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def permute_rows(w, heads):
    """llama.cpp's rotary permutation of a [heads·d, …] projection's rows."""
    rows = w.shape[0]
    return (
        w.reshape(heads, 2, rows // heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_adapters(src, out_dir, count, rank, seed):
    from safetensors.numpy import save_file

    reader = GGUFReader(src)
    arch = field_value(reader, "general.architecture")
    layers = int(field_value(reader, f"{arch}.block_count"))
    hidden = int(field_value(reader, f"{arch}.embedding_length"))
    heads = int(field_value(reader, f"{arch}.attention.head_count"))
    kv_heads = int(field_value(reader, f"{arch}.attention.head_count_kv"))
    head_dim = hidden // heads
    alpha = 2.0 * rank
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    for k in range(count):
        peft = {}
        writer = GGUFWriter(os.path.join(out_dir, f"a{k}.gguf"), arch)
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", alpha)
        for layer in range(layers):
            for module, gguf_name, out in (
                ("q_proj", "attn_q", heads * head_dim),
                ("v_proj", "attn_v", kv_heads * head_dim),
            ):
                bound = 1.0 / np.sqrt(hidden)
                a = rng.uniform(-bound, bound, (rank, hidden)).astype(np.float32)
                b = rng.normal(0.0, 0.05, (out, rank)).astype(np.float32)
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
                peft[f"{prefix}.lora_A.weight"] = a
                peft[f"{prefix}.lora_B.weight"] = b
                gguf_b = permute_rows(b, heads) if module == "q_proj" else b
                writer.add_tensor(f"blk.{layer}.{gguf_name}.weight.lora_a", a)
                writer.add_tensor(f"blk.{layer}.{gguf_name}.weight.lora_b", np.ascontiguousarray(gguf_b))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        folder = os.path.join(out_dir, f"a{k}")
        os.makedirs(folder, exist_ok=True)
        save_file(peft, os.path.join(folder, "adapter_model.safetensors"))
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": rank,
            "lora_alpha": alpha,
            "lora_dropout": 0.0,
            "target_modules": ["q_proj", "v_proj"],
            "bias": "none",
            "fan_in_fan_out": False,
            "use_dora": False,
            "use_rslora": False,
        }
        with open(os.path.join(folder, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "model":
        convert_model(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 7 and sys.argv[1] == "adapters":
        write_adapters(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
