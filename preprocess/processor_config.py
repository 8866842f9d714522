"""A checkpoint's ``processor_config.json`` (spec §10, §12): the front end's defaults it names, and its fixed facts.

The published checkpoints ship one (the layout transformers' ``Gemma4Processor.save_pretrained`` writes): the
image processor's ``max_soft_tokens`` (the image soft-token budget), the video processor's ``num_frames`` and
``max_soft_tokens`` (frames per video, the budget per frame), and the settings of the image resize, the patches,
the audio features and the audio token rate. The first three become the front end's defaults
(:class:`FrontEndDefaults`; an explicit setting still wins). Everything else must say what this front end does
(16 px patches, 3 × 3 pooling, bicubic resize, pixels rescaled by 1/255 and not normalised, 128 mel bins from
16 kHz audio in 20 ms frames every 10 ms with a 512-point FFT, 40 ms per audio token …): a value that contradicts
one of these facts is a :class:`ProcessorConfigError` naming the key and both values, since running the front end
anyway would feed the model inputs it was not trained on. Keys this module does not know are ignored; absent keys
are not checked.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_specs.checkpoint_dir import read_json_file
from data_specs.media import MEL_BINS, PATCH_SIZE, POOLING_KERNEL

from .audio import FFT_LENGTH, MAX_FREQUENCY, MEL_FLOOR
from .budget import AUDIO_FRAME, AUDIO_HOP, AUDIO_MAX_SAMPLES, AUDIO_MAX_TOKENS, AUDIO_SAMPLE_RATE, SUPPORTED_BUDGETS

__all__ = ["FrontEndDefaults", "ProcessorConfigError", "processor_config_json", "read_processor_config"]

_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as transformers writes ``resample``
_IMAGE_FACTS = {
    "patch_size": PATCH_SIZE,
    "pooling_kernel_size": POOLING_KERNEL,
    "resample": _BICUBIC,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_convert_rgb": True,
}
_AUDIO_FACTS = {
    "feature_size": MEL_BINS,
    "sampling_rate": AUDIO_SAMPLE_RATE,
    "frame_length": AUDIO_FRAME,
    "hop_length": AUDIO_HOP,
    "fft_length": FFT_LENGTH,
    "min_frequency": 0.0,
    "max_frequency": MAX_FREQUENCY,
    "mel_floor": MEL_FLOOR,
    "preemphasis": 0.0,
    "dither": 0.0,
    "input_scale_factor": 1.0,
    "fft_overdrive": False,
    "per_bin_mean": None,  # per-bin feature standardisation: not part of this front end
    "per_bin_stddev": None,
}
_AUDIO_MS_PER_TOKEN = AUDIO_MAX_SAMPLES * 1000 // AUDIO_SAMPLE_RATE // AUDIO_MAX_TOKENS  # 40 ms
_TOP_FACTS = {"audio_seq_length": AUDIO_MAX_TOKENS, "audio_ms_per_token": _AUDIO_MS_PER_TOKEN}


class ProcessorConfigError(ValueError):
    """A ``processor_config.json`` that contradicts a fixed fact of this front end, or names a bad default."""


@dataclass(frozen=True, kw_only=True)
class FrontEndDefaults:
    """Defaults a checkpoint's ``processor_config.json`` sets (None: it says nothing, the front end's own hold)."""

    image_budget: int | None = None
    video_budget: int | None = None
    video_frames: int | None = None
    source: str | None = None  # the file's path


def read_processor_config(directory: str | os.PathLike) -> FrontEndDefaults:
    """The :class:`FrontEndDefaults` of a checkpoint directory's ``processor_config.json`` (all None without
    one), after checking every fixed fact it states (:class:`ProcessorConfigError` otherwise)."""
    config = read_json_file(directory, "processor_config.json")
    if config is None:
        return FrontEndDefaults()
    where = os.fspath(Path(directory) / "processor_config.json")
    _check(config, _TOP_FACTS, where, "")
    image = _section(config, "image_processor", where)
    video = _section(config, "video_processor", where)
    audio = _section(config, "feature_extractor", where)
    _check(image, _IMAGE_FACTS, where, "image_processor.")
    _check(video, {k: v for k, v in _IMAGE_FACTS.items() if k != "do_convert_rgb"}, where, "video_processor.")
    _check(audio, _AUDIO_FACTS, where, "feature_extractor.")
    for name, section in (("image_processor", image), ("video_processor", video)):
        _check_identity_normalisation(section, where, name)
    return FrontEndDefaults(
        image_budget=_budget(image, where, "image_processor.max_soft_tokens"),
        video_budget=_budget(video, where, "video_processor.max_soft_tokens"),
        video_frames=_count(video, where, "video_processor.num_frames"),
        source=where,
    )


def _section(config: dict, name: str, where: str) -> dict:
    section = config.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ProcessorConfigError(f"{where}: {name} is a {type(section).__name__}, not an object")
    return section


def _same(value: Any, fact: Any) -> bool:
    if fact is None or isinstance(fact, bool):
        return value is fact
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isclose(value, fact, rel_tol=1e-9, abs_tol=1e-12)


def _check(section: dict, facts: dict, where: str, prefix: str) -> None:
    for key, fact in facts.items():
        if key in section and not _same(section[key], fact):
            raise ProcessorConfigError(
                f"{where}: {prefix}{key} is {section[key]!r}, but this front end's is {fact!r} (a fixed fact of the "
                "Gemma 4 front end: the model would get inputs it was not trained on)"
            )


def _check_identity_normalisation(section: dict, where: str, name: str) -> None:
    """``do_normalize`` is allowed only as the identity (mean 0, std 1), as the published video processor has it."""
    if not section.get("do_normalize"):
        return
    for key, fact in (("image_mean", 0.0), ("image_std", 1.0)):
        values = section.get(key, [fact] * 3)
        values = values if isinstance(values, list) else [values]
        if not all(_same(v, fact) for v in values):
            raise ProcessorConfigError(
                f"{where}: {name}.do_normalize with {key} {section.get(key)!r}, but this front end does not normalise "
                f"pixels (its {key} is {[fact] * 3})"
            )


def _budget(section: dict, where: str, key: str) -> int | None:
    value = section.get(key.split(".")[-1])
    if value is None:
        return None
    if value not in SUPPORTED_BUDGETS or isinstance(value, bool):
        raise ProcessorConfigError(
            f"{where}: {key} is {value!r}, not a soft-token budget ({', '.join(map(str, SUPPORTED_BUDGETS))})"
        )
    return int(value)


def _count(section: dict, where: str, key: str) -> int | None:
    value = section.get(key.split(".")[-1])
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProcessorConfigError(f"{where}: {key} is {value!r}, not a positive number of frames")
    return value


def processor_config_json(*, image_budget: int = 280, video_budget: int = 70, video_frames: int = 32) -> dict:
    """A ``processor_config.json`` in the layout the published checkpoints ship, stating this front end's facts
    and the given defaults (what ``gemma4 sample-data`` puts in its checkpoint; :func:`read_processor_config`
    reads it back to these defaults)."""
    pixels = {"do_resize": True, "image_mean": [0.0] * 3, "image_std": [1.0] * 3, **_IMAGE_FACTS}
    return {
        "processor_class": "Gemma4Processor",
        **_TOP_FACTS,
        "image_seq_length": image_budget,
        "image_processor": {
            "image_processor_type": "Gemma4ImageProcessor",
            **pixels,
            "do_normalize": False,
            "max_soft_tokens": image_budget,
        },
        "video_processor": {
            "video_processor_type": "Gemma4VideoProcessor",
            **pixels,
            "do_normalize": True,  # with mean 0 and std 1, as the published video processor: the identity
            "do_sample_frames": True,
            "max_soft_tokens": video_budget,
            "num_frames": video_frames,
        },
        "feature_extractor": {
            "feature_extractor_type": "Gemma4AudioFeatureExtractor",
            **_AUDIO_FACTS,
            "padding_side": "right",
            "padding_value": 0.0,
            "return_attention_mask": True,
        },
    }
