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
    IDENTITY_IDS,
    CheckpointError,
    TokenizerMismatchError,
    audio_from_hf,
    check_tokenizer,
    default_dtype,
    inspect_checkpoint,
    load_config,
    load_pretrained,
    load_text_decoder,
    model_from_hf,
    model_to_hf,
    save_pretrained,
    save_text_decoder,
    stop_ids,
    stored_dtype,
    text_from_hf,
    text_to_hf,
    vision_from_hf,
)
from model.config import FULL, PRESETS, SLIDING, ConfigError, TokenIds
from model.decoder import TextDecoder
from model.gemma4 import Gemma4
from preprocess.tokenizer import Tokenizer
from tests.helpers import PUBLISHED_CONFIGS, config_keys

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
    with pytest.raises(ConfigError, match="rope_type 'yarn'; expected 'default' or 'axial'"):
        vision_from_hf({"rope_parameters": {"rope_type": "yarn"}})
    assert vision_from_hf({"rope_parameters": {"rope_type": "default"}}) == vision_from_hf({})  # axial, as published
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


def test_the_default_dtype_is_the_stored_one_on_every_device(tiny_checkpoint, bf16_checkpoint, tmp_path):
    assert default_dtype(tiny_checkpoint) == stored_dtype(tiny_checkpoint) == torch.float32
    assert default_dtype(bf16_checkpoint / "model") == torch.bfloat16
    torch.manual_seed(0)
    save_text_decoder(TextDecoder(PRESETS["tiny-31b"].text).half(), tmp_path / "fp16")
    assert stored_dtype(tmp_path / "fp16") == torch.float16
    assert default_dtype(tmp_path / "fp16") == torch.bfloat16  # float16 overflows in Gemma: never the default
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {p.dtype for p in load_text_decoder(tmp_path / "fp16").parameters()} == {torch.bfloat16}


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """The tiny multimodal checkpoint saved in bfloat16, and as a text decoder."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-e2b-bf16")
    save_pretrained(Gemma4(PRESETS["tiny-e2b"]).to(torch.bfloat16), directory / "model")
    save_text_decoder(TextDecoder(PRESETS["tiny-e2b"].text).to(torch.bfloat16), directory / "text")
    return directory


def test_a_bfloat16_checkpoint_loads_in_bfloat16_by_default_and_in_float32_when_asked(bf16_checkpoint):
    default = load_pretrained(bf16_checkpoint / "model")
    wide = load_pretrained(bf16_checkpoint / "model", dtype="float32")
    assert {t.dtype for t in default.state_dict().values()} == {torch.bfloat16}
    assert {t.dtype for t in wide.state_dict().values()} == {torch.float32}
    assert all(torch.equal(a.float(), b) for a, b in zip(default.parameters(), wide.parameters(), strict=True))
    assert {p.dtype for p in load_text_decoder(bf16_checkpoint / "text").parameters()} == {torch.bfloat16}
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
        (name, getattr(tokenizer.special, name), getattr(config.tokens, name))
        for name in IDENTITY_IDS
        if getattr(tokenizer.special, name) != getattr(config.tokens, name)
    ] + [("vocab_size", 600, 512)]
    assert "stop_ids" not in dict((d[0], d) for d in info.value.differences)  # stop lists are never compared
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


def test_fewer_stop_ids_in_the_checkpoint_are_joined_not_refused(tokenizer_dir, tmp_path):
    """A base model or a trainer's save lists eos_token_id: 1 alone; the tokenizer's end of turn still stops."""
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    special = tokenizer.special
    config = matching_config(tokenizer)
    config = dataclasses.replace(config, tokens=dataclasses.replace(config.tokens, stop_ids=(special.eos,)))
    check_tokenizer(config, tokenizer)
    assert stop_ids(config, tokenizer) == (special.eos, special.turn_end, special.tool_response_start)
    torch.manual_seed(0)
    save_pretrained(Gemma4(config), tmp_path)
    assert load_config(tmp_path).tokens.stop_ids == (special.eos,)
    model = load_pretrained(tmp_path, tokenizer=tokenizer)
    assert model.config.tokens.stop_ids == (special.eos, special.turn_end, special.tool_response_start)
    import json

    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [special.eos, 77]}))
    assert load_config(tmp_path).tokens.stop_ids == (special.eos, 77)  # config.json's, then generation_config's
    assert load_pretrained(tmp_path, tokenizer=tokenizer).config.tokens.stop_ids == (
        special.eos,
        77,
        special.turn_end,
        special.tool_response_start,
    )


# --- the published config.json files, as they are (spec §12) ---------------------------------------------------

PUBLISHED = {
    "gemma-4-E2B-it": "gemma4-e2b",
    "gemma-4-E4B-it": "gemma4-e4b",
    "gemma-4-31B-it": "gemma4-31b",
    "gemma-4-26B-A4B-it": "gemma4-26b-a4b",
}
CONFIGS = PUBLISHED_CONFIGS  # byte for byte the published files


def published(name: str) -> dict:
    import json

    return json.loads((CONFIGS / f"{name}.json").read_text())


def published_dir(tmp_path, name: str):
    """A directory holding the published config.json and generation_config.json, byte for byte."""
    (tmp_path / "config.json").write_bytes((CONFIGS / f"{name}.json").read_bytes())
    (tmp_path / "generation_config.json").write_bytes((CONFIGS / "generation_config.json").read_bytes())
    return tmp_path


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_each_published_config_parses_as_is(name, tmp_path):
    raw = published(name)
    config = load_config(published_dir(tmp_path, name))
    preset = PRESETS[PUBLISHED[name]]
    assert (config.text, config.vision, config.audio) == (preset.text, preset.vision, preset.audio)
    assert config.tokens == dataclasses.replace(preset.tokens, stop_ids=(1, 106, 50))  # config's + generation's
    assert published(name) == raw  # read, never rewritten in place (the reference rewrites "default" to "axial")
    # The architecture table of spec §12.
    full = [i for i, kind in enumerate(config.text.layer_types) if kind == FULL]
    period = 5 if name == "gemma-4-E2B-it" else 6
    assert full == list(range(period - 1, config.text.n_layers, period))
    assert (config.audio is not None) == (name in ("gemma-4-E2B-it", "gemma-4-E4B-it"))
    assert raw["vision_config"]["rope_parameters"]["rope_type"] == "default" and config.vision.rope_theta == 100.0
    assert raw["eoa_token_id"] == raw["eoa_token_index"] == config.tokens.eoa
    assert bool(config.text.n_experts) == (name == "gemma-4-26B-A4B-it")
    assert config.text.k_eq_v == (name in ("gemma-4-31B-it", "gemma-4-26B-A4B-it"))


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_saved_configs_have_the_published_key_set(name):
    raw = published(name)
    ours = model_to_hf(model_from_hf(raw), dtype=torch.bfloat16)
    assert config_keys(ours) == config_keys(raw)
    for section in ("text_config", "vision_config"):
        for k, v in raw[section].items():
            if k != "max_position_embeddings":  # not modelled here (131072 is written)
                assert ours[section][k] == v, (section, k)
    assert ours["audio_config"] == raw["audio_config"]
    assert {k: v for k, v in ours.items() if not isinstance(v, dict)} == {
        k: v for k, v in raw.items() if not isinstance(v, dict)
    }


def test_null_keys_mean_absent_unknown_keys_are_ignored_and_eoa_has_two_names():
    raw = published("gemma-4-E2B-it")
    with_extra = copy_with(raw, some_future_key=1, text_config=dict(raw["text_config"], future=[1], num_experts=None))
    with_extra["vision_config"] = dict(raw["vision_config"], another=None)
    assert model_from_hf(with_extra) == model_from_hf(raw)
    no_window = copy_with(raw, text_config=dict(raw["text_config"], sliding_window=None))
    with pytest.raises(ConfigError, match="lacks text_config.sliding_window"):
        model_from_hf(no_window)
    only_id = {k: v for k, v in raw.items() if k != "eoa_token_index"}
    assert model_from_hf(only_id).tokens.eoa == raw["eoa_token_id"]
    with pytest.raises(ConfigError, match="eoa_token_id 7 and eoa_token_index 258883"):
        model_from_hf(copy_with(raw, eoa_token_id=7))


def copy_with(d: dict, **changes) -> dict:
    return dict(d, **changes)


@pytest.mark.parametrize(("name", "count"), [("gemma-4-E2B-it", 60), ("gemma-4-E4B-it", 54)])
def test_the_kv_shared_layers_stored_projections_are_known_as_unused(name, count):
    """E2B's file stores 60 tensors its model does not have, E4B's 54 (spec §12): K/V projections and key norms
    of the KV-shared layers."""
    from model.checkpoint import _unused

    config = model_from_hf(published(name)).text
    names = [f"layers.{i}.self_attn.{p}.weight" for i in range(config.n_layers) for p in ("k_proj", "v_proj", "k_norm")]
    assert sum(_unused(n, config) for n in names) == count == 3 * config.n_kv_shared_layers
    assert not _unused("layers.0.self_attn.q_proj.weight", config) and not _unused("layers", config)


def test_stored_kv_projections_of_shared_layers_are_skipped(tmp_path):
    """A tiny checkpoint laid out as E2B's file is: the shared layers' k_proj, v_proj and k_norm stored too."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = Gemma4(PRESETS["tiny-e2b"])
    save_pretrained(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    text = model.config.text
    added = 0
    for layer in range(text.first_shared_layer, text.n_layers):
        source = f"model.language_model.layers.{text.kv_source(layer)}.self_attn"
        for part in ("k_proj", "v_proj", "k_norm"):
            if f"{source}.{part}.weight" in tensors:
                tensors[f"model.language_model.layers.{layer}.self_attn.{part}.weight"] = torch.randn_like(
                    tensors[f"{source}.{part}.weight"]
                )
                added += 1
    assert added == 3 * text.n_kv_shared_layers
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = load_pretrained(tmp_path)
    ids = torch.randint(0, 500, (1, 12))
    from data_specs.batch import Batch

    torch.testing.assert_close(loaded(Batch.from_ids(ids)), model(Batch.from_ids(ids)), rtol=0, atol=0)
    info = inspect_checkpoint(tmp_path)
    assert info.weight_bytes == sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_inspect_checkpoint_refuses_what_does_not_fit_before_reading_weights(tmp_path):
    import json
    import os

    torch.manual_seed(0)
    save_pretrained(Gemma4(PRESETS["tiny-e2b"]), tmp_path)
    info = inspect_checkpoint(tmp_path, dtype="bfloat16")
    assert info.dtype == torch.bfloat16 and info.stored_dtype == torch.float32
    assert info.ple_bytes == PRESETS["tiny-e2b"].text.ple_vocab_size * 6 * 16 * 2
    assert info.cache_bytes(8, 4096) > 0 and info.name == tmp_path.name
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["hidden_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit its config: .*wrong shapes"):
        inspect_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    os.mkfifo(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors' .the weights. is not a regular file"):
        inspect_checkpoint(tmp_path)  # refused, never opened (a FIFO would block)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        inspect_checkpoint(tmp_path)


def test_a_repo_id_in_the_hub_cache_loads(tiny_checkpoint, tmp_path, monkeypatch):
    """load_config / load_pretrained / inspect_checkpoint take a repo id: the snapshot refs/main names in the
    Hugging Face cache (HF_HUB_CACHE); one line with the `hf download` command when it is not there."""
    revision = "f" * 40
    repo = tmp_path / "models--google--gemma-4-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / revision).symlink_to(tiny_checkpoint, target_is_directory=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_config("google/gemma-4-tiny") == load_config(tiny_checkpoint)
    model = load_pretrained("google/gemma-4-tiny")
    direct = load_pretrained(tiny_checkpoint).parameters()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), direct, strict=True))
    assert inspect_checkpoint("google/gemma-4-tiny").name == "gemma-4-tiny"
    with pytest.raises(FileNotFoundError, match="hf download google/absent --local-dir DIR") as info:
        load_pretrained("google/absent")
    assert "\n" not in str(info.value)
