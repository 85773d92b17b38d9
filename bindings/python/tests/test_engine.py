"""openledger.Engine serving the tiny llama: greedy continuations equal the references of
transformers + PEFT (fixtures/peft/tiny-llama/reference.json, which the Rust engine tests also
reproduce), mixed adapters in one batch, streaming as an iterator and an async iterator,
cancellation, per-request statistics and typed errors."""

import asyncio
import json
import threading

import pytest

import openledger as ol

from conftest import ADAPTERS, TINY

NAMES = ["qv-r4", "all-r8-rslora", "attn-patterns"]


@pytest.fixture(scope="module")
def reference():
    return json.loads((TINY / "reference.json").read_text())


@pytest.fixture
def engine():
    e = ol.Engine(TINY, max_running=16, max_context=64, block_size=4)
    for name in NAMES:
        e.add_adapter(name, ADAPTERS / name)
    yield e
    e.close()


def test_greedy_continuations_of_base_and_adapters_equal_peft(engine, reference):
    for i, prompt in enumerate(reference["sequences"]):
        for name in ["base"] + NAMES:
            adapter = None if name == "base" else name
            got = engine.generate(prompt, adapter, max_new_tokens=8).collect()
            assert got == reference["greedy"][f"{name}.{i}"], (name, i)


def test_mixed_adapters_stream_together_in_one_batch(engine, reference):
    # Every stream is started before any is read, so the engine batches them together.
    streams = {}
    for i, prompt in enumerate(reference["sequences"]):
        for name in ["base"] + NAMES:
            streams[f"{name}.{i}"] = engine.generate(prompt, None if name == "base" else name, max_new_tokens=8)
    for key, s in streams.items():
        tokens = list(s)
        assert tokens == reference["greedy"][key], key
        assert s.tokens == tokens
        assert s.finish_reason == "max_new_tokens"
        st = s.stats
        assert st.tokens_generated == 8
        assert st.time_to_first_token is not None and st.time_to_first_token > 0
        assert len(st.inter_token_latencies) == 7
        assert st.as_dict()["tokens_generated"] == 8
    assert sorted(engine.adapters()) == sorted(NAMES)
    # The engine's figures: every prompt token ran once, every output token but the last.
    stats = engine.stats()
    assert stats["prefill_tokens"] == sum(len(p) for p in reference["sequences"]) * (1 + len(NAMES))
    assert stats["decode_tokens"] == len(streams) * 7
    assert stats["running"] + stats["waiting"] + stats["swapped"] == 0
    assert stats["kv_blocks_free"] == stats["kv_blocks"] > 0
    assert stats["kv_usage"] == 0.0 and stats["kv_bytes"] > 0 and stats["steps"] > 0
    assert stats["metrics"] == []  # a model on the CPU reports no device figures


def test_adapters_from_a_pool_are_attached_on_first_use(reference):
    pool = ol.AdapterPool(64 << 20)
    assert pool.register_hub(ADAPTERS) == 3
    with ol.Engine(TINY, pool, max_context=64, block_size=4) as e:
        assert e.adapters() == []
        prompt = reference["sequences"][1]
        got = e.generate(prompt, "all-r8-rslora", max_new_tokens=8).collect()
        assert got == reference["greedy"]["all-r8-rslora.1"]
        assert e.adapters() == ["all-r8-rslora"]
        # An adapter taken from the pool can also be attached under a name of its own.
        e.add_adapter("mine", pool.get("qv-r4"))
        got = e.generate(prompt, "mine", max_new_tokens=8).collect()
        assert got == reference["greedy"]["qv-r4.1"]
    assert pool.stats().pinned_count == 0


def test_async_iteration_yields_the_same_tokens(engine, reference):
    async def run():
        streams = [engine.generate(p, "qv-r4", max_new_tokens=8) for p in reference["sequences"]]

        async def read(s):
            return [t async for t in s]

        return await asyncio.gather(*(read(s) for s in streams))

    got = asyncio.run(run())
    assert got == [reference["greedy"][f"qv-r4.{i}"] for i in range(3)]


def test_cancel_ends_a_stream_early(engine, reference):
    s = engine.generate(reference["sequences"][0], max_new_tokens=40)
    first = next(s)
    s.cancel()
    rest = list(s)
    assert s.finish_reason == "cancelled"
    assert len(rest) < 39
    assert s.tokens == [first] + rest


