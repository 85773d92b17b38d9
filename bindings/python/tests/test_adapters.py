"""openledger.LoraAdapter / LoraModule / BaseModel against the PEFT tiny-llama fixtures."""

import json
import math

import numpy as np
import pytest

import openledger as ol
from conftest import from_bf16_bits, read_safetensors, to_bf16_bits, write_safetensors

Q0 = "model.layers.0.self_attn.q_proj"


def test_qv_r4_reports_rank_alpha_targets_dtype_and_resident_bytes(adapters_root):
    a = ol.LoraAdapter.from_dir(adapters_root / "qv-r4")
    assert (a.r, a.lora_alpha, a.use_rslora) == (4, 8.0, False)
    assert sorted(a.target_modules) == ["q_proj", "v_proj"]
    assert a.dtype == "f32"
    assert len(a) == 4
    assert a.module_names() == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    # q: A [4, 64] + B [64, 4]; v: A [4, 64] + B [32, 4]; two layers; float32.
    assert a.resident_bytes == 2 * ((4 * 64 + 64 * 4) + (4 * 64 + 32 * 4)) * 4
    assert dict(a.scales()) == {name: 2.0 for name in a.module_names()}


def test_scales_follow_rslora_and_rank_alpha_patterns(adapters_root):
    rs = ol.LoraAdapter.from_dir(adapters_root / "all-r8-rslora")
    assert len(rs) == 2 * 7
    for _, s in rs.scales():
        assert s == pytest.approx(16 / math.sqrt(8), rel=1e-6)
    pat = ol.LoraAdapter.from_dir(adapters_root / "attn-patterns")
    scales = dict(pat.scales())
    assert scales["model.layers.0.self_attn.q_proj"] == 1.0  # 8 / 8
    assert scales["model.layers.0.self_attn.k_proj"] == 4.0  # alpha_pattern 32 / 8
    assert scales["model.layers.1.self_attn.o_proj"] == 4.0  # 8 / rank_pattern 2
    assert pat.module("model.layers.1.self_attn.o_proj").rank == 2


def test_factors_equal_the_safetensors_file_and_are_read_only_views(adapters_root):
    a = ol.LoraAdapter.from_dir(adapters_root / "qv-r4")
    ref = read_safetensors(adapters_root / "qv-r4" / "adapter_model.safetensors")
    for name, m in a.modules().items():
        key = f"base_model.model.{name}"
        assert m.a.dtype == np.float32 and m.a.shape == (m.rank, m.in_features)
        assert m.b.shape == (m.out_features, m.rank)
        np.testing.assert_array_equal(m.a, ref[f"{key}.lora_A.weight"])
        np.testing.assert_array_equal(m.b, ref[f"{key}.lora_B.weight"])
    m = a.module(Q0)
    arr = m.a
    assert not arr.flags.writeable
    assert not arr.flags.owndata  # a view of the adapter's memory, no copy
    with pytest.raises(ValueError):
        arr[0, 0] = 1.0


def test_factor_view_outlives_the_adapter_object(adapters_root):
    arr = ol.LoraAdapter.from_dir(adapters_root / "qv-r4").module(Q0).b
    ref = read_safetensors(adapters_root / "qv-r4" / "adapter_model.safetensors")
    np.testing.assert_array_equal(arr, ref[f"base_model.model.{Q0}.lora_B.weight"])


def test_from_bytes_equals_from_dir(adapters_root):
    d = adapters_root / "attn-patterns"
    a = ol.LoraAdapter.from_bytes(
        (d / "adapter_config.json").read_bytes(), (d / "adapter_model.safetensors").read_bytes()
    )
    b = ol.LoraAdapter.from_dir(d)
    assert a.scales() == b.scales() and a.resident_bytes == b.resident_bytes
    np.testing.assert_array_equal(a.module(Q0).a, b.module(Q0).a)


def test_validate_against_the_base_checks_every_module(adapters_root, tiny_llama):
    base = ol.BaseModel.from_dir(tiny_llama)
    assert len(base.linear_modules()) >= 14
    for name, n in [("qv-r4", 4), ("all-r8-rslora", 14), ("attn-patterns", 8)]:
        report = base.validate(ol.LoraAdapter.from_dir(adapters_root / name))
        assert report == {"modules_checked": n, "targeted_without_weights": []}


def test_wrong_shape_against_the_base_is_a_base_mismatch_naming_the_module(adapters_root, tiny_llama):
    cfg = json.loads((adapters_root / "qv-r4" / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj"]
    key = f"base_model.model.{Q0}"
    rng = np.random.default_rng(0)
    weights = write_safetensors(
        {f"{key}.lora_A.weight": rng.normal(size=(4, 32)), f"{key}.lora_B.weight": rng.normal(size=(64, 4))}
    )
    adapter = ol.LoraAdapter.from_bytes(json.dumps(cfg).encode(), weights)
    with pytest.raises(ol.BaseMismatchError, match="q_proj"):
        ol.BaseModel.from_dir(tiny_llama).validate(adapter)


def test_missing_folder_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        ol.LoraAdapter.from_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        ol.BaseModel.from_dir(tmp_path / "nope")


def test_truncated_weights_are_an_adapter_format_error(adapters_root):
    d = adapters_root / "qv-r4"
    raw = (d / "adapter_model.safetensors").read_bytes()
    with pytest.raises(ol.AdapterFormatError) as e:
        ol.LoraAdapter.from_bytes((d / "adapter_config.json").read_bytes(), raw[: len(raw) // 2])
    assert isinstance(e.value, ol.OpenLedgerError)


def test_nan_weights_are_refused_unless_allowed(adapters_root):
    cfg = (adapters_root / "qv-r4" / "adapter_config.json").read_bytes()
    key = f"base_model.model.{Q0}"
    a = np.zeros((4, 64))
    a[1, 2] = np.nan
    weights = write_safetensors({f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": np.ones((64, 4))})
    with pytest.raises(ol.AdapterFormatError, match="lora_A"):
        ol.LoraAdapter.from_bytes(cfg, weights)
    ok = ol.LoraAdapter.from_bytes(cfg, weights, allow_non_finite=True)
    assert np.isnan(ok.module(Q0).a[1, 2])


def test_unknown_module_is_key_error_and_none_is_type_error(adapters_root):
    a = ol.LoraAdapter.from_dir(adapters_root / "qv-r4")
    with pytest.raises(KeyError):
        a.module("model.layers.9.self_attn.q_proj")
    with pytest.raises(TypeError):
        ol.LoraAdapter.from_dir(None)
    with pytest.raises(TypeError):
        ol.LoraAdapter.from_bytes(None, b"")


def test_bf16_adapter_stays_bf16_in_memory_and_converts_to_float32_arrays(adapters_root):
    cfg = (adapters_root / "qv-r4" / "adapter_config.json").read_bytes()
    key = f"base_model.model.{Q0}"
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(4, 64)), rng.normal(size=(64, 4))
    adapter = ol.LoraAdapter.from_bytes(
        cfg, write_safetensors({f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}, dtype="BF16")
    )
    assert adapter.dtype == "bf16" and adapter.module(Q0).dtype == "bf16"
    assert adapter.resident_bytes == (4 * 64 + 64 * 4) * 2
    m = adapter.module(Q0)
    assert m.a.dtype == np.float32 and not m.a.flags.writeable
    np.testing.assert_array_equal(m.a, from_bf16_bits(to_bf16_bits(a)))
    np.testing.assert_array_equal(m.b, from_bf16_bits(to_bf16_bits(b)))
