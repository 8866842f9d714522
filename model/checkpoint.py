"""Hugging Face checkpoints ↔ our modules: the only file that knows the reference's names, both ways (spec §7).

Two maps live here. ``config.json`` keys ↔ our config fields (:func:`model_from_hf` / :func:`model_to_hf`,
:func:`text_from_hf` / :func:`text_to_hf`; the dataclasses themselves are in :mod:`model.config`), and tensor
names ↔ our module names. Text weights live under ``model.language_model.`` (``Gemma4ForConditionalGeneration``)
or ``model.`` (``Gemma4ForCausalLM``); the towers and their embedders under ``model.vision_tower.``,
``model.embed_vision.``, ``model.audio_tower.``, ``model.embed_audio.``. Below those prefixes our module names
equal theirs. The tied ``lm_head.weight`` is not loaded (it is the embedding). K/V projections that some
checkpoints store for KV-shared layers are unused and skipped. The model is built on the meta device and its
tensors are taken straight from the memory-mapped safetensors files (``assign=True``), so peak memory stays near
the size of the weights.

The dtype left unsaid is bfloat16 on an accelerator and float32 on the CPU (:func:`default_dtype`): float16
overflows in Gemma's activations (transformers #36822), and CPUs compute bfloat16 slowly. ``dtype="checkpoint"``
keeps the checkpoint's own. ``ple_on_host=True`` keeps the per-layer-embedding table (E2B/E4B) in host memory,
memory-mapped from the file, while every other weight goes to the device (:class:`model.host.HostEmbedding`).

:func:`check_tokenizer` compares a tokenizer's control ids and vocabulary size with a checkpoint's config. The
tokenizer is duck-typed (``.special`` with the control ids by role, ``.vocab_size``): the model never imports
the front end.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .config import (
    FULL,
    SLIDING,
    AudioConfig,
    ConfigError,
    ModelConfig,
    RopeConfig,
    TextConfig,
    TokenIds,
    VisionConfig,
    interleaved_layer_types,
)
from .decoder import TextDecoder
from .host import HostEmbedding

__all__ = [
    "CheckpointError",
    "DTYPES",
    "TokenizerMismatchError",
    "check_tokenizer",
    "default_dtype",
    "load_config",
    "load_pretrained",
    "load_text_decoder",
    "model_from_hf",
    "model_to_hf",
    "read_safetensors",
    "save_pretrained",
    "save_text_decoder",
    "text_from_hf",
    "text_to_hf",
]

TOWERS = ("vision_tower.", "audio_tower.", "embed_vision.", "embed_audio.")

PREFIXES = ("model.language_model.", "model.")


class CheckpointError(ValueError):
    """A checkpoint whose files, names or shapes do not fit the configuration."""


class TokenizerMismatchError(ValueError):
    """A tokenizer whose control ids or vocabulary size disagree with a checkpoint's config.

    ``differences`` lists every disagreement as ``(field, tokenizer's value, checkpoint's value)``."""

    def __init__(self, source: str, differences: list[tuple[str, int, int]]) -> None:
        self.differences = differences
        listed = "; ".join(f"{name}: tokenizer {ours}, checkpoint {theirs}" for name, ours, theirs in differences)
        super().__init__(f"{source} does not match the checkpoint config: {listed}")


# Names accepted for ``dtype`` (besides a ``torch.dtype``, None for :func:`default_dtype` and "checkpoint").
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

KEEP = "checkpoint"  # ``dtype=KEEP``: the checkpoint's own dtype, tensor by tensor


def default_dtype(device: str | torch.device) -> torch.dtype:
    """The dtype the loaders use when none is given: float32 on the CPU (and the meta device), bfloat16 on any
    accelerator (CUDA, MPS, XPU …), never float16 (it overflows in Gemma's activations, transformers #36822)."""
    return torch.float32 if torch.device(device).type in ("cpu", "meta") else torch.bfloat16


def _dtype(dtype: str | torch.dtype | None, device: str | torch.device, directory: Path) -> torch.dtype | None:
    """The dtype to load ``directory`` in; None keeps the checkpoint's."""
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, str) and dtype == KEEP:
        return None
    if isinstance(dtype, str) and dtype in DTYPES:
        dtype = DTYPES[dtype]
    if not isinstance(dtype, torch.dtype):
        raise ValueError(
            f"dtype {dtype!r} is not a torch.dtype or one of the names {', '.join(DTYPES)}, {KEEP!r} (the "
            "checkpoint's own) or None (bfloat16 on an accelerator, float32 on the CPU)"
        )
    if dtype == torch.float16:
        warnings.warn(
            f"loading {os.fspath(directory)!r} in float16: Gemma's activations overflow float16 (transformers "
            "#36822); bfloat16 (the default on an accelerator) has float32's range",
            stacklevel=3,
        )
    return dtype