def test_cancel_from_another_thread_stops_a_blocked_reader(engine, reference):
    # The tiny model can generate its 60 tokens before a timer fires: the cancel is sent
    # sooner on each try, and one of them must stop the stream early.
    for delay in [0.01, 0.003, 0.001, 0.0003, 0.0] * 4:
        s = engine.generate(reference["sequences"][2], max_new_tokens=60)
        threading.Timer(delay, s.cancel).start()
        tokens = s.collect()
        if s.finish_reason == "cancelled":
            assert len(tokens) < 60
            return
        assert len(tokens) == 60 or s.finish_reason == "max_context", s.finish_reason
    pytest.fail("no cancel arrived before the stream ended")


def test_bad_input_raises_typed_errors(engine, reference):
    prompt = reference["sequences"][0]
    with pytest.raises(ol.UnknownIdError, match="missing"):
        engine.generate(prompt, "missing")
    with pytest.raises(ol.InvalidIdError):
        engine.generate(prompt, "../escape")
    with pytest.raises(ol.InvalidArgumentError, match="empty"):
        engine.generate([])
    with pytest.raises(ol.InvalidArgumentError, match="vocabulary"):
        engine.generate([1, engine.vocab_size])
    with pytest.raises(ol.InvalidArgumentError, match="context"):
        engine.generate([1] * engine.max_context)
    with pytest.raises(ol.InvalidArgumentError, match="prompt"):
        engine.generate("hello")
    with pytest.raises(ol.InvalidArgumentError, match="item 1"):
        engine.generate([1, -5])
    with pytest.raises(ol.InvalidArgumentError, match="adapter"):
        engine.generate(prompt, 7)
    with pytest.raises(ol.InvalidArgumentError, match="temperature"):
        engine.generate(prompt, temperature=-1.0)
    with pytest.raises(ol.InvalidArgumentError, match="adapter"):
        engine.add_adapter("x", 3.5)
    # The engine is unharmed.
    assert engine.generate(prompt, max_new_tokens=8).collect() == reference["greedy"]["base.0"]


