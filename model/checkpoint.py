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

The dtype left unsaid is the one the checkpoint stores its weights in (:func:`default_dtype`), on every device:
the published checkpoints are bfloat16, which keeps E2B at 10 GB instead of 20 GB in float32, and on a CPU with
bfloat16 instructions (AVX512-BF16 / AMX) computes faster too (measured, README "Device and dtype"). A float16
checkpoint is loaded in bfloat16 (float16 overflows in Gemma's activations, transformers #36822) and a float64 one
in float32. ``dtype="checkpoint"`` keeps each tensor's own. ``ple_on_host=True`` keeps the per-layer-embedding
table (E2B/E4B) in host memory, memory-mapped from the file, while every other weight goes to the device
(:class:`model.host.HostEmbedding`).

A checkpoint is a directory (or a Hugging Face repo id found in the local hub cache:
``data_specs.checkpoint_dir.resolve_checkpoint``) laid out as the published ones are (spec §12): ``config.json``,
one ``model.safetensors`` or shards listed by ``model.safetensors.index.json``, and ``generation_config.json``,
whose ``eos_token_id`` adds to the stop ids. :func:`inspect_checkpoint` reads only the config and the safetensors
headers and says what loading would hold (:class:`CheckpointInfo`), so a job can refuse a checkpoint before it
starts.

A checkpoint folder is untrusted input (issue 23), refused in one line naming the file or key:

* Its files are read only through ``data_specs.checkpoint_dir`` (regular files only, so nothing blocks on a FIFO
  or reads ``/dev/zero``; JSON with a size bound; safetensors headers checked against the file's size; shard
  names confined to the folder); safetensors' own ``safe_open`` opens a file only after its header has passed,
  and whatever it still refuses is a :class:`CheckpointError` naming the file.
* Every ``config.json`` value is checked against its :class:`~model.config.Limit` (type and bounds) before
  anything is built from it, and the configs' consistency errors are told in ``config.json``'s key names.
* The loaded weights must be finite: one ``aminmax`` per floating tensor where it lands (:func:`_check_finite`).

:func:`check_tokenizer` compares a tokenizer's identity (vocabulary size, pad, bos, media and control-token ids)
with a checkpoint's config, never its stop ids: generation stops at the union of the config's, the generation
config's and the tokenizer's end-of-turn and tool-response opener (:func:`stop_ids`). The tokenizer is duck-typed
(``.special`` with the control ids by role, ``.vocab_size``): the model never imports the front end.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from data_specs.checkpoint_dir import (
    CheckpointFileError,
    read_json_file,
    resolve_checkpoint,
    safetensors_header,
    weight_files,
)

from .config import (
    AUDIO_LIMITS,
    CONV_CHANNELS,
    FULL,
    ROPE_LIMITS,
    SLIDING,
    TEXT_LIMITS,
    TOKEN_ID,
    VISION_LIMITS,
    AudioConfig,
    ConfigError,
    Limit,
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
    "CheckpointInfo",
    "DTYPES",
    "IDENTITY_IDS",
    "TokenizerMismatchError",
    "check_tokenizer",
    "default_dtype",
    "inspect_checkpoint",
    "load_config",
    "load_pretrained",
    "load_text_decoder",
    "model_from_hf",
    "model_to_hf",
    "read_safetensors",
    "save_pretrained",
    "save_text_decoder",
    "stop_ids",
    "stored_dtype",
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


_SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def stored_dtype(directory: str | os.PathLike) -> torch.dtype:
    """The floating dtype that holds most of a checkpoint's bytes (read from the safetensors headers)."""
    return _stored(_headers(Path(directory)), directory)


def _stored(headers: dict[Path, dict[str, dict]], directory: str | os.PathLike) -> torch.dtype:
    by_dtype: dict[torch.dtype, int] = {}
    for header in headers.values():
        for entry in header.values():
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            if dtype.is_floating_point:
                by_dtype[dtype] = by_dtype.get(dtype, 0) + entry["data_offsets"][1] - entry["data_offsets"][0]
    if not by_dtype:
        raise CheckpointError(f"{os.fspath(directory)!r} holds no floating-point weights")
    return max(by_dtype, key=by_dtype.get)


def default_dtype(directory: str | os.PathLike) -> torch.dtype:
    """The dtype the loaders use when none is given: the checkpoint's stored dtype (:func:`stored_dtype`), on any
    device, except float16 → bfloat16 (float16 overflows in Gemma's activations, transformers #36822) and
    float64 → float32."""
    stored = stored_dtype(directory)
    return {torch.float16: torch.bfloat16, torch.float64: torch.float32}.get(stored, stored)


def _dtype(dtype: str | torch.dtype | None, directory: Path) -> torch.dtype | None:
    """The dtype to load ``directory`` in; None keeps each tensor's own."""
    if dtype is None:
        return default_dtype(directory)
    if isinstance(dtype, str) and dtype == KEEP:
        return None
    if isinstance(dtype, str) and dtype in DTYPES:
        dtype = DTYPES[dtype]
    if not isinstance(dtype, torch.dtype):
        raise ValueError(
            f"dtype {dtype!r} is not a torch.dtype or one of the names {', '.join(DTYPES)}, {KEEP!r} (each "
            "tensor's own) or None (the checkpoint's stored dtype)"
        )
    if dtype == torch.float16:
        warnings.warn(
            f"loading {os.fspath(directory)!r} in float16: Gemma's activations overflow float16 (transformers "
            "#36822); bfloat16 has float32's range",
            stacklevel=3,
        )
    return dtype


IDENTITY_IDS = ("pad", "bos", "image", "audio", "video", "boi", "eoi", "boa", "eoa")  # what check_tokenizer compares


def check_tokenizer(config: ModelConfig, tokenizer: Any) -> None:
    """Raise :class:`TokenizerMismatchError` naming every identity id (:data:`IDENTITY_IDS`: pad, bos and the
    media control ids of :class:`~model.config.TokenIds`) and the vocabulary size where ``tokenizer`` and
    ``config`` disagree; return quietly if they agree. Stop ids are not identities (a base model or a fine-tune
    may list fewer): they are joined, not compared (:func:`stop_ids`).

    ``tokenizer`` is duck-typed: ``.special`` holds the control ids as attributes named by role (as
    ``preprocess.tokenizer.Tokenizer`` has), ``.vocab_size`` the number of pieces. Ids the tokenizer has but the
    config does not name are not compared. The vocabulary must equal the embedding's rows exactly, as in every
    Gemma 4 checkpoint."""
    special = getattr(tokenizer, "special", None)
    vocab_size = getattr(tokenizer, "vocab_size", None)
    if special is None or vocab_size is None:
        raise TypeError(f"{type(tokenizer).__name__} is not a tokenizer: it needs .special and .vocab_size")
    differences = [
        (name, getattr(special, name), getattr(config.tokens, name))
        for name in IDENTITY_IDS
        if hasattr(special, name) and getattr(special, name) != getattr(config.tokens, name)
    ]
    if vocab_size != config.text.vocab_size:
        differences.append(("vocab_size", vocab_size, config.text.vocab_size))
    if differences:
        raise TokenizerMismatchError(getattr(tokenizer, "source", type(tokenizer).__name__), differences)


def _headers(directory: Path) -> dict[Path, dict[str, dict]]:
    """Each weight file's tensors (name → dtype, shape, data_offsets), every file checked to be a regular file
    with a sound header before anything else opens it (``data_specs.checkpoint_dir``)."""
    try:
        return {file: safetensors_header(file) for file in weight_files(directory)}
    except CheckpointFileError as error:
        raise CheckpointError(str(error)) from None


def read_safetensors(directory: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, memory-mapped (converted only when ``dtype`` differs). A file that
    safetensors refuses all the same is a :class:`CheckpointError` naming it."""
    tensors = {}
    for file in _headers(Path(directory)):  # headers checked before safetensors opens anything
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    tensor = f.get_tensor(key)
                    if not tensor.is_floating_point():  # every Gemma 4 weight is floating point: never cast quietly
                        raise CheckpointError(
                            f"{os.fspath(file)!r}: weight {key!r} is {str(tensor.dtype).removeprefix('torch.')}, "
                            "not floating point; the checkpoint is not a Gemma 4 checkpoint as published"
                        )
                    tensors[key] = tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
        except SafetensorError as error:
            raise CheckpointError(f"{os.fspath(file)!r} is not a readable safetensors file ({error})") from None
    return tensors


def _text_prefix(names) -> str:
    prefix = next((p for p in PREFIXES if any(k.startswith(p + "embed_tokens.") for k in names)), None)
    if prefix is None:
        raise CheckpointError("no text embedding (model[.language_model].embed_tokens.weight) in the checkpoint")
    return prefix


def _unused(name: str, config: TextConfig) -> bool:
    """Whether a text weight (our name) is a KV-shared layer's unused projection: E2B's file stores 60 of them,
    E4B's 54 (spec §12), which transformers' model does not have."""
    parts = name.split(".")
    if len(parts) > 3 and parts[0] == "layers" and parts[1].isdigit() and parts[2] == "self_attn":
        layer = int(parts[1])
        return (
            parts[3] in ("k_proj", "v_proj", "k_norm") and layer < config.n_layers and config.kv_source(layer) != layer
        )
    return False


def _partition(tensors: dict[str, Any], config: TextConfig) -> tuple[dict, dict, dict]:
    """Split a checkpoint's tensors (or their header entries) into (text weights by our decoder's names, tower
    weights by their names below ``model.``, everything else but the tied output embedding)."""
    text_prefix = _text_prefix(tensors)
    towers = tuple("model." + t for t in TOWERS)
    text, tower, stray = {}, {}, {}
    for key, tensor in tensors.items():
        if key.startswith(towers):
            tower[key.removeprefix("model.")] = tensor
        elif key.startswith(text_prefix):
            name = key[len(text_prefix) :]
            if not _unused(name, config):
                text[name] = tensor
        elif key != "lm_head.weight":  # the tied output embedding is the input embedding
            stray[key] = tensor
    return text, tower, stray


def _config(directory: Path) -> dict:
    try:
        config = read_json_file(directory, "config.json")
        if config is None:
            raise CheckpointError(f"{os.fspath(directory)!r} has no config.json")
        generation = read_json_file(directory, "generation_config.json")  # its eos_token_id adds stop ids (§1.6)
    except CheckpointFileError as error:
        raise CheckpointError(str(error)) from None
    stop = (generation or {}).get("eos_token_id")
    if stop is not None:
        generation_file = f"{os.fspath(directory / 'generation_config.json')!r}: "
        config["eos_token_id"] = [*_ids(config.get("eos_token_id"), "config.json: "), *_ids(stop, generation_file)]
    return config


def _ids(value: Any, where: str) -> list[int]:
    """An ``eos_token_id`` (an id, a list of ids or None) as a list; :class:`ConfigError` naming the key
    (``where``: the file and the key's section, e.g. ``config.json: text_config.``) for anything else."""
    ids = [] if value is None else [value] if isinstance(value, int) else value
    if not isinstance(ids, list) or not all(TOKEN_ID.problem(i) is None for i in ids):
        raise ConfigError(f"{where}eos_token_id is {_shown(value)}; expected a token id or a list of them")
    return list(ids)


def stop_ids(config: ModelConfig, tokenizer: Any = None) -> tuple[int, ...]:
    """Where generation stops: the ``eos_token_id`` of ``config.json`` and ``generation_config.json`` (as
    :func:`load_config` joins them), then the tokenizer's end of turn and tool-response opener (spec §1.6), each
    once, in that order. A checkpoint saved by a trainer with ``eos_token_id: 1`` alone still stops at the end
    of a turn."""
    special = getattr(tokenizer, "special", None)
    extra = () if special is None else (special.eos, special.turn_end, special.tool_response_start)
    return tuple(dict.fromkeys((*config.tokens.stop_ids, *extra)))


def load_config(directory: str | os.PathLike) -> ModelConfig:
    """The :class:`~model.config.ModelConfig` of a checkpoint (a directory or a repo id in the hub cache):
    ``config.json``, with ``generation_config.json``'s stop ids (no weights read)."""
    return model_from_hf(_config(resolve_checkpoint(directory)))


@dataclass(frozen=True)
class CheckpointInfo:
    """What loading a checkpoint would hold, known from its config and safetensors headers alone."""

    directory: Path
    config: ModelConfig
    dtype: torch.dtype  # the compute dtype the loaders would use
    stored_dtype: torch.dtype
    weight_bytes: int  # every weight the model holds, in ``dtype`` (KV-shared layers' unused ones excluded)
    ple_bytes: int  # of which the per-layer-embedding table (0 without one)

    @property
    def name(self) -> str:
        """A short name: the directory's, or the repo's for a hub-cache snapshot."""
        parts = Path(os.path.abspath(self.directory)).parts  # not resolved: a snapshot may link elsewhere
        if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
            return parts[-3].split("--")[-1]
        return self.directory.resolve().name

    def cache_bytes(self, slots: int, context: int) -> int:
        """The KV cache of ``slots`` rows of ``context`` tokens, in ``dtype`` (``model.cache.cache_bytes``)."""
        from .cache import cache_bytes

        return cache_bytes(self.config.text, slots, context, self.dtype)


def inspect_checkpoint(directory: str | os.PathLike, *, dtype: str | torch.dtype | None = None) -> CheckpointInfo:
    """Read a checkpoint's config and weight headers (no weight data) and check that its tensors are the ones its
    config describes, by name and shape; :class:`CheckpointError` naming what does not fit."""
    from .gemma4 import Gemma4

    directory = resolve_checkpoint(directory)
    config = load_config(directory)
    headers = _headers(directory)
    declared = {name: entry for header in headers.values() for name, entry in header.items()}
    chosen = _dtype(dtype, directory)
    with torch.device("meta"):
        expected = dict(Gemma4(config).state_dict())
    text, towers, stray = _partition(declared, config.text)  # header entries by our names, as the loader's
    weights = {f"language_model.{k}": v for k, v in text.items()} | towers | stray
    _check_names(directory, expected, {k: tuple(v["shape"]) for k, v in weights.items()})
    stored = _stored(headers, directory)
    compute = stored if chosen is None else chosen  # None: dtype="checkpoint", kept as stored
    size = {k: math.prod(v["shape"]) * _element_size(v["dtype"], chosen) for k, v in weights.items()}
    ple = size.get("language_model.embed_tokens_per_layer.weight", 0)
    return CheckpointInfo(directory, config, compute, stored, sum(size.values()), ple)


def _element_size(name: str, dtype: torch.dtype | None) -> int:
    stored = _SAFETENSORS_DTYPES[name]
    target = dtype if dtype is not None and stored.is_floating_point else stored
    return torch.empty((), dtype=target).element_size()


def _check_names(directory: Path, expected: dict, shapes: dict[str, tuple]) -> None:
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [
        f"{k}: checkpoint {shapes[k]}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in shapes and shapes[k] != tuple(v.shape)
    ]
    if missing or unexpected or wrong:

        def cut(items: list) -> str:
            return str(items[:8])[:-1] + (f", … {len(items) - 8} more]" if len(items) > 8 else "]")

        raise CheckpointError(
            f"{os.fspath(directory)!r} does not fit its config: missing {cut(missing)}, unexpected {cut(unexpected)}, "
            f"wrong shapes {cut(wrong)}"
        )


def load_text_decoder(
    directory: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    ple_on_host: bool = False,
) -> TextDecoder:
    """Build the text decoder of a checkpoint directory (``config.json`` + safetensors) and load its weights.

    ``dtype`` and ``ple_on_host`` as for :func:`load_pretrained`."""
    directory = resolve_checkpoint(directory)
    config = text_from_hf(_config(directory))  # a missing or broken config.json is named first
    dtype = _dtype(dtype, directory)
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
    """The whole model (:class:`model.gemma4.Gemma4`) of a checkpoint: the text decoder and whichever towers its
    ``config.json`` describes. ``directory`` is a checkpoint directory or a Hugging Face repo id found in the
    local hub cache (downloaded where the hub is reachable). Text-only (``Gemma4ForCausalLM``) checkpoints load
    too.

    ``dtype``: a ``torch.dtype`` or one of the names in :data:`DTYPES` ("bfloat16", "bf16" …); None (the
    default) is :func:`default_dtype`: the checkpoint's stored dtype; ``"checkpoint"`` keeps each tensor's own.
    float16 is loaded, with a warning: it overflows in Gemma.

    ``ple_on_host``: keep the per-layer-embedding table (``embed_tokens_per_layer``, 2.3 B of E2B's 5.1 B
    parameters) in host memory, memory-mapped from the safetensors file, not copied, while every other weight
    goes to ``device``; each forward and decode step then gathers the current tokens' rows on the host and sends
    those (reading the ids on the host: a device→host copy per step; :meth:`TextDecoder.per_layer_inputs`). If
    ``dtype`` differs from the checkpoint's, the table is converted in host RAM (a copy in the new dtype): pass
    the checkpoint's dtype (or ``"checkpoint"``) to keep it mapped. ``model.to(...)`` leaves the table where it
    is (:class:`model.host.HostEmbedding`). A checkpoint without per-layer embeddings ignores the option.

    ``tokenizer``: if given, checked against the config (:func:`check_tokenizer`) before any weight is read, and
    its end-of-turn and tool-response ids join the stop ids (:func:`stop_ids`)."""
    from .gemma4 import Gemma4

    directory = resolve_checkpoint(directory)
    config = model_from_hf(_config(directory))  # a missing or broken config.json is named first
    dtype = _dtype(dtype, directory)
    if tokenizer is not None:
        check_tokenizer(config, tokenizer)
        config = replace(config, tokens=replace(config.tokens, stop_ids=stop_ids(config, tokenizer)))
    with torch.device("meta"):
        model = Gemma4(config, ple_on_host=ple_on_host)
    text, towers, stray = _partition(read_safetensors(directory, dtype), config.text)
    weights = {f"language_model.{k}": v for k, v in text.items()} | towers | stray  # stray: reported unexpected
    return _assign(model, weights, directory, device)


def _assign(model: torch.nn.Module, weights: dict[str, torch.Tensor], directory: Path, device) -> torch.nn.Module:
    """Check names and shapes, then take the tensors as the model's own (no copy unless device/dtype change).
    The tables of :class:`~model.host.HostEmbedding` modules stay where they were read: in host memory."""
    expected = dict(model.state_dict())
    _check_names(directory, expected, {k: tuple(v.shape) for k, v in weights.items()})
    host = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, HostEmbedding)}
    state = {k: weights[k] if k in host else weights[k].to(device) for k in expected}
    _check_finite(directory, state)
    model.load_state_dict(state, assign=True)
    model.reset_buffers(device)  # non-persistent buffers (RoPE frequencies) were built on meta
    return model.eval()


_CLIP_BOUNDS = ("input_min", "input_max", "output_min", "output_max")  # ClippedLinear's; ∓inf means no clip


def _check_finite(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """:class:`CheckpointError` naming the first weight holding a NaN or an infinity (a clip bound may be
    infinite on its own side: -inf for a minimum, +inf for a maximum, meaning no clip).

    One pass over each floating tensor where it now lives, as loaded: ``torch.aminmax`` (NaN propagates to both
    results, an infinity shows in one), which allocates nothing the size of the tensor (``isfinite().all()``
    would allocate a mask, and took 20× as long on the CPU). The per-tensor extremes are read back together,
    once per device, so a GPU synchronises once. float8 tensors, which aminmax does not take, are checked on
    their bits."""
    extremes: dict[torch.device, list[torch.Tensor]] = {}
    names: dict[torch.device, list[str]] = {}
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or tensor.numel() == 0 or tensor.is_meta:  # meta: no values to check
            continue
        if tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            bad = _float8_not_finite(tensor)
            low = high = torch.where(bad, float("nan"), 0.0)
        else:
            low, high = torch.aminmax(tensor)
        extremes.setdefault(tensor.device, []).append(torch.stack([low.float(), high.float()]))
        names.setdefault(tensor.device, []).append(name)
    for device, values in extremes.items():
        for name, (low, high) in zip(names[device], torch.stack(values).tolist(), strict=True):
            if name.endswith(_CLIP_BOUNDS) and not (math.isnan(low) or math.isnan(high)):
                # a minimum may be -inf and a maximum +inf; the other infinity clamps everything to it
                if name.endswith("_min") and math.inf not in (low, high):
                    continue
                if name.endswith("_max") and -math.inf not in (low, high):
                    continue
            elif math.isfinite(low) and math.isfinite(high):
                continue
            value = "NaN" if math.isnan(low) or math.isnan(high) else "an infinity"
            raise CheckpointError(
                f"{os.fspath(directory)!r}: weight {name!r} holds {value} (min {low}, max {high}); the checkpoint "
                "is damaged"
            )


def _float8_not_finite(tensor: torch.Tensor) -> torch.Tensor:
    """Whether a float8 tensor holds a NaN (e4m3fn: all exponent and mantissa bits set) or an infinity or NaN
    (e5m2: all exponent bits set), read on its bits."""
    bits = tensor.view(torch.uint8) & 0x7F
    return (bits == 0x7F).any() if tensor.dtype == torch.float8_e4m3fn else (bits >= 0x7C).any()


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Write ``config.json`` + ``model.safetensors`` in the ``Gemma4ForConditionalGeneration`` layout (every
    weight under ``model.``, the tied output embedding not repeated); :func:`load_pretrained` and transformers
    both read it."""
    config: ModelConfig = model.config
    _write(directory, model_to_hf(config, dtype=next(model.parameters()).dtype), model)


def save_text_decoder(model: TextDecoder, directory: str | os.PathLike) -> None:
    """Write ``config.json`` + ``model.safetensors`` in the ``Gemma4ForCausalLM`` layout (``model.`` prefix, the
    tied output embedding not repeated), which :func:`load_text_decoder` and transformers both read."""
    dtype = next(model.parameters()).dtype
    _write(directory, dict(text_to_hf(model.config, dtype=dtype), architectures=["Gemma4ForCausalLM"]), model)


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
    """A ``TextConfig`` from a checkpoint's ``config.json`` (the whole file or its ``text_config``). Every value
    is checked against its :class:`~model.config.Limit` before anything is built from it: :class:`ConfigError`
    of one line naming the key (``config.json: text_config.num_hidden_layers is 1000000; at most 1024``)."""
    text = _section(config, "text_config", "")
    where = "text_config." if text is not None else ""
    text = config if text is None else text
    model_type = text.get("model_type", "gemma4_text")
    if model_type not in ("gemma4_text", "gemma4"):
        raise ConfigError(f"config.json describes model_type {_shown(model_type)}, not a Gemma 4 text model")
    if text.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ConfigError(f"unsupported hidden_activation {_shown(text['hidden_activation'])}")
    if text.get("attention_bias"):
        raise ConfigError("attention_bias=true is not a Gemma 4 architecture")
    kw = _pick(text, _HF_NAMES, TEXT_LIMITS, where)
    if _checked(text, "enable_moe_block", _FLAG, where):
        for ours, theirs in (("n_experts", "num_experts"), ("top_k_experts", "top_k_experts")):
            kw[ours] = _checked(text, theirs, TEXT_LIMITS[ours], where)
        kw["moe_d_ff"] = _checked(text, "moe_intermediate_size", TEXT_LIMITS["moe_d_ff"], where)
    if missing := [
        m for m in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "sliding_window") if m not in kw
    ]:
        raise ConfigError(f"config.json lacks {', '.join(where + _HF_NAMES[m] for m in missing)}")
    layer_types = text.get("layer_types")
    if layer_types is not None and not (isinstance(layer_types, list) and all(isinstance(t, str) for t in layer_types)):
        raise ConfigError(f"config.json: {where}layer_types is {_shown(layer_types)}; expected a list of names")
    kw["layer_types"] = tuple(layer_types or interleaved_layer_types(kw["n_layers"], 6))
    per_layer = _section(text, "per_layer_config", where) or {}
    kw.update(_per_layer_overrides(per_layer, kw["layer_types"], where))
    rope = _section(text, "rope_parameters", where) or {}
    sliding, full = (_section(rope, kind, f"{where}rope_parameters.") or {} for kind in (SLIDING, FULL))
    for kind, params, allowed in ((SLIDING, sliding, ("default",)), (FULL, full, ("proportional",))):
        if params.get("rope_type", allowed[0]) not in allowed:
            raise ConfigError(
                f"rope_parameters[{kind!r}] has rope_type {_shown(params['rope_type'])}; expected {allowed[0]!r}"
            )
    rope_kw = {}
    for ours, kind, params, theirs in (
        ("sliding_theta", SLIDING, sliding, "rope_theta"),
        ("full_theta", FULL, full, "rope_theta"),
        ("full_partial_rotary", FULL, full, "partial_rotary_factor"),
        ("sliding_factor", SLIDING, sliding, "factor"),
        ("full_factor", FULL, full, "factor"),
    ):
        if params.get(theirs) is not None:
            rope_kw[ours] = float(_checked(params, theirs, ROPE_LIMITS[ours], f"{where}rope_parameters.{kind}."))
    kw["rope"] = RopeConfig(**rope_kw)
    return _build(TextConfig, kw, _HF_NAMES | {"layer_types": "layer_types"}, where)


def _per_layer_overrides(per_layer: Mapping[str, Any], layer_types: tuple[str, ...], where: str) -> dict[str, int]:
    """``global_head_dim`` / ``n_global_kv_heads`` from transformers' ``per_layer_config`` (how it saves them):
    the same override on every full layer, none on sliding layers; anything else is not Gemma 4."""
    found: dict[str, set] = {"head_dim": set(), "num_key_value_heads": set()}
    limits = {"head_dim": TEXT_LIMITS["global_head_dim"], "num_key_value_heads": TEXT_LIMITS["n_global_kv_heads"]}
    for key, overrides in per_layer.items():
        layer = int(key) if key.isdecimal() and len(key) < 6 else -1
        if (
            not isinstance(overrides, dict)
            or not 0 <= layer < len(layer_types)
            or layer_types[layer] != FULL
            or set(overrides) - set(found)
        ):
            raise ConfigError(
                f"config.json: {where}per_layer_config[{key[:20]!r}] is {_shown(overrides)}; not a Gemma 4 "
                "full-layer override"
            )
        for name in overrides:
            found[name].add(_checked(overrides, name, limits[name], f"{where}per_layer_config.{key}."))
    if any(len(values) > 1 for values in found.values()):
        raise ConfigError(f"config.json: {where}per_layer_config gives full layers different values: {found}")
    out = {}
    if found["head_dim"]:
        out["global_head_dim"] = found["head_dim"].pop()
    if found["num_key_value_heads"]:
        out["n_global_kv_heads"] = found["num_key_value_heads"].pop()
    return out


_FLAG = Limit(bool, optional=True)
_SHOWN_CHARS = 60


def _shown(value: Any) -> str:
    """``repr(value)``, cut to a length that fits in one line of an error message."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _checked(section: Mapping[str, Any], key: str, limit: Limit, where: str) -> Any:
    """``section[key]`` (None when absent or null), if ``limit`` allows it; :class:`ConfigError` naming the key
    (``where`` is its section's path in ``config.json``, e.g. ``"text_config."``) otherwise."""
    value = section.get(key)
    if (problem := limit.problem(value)) is not None:
        raise ConfigError(f"config.json: {where}{key} is {_shown(value)}; {problem}")
    return value


def _section(config: Mapping[str, Any], key: str, where: str) -> dict | None:
    """The object under ``key`` (None when absent or null); :class:`ConfigError` naming the key otherwise."""
    value = config.get(key)
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"config.json: {where}{key} is {_shown(value)}; expected an object")
    return value


def _pick(section: Mapping[str, Any], names: Mapping[str, str], limits: Mapping[str, Limit], where: str) -> dict:
    """Our field → ``section``'s value for each of ``names`` (ours → theirs) that is there and not null, each
    checked against its limit."""
    return {
        ours: _checked(section, theirs, limits[ours], where)
        for ours, theirs in names.items()
        if section.get(theirs) is not None
    }


def _build(cls: type, kw: dict[str, Any], names: Mapping[str, str], where: str):
    """``cls(**kw)``, its consistency errors (``text config: n_heads=8 is not a multiple of n_kv_heads=3``)
    told in ``config.json``'s names (``config.json: text_config.num_attention_heads=8 is not a multiple …``)."""
    try:
        return cls(**kw)
    except ConfigError as error:
        message = str(error).split(": ", 1)[-1]  # without "text config: " (every part's errors start so)
        if not names:
            raise ConfigError(f"config.json: {message}") from None
        pattern = r"\b(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")\b"
        raise ConfigError("config.json: " + re.sub(pattern, lambda m: where + names[m[1]], message)) from None