def check_tokenizer(config: ModelConfig, tokenizer: Any) -> None:
    """Raise :class:`TokenizerMismatchError` naming every control id (those :class:`~model.config.TokenIds`
    names) and the vocabulary size where ``tokenizer`` and ``config`` disagree; return quietly if they agree.

    ``tokenizer`` is duck-typed: ``.special`` holds the control ids as attributes named by role (as
    ``preprocess.tokenizer.Tokenizer`` has), ``.vocab_size`` the number of pieces. Ids the tokenizer has but the
    config does not name are not compared. The vocabulary must equal the embedding's rows exactly, as in every
    Gemma 4 checkpoint."""
    special = getattr(tokenizer, "special", None)
    vocab_size = getattr(tokenizer, "vocab_size", None)
    if special is None or vocab_size is None:
        raise TypeError(f"{type(tokenizer).__name__} is not a tokenizer: it needs .special and .vocab_size")
    differences = [
        (f.name, getattr(special, f.name), getattr(config.tokens, f.name))
        for f in fields(TokenIds)
        if hasattr(special, f.name) and getattr(special, f.name) != getattr(config.tokens, f.name)
    ]
    if vocab_size != config.text.vocab_size:
        differences.append(("vocab_size", vocab_size, config.text.vocab_size))
    if differences:
        raise TokenizerMismatchError(getattr(tokenizer, "source", type(tokenizer).__name__), differences)


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
    config = json.loads(config_path.read_text())
    generation = directory / "generation_config.json"  # its eos_token_id lists every stop id (spec §1.6)
    if generation.is_file():
        stop = json.loads(generation.read_text()).get("eos_token_id")
        if stop is not None:
            config["eos_token_id"] = [*_ids(config.get("eos_token_id")), *(i for i in _ids(stop))]
    return config


def _ids(value: Any) -> list[int]:
    """An ``eos_token_id`` (an id, a list of ids or None) as a list."""
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def load_config(directory: str | os.PathLike) -> ModelConfig:
    """The :class:`~model.config.ModelConfig` of a checkpoint directory's ``config.json`` (no weights read)."""
    return model_from_hf(_config(Path(directory)))


def load_text_decoder(
    directory: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    ple_on_host: bool = False,
) -> TextDecoder:
    """Build the text decoder of a checkpoint directory (``config.json`` + safetensors) and load its weights.

    ``dtype`` and ``ple_on_host`` as for :func:`load_pretrained`."""
    directory = Path(directory)
    dtype = _dtype(dtype, device, directory)
    config = text_from_hf(_config(directory))
    with torch.device("meta"):
        model = TextDecoder(config, ple_on_host=ple_on_host)
    text, _, _ = _partition(read_safetensors(directory, dtype), config)  # towers and the rest: not ours here
    return _assign(model, text, directory, device)


