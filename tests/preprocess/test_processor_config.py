"""processor_config.json: the defaults it names reach the front end, and facts that contradict ours are refused."""

from __future__ import annotations

import json

import pytest

from preprocess.processor_config import (
    FrontEndDefaults,
    ProcessorConfigError,
    processor_config_json,
    read_processor_config,
)


def write(directory, config: dict):
    (directory / "processor_config.json").write_text(json.dumps(config))
    return directory


def test_the_reference_processors_own_file_is_read(tmp_path, tokenizer_dir, hf_processor):
    """What transformers' Gemma4Processor.save_pretrained writes (the published layout) states our facts."""
    from preprocess.tokenizer import SPECIAL_STRINGS

    processor = hf_processor.processor(tokenizer_dir / "tokenizer.model", list(SPECIAL_STRINGS.values()), 560)
    processor.save_pretrained(tmp_path)
    defaults = read_processor_config(tmp_path)
    assert (defaults.image_budget, defaults.video_budget, defaults.video_frames) == (560, 70, 32)
    assert defaults.source.endswith("processor_config.json")


def test_ours_round_trips_and_no_file_means_no_defaults(tmp_path):
    assert read_processor_config(tmp_path) == FrontEndDefaults()
    write(tmp_path, processor_config_json(image_budget=1120, video_budget=140, video_frames=8))
    defaults = read_processor_config(tmp_path)
    assert (defaults.image_budget, defaults.video_budget, defaults.video_frames) == (1120, 140, 8)


@pytest.mark.parametrize(
    ("section", "key", "value", "ours"),
    [
        ("image_processor", "patch_size", 14, "16"),
        ("image_processor", "pooling_kernel_size", 2, "3"),
        ("image_processor", "resample", 2, "3"),
        ("image_processor", "rescale_factor", 1.0, "0.00392"),
        ("video_processor", "patch_size", 32, "16"),
        ("feature_extractor", "feature_size", 80, "128"),
        ("feature_extractor", "sampling_rate", 24000, "16000"),
        ("feature_extractor", "hop_length", 320, "160"),
        ("feature_extractor", "per_bin_mean", [0.1] * 128, "None"),
        (None, "audio_seq_length", 1500, "750"),
        (None, "audio_ms_per_token", 20, "40"),
    ],
)
def test_a_contradicted_fact_names_the_key_and_both_values(tmp_path, section, key, value, ours):
    config = processor_config_json()
    (config[section] if section else config)[key] = value
    write(tmp_path, config)
    name = f"{section}.{key}" if section else key
    shown = repr(value)[:20].replace("[", r"\[").replace("(", r"\(")
    with pytest.raises(ProcessorConfigError, match=rf"processor_config.json: {name} is {shown}.*front end's is {ours}"):
        read_processor_config(tmp_path)


def test_normalisation_is_allowed_only_as_the_identity_and_defaults_must_be_valid(tmp_path):
    config = processor_config_json()
    config["image_processor"].update(do_normalize=True, image_mean=[0.5, 0.5, 0.5])
    with pytest.raises(ProcessorConfigError, match=r"image_processor.do_normalize with image_mean \[0.5"):
        read_processor_config(write(tmp_path, config))
    config = processor_config_json()
    config["image_processor"]["max_soft_tokens"] = 300
    with pytest.raises(ProcessorConfigError, match=r"image_processor.max_soft_tokens is 300, not a soft-token budget"):
        read_processor_config(write(tmp_path, config))
    config = processor_config_json()
    config["video_processor"]["num_frames"] = 0
    with pytest.raises(ProcessorConfigError, match="video_processor.num_frames is 0"):
        read_processor_config(write(tmp_path, config))
    (tmp_path / "processor_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list, not an object"):
        read_processor_config(tmp_path)


def test_the_cli_takes_the_checkpoints_defaults_unless_told(tmp_path):
    from pipelines import cli
    from pipelines.sample_data import toy_tokenizer_json, write_tokenizer_files

    write_tokenizer_files(tmp_path, toy_tokenizer_json(), chat_template=False)
    write(tmp_path, processor_config_json(image_budget=70, video_budget=140, video_frames=4))
    parser = cli.build_parser()
    args = parser.parse_args(["preprocess", "m.jsonl", "out", "--tokenizer", str(tmp_path)])
    chosen = cli._preprocess_settings(args, str(tmp_path))
    assert (chosen.image_budget, chosen.video_budget, chosen.video_frames) == (70, 140, 4)
    args = parser.parse_args(["preprocess", "m.jsonl", "out", "--tokenizer", str(tmp_path), "--budget", "560"])
    assert cli._preprocess_settings(args, str(tmp_path)).image_budget == 560  # an explicit flag wins
    (tmp_path / "processor_config.json").unlink()
    assert (
        cli._preprocess_settings(
            parser.parse_args(["preprocess", "m", "o", "--tokenizer", "x"]), str(tmp_path)
        ).image_budget
        == 280
    )