def test_an_adapter_for_another_base_fails_only_its_request(reference):
    pool = ol.AdapterPool(64 << 20)
    pool.register_dir("qv-r4", ADAPTERS / "qv-r4")
    # A well-formed adapter whose q_proj is 96 wide: not the tiny llama's 64.
    import numpy as np

    from conftest import write_safetensors

    cfg = json.loads((ADAPTERS / "qv-r4" / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj"]
    rng = np.random.default_rng(0)
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {
        f"{key}.lora_A.weight": rng.standard_normal((4, 96)).astype(np.float32),
        f"{key}.lora_B.weight": rng.standard_normal((96, 4)).astype(np.float32),
    }
    pool.register_bytes("other-base", json.dumps(cfg).encode(), write_safetensors(tensors))
    with ol.Engine(TINY, pool, max_context=64, block_size=4) as e:
        good = e.generate(reference["sequences"][1], "qv-r4", max_new_tokens=8)
        bad = e.generate(reference["sequences"][1], "other-base", max_new_tokens=8)
        with pytest.raises(ol.BaseMismatchError, match="other-base"):
            list(bad)
        assert bad.stats is not None and bad.stats.tokens_generated == 0
        assert good.collect() == reference["greedy"]["qv-r4.1"]
        with pytest.raises(ol.BaseMismatchError):
            e.add_adapter("other", pool.get("other-base"))


def test_a_closed_engine_refuses_calls_and_ends_open_streams(reference):
    e = ol.Engine(TINY, max_context=64, block_size=4)
    s = e.generate(reference["sequences"][0], max_new_tokens=50)
    e.close()
    assert e.closed
    with pytest.raises(ol.EngineClosedError):
        list(s)  # whatever was generated before the close, the stream ends with the error
    with pytest.raises(ol.EngineClosedError):
        e.generate(reference["sequences"][0])
    with pytest.raises(ol.EngineClosedError):
        e.adapters()
    with pytest.raises(ol.EngineClosedError):
        e.stats()
    e.close()  # idempotent


def test_model_loading_reports_progress_and_bad_folders_raise(tmp_path):
    calls = []
    e = ol.Engine(TINY, progress=calls.append)
    e.close()
    # One weight file read and two layers built.
    assert calls == [1, 1, 1]
    with pytest.raises(FileNotFoundError):
        ol.Engine(tmp_path / "absent")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ol.ModelFormatError):
        ol.Engine(tmp_path)
    for cls in (ol.EngineClosedError, ol.GenerationError, ol.ModelFormatError):
        assert issubclass(cls, ol.OpenLedgerError)


def word_tokenizer(vocab_size):
    """A word-level tokenizer.json for the tiny llama: id i is the word "w<i>", 0 is <unk>, 1
    the <s> (BOS) a post-processor puts first."""
    vocab = {"<unk>": 0, "<s>": 1}
    vocab.update({f"w{i}": i for i in range(2, vocab_size)})
    bos = {"id": 1, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False,
           "normalized": False, "special": True}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [bos],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """The tiny llama's folder with a tokenizer.json beside its weights."""
    d = tmp_path_factory.mktemp("tiny-llama-text")
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        (d / f).write_bytes((TINY / f).read_bytes())
    vocab = json.loads((TINY / "config.json").read_text())["vocab_size"]
    (d / "tokenizer.json").write_text(json.dumps(word_tokenizer(vocab)))
    return d


def test_text_prompts_encode_to_the_reference_ids_and_streams_give_their_text(text_model, reference):
    with ol.Engine(text_model, max_context=64, block_size=4) as e:
        assert e.has_tokenizer
        ids = reference["sequences"][0]
        assert ids[0] == 1  # the references start with BOS
        text = " ".join(f"w{t}" for t in ids[1:])
        assert e.encode(text) == ids
        assert e.encode(text, add_special_tokens=False) == ids[1:]
        assert e.decode(ids) == text
        assert e.decode(ids, skip_special_tokens=False) == "<s> " + text
        e.add_adapter("qv-r4", ADAPTERS / "qv-r4")
        s = e.generate(text, "qv-r4", max_new_tokens=8)
        pieces = []
        for _ in s:
            pieces.append(s.text)
        assert s.tokens == reference["greedy"]["qv-r4.0"]
        assert s.text == " ".join(f"w{t}" for t in s.tokens)
        # the text grows token by token
        assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(pieces, pieces[1:]))
        assert s.finish_reason == "max_new_tokens" and s.stop_string is None


def test_stop_strings_end_a_request_once_its_text_contains_one(text_model, reference):
    with ol.Engine(text_model, max_context=64, block_size=4) as e:
        prompt = reference["sequences"][1]
        full = reference["greedy"]["base.1"]
        stop = f"w{full[3]}"
        # the engine stops at the first output whose text contains the string
        k = next(n for n in range(1, len(full) + 1) if stop in e.decode(full[:n]))
        s = e.generate(prompt, max_new_tokens=8, stop_strings=[stop, "never-generated"])
        assert s.collect() == full[:k]
        assert s.finish_reason == "stop_string" and s.stop_string == stop
        # the text stops before the stop string
        assert s.text == e.decode(full[:k])[: e.decode(full[:k]).index(stop)]
        assert stop not in s.text


def test_new_text_hands_the_answer_out_in_pieces_that_are_never_taken_back(text_model, reference):
    with ol.Engine(text_model, max_context=64, block_size=4) as e:
        prompt = reference["sequences"][1]
        full = reference["greedy"]["base.1"]
        stop = f"w{full[3]} w{full[4]}"  # spans two tokens
        s = e.generate(prompt, max_new_tokens=8, stop_strings=[stop])
        shown = [s.new_text() for _ in s]
        shown.append(s.new_text())  # the rest, once the stream has ended
        assert s.finish_reason == "stop_string"
        assert "".join(shown) == s.text and stop not in s.text
        assert any(shown[:-1]), "pieces arrive while the request runs"
        assert s.new_text() == ""
        # without stop strings nothing is held back: each token's word comes with it
        s = e.generate(prompt, max_new_tokens=8)
        pieces = [s.new_text() for _ in s]
        assert all(pieces)
        assert "".join(pieces) + s.new_text() == " ".join(f"w{t}" for t in s.tokens)