def load_pretrained(
    directory: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    tokenizer: Any = None,
    ple_on_host: bool = False,
):
    """The whole model (:class:`model.gemma4.Gemma4`) of a checkpoint directory: the text decoder and whichever
    towers its ``config.json`` describes. Text-only (``Gemma4ForCausalLM``) checkpoints load too.

    ``dtype``: a ``torch.dtype`` or one of the names in :data:`DTYPES` ("bfloat16", "bf16" …); None (the
    default) is :func:`default_dtype` of ``device``: bfloat16 on an accelerator, float32 on the CPU;
    ``"checkpoint"`` keeps the checkpoint's own. float16 is loaded, with a warning: it overflows in Gemma.

    ``ple_on_host``: keep the per-layer-embedding table (``embed_tokens_per_layer``, 2.3 B of E2B's 5.1 B
    parameters) in host memory, memory-mapped from the safetensors file, not copied, while every other weight
    goes to ``device``; each forward and decode step then gathers the current tokens' rows on the host and sends
    those (reading the ids on the host: a device→host copy per step; :meth:`TextDecoder.per_layer_inputs`). If
    ``dtype`` differs from the checkpoint's, the table is converted in host RAM (a copy in the new dtype): pass
    the checkpoint's dtype (or ``"checkpoint"``) to keep it mapped. ``model.to(...)`` leaves the table where it
    is (:class:`model.host.HostEmbedding`). A checkpoint without per-layer embeddings ignores the option.

    ``tokenizer``: if given, checked against the config (:func:`check_tokenizer`) before any weight is read."""
    from .gemma4 import Gemma4

    directory = Path(directory)
    dtype = _dtype(dtype, device, directory)
    config = model_from_hf(_config(directory))
    if tokenizer is not None:
        check_tokenizer(config, tokenizer)
    with torch.device("meta"):
        model = Gemma4(config, ple_on_host=ple_on_host)
    text, towers, stray = _partition(read_safetensors(directory, dtype), config.text)
    weights = {f"language_model.{k}": v for k, v in text.items()} | towers | stray  # stray: reported unexpected
    return _assign(model, weights, directory, device)


def _assign(model: torch.nn.Module, weights: dict[str, torch.Tensor], directory: Path, device) -> torch.nn.Module:
    """Check names and shapes, then take the tensors as the model's own (no copy unless device/dtype change).
    The tables of :class:`~model.host.HostEmbedding` modules stay where they were read: in host memory."""
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
    host = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, HostEmbedding)}
    model.load_state_dict({k: weights[k] if k in host else weights[k].to(device) for k in expected}, assign=True)
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


# --- Hugging Face config.json ---------------------------------------------------------------------------------

_HF_NAMES = {  # ours → config.json (text_config)
    "vocab_size": "vocab_size",
    "d_model": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "n_global_kv_heads": "num_global_key_value_heads",
    "head_dim": "head_dim",
    "global_head_dim": "global_head_dim",
    "d_ff": "intermediate_size",
    "double_wide_mlp": "use_double_wide_mlp",
    "sliding_window": "sliding_window",
    "n_kv_shared_layers": "num_kv_shared_layers",
    "k_eq_v": "attention_k_eq_v",
    "ple_dim": "hidden_size_per_layer_input",
    "ple_vocab_size": "vocab_size_per_layer_input",
    "final_logit_softcap": "final_logit_softcapping",
    "bidirectional": "use_bidirectional_attention",
    "rms_eps": "rms_norm_eps",
    "tie_embeddings": "tie_word_embeddings",
}


def text_from_hf(config: Mapping[str, Any]) -> TextConfig:
    """A ``TextConfig`` from a checkpoint's ``config.json`` (the whole file or its ``text_config``)."""
    text = config.get("text_config", config)
    model_type = text.get("model_type", "gemma4_text")
    if model_type not in ("gemma4_text", "gemma4"):
        raise ConfigError(f"config.json describes model_type {model_type!r}, not a Gemma 4 text model")
    if text.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ConfigError(f"unsupported hidden_activation {text['hidden_activation']!r}")
    if text.get("attention_bias"):
        raise ConfigError("attention_bias=true is not a Gemma 4 architecture")
    kw: dict[str, Any] = {}
    for ours, theirs in _HF_NAMES.items():
        if text.get(theirs) is not None:
            kw[ours] = text[theirs]
    if text.get("enable_moe_block"):
        kw.update(
            n_experts=text["num_experts"], top_k_experts=text["top_k_experts"], moe_d_ff=text["moe_intermediate_size"]
        )
    n_layers = kw["n_layers"]
    kw["layer_types"] = tuple(text.get("layer_types") or interleaved_layer_types(n_layers, 6))
    kw.update(_per_layer_overrides(text.get("per_layer_config") or {}, kw["layer_types"]))
    rope = text.get("rope_parameters") or {}
    sliding, full = rope.get(SLIDING, {}), rope.get(FULL, {})
    for kind, params, allowed in ((SLIDING, sliding, ("default",)), (FULL, full, ("proportional",))):
        if params.get("rope_type", allowed[0]) not in allowed:
            raise ConfigError(
                f"rope_parameters[{kind!r}] has rope_type {params['rope_type']!r}; expected {allowed[0]!r}"
            )
    kw["rope"] = RopeConfig(
        sliding_theta=float(sliding.get("rope_theta", 10_000.0)),
        full_theta=float(full.get("rope_theta", 1_000_000.0)),
        full_partial_rotary=float(full.get("partial_rotary_factor", 0.25)),
        sliding_factor=float(sliding.get("factor", 1.0)),
        full_factor=float(full.get("factor", 1.0)),
    )
    if missing := [
        m for m in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "sliding_window") if m not in kw
    ]:
        raise ConfigError(f"config.json lacks {', '.join(_HF_NAMES[m] for m in missing)}")
    return TextConfig(**kw)