# Keys of the published config.json files (spec §12) that describe nothing this code models; written with the
# published values so that a saved checkpoint has the published key set (tools that read config.json expect them).
_MAX_POSITIONS = 131_072  # text and vision max_position_embeddings of E2B/E4B (31B/26B-A4B: 262144); not a limit here
_TEXT_EXTRA = {"attention_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True}
_TOWER_EXTRA = {  # every tower section carries transformers' PretrainedConfig keys
    "_name_or_path": "",
    "architectures": None,
    "chunk_size_feed_forward": 0,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "initializer_range": 0.02,
    "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "output_attentions": False,
    "output_hidden_states": False,
    "problem_type": None,
    "return_dict": True,
}
_VISION_EXTRA = {"attention_bias": False, "attention_dropout": 0.0, "default_output_length": 280}
_TOP_EXTRA = {"initializer_range": 0.02, "transformers_version": "5.5.0.dev0", "vision_soft_tokens_per_image": 280}


def text_to_hf(config: TextConfig, *, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The ``text_config`` dict of ``config.json`` for ``config`` (inverse of :func:`text_from_hf`), with the key
    set of the published files (null where a feature is absent); ``dtype`` names the weights' dtype."""
    out: dict[str, Any] = {"model_type": "gemma4_text", "hidden_activation": "gelu_pytorch_tanh", **_TEXT_EXTRA}
    for ours, theirs in _HF_NAMES.items():
        out[theirs] = getattr(config, ours)
    if not config.ple_dim:
        out["hidden_size_per_layer_input"] = 0
    out["layer_types"] = list(config.layer_types)
    out["enable_moe_block"] = bool(config.n_experts)
    if config.n_experts:
        out.update(
            num_experts=config.n_experts, top_k_experts=config.top_k_experts, moe_intermediate_size=config.moe_d_ff
        )
    else:
        out.update(num_experts=None, top_k_experts=None, expert_intermediate_size=None)
    out["max_position_embeddings"] = _MAX_POSITIONS
    if dtype is not None:
        out["dtype"] = _dtype_name(dtype)
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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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
_TOKEN_NAMES = {  # ours → config.json (top level); the published files give eoa as eoa_token_id and eoa_token_index
    "image": "image_token_id",
    "audio": "audio_token_id",
    "video": "video_token_id",
    "boi": "boi_token_id",
    "eoi": "eoi_token_id",
    "boa": "boa_token_id",
    "eoa": "eoa_token_index",
}
_VISION_ROPE = {"axial", "default"}  # "default" is what the published files say; the reference reads it as axial


def vision_from_hf(vision: Mapping[str, Any]) -> VisionConfig:
    where = "vision_config."
    if vision.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ConfigError(f"vision_config: unsupported hidden_activation {_shown(vision['hidden_activation'])}")
    if vision.get("attention_bias"):
        raise ConfigError("vision_config: attention_bias=true is not a Gemma 4 architecture")
    rope = _section(vision, "rope_parameters", where) or {}
    if rope.get("rope_type", "axial") not in _VISION_ROPE:  # the 2-D RoPE of spec §3.5 whatever the name
        raise ConfigError(
            f"vision_config: rope_type {_shown(rope['rope_type'])}; expected 'default' or 'axial' (2-D axial)"
        )
    kw = _pick(vision, _VISION_NAMES, VISION_LIMITS, where)
    if "head_dim" not in kw and "d_model" in kw and "n_heads" in kw:
        kw["head_dim"] = kw["d_model"] // kw["n_heads"]
    kw.setdefault("n_kv_heads", kw.get("n_heads", VisionConfig.n_kv_heads))
    theta = _checked(
        rope, "rope_theta", replace(VISION_LIMITS["rope_theta"], optional=True), f"{where}rope_parameters."
    )
    kw["rope_theta"] = float(theta or 100.0)  # never 0: the limit refuses it
    return _build(VisionConfig, kw, _VISION_NAMES, where)


def audio_from_hf(audio: Mapping[str, Any]) -> AudioConfig:
    where = "audio_config."
    if audio.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"audio_config: unsupported hidden_act {_shown(audio['hidden_act'])}")
    kw = _pick(audio, _AUDIO_NAMES, AUDIO_LIMITS, where)
    channels = audio.get("subsampling_conv_channels")
    if channels is not None:
        if not isinstance(channels, list) or len(channels) != 2 or any(CONV_CHANNELS.problem(c) for c in channels):
            raise ConfigError(
                f"config.json: {where}subsampling_conv_channels is {_shown(channels)}; expected two channel counts"
            )
        kw["conv_channels"] = tuple(channels)
    return _build(AudioConfig, kw, _AUDIO_NAMES | {"conv_channels": "subsampling_conv_channels"}, where)


def model_from_hf(config: Mapping[str, Any]) -> ModelConfig:
    """A ``ModelConfig`` from a checkpoint's ``config.json``: a ``Gemma4ForConditionalGeneration`` file (text,
    optional vision and audio sections, token ids) or a text-only ``Gemma4ForCausalLM`` one. Every value is
    checked before anything is built from it (see :func:`text_from_hf`)."""
    if config.get("model_type", "gemma4") not in ("gemma4", "gemma4_text"):
        raise ConfigError(f"config.json describes model_type {_shown(config['model_type'])}, not Gemma 4")
    text = text_from_hf(config)
    vision, audio = _section(config, "vision_config", ""), _section(config, "audio_config", "")
    vision = vision_from_hf(vision) if vision else None
    audio = audio_from_hf(audio) if audio else None
    ids = _pick(config, _TOKEN_NAMES, dict.fromkeys(_TOKEN_NAMES, TOKEN_ID), "")
    eoa = _checked(config, "eoa_token_id", replace(TOKEN_ID, optional=True), "")
    if eoa is not None and ids.setdefault("eoa", eoa) != eoa:
        raise ConfigError(f"config.json gives eoa_token_id {eoa} and eoa_token_index {ids['eoa']}: they must agree")
    section, where = (config["text_config"], "text_config.") if config.get("text_config") else (config, "")
    ids |= _pick(section, {"pad": "pad_token_id", "bos": "bos_token_id"}, {"pad": TOKEN_ID, "bos": TOKEN_ID}, where)
    tokens = TokenIds(**ids)
    top = config.get("eos_token_id") is not None
    stop = _ids(config["eos_token_id"] if top else section.get("eos_token_id"), f"config.json: {'' if top else where}")
    if stop:
        tokens = replace(tokens, stop_ids=tuple(dict.fromkeys(stop)))  # in order, once each
    return _build(ModelConfig, {"text": text, "vision": vision, "audio": audio, "tokens": tokens}, {}, "")


def model_to_hf(config: ModelConfig, *, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """``config.json`` for ``config`` in the ``Gemma4ForConditionalGeneration`` layout, with the key set of the
    published files (spec §12; inverse of :func:`model_from_hf`); ``dtype`` names the weights' dtype."""
    out: dict[str, Any] = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", **_TOP_EXTRA}
    out["text_config"] = text_to_hf(config.text, dtype=dtype)
    tokens = config.tokens
    out["text_config"].update(pad_token_id=tokens.pad, bos_token_id=tokens.bos, eos_token_id=tokens.stop_ids[0])
    out["tie_word_embeddings"] = config.text.tie_embeddings
    out.update({theirs: getattr(tokens, ours) for ours, theirs in _TOKEN_NAMES.items()})
    out["eoa_token_id"] = tokens.eoa
    out["eos_token_id"] = list(tokens.stop_ids)
    if dtype is not None:
        out["dtype"] = _dtype_name(dtype)
    tower_extra = dict(_TOWER_EXTRA, **({"dtype": _dtype_name(dtype)} if dtype is not None else {}))
    if config.vision is not None:
        v = config.vision
        out["vision_config"] = {
            "model_type": "gemma4_vision",
            "hidden_activation": "gelu_pytorch_tanh",
            **tower_extra,
            **_VISION_EXTRA,
            "global_head_dim": v.head_dim,
            "max_position_embeddings": _MAX_POSITIONS,
        }
        out["vision_config"].update({theirs: getattr(v, ours) for ours, theirs in _VISION_NAMES.items()})
        out["vision_config"]["rope_parameters"] = {"rope_theta": v.rope_theta, "rope_type": "default"}
    else:
        out["vision_config"] = None
    if config.audio is not None:
        a = config.audio
        out["audio_config"] = {"model_type": "gemma4_audio", "hidden_act": "silu", **tower_extra}
        out["audio_config"].update({theirs: getattr(a, ours) for ours, theirs in _AUDIO_NAMES.items()})
        out["audio_config"]["subsampling_conv_channels"] = list(a.conv_channels)
    else:
        out["audio_config"] = None
    return out
