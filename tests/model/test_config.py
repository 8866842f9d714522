"""Model configs: presets against the spec and the reference, derived values, validation (the config.json
translation is tested in test_checkpoint.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.checkpoint import text_to_hf
from model.config import (
    FULL,
    PRESETS,
    SLIDING,
    AudioConfig,
    ConfigError,
    Limit,
    RopeConfig,
    TokenIds,
    VisionConfig,
    preset,
)

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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer_types": (SLIDING,) * 6}, "last layer must be a full"),
        ({"layer_types": (SLIDING, "local") + (FULL,) * 4}, "unknown layer types"),
        ({"n_kv_heads": 3}, "not a multiple"),
        ({"n_kv_shared_layers": 6}, "n_kv_shared_layers"),
        ({"n_kv_shared_layers": 4}, "both sliding and full"),
        ({"layer_types": (SLIDING,) * 5}, "5 entries for 6 layers"),
        ({"layer_types": [SLIDING] * 5 + [FULL]}, "layer_types is .*; expected a tuple"),
        ({"bidirectional": "always"}, "bidirectional"),
        ({"d_model": 64.0}, "d_model is 64.0; expected an integer"),
        ({"d_model": True}, "d_model is True; expected an integer"),
        ({"n_layers": 1025}, "n_layers is 1025; at most 1024"),
        ({"vocab_size": 0}, "vocab_size is 0; at least 1"),
        ({"n_global_kv_heads": -1}, "n_global_kv_heads is -1; at least 1"),
        ({"rms_eps": 0.0}, "rms_eps is 0.0; must be more than 0"),
        ({"rms_eps": float("nan")}, "rms_eps is nan; expected a finite number"),
        ({"final_logit_softcap": -30.0}, "final_logit_softcap is -30.0; must be more than 0"),
        ({"k_eq_v": 1}, "k_eq_v is 1; expected true or false"),
        ({"rope": {"full_theta": 1.0}}, "rope is a dict, not a RopeConfig"),
    ],
)
def test_bad_configs(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(PRESETS["tiny-e2b"].text, **change)


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


def test_preset_lookup_and_overrides():
    with pytest.raises(KeyError, match="unknown preset"):
        preset("gemma4-1b")
    assert (
        preset("tiny-e2b", text=dataclasses.replace(PRESETS["tiny-e2b"].text, sliding_window=4)).text.sliding_window
        == 4
    )


def test_tower_config_errors():
    with pytest.raises(ConfigError, match="head_dim=18 must be a multiple of 4"):
        VisionConfig(head_dim=18)
    with pytest.raises(ConfigError, match="not a multiple of n_heads"):
        AudioConfig(d_model=30, n_heads=4)


def test_every_part_checks_its_limits():
    with pytest.raises(ConfigError, match="rope config: full_theta is 0; must be more than 0"):
        RopeConfig(full_theta=0)
    with pytest.raises(ConfigError, match="rope config: sliding_theta is -1.0; must be more than 0"):
        RopeConfig(sliding_theta=-1.0)
    with pytest.raises(ConfigError, match="rope config: full_partial_rotary is 1.5; at most 1"):
        RopeConfig(full_partial_rotary=1.5)
    with pytest.raises(ConfigError, match="vision config: rms_eps is -1e-06; must be more than 0"):
        VisionConfig(rms_eps=-1e-6)
    with pytest.raises(ConfigError, match="vision config: patch_size is 16.0; expected an integer"):
        VisionConfig(patch_size=16.0)
    with pytest.raises(ConfigError, match="audio config: n_layers is 0; at least 1"):
        AudioConfig(n_layers=0)
    with pytest.raises(ConfigError, match="audio config: conv_channels must be two ints"):
        AudioConfig(conv_channels=(128, 0))
    with pytest.raises(ConfigError, match="token ids: image is -1; at least 0"):
        TokenIds(image=-1)
    with pytest.raises(ConfigError, match="token ids: stop_ids is"):
        TokenIds(stop_ids=(1, "2"))


@pytest.mark.parametrize(
    ("limit", "value", "problem"),
    [
        (Limit(int, 1, 8), 8, None),
        (Limit(int, 1, 8), 9, "at most 8"),
        (Limit(int, 1, 8), 0, "at least 1"),
        (Limit(int, 1, 8), 2.0, "expected an integer"),
        (Limit(int, 1, 8), False, "expected an integer"),
        (Limit(int, 1, 8), None, "expected a value"),
        (Limit(int, 1, 8, optional=True), None, None),
        (Limit(float, above=0), 3, None),  # a float field takes an int
        (Limit(float, above=0), 0, "must be more than 0"),
        (Limit(float, above=0), float("inf"), "expected a finite number"),
        (Limit(float), float("nan"), "expected a finite number"),
        (Limit(float), -(10**400), "expected a finite number"),
        (Limit(int, 0, 8), 10**400, "at most 8"),
        (Limit(float), "1.0", "expected a number"),
        (Limit(bool), 0, "expected true or false"),
        (Limit(str), 1, "expected a string"),
    ],
)
def test_limits(limit, value, problem):
    assert limit.problem(value) == problem


def test_every_preset_is_within_its_limits_with_room():
    """The presets (and so the published checkpoints, spec §12) sit well inside every bound."""
    from model.config import AUDIO_LIMITS, TEXT_LIMITS, VISION_LIMITS

    for config in PRESETS.values():
        for part, limits in ((config.text, TEXT_LIMITS), (config.vision, VISION_LIMITS), (config.audio, AUDIO_LIMITS)):
            for name, limit in limits.items():
                value = getattr(part, name, None) if part is not None else None
                if limit.high is not None and isinstance(value, int):
                    assert value * 4 <= limit.high, (name, value)