def _per_layer_overrides(per_layer: Mapping[str, Mapping[str, Any]], layer_types: tuple[str, ...]) -> dict[str, int]:
    """``global_head_dim`` / ``n_global_kv_heads`` from transformers' ``per_layer_config`` (how it saves them):
    the same override on every full layer, none on sliding layers; anything else is not Gemma 4."""
    found: dict[str, set] = {"head_dim": set(), "num_key_value_heads": set()}
    for key, overrides in per_layer.items():
        layer = int(key)
        if not 0 <= layer < len(layer_types) or layer_types[layer] != FULL or set(overrides) - set(found):
            raise ConfigError(f"per_layer_config[{key!r}] = {dict(overrides)} is not a Gemma 4 full-layer override")
        for name, value in overrides.items():
            found[name].add(value)
    if any(len(values) > 1 for values in found.values()):
        raise ConfigError(f"per_layer_config gives full layers different values: {found}")
    out = {}
    if found["head_dim"]:
        out["global_head_dim"] = found["head_dim"].pop()
    if found["num_key_value_heads"]:
        out["n_global_kv_heads"] = found["num_key_value_heads"].pop()
    return out


def text_to_hf(config: TextConfig) -> dict[str, Any]:
    """The ``text_config`` dict of ``config.json`` for ``config`` (inverse of :func:`text_from_hf`)."""
    out: dict[str, Any] = {"model_type": "gemma4_text", "hidden_activation": "gelu_pytorch_tanh"}
    for ours, theirs in _HF_NAMES.items():
        out[theirs] = getattr(config, ours)
    if out["num_global_key_value_heads"] is None:
        del out["num_global_key_value_heads"]
    if not config.ple_dim:
        out["hidden_size_per_layer_input"] = 0
    out["layer_types"] = list(config.layer_types)
    out["enable_moe_block"] = bool(config.n_experts)
    if config.n_experts:
        out.update(
            num_experts=config.n_experts, top_k_experts=config.top_k_experts, moe_intermediate_size=config.moe_d_ff
        )
    rope = config.rope
    sliding = {"rope_type": "default", "rope_theta": rope.sliding_theta}
    full = {
        "rope_type": "proportional",
        "partial_rotary_factor": rope.full_partial_rotary,
        "rope_theta": rope.full_theta,
    }
    if rope.sliding_factor != 1.0:
        sliding["factor"] = rope.sliding_factor
    if rope.full_factor != 1.0:
        full["factor"] = rope.full_factor
    out["rope_parameters"] = {SLIDING: sliding, FULL: full}
    return out


_VISION_NAMES = {  # ours → config.json (vision_config)
    "d_model": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "d_ff": "intermediate_size",
    "patch_size": "patch_size",
    "position_table_size": "position_embedding_size",
    "pool_kernel": "pooling_kernel_size",
    "clipped_linears": "use_clipped_linears",
    "standardize": "standardize",
    "rms_eps": "rms_norm_eps",
}
_AUDIO_NAMES = {  # ours → config.json (audio_config)
    "d_model": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "conv_kernel": "conv_kernel_size",
    "residual_weight": "residual_weight",
    "chunk_size": "attention_chunk_size",
    "context_left": "attention_context_left",
    "context_right": "attention_context_right",
    "logit_cap": "attention_logit_cap",
    "invalid_logit": "attention_invalid_logits_value",
    "clip_value": "gradient_clipping",
    "clipped_linears": "use_clipped_linears",
    "output_dim": "output_proj_dims",
    "rms_eps": "rms_norm_eps",
}
_TOKEN_NAMES = {  # ours → config.json (top level)
    "image": "image_token_id",
    "audio": "audio_token_id",
    "video": "video_token_id",
    "boi": "boi_token_id",
    "eoi": "eoi_token_id",
    "boa": "boa_token_id",
    "eoa": "eoa_token_index",
}


