"""The checkpoint module: config.json translation both ways (against the reference), dtype names and the default
dtype, and the tokenizer/checkpoint agreement check."""

from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
import torch

from model.checkpoint import (
    DTYPES,
    TokenizerMismatchError,
    audio_from_hf,
    check_tokenizer,
    default_dtype,
    load_config,
    load_pretrained,
    load_text_decoder,
    model_from_hf,
    model_to_hf,
    save_pretrained,
    save_text_decoder,
    text_from_hf,
    text_to_hf,
    vision_from_hf,
)
from model.config import FULL, PRESETS, SLIDING, ConfigError, TokenIds
from model.decoder import TextDecoder
from model.gemma4 import Gemma4
from preprocess.tokenizer import Tokenizer

# --- config.json --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_config_json_round_trip_through_the_reference(name, reference):
    ours = PRESETS[name].text
    assert text_from_hf(text_to_hf(ours)) == ours
    # What transformers itself writes back (with its own defaults and extra keys) parses to the same config.
    written = reference.Gemma4TextConfig(**text_to_hf(ours)).to_dict()
    assert text_from_hf(written) == ours
    assert text_from_hf({"text_config": written, "model_type": "gemma4"}) == ours


@pytest.mark.parametrize("name", list(PRESETS))
def test_model_config_json_round_trip_through_the_reference(name, reference):
    ours = PRESETS[name]
    assert model_from_hf(model_to_hf(ours)) == ours
    written = reference.Gemma4Config(**model_to_hf(ours)).to_dict()
    assert model_from_hf(written) == ours


def test_rope_factor_and_explicit_layer_types_are_read():
    hf = text_to_hf(PRESETS["tiny-31b"].text)
    hf["rope_parameters"][FULL]["factor"] = 8.0
    hf["layer_types"] = [SLIDING, FULL, SLIDING, SLIDING, SLIDING, FULL]
    ours = text_from_hf(hf)
    assert ours.rope.full_factor == 8.0 and ours.layer_types[1] == FULL
    del hf["layer_types"]
    assert text_from_hf(hf).layer_types == (SLIDING,) * 5 + (FULL,)  # the reference's period-6 fallback


def test_bad_config_json():
    with pytest.raises(ConfigError, match="model_type 'llama'"):
        text_from_hf({"model_type": "llama"})
    with pytest.raises(ConfigError, match="hidden_size"):
        text_from_hf({"model_type": "gemma4_text", "num_hidden_layers": 2})
    bad = text_to_hf(PRESETS["tiny-e2b"].text)
    bad["rope_parameters"][SLIDING]["rope_type"] = "yarn"
    with pytest.raises(ConfigError, match="rope_type 'yarn'"):
        text_from_hf(bad)
    with pytest.raises(ConfigError, match="rope_type 'default'"):
        vision_from_hf({"rope_parameters": {"rope_type": "default"}})
    with pytest.raises(ConfigError, match="hidden_act 'gelu'"):
        audio_from_hf({"hidden_act": "gelu"})