def test_text_without_a_tokenizer_and_bad_text_input_raise_typed_errors(text_model, reference):
    with ol.Engine(TINY, max_context=64, block_size=4) as e:
        assert not e.has_tokenizer
        with pytest.raises(ol.ModelFormatError, match="tokenizer.json"):
            e.encode("w17")
        with pytest.raises(ol.ModelFormatError, match="tokenizer.json"):
            e.decode([1, 2])
        with pytest.raises(ol.InvalidArgumentError, match="stop_strings"):
            e.generate(reference["sequences"][0], stop_strings=["w5"])
        s = e.generate(reference["sequences"][0], max_new_tokens=2)
        s.collect()
        with pytest.raises(ol.ModelFormatError, match="tokenizer.json"):
            s.text
        with pytest.raises(ol.ModelFormatError, match="tokenizer.json"):
            s.new_text()
    with ol.Engine(text_model, max_context=64, block_size=4) as e:
        with pytest.raises(ol.InvalidArgumentError, match="ids"):
            e.decode([1, 10**6])
        with pytest.raises(ol.InvalidArgumentError, match="stop_strings"):
            e.generate("w17", stop_strings=[""])
        with pytest.raises(ol.InvalidArgumentError, match="context"):
            e.generate(" ".join(["w5"] * 64))
        # still serving
        assert len(e.generate("w17 w42", max_new_tokens=3).collect()) == 3


