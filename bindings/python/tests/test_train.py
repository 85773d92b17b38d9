"""openledger.Trainer on the tiny llama: the loss falls, every step reaches the progress
callback, evaluation and checkpoints are reported, the saved PEFT adapter serves the trainer's
own greedy tokens through the Engine, per-example gradients come out as numpy arrays, and bad
input raises typed errors."""

import numpy as np
import pytest

import openledger as ol

from conftest import TINY

# A tiny key→value language over the fixture's vocabulary: prompt [1, key, 7], answer [value].
DATA = [([1, 10 + k, 7], [100 + (k * 3) % 5]) for k in range(8)]


def trainer(**kw):
    args = dict(steps=30, batch_size=4, learning_rate=2e-2, seed=3)
    args.update(kw)
    return ol.Trainer(TINY, ["q_proj", "v_proj", "down_proj"], 4, 8.0, **args)


def test_loss_falls_and_every_step_reaches_the_callback():
    t = trainer(eval_every=10, checkpoint_steps=[15, 30])
    assert t.num_parameters > 0 and t.steps_taken == 0
    events = []
    summary = t.train(DATA, DATA[:4], progress=events.append)
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 31))
    assert all(e["total_steps"] == 30 and e["tokens_per_sec"] > 0 for e in steps)
    assert [e["step"] for e in events if e["kind"] == "eval"] == [10, 20, 30]
    ckpts = [e for e in events if e["kind"] == "checkpoint"]
    assert [c["step"] for c in ckpts] == [15, 30] and ckpts[0]["id"] != ckpts[1]["id"]
    assert summary["steps"] == 30 and t.steps_taken == 30
    losses = summary["losses"]
    assert losses[-1] < 0.5 * losses[0]
    assert summary["last_eval"]["step"] == 30
    ev = t.evaluate(DATA)
    assert ev["kind"] == "eval" and ev["perplexity"] == pytest.approx(np.exp(ev["loss"]))


def test_the_saved_adapter_serves_the_trainers_tokens(tmp_path):
    t = trainer()
    t.train(DATA)
    out = tmp_path / "adapter"
    t.save_adapter(out)
    assert ol.LoraAdapter.from_dir(out).r == 4
    with ol.Engine(TINY, max_context=64, block_size=4) as e:
        e.add_adapter("trained", out)
        for prompt, _ in DATA[:4]:
            mine = t.greedy(prompt, 4)
            served = e.generate(prompt, "trained", max_new_tokens=4).collect()
            assert served == mine


def test_qlora_over_an_int8_base_serves_the_unquantised_base(tmp_path):
    """Trained over the base quantised to int8, the adapter serves the int8 engine with the
    trainer's own tokens, and the f32 engine answers the training prompts as taught."""
    t = trainer(weights="int8")
    summary = t.train(DATA)
    assert summary["losses"][-1] < 0.5 * summary["losses"][0]
    out = tmp_path / "qlora"
    t.save_adapter(out)
    for weights in ["int8", "f32"]:
        with ol.Engine(TINY, max_context=64, block_size=4, weights=weights) as e:
            e.add_adapter("qlora", out)
            for prompt, answer in DATA:
                served = e.generate(prompt, "qlora", max_new_tokens=1).collect()
                if weights == "int8":
                    assert served == t.greedy(prompt, 1)
                else:
                    assert served == answer, (prompt, served, answer)
    with pytest.raises(ol.InvalidArgumentError, match="weights"):
        trainer(weights="fp4")


def test_rank_and_alpha_patterns_reach_the_saved_adapter_and_the_engine(tmp_path):
    # Keys are regexes matched against the end of each module name, as PEFT does.
    t = trainer(rank_pattern={"down_proj": 2, "layers.1.self_attn.v_proj": 8}, alpha_pattern={"v_proj": 32})
    plain = trainer()
    # down_proj (128 → 64): rank 2 instead of 4 in both layers; layer 1's v_proj (64 → 32): 8.
    assert t.num_parameters == plain.num_parameters - 2 * 2 * (128 + 64) + 4 * (64 + 32)
    t.train(DATA)
    out = tmp_path / "patterns"
    t.save_adapter(out)
    a = ol.LoraAdapter.from_dir(out)
    down = a.module("model.layers.0.mlp.down_proj")
    v1 = a.module("model.layers.1.self_attn.v_proj")
    v0 = a.module("model.layers.0.self_attn.v_proj")
    assert (down.rank, down.scale) == (2, 4.0)
    assert (v1.rank, v1.scale) == (8, 4.0)
    assert (v0.rank, v0.scale) == (4, 8.0)
    with ol.Engine(TINY, max_context=64, block_size=4) as e:
        e.add_adapter("patterns", out)
        for prompt, _ in DATA[:3]:
            assert e.generate(prompt, "patterns", max_new_tokens=4).collect() == t.greedy(prompt, 4)
    with pytest.raises(ol.InvalidArgumentError, match="rank_pattern"):
        trainer(rank_pattern={"q_proj": 0})
    with pytest.raises(ol.InvalidArgumentError, match="rank_pattern"):
        trainer(rank_pattern={"q_proj": 2.5})
    with pytest.raises(ol.InvalidArgumentError, match="alpha_pattern"):
        trainer(alpha_pattern={"q_proj": float("nan")})


def test_example_gradients_are_float32_arrays_and_deterministic():
    a, b = trainer(), trainer()
    ga = a.example_gradient(DATA[0])
    gb = b.example_gradient(DATA[0])
    assert ga.dtype == np.float32 and ga.shape == (a.num_parameters,)
    assert np.array_equal(ga, gb)
    assert np.abs(a.example_gradient([1, 20, 21, 22])).sum() > 0


def test_bad_input_raises_typed_errors():
    with pytest.raises(FileNotFoundError):
        ol.Trainer(TINY / "missing", ["q_proj"], 4, 8.0)
    with pytest.raises(ol.InvalidArgumentError, match="schedule"):
        trainer(schedule="sawtooth")
    with pytest.raises(ol.InvalidArgumentError):
        ol.Trainer(TINY, ["no_such_proj"], 4, 8.0)
    with pytest.raises(ol.InvalidArgumentError):
        ol.Trainer(TINY, ["q_proj"], 0, 8.0)
    t = trainer()
    with pytest.raises(ol.InvalidArgumentError):
        t.train([])
    with pytest.raises(ol.InvalidArgumentError):
        t.train([[1, 2, 10_000]])  # token outside the 320-word vocabulary
    with pytest.raises(ol.InvalidArgumentError, match=r"train\[0\]"):
        t.train([None])
    with pytest.raises(ol.InvalidArgumentError):
        t.train([([1, 2, 3], [4], [5])])

    def boom(event):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        t.train(DATA, progress=boom)