def _pick(section: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    return {ours: section[theirs] for ours, theirs in names.items() if section.get(theirs) is not None}


def vision_from_hf(vision: Mapping[str, Any]) -> VisionConfig:
    if vision.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ConfigError(f"vision_config: unsupported hidden_activation {vision['hidden_activation']!r}")
    if vision.get("attention_bias"):
        raise ConfigError("vision_config: attention_bias=true is not a Gemma 4 architecture")
    rope = vision.get("rope_parameters") or {}
    if rope.get("rope_type", "axial") != "axial":
        raise ConfigError(f"vision_config: rope_type {rope['rope_type']!r}; expected 'axial'")
    kw = _pick(vision, _VISION_NAMES)
    if "head_dim" not in kw and "d_model" in kw and "n_heads" in kw:
        kw["head_dim"] = kw["d_model"] // kw["n_heads"]
    kw.setdefault("n_kv_heads", kw.get("n_heads", VisionConfig.n_kv_heads))
    kw["rope_theta"] = float(rope.get("rope_theta", 100.0))
    return VisionConfig(**kw)


def audio_from_hf(audio: Mapping[str, Any]) -> AudioConfig:
    if audio.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"audio_config: unsupported hidden_act {audio['hidden_act']!r}")
    kw = _pick(audio, _AUDIO_NAMES)
    if audio.get("subsampling_conv_channels") is not None:
        kw["conv_channels"] = tuple(audio["subsampling_conv_channels"])
    return AudioConfig(**kw)


def model_from_hf(config: Mapping[str, Any]) -> ModelConfig:
    """A ``ModelConfig`` from a checkpoint's ``config.json``: a ``Gemma4ForConditionalGeneration`` file (text,
    optional vision and audio sections, token ids) or a text-only ``Gemma4ForCausalLM`` one."""
    if config.get("model_type", "gemma4") not in ("gemma4", "gemma4_text"):
        raise ConfigError(f"config.json describes model_type {config['model_type']!r}, not Gemma 4")
    text = text_from_hf(config)
    vision = vision_from_hf(config["vision_config"]) if config.get("vision_config") else None
    audio = audio_from_hf(config["audio_config"]) if config.get("audio_config") else None
    tokens = TokenIds(**_pick(config, _TOKEN_NAMES))
    pad = config.get("text_config", config).get("pad_token_id")
    if pad is not None:
        tokens = replace(tokens, pad=pad)
    stop = _ids(config.get("eos_token_id", config.get("text_config", {}).get("eos_token_id")))
    if stop:
        tokens = replace(tokens, stop_ids=tuple(dict.fromkeys(stop)))  # in order, once each
    return ModelConfig(text=text, vision=vision, audio=audio, tokens=tokens)


def model_to_hf(config: ModelConfig) -> dict[str, Any]:
    """``config.json`` for ``config`` in the ``Gemma4ForConditionalGeneration`` layout (inverse of
    :func:`model_from_hf`)."""
    out: dict[str, Any] = {"model_type": "gemma4", "text_config": text_to_hf(config.text)}
    out["text_config"]["pad_token_id"] = config.tokens.pad
    out["tie_word_embeddings"] = config.text.tie_embeddings
    out.update({theirs: getattr(config.tokens, ours) for ours, theirs in _TOKEN_NAMES.items()})
    out["eos_token_id"] = list(config.tokens.stop_ids)
    if config.vision is not None:
        v = config.vision
        out["vision_config"] = {"model_type": "gemma4_vision", "hidden_activation": "gelu_pytorch_tanh"}
        out["vision_config"].update({theirs: getattr(v, ours) for ours, theirs in _VISION_NAMES.items()})
        out["vision_config"]["rope_parameters"] = {"rope_type": "axial", "rope_theta": v.rope_theta}
    else:
        out["vision_config"] = None
    if config.audio is not None:
        a = config.audio
        out["audio_config"] = {"model_type": "gemma4_audio", "hidden_act": "silu"}
        out["audio_config"].update({theirs: getattr(a, ours) for ours, theirs in _AUDIO_NAMES.items()})
        out["audio_config"]["subsampling_conv_channels"] = list(a.conv_channels)
    else:
        out["audio_config"] = None
    return out