def test_a_broken_tokenizer_file_is_a_model_format_error(tmp_path):
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).write_bytes((TINY / f).read_bytes())
    (tmp_path / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(ol.ModelFormatError, match="tokenizer.json"):
        ol.Engine(tmp_path)


def test_ensembles_named_per_request_equal_peft_cat_combinations(reference):
    """An ensemble of pooled adapters, spelled "a*0.7+b*0.4" or given as (id, weight) pairs,
    gives the greedy tokens of PEFT's add_weighted_adapter(..., combination_type="cat") with
    those weights (fixtures/peft/tiny-llama/combined), beside single-adapter requests."""
    combined = json.loads((TINY / "combined" / "reference.json").read_text())
    pool = ol.AdapterPool(64 << 20)
    assert pool.register_hub(ADAPTERS) == 3
    with ol.Engine(TINY, pool, max_running=16, max_context=64, block_size=4) as e:
        streams = {}
        for name, spec in combined["combinations"].items():
            if spec["combination_type"] != "cat":
                continue
            pairs = list(zip(spec["adapters"], spec["weights"]))
            spelled = "+".join(f"{a}*{w}" for a, w in pairs)
            for i, prompt in enumerate(reference["sequences"]):
                streams[(name, i, "spelled")] = e.generate(prompt, spelled, max_new_tokens=8)
                streams[(name, i, "pairs")] = e.generate(prompt, pairs, max_new_tokens=8)
                streams[("qv-r4", i, "single")] = e.generate(prompt, "qv-r4", max_new_tokens=8)
        assert len(streams) == 2 * 3 * 2 + 3
        for (name, i, how), s in streams.items():
            want = combined["greedy"].get(f"{name}.{i}") or reference["greedy"][f"{name}.{i}"]
            assert s.collect() == want, (name, i, how)
        with pytest.raises(ol.UnknownIdError, match="nope"):
            e.generate(reference["sequences"][0], "qv-r4+nope")
        for bad in ["qv-r4+qv-r4", "qv-r4*0", [("qv-r4", float("nan"))], [("../x", 1.0)]]:
            with pytest.raises(ol.InvalidIdError):
                e.generate(reference["sequences"][0], bad)
        with pytest.raises(ol.InvalidArgumentError, match="adapter"):
            e.generate(reference["sequences"][0], [("qv-r4", "heavy")])
    assert pool.stats().pinned_count == 0


def test_chat_templates_render_as_transformers_and_bad_conversations_are_named(text_model, tmp_path):
    with ol.Engine(text_model, max_context=64) as e:
        assert not e.has_chat_template and e.eos_token_ids == [2]
        with pytest.raises(ol.ModelFormatError, match="no chat template"):
            e.apply_chat_template([{"role": "user", "content": "hi"}])
    d = tmp_path / "chat"
    d.mkdir()
    for f in text_model.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    (d / "chat_template.jinja").write_text(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    (d / "generation_config.json").write_text('{"eos_token_id": [2, 3]}')
    with ol.Engine(d, max_context=64) as e:
        assert e.has_chat_template and e.eos_token_ids == [2, 3]
        msgs = [{"role": "system", "content": " be brief "}, {"role": "user", "content": "w1", "name": None}]
        assert e.apply_chat_template(msgs) == "<|system|>be brief\n<|user|>w1\n<|assistant|>"
        assert e.apply_chat_template(msgs, add_generation_prompt=False) == "<|system|>be brief\n<|user|>w1\n"
        with pytest.raises(ol.InvalidArgumentError, match="message 1 has no content"):
            e.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user"}])
        with pytest.raises(ol.InvalidArgumentError, match="message 0: content must be a str"):
            e.apply_chat_template([{"role": "user", "content": 3}])
        with pytest.raises(ol.InvalidArgumentError, match="messages: expected a list of dicts"):
            e.apply_chat_template("hi")
    (d / "chat_template.jinja").write_text("{{ raise_exception('only users may speak') }}")
    with ol.Engine(d, max_context=64) as e:
        with pytest.raises(ol.InvalidArgumentError, match="only users may speak"):
            e.apply_chat_template([{"role": "user", "content": "a"}])
    (d / "chat_template.jinja").write_text("{% for %}")
    with pytest.raises(ol.ModelFormatError, match="does not compile"):
        ol.Engine(d, max_context=64)


@pytest.mark.parametrize("weights", ["stored", "int8"])
def test_int8_and_stored_weights_serve_peft_greedy_tokens(reference, weights):
    """The base held as stored (f32 here) or quantised to int8 at load: the fixture's greedy
    continuations are PEFT's, base and adapters (the Rust tests bound the logit gaps, and allow
    a quantised model to part from f32 only where f32's top two logits nearly tie)."""
    with ol.Engine(TINY, max_context=64, block_size=4, weights=weights) as e:
        for name in NAMES:
            e.add_adapter(name, ADAPTERS / name)
        for key, want in reference["greedy"].items():
            name, i = key.rsplit(".", 1)
            prompt = reference["sequences"][int(i)]
            s = e.generate(prompt, None if name == "base" else name, max_new_tokens=len(want))
            assert s.collect() == want, key


def test_an_unknown_weight_format_is_named():
    with pytest.raises(ol.InvalidArgumentError, match="weights"):
        ol.Engine(TINY, weights="int4")
    with pytest.raises(ol.InvalidArgumentError, match="groups of 48"):
        ol.Engine(TINY, weights="int8-g48")


def test_the_device_is_chosen_by_name_and_a_missing_one_is_named(reference):
    with ol.Engine(TINY, device="cpu", max_context=64, block_size=4) as e:
        assert e.device == "cpu"
    with pytest.raises(ol.InvalidArgumentError, match="device"):
        ol.Engine(TINY, device="tpu")
    with pytest.raises(ol.InvalidArgumentError, match="device"):
        ol.Engine(TINY, device="cuda:x")
    with pytest.raises(ol.InvalidArgumentError, match="device_adapter_mib"):
        ol.Engine(TINY, device="cuda", device_adapter_mib=2**60)
    with pytest.raises(OverflowError):
        ol.Engine(TINY, device="cuda", device_graph_max_batch=-1)
    # Int8 weights are the CPU's alone.
    with pytest.raises(ol.UnsupportedError, match="int8 weights"):
        ol.Engine(TINY, device="cuda", weights="int8")
    # A CUDA device serves where the build, the driver and a GPU are there; anywhere else the
    # error names the device and what is missing.
    try:
        e = ol.Engine(TINY, device="cuda", weights="stored", max_context=64, block_size=4)
    except ol.UnsupportedError as err:
        text = str(err)
        assert text.startswith("device cuda:0: "), text
        assert any(
            m in text for m in ("`cuda` feature", "cannot be loaded", "cannot be opened")
        ), text
    else:
        with e:
            assert e.device == "cuda:0"
            prompt = reference["sequences"][0]
            want = reference["greedy"]["base.0"]
            assert e.generate(prompt, max_new_tokens=len(want)).collect() == want