# --- dtype names and the default -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random multimodal checkpoint (float32) written by save_pretrained."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-e2b")
    save_pretrained(Gemma4(PRESETS["tiny-e2b"]), directory)
    return directory


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("float32", torch.float32),
        ("bf16", torch.bfloat16),
        (torch.bfloat16, torch.bfloat16),
        (None, torch.float32),
        ("checkpoint", torch.float32),
    ],
)
def test_dtype_names_and_dtypes_are_accepted(tiny_checkpoint, dtype, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these warns
        model = load_pretrained(tiny_checkpoint, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}


@pytest.mark.parametrize("dtype", ["float16", "fp16", torch.float16])
def test_float16_loads_with_a_warning_naming_the_checkpoint(tiny_checkpoint, dtype):
    with pytest.warns(
        UserWarning, match=re.escape(str(tiny_checkpoint)) + ".* float16: .*transformers #36822"
    ) as caught:
        model = load_pretrained(tiny_checkpoint, dtype=dtype)
    assert caught[0].filename == __file__  # points at the caller's line
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    with pytest.warns(UserWarning, match=re.escape(str(tiny_checkpoint))):
        load_text_decoder(tiny_checkpoint, dtype=dtype)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (torch.device("cuda"), torch.bfloat16),
        ("cuda:1", torch.bfloat16),
        ("mps", torch.bfloat16),
        ("xpu", torch.bfloat16),
        (torch.device("cpu"), torch.float32),
        ("meta", torch.float32),
    ],
)
def test_default_dtype_is_bfloat16_on_accelerators_and_float32_on_the_cpu(device, expected):
    assert default_dtype(device) == expected


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """The tiny multimodal checkpoint saved in bfloat16, and as a text decoder."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-e2b-bf16")
    save_pretrained(Gemma4(PRESETS["tiny-e2b"]).to(torch.bfloat16), directory / "model")
    save_text_decoder(TextDecoder(PRESETS["tiny-e2b"].text).to(torch.bfloat16), directory / "text")
    return directory


def test_a_bfloat16_checkpoint_loads_in_float32_on_the_cpu_unless_kept(bf16_checkpoint):
    default = load_pretrained(bf16_checkpoint / "model")
    kept = load_pretrained(bf16_checkpoint / "model", dtype="checkpoint")
    assert {t.dtype for t in default.state_dict().values()} == {torch.float32}
    assert {t.dtype for t in kept.state_dict().values()} == {torch.bfloat16}
    assert all(torch.equal(a, b.float()) for a, b in zip(default.parameters(), kept.parameters(), strict=True))
    assert {p.dtype for p in load_text_decoder(bf16_checkpoint / "text").parameters()} == {torch.float32}
    kept_text = load_text_decoder(bf16_checkpoint / "text", dtype="checkpoint", ple_on_host=True)
    assert {p.dtype for p in kept_text.parameters()} == {torch.bfloat16}


def test_text_decoder_takes_dtype_names(tmp_path):
    save_text_decoder(TextDecoder(PRESETS["tiny-31b"].text), tmp_path)
    model = load_text_decoder(tmp_path, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert set(DTYPES) >= {"float32", "bfloat16", "float16", "fp32", "bf16", "fp16"}


@pytest.mark.parametrize("bad", ["float64x", "int8", 32, "Checkpoint"])
def test_bad_dtype_name_names_the_value_and_the_choices(tiny_checkpoint, bad):
    with pytest.raises(
        ValueError, match=f"dtype {bad!r} is not .* float32, fp32, bfloat16, bf16, float16, fp16, 'checkpoint'"
    ):
        load_pretrained(tiny_checkpoint, dtype=bad)
    with pytest.raises(ValueError, match=f"dtype {bad!r}"):
        load_text_decoder(tiny_checkpoint, dtype=bad)


# --- tokenizer agreement ------------------------------------------------------------------------------------


def matching_config(tokenizer: Tokenizer):
    """tiny-e2b with the toy tokenizer's control ids and vocabulary size."""
    config = PRESETS["tiny-e2b"]
    tokens = TokenIds(**{f.name: getattr(tokenizer.special, f.name) for f in dataclasses.fields(TokenIds)})
    text = dataclasses.replace(config.text, vocab_size=tokenizer.vocab_size, ple_vocab_size=tokenizer.vocab_size)
    return dataclasses.replace(config, text=text, tokens=tokens)


def test_a_mismatched_pair_raises_one_error_naming_every_difference(tokenizer_dir, tiny_checkpoint):
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    config = PRESETS["tiny-e2b"]
    with pytest.raises(TokenizerMismatchError) as info:
        load_pretrained(tiny_checkpoint, tokenizer=tokenizer)
    expected = [
        (f.name, getattr(tokenizer.special, f.name), getattr(config.tokens, f.name))
        for f in dataclasses.fields(TokenIds)
        if getattr(tokenizer.special, f.name) != getattr(config.tokens, f.name)
    ] + [("vocab_size", 600, 512)]
    assert info.value.differences == expected and len(expected) > 2
    message = str(info.value)
    assert "tokenizer.model" in message  # names the tokenizer
    for name, ours, theirs in expected:
        assert f"{name}: tokenizer {ours}, checkpoint {theirs}" in message
    assert isinstance(info.value, ValueError)


def test_a_single_difference_is_the_only_one_named(tokenizer_dir):
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    config = matching_config(tokenizer)
    config = dataclasses.replace(config, tokens=dataclasses.replace(config.tokens, eoa=config.tokens.eoa + 1))
    with pytest.raises(TokenizerMismatchError, match="eoa: tokenizer") as info:
        check_tokenizer(config, tokenizer)
    assert [d[0] for d in info.value.differences] == ["eoa"]


def test_a_matching_pair_loads(tokenizer_dir, tmp_path):
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    config = matching_config(tokenizer)
    check_tokenizer(config, tokenizer)  # no weights needed
    torch.manual_seed(0)
    save_pretrained(Gemma4(config), tmp_path)
    assert load_config(tmp_path) == config
    model = load_pretrained(tmp_path, tokenizer=tokenizer, dtype="fp32")
    assert model.config == config


def test_something_that_is_not_a_tokenizer_is_named():
    with pytest.raises(TypeError, match="str is not a tokenizer"):
        check_tokenizer(PRESETS["tiny-e2b"], "tokenizer.model")
