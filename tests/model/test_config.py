"""Model configs: presets against the spec and the reference, config.json round trips, derived values."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.config import FULL, PRESETS, SLIDING, ConfigError, preset, text_from_hf, text_to_hf

# Spec §8.2 "text total" (learned parameters; tied output once; per-layer scalars apart).
SPEC_TEXT_TOTALS = {
    "gemma4-e2b": 4_628_569_344,
    "gemma4-e4b": 7_463_013_376,
    "gemma4-31b": 30_697_345_280,
    "gemma4-26b-a4b": 25_233_141_760,
}


@pytest.mark.parametrize("name", list(SPEC_TEXT_TOTALS))
def test_full_size_counts_equal_spec(name):
    counts = PRESETS[name].text.num_parameters()
    assert counts["total"] == SPEC_TEXT_TOTALS[name]
    assert counts["layer_scalars"] == PRESETS[name].text.n_layers


@pytest.mark.parametrize("name", list(PRESETS))
def test_counts_equal_the_reference_model_on_meta(name, reference):
    config = reference.Gemma4TextConfig(**text_to_hf(PRESETS[name].text))
    with torch.device("meta"):
        theirs = reference.Gemma4ForCausalLM(config)
    learned = sum(p.numel() for p in theirs.parameters())  # the tied lm_head is the same tensor
    assert learned == PRESETS[name].text.num_parameters()["total"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_config_json_round_trip_through_the_reference(name, reference):
    ours = PRESETS[name].text
    assert text_from_hf(text_to_hf(ours)) == ours
    # What transformers itself writes back (with its own defaults and extra keys) parses to the same config.
    written = reference.Gemma4TextConfig(**text_to_hf(ours)).to_dict()
    assert text_from_hf(written) == ours
    assert text_from_hf({"text_config": written, "model_type": "gemma4"}) == ours


def test_layer_pattern_and_kv_sharing_map():
    e2b, e4b = PRESETS["gemma4-e2b"].text, PRESETS["gemma4-e4b"].text
    assert [i for i in range(35) if e2b.is_full(i)] == [4, 9, 14, 19, 24, 29, 34]
    assert [i for i in range(42) if e4b.is_full(i)] == [5, 11, 17, 23, 29, 35, 41]
    assert [e2b.kv_source(i) for i in range(15)] == list(range(15))
    assert {e2b.kv_source(i) for i in range(15, 35) if not e2b.is_full(i)} == {13}
    assert {e2b.kv_source(i) for i in range(15, 35) if e2b.is_full(i)} == {14}
    assert {e4b.kv_source(i) for i in range(24, 42) if not e4b.is_full(i)} == {22}
    assert {e4b.kv_source(i) for i in range(24, 42) if e4b.is_full(i)} == {23}
    assert [e2b.layer_d_ff(i) for i in (0, 14, 15, 34)] == [6144, 6144, 12288, 12288]
    big = PRESETS["gemma4-31b"].text
    assert big.layer_kv_heads(5) == 4 and big.layer_kv_heads(4) == 16 and not big.layer_has_value_proj(5)
    assert PRESETS["gemma4-e4b"].text.layer_kv_heads(5) == 2  # no K=V: full layers keep the sliding KV heads


def test_kv_cache_bytes_per_token():
    # E2B: 12 sliding producers × (K+V of 1×256) + 3 full × (K+V of 1×512), 2 bytes each.
    assert PRESETS["gemma4-e2b"].text.kv_cache_bytes_per_token(2) == 12 * 2 * 256 * 2 + 3 * 2 * 512 * 2
    # 31B: 50 sliding × K+V of 16×256, 10 full × K only (K=V) of 4×512.
    assert PRESETS["gemma4-31b"].text.kv_cache_bytes_per_token(2) == 50 * 2 * 16 * 256 * 2 + 10 * 4 * 512 * 2


def test_rope_factor_and_explicit_layer_types_are_read():
    hf = text_to_hf(PRESETS["tiny-31b"].text)
    hf["rope_parameters"][FULL]["factor"] = 8.0
    hf["layer_types"] = [SLIDING, FULL, SLIDING, SLIDING, SLIDING, FULL]
    ours = text_from_hf(hf)
    assert ours.rope.full_factor == 8.0 and ours.layer_types[1] == FULL
    del hf["layer_types"]
    assert text_from_hf(hf).layer_types == (SLIDING,) * 5 + (FULL,)  # the reference's period-6 fallback


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer_types": (SLIDING,) * 6}, "last layer must be a full"),
        ({"layer_types": (SLIDING, "local") + (FULL,) * 4}, "unknown layer types"),
        ({"n_kv_heads": 3}, "not a multiple"),
        ({"n_kv_shared_layers": 6}, "n_kv_shared_layers"),
        ({"n_kv_shared_layers": 4}, "both sliding and full"),
        ({"layer_types": (SLIDING,) * 5}, "5 entries for 6 layers"),
        ({"bidirectional": "always"}, "bidirectional"),
    ],
)
def test_bad_configs(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(PRESETS["tiny-e2b"].text, **change)


def test_bad_config_json():
    with pytest.raises(ConfigError, match="model_type 'llama'"):
        text_from_hf({"model_type": "llama"})
    with pytest.raises(ConfigError, match="hidden_size"):
        text_from_hf({"model_type": "gemma4_text", "num_hidden_layers": 2})
    bad = text_to_hf(PRESETS["tiny-e2b"].text)
    bad["rope_parameters"][SLIDING]["rope_type"] = "yarn"
    with pytest.raises(ConfigError, match="rope_type 'yarn'"):
        text_from_hf(bad)
    with pytest.raises(KeyError, match="unknown preset"):
        preset("gemma4-1b")
    assert (
        preset("tiny-e2b", text=dataclasses.replace(PRESETS["tiny-e2b"].text, sliding_window=4)).text.sliding_window
        == 4
    )


# Spec §8.2 "grand total" (text, towers and embedders).
SPEC_GRAND_TOTALS = {
    "gemma4-e2b": 5_104_297_504,
    "gemma4-e4b": 7_941_100_832,
    "gemma4-31b": 31_273_086_512,
    "gemma4-26b-a4b": 25_805_933_872,
}


@pytest.mark.parametrize("name", list(SPEC_GRAND_TOTALS))
def test_whole_model_counts_equal_spec(name):
    assert PRESETS[name].num_parameters()["total"] == SPEC_GRAND_TOTALS[name]


@pytest.mark.parametrize("name", list(PRESETS))
def test_model_config_json_round_trip_through_the_reference(name, reference):
    from model.config import model_from_hf, model_to_hf

    ours = PRESETS[name]
    assert model_from_hf(model_to_hf(ours)) == ours
    written = reference.Gemma4Config(**model_to_hf(ours)).to_dict()
    assert model_from_hf(written) == ours


def test_tower_config_errors():
    from model.config import AudioConfig, VisionConfig, audio_from_hf, vision_from_hf

    with pytest.raises(ConfigError, match="head_dim=18 must be a multiple of 4"):
        VisionConfig(head_dim=18)
    with pytest.raises(ConfigError, match="not a multiple of n_heads"):
        AudioConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="rope_type 'default'"):
        vision_from_hf({"rope_parameters": {"rope_type": "default"}})
    with pytest.raises(ConfigError, match="hidden_act 'gelu'"):
        audio_from_hf({"hidden_act": "gelu"})
