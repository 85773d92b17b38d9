"""Serving on Ray Serve against one process, in the same run: concurrent chat requests spread
over three adapters of a random llama-shaped model (hidden 768, 6 layers, f32; the word-level
tokenizer of the server's tests), answered by one in-process `Engine` (the baseline: every
request submitted at once, batched by the engine) and by `openledger.ray_serve` with 1 and 2
replicas through the `openai` client (the same requests from as many client threads), and one
process with half the requests (what each of two replicas would do on a node of its own). Prints
requests/s, completion tokens/s, the median latency and the ratios to the baseline (> 1: Ray
Serve faster), and writes target/bench-results/ray_serve.json.

Usage, with a release build and the test venv (Ray Serve and openai installed):

    OPENLEDGER_PY_PROFILE=release bash scripts/test-python.sh
    target/python-venv/bin/python bindings/python/bench/bench_serve.py [requests] [max_tokens]

On one 2-core machine no speed-up is expected: two replicas share the cores one engine already
keeps busy, and every request crosses the HTTP proxy, the front and a replica.
"""

import concurrent.futures
import json
import pathlib
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time

import numpy as np
import openai

import openledger as ol
import openledger.ray as olr
import openledger.ray_serve as ols

ROOT = pathlib.Path(__file__).resolve().parents[3]
HIDDEN, LAYERS, HEADS, FFN = 768, 6, 12, 2048
ADAPTERS = ["a0", "a1", "a2"]


def safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def folders(tmp):
    """A random model with the server tests' tokenizer, and three random rank-8 adapters."""
    rng = np.random.default_rng(0)
    model = tmp / "bench-llama"
    model.mkdir()
    cfg = json.loads((ROOT / "fixtures/peft/tiny-llama/config.json").read_text())
    vocab = cfg["vocab_size"]
    cfg.update(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               num_key_value_heads=HEADS, head_dim=HIDDEN // HEADS, intermediate_size=FFN,
               max_position_embeddings=256)
    (model / "config.json").write_text(json.dumps(cfg))
    shutil.copy(ROOT / "fixtures/peft/tiny-llama/generation_config.json", model)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(ROOT / "fixtures/server" / f, model)
    w = lambda *s: (rng.standard_normal(s) * 0.02).astype(np.float32)  # noqa: E731
    t = {"model.embed_tokens.weight": w(vocab, HIDDEN), "lm_head.weight": w(vocab, HIDDEN),
         "model.norm.weight": np.ones(HIDDEN, np.float32)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"]:
            t[p + f"self_attn.{n}.weight"] = w(HIDDEN, HIDDEN)
        t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"] = w(FFN, HIDDEN), w(FFN, HIDDEN)
        t[p + "mlp.down_proj.weight"] = w(HIDDEN, FFN)
        t[p + "input_layernorm.weight"] = t[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    safetensors(model / "model.safetensors", t)
    hub = tmp / "adapters"
    for name in ADAPTERS:
        d = hub / name
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
            "base_model_name_or_path": "bench-llama", "task_type": "CAUSAL_LM"}))
        a = {}
        for i in range(LAYERS):
            for n in ["q_proj", "v_proj"]:
                p = f"base_model.model.model.layers.{i}.self_attn.{n}."
                a[p + "lora_A.weight"], a[p + "lora_B.weight"] = w(8, HIDDEN) * 5, w(HIDDEN, 8) * 5
        safetensors(d / "adapter_model.safetensors", a)
    return model, hub


def prompts(n):
    return [(ADAPTERS[i % 3], f"w{10 + i % 50} w{20 + i % 30} w{5 + i % 7}") for i in range(n)]


def in_process(model, hub, reqs, max_tokens):
    pool = ol.AdapterPool(256 << 20)
    pool.register_hub(hub)
    with ol.Engine(model, pool, max_context=256, max_running=32) as engine:
        def once():
            t0 = time.perf_counter()
            streams = []
            for adapter, text in reqs:
                ids = engine.encode(engine.apply_chat_template([{"role": "user", "content": text}]),
                                    add_special_tokens=False)
                streams.append(engine.generate(ids, adapter, max_new_tokens=max_tokens,
                                               stop_tokens=engine.eos_token_ids))
            lat, tokens = [], 0
            for s in streams:
                tokens += len(s.collect())
                lat.append(time.perf_counter() - t0)
            return time.perf_counter() - t0, tokens, statistics.median(lat)
        once()  # adapters loaded, caches warm
        return min((once() for _ in range(3)), key=lambda r: r[0])


def on_serve(client, reqs, max_tokens):
    def one(req):
        t0 = time.perf_counter()
        r = client.chat.completions.create(model=req[0], messages=[{"role": "user", "content": req[1]}],
                                           max_tokens=max_tokens, temperature=0)
        return time.perf_counter() - t0, r.usage.completion_tokens

    def once():
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(len(reqs)) as ex:
            out = list(ex.map(one, reqs))
        return time.perf_counter() - t0, sum(t for _, t in out), statistics.median(l for l, _ in out)
    once()
    return min((once() for _ in range(3)), key=lambda r: r[0])


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 24
    max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    reqs = prompts(n)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model, hub = folders(pathlib.Path(tmp))
        results["one process"] = in_process(model, hub, reqs, max_tokens)
        # What each of two replicas does on a node of its own: half the requests, two cores.
        half = in_process(model, hub, reqs[::2], max_tokens)
        for replicas in (1, 2):
            with olr.local_cluster(num_cpus=2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                url = ols.start(model, hub, port=port, replicas=replicas, max_adapters_per_replica=3,
                                replica_cpus=1.0 if replicas == 2 else 2.0,
                                engine_options={"max_context": 256, "max_running": 32})
                client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
                results[f"Ray Serve, {replicas} replica{'s' if replicas > 1 else ''}"] = on_serve(client, reqs, max_tokens)
                ols.stop()
    base = results["one process"]
    print(f"{n} chat requests over 3 adapters, {max_tokens} tokens each (best of 3)")
    print("| setup | wall | requests/s | tokens/s | median latency | vs one process |")
    print("| --- | --- | --- | --- | --- | --- |")
    out = {}
    for name, (wall, tokens, p50) in results.items():
        print(f"| {name} | {wall:.2f} s | {n / wall:.1f} | {tokens / wall:.0f} | {p50:.2f} s | "
              f"{base[0] / wall:.2f}× |")
        out[name] = {"wall_s": wall, "tokens": tokens, "median_latency_s": p50, "speedup": base[0] / wall}
    print(f"one process, half the requests (a replica's share on its own node): {half[0]:.2f} s, "
          f"{base[0] / half[0]:.2f}× the whole")
    out["one process, half the requests"] = {"wall_s": half[0], "tokens": half[1], "median_latency_s": half[2],
                                             "speedup": base[0] / half[0]}
    dest = ROOT / "target" / "bench-results"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "ray_serve.json").write_text(json.dumps({"requests": n, "max_tokens": max_tokens, "results": out}, indent=1))


if __name__ == "__main__":
    main()
