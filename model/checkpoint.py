"""Hugging Face checkpoints ↔ our modules: the only file that knows HF tensor names (spec §7).

Text weights live under ``model.language_model.`` (``Gemma4ForConditionalGeneration``) or ``model.``
(``Gemma4ForCausalLM``); the towers and their embedders under ``model.vision_tower.``, ``model.embed_vision.``,
``model.audio_tower.``, ``model.embed_audio.``. Below those prefixes our module names equal theirs. The tied
``lm_head.weight`` is not loaded (it is the embedding). K/V projections that some checkpoints store for
KV-shared layers are unused and skipped. The model is built on the meta device and its tensors are taken
straight from the memory-mapped safetensors files (``assign=True``), so peak memory stays near the size of the
weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from .config import ModelConfig, TextConfig, model_from_hf, model_to_hf, text_from_hf, text_to_hf
from .decoder import TextDecoder

__all__ = [
    "CheckpointError",
    "load_pretrained",
    "save_pretrained",
    "load_text_decoder",
    "save_text_decoder",
    "read_safetensors",
]

TOWERS = ("vision_tower.", "audio_tower.", "embed_vision.", "embed_audio.")

PREFIXES = ("model.language_model.", "model.")


class CheckpointError(ValueError):
    """A checkpoint whose files, names or shapes do not fit the configuration."""


def _files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / n for n in names]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(f"{os.fspath(directory)!r} has neither model.safetensors nor model.safetensors.index.json")


def read_safetensors(directory: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, memory-mapped (converted only when ``dtype`` differs)."""
    tensors = {}
    for file in _files(Path(directory)):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                tensors[key] = tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
    return tensors


def _partition(tensors: dict[str, torch.Tensor], config: TextConfig) -> tuple[dict, dict, dict]:
    """Split a checkpoint's tensors into (text weights by our decoder's names, tower weights by their names
    below ``model.``, everything else but the tied output embedding)."""
    text_prefix = next((p for p in PREFIXES if any(k.startswith(p + "embed_tokens.") for k in tensors)), None)
    if text_prefix is None:
        raise CheckpointError("no text embedding (model[.language_model].embed_tokens.weight) in the checkpoint")
    towers = tuple("model." + t for t in TOWERS)
    text, tower, stray = {}, {}, {}
    for key, tensor in tensors.items():
        if key.startswith(towers):
            tower[key.removeprefix("model.")] = tensor
        elif key.startswith(text_prefix):
            name = key[len(text_prefix) :]
            parts = name.split(".")
            if parts[0] == "layers" and parts[2] == "self_attn" and parts[3] in ("k_proj", "v_proj", "k_norm"):
                if config.kv_source(int(parts[1])) != int(parts[1]):
                    continue  # a KV-shared layer's unused projection
            text[name] = tensor
        elif key != "lm_head.weight":  # the tied output embedding is the input embedding
            stray[key] = tensor
    return text, tower, stray


def _config(directory: Path) -> dict:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{os.fspath(directory)!r} has no config.json")
    return json.loads(config_path.read_text())


def load_text_decoder(
    directory: str | os.PathLike, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> TextDecoder:
    """Build the text decoder of a checkpoint directory (``config.json`` + safetensors) and load its weights."""
    directory = Path(directory)
    config = text_from_hf(_config(directory))
    with torch.device("meta"):
        model = TextDecoder(config)
    text, _, _ = _partition(read_safetensors(directory, dtype), config)  # towers and the rest: not ours here
    return _assign(model, text, directory, device)


def load_pretrained(
    directory: str | os.PathLike, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
):
    """The whole model (:class:`model.gemma4.Gemma4`) of a checkpoint directory: the text decoder and whichever
    towers its ``config.json`` describes. Text-only (``Gemma4ForCausalLM``) checkpoints load too."""
    from .gemma4 import Gemma4

    directory = Path(directory)
    config = model_from_hf(_config(directory))
    with torch.device("meta"):
        model = Gemma4(config)
    text, towers, stray = _partition(read_safetensors(directory, dtype), config.text)
    weights = {f"language_model.{k}": v for k, v in text.items()} | towers | stray  # stray: reported unexpected
    return _assign(model, weights, directory, device)


def _assign(model: torch.nn.Module, weights: dict[str, torch.Tensor], directory: Path, device) -> torch.nn.Module:
    """Check names and shapes, then take the tensors as the model's own (no copy unless device/dtype change)."""
    expected = dict(model.state_dict())
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(weights[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{os.fspath(directory)!r} does not fit its config: missing {missing}, unexpected {unexpected}, "
            f"wrong shapes {wrong}"
        )
    model.load_state_dict({k: weights[k].to(device) for k in expected}, assign=True)
    model.reset_buffers(device)  # non-persistent buffers (RoPE frequencies) were built on meta
    return model.eval()


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Write ``config.json`` + ``model.safetensors`` in the ``Gemma4ForConditionalGeneration`` layout (every
    weight under ``model.``, the tied output embedding not repeated); :func:`load_pretrained` and transformers
    both read it."""
    config: ModelConfig = model.config
    _write(directory, dict(model_to_hf(config), architectures=["Gemma4ForConditionalGeneration"]), model)


def save_text_decoder(model: TextDecoder, directory: str | os.PathLike) -> None:
    """Write ``config.json`` + ``model.safetensors`` in the ``Gemma4ForCausalLM`` layout (``model.`` prefix, the
    tied output embedding not repeated), which :func:`load_text_decoder` and transformers both read."""
    _write(directory, dict(text_to_hf(model.config), architectures=["Gemma4ForCausalLM"]), model)


def _write(directory: str | os.PathLike, hf_config: dict, model: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    tensors = {f"model.{name}": tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
