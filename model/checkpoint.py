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


def _text_prefix(tensors: dict[str, torch.Tensor]) -> str:
    prefix = next((p for p in PREFIXES if any(k.startswith(p + "embed_tokens.") for k in tensors)), None)
    if prefix is None:
        raise CheckpointError("no text embedding (model[.language_model].embed_tokens.weight) in the checkpoint")
    return prefix


def _text_weights(tensors: dict[str, torch.Tensor], config: TextConfig) -> dict[str, torch.Tensor]:
    prefix = _text_prefix(tensors)
    out = {}
    for key, tensor in tensors.items():
        if not key.startswith(prefix) or key.startswith(tuple("model." + t for t in TOWERS)):
            continue  # the vision and audio towers and their embedders
        name = key[len(prefix) :]
        parts = name.split(".")
        if parts[0] == "layers" and parts[2] == "self_attn" and parts[3] in ("k_proj", "v_proj", "k_norm"):
            layer = int(parts[1])
            if config.kv_source(layer) != layer:
                continue  # a KV-shared layer's unused projection
        out[name] = tensor
    return out


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
    weights = _text_weights(read_safetensors(directory, dtype), config)
    return _assign(model, weights, directory, device)


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
    tensors = read_safetensors(directory, dtype)
    weights = {f"language_model.{k}": v for k, v in _text_weights(tensors, config.text).items()}
    towers = tuple("model." + t for t in TOWERS)
    weights.update({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith(towers)})
    text = _text_prefix(tensors)
    # Anything else (but the tied output embedding) is reported as unexpected rather than skipped.
    weights.update({k: v for k, v in tensors.items() if k != "lm_head.weight" and not k.startswith((text, *towers))})
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
    from safetensors.torch import save_file

    config: ModelConfig = model.config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf = dict(model_to_hf(config), architectures=["Gemma4ForConditionalGeneration"])
    (directory / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True))
    tensors = {f"model.{name}": tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def save_text_decoder(model: TextDecoder, directory: str | os.PathLike) -> None:
    """Write ``config.json`` + ``model.safetensors`` in the ``Gemma4ForCausalLM`` layout (``model.`` prefix, the
    tied output embedding not repeated), which :func:`load_text_decoder` and transformers both read."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(text_to_hf(model.config), architectures=["Gemma4ForCausalLM"])
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    tensors = {f"model.{name}": tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
