"""Where a checkpoint's files are: a directory given as is, or a Hugging Face repo id found in the local cache.

Implements how users get the published checkpoints (../shared/spec/GEMMA4.md §12): either a directory made by
``hf download google/gemma-4-E2B-it --local-dir DIR``, or the Hugging Face cache
(``<cache>/models--google--gemma-4-E2B-it/snapshots/<revision>/``, with ``refs/main`` naming the revision),
which transformers and vLLM read when given the repo id. ``resolve_checkpoint`` accepts both and returns the
directory; what is inside it (config.json, weights, tokenizer) is the callers' business.

Choices:

* An existing directory wins over a repo id of the same spelling and is returned as given (``Path(name)``, not
  resolved through symlinks). An existing path that is not a directory is refused: callers handle single files
  before calling.
* A repo id is ``owner/name``: exactly one slash, each side letters, digits, ``-``, ``_``, ``.`` and neither side
  ``.`` or ``..``; so ``./x``, ``~/x``, ``/x`` and ``a/b/c`` are paths, never repo ids.
* The cache folder is read from the environment at call time, as huggingface_hub would at import time:
  ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
  ``~/.cache/huggingface/hub`` (an empty variable counts as unset; the legacy ``HUGGINGFACE_HUB_CACHE`` is not
  read). huggingface_hub freezes its constants when first imported, so the folder is always passed as
  ``cache_dir=``; likewise offline mode (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to 1/true/yes/on)
  is checked here, at call time, and a download is not even attempted when it is on.
* The cache lookup is ``snapshot_download(..., local_files_only=True)`` at revision ``main`` (the snapshot
  ``refs/main`` names). A snapshot without ``config.json`` (e.g. one where only the tokenizer was fetched)
  counts as absent, so it is completed by a download where downloads are allowed.
* A download fetches only the published files of §12 (``_PUBLISHED_FILES``) into the cache. Its result is
  returned as is; a repository without ``config.json`` is left for the caller to refuse by name.
* Every failure is one ``CheckpointNotFoundError`` (a ``FileNotFoundError``) of one line that names the input,
  the cache folder and the cause, and says how to get the checkpoint by hand.

Only the standard library is imported here; huggingface_hub is imported when a repo id is looked up.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CheckpointFileError",
    "CheckpointNotFoundError",
    "GenerationDefaults",
    "chat_template",
    "generation_defaults",
    "read_json_file",
    "resolve_checkpoint",
]

logger = logging.getLogger(__name__)

# The files of a published Gemma 4 repository that this project reads (§12); tokenizer.model is absent from
# the Hub today but kept in case a repository adds it.
_PUBLISHED_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "processor_config.json",
    "tokenizer.model",
]
_REPO_ID = re.compile(r"[A-Za-z0-9._-]+/[A-Za-z0-9._-]+")
_TRUE_VALUES = {"1", "true", "yes", "on"}
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_CAUSE_CHARS = 120
_EXAMPLE_REPO = "google/gemma-4-E2B-it"


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint name that is neither a directory nor a repo id found in the cache or downloadable."""


class CheckpointFileError(ValueError):
    """A checkpoint file that is there but cannot be used: not a regular file, not UTF-8 JSON, not an object."""


def resolve_checkpoint(name: str | os.PathLike, *, allow_download: bool = True) -> Path:
    """The directory that holds the checkpoint ``name``: a directory path, or a Hugging Face repo id.

    A repo id is looked up in the local Hugging Face cache, then (if ``allow_download`` and the environment is
    not offline) downloaded into it. Raises ``CheckpointNotFoundError`` with a one-line message otherwise.
    """
    text = os.fspath(name)
    path = Path(text)
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointNotFoundError(f"checkpoint {text!r} is not a directory")
    if not _is_repo_id(text):
        raise CheckpointNotFoundError(
            f"checkpoint {text!r} does not exist (not a directory, and not a Hugging Face repo id like {_EXAMPLE_REPO})"
        )

    cache_dir = _hub_cache_dir()
    snapshot = _cached_snapshot(text, cache_dir)
    if snapshot is not None:
        return snapshot
    offline = _offline_variable()
    if offline is not None:
        cause = f"downloads are off: {offline}={os.environ[offline]}"
    elif not allow_download:
        cause = "downloads are off: allow_download=False"
    else:
        try:
            return _download(text, cache_dir)
        except Exception as error:  # any failure (network, not found, gated, offline) becomes the one error below
            cause = _short_cause(error)
    raise CheckpointNotFoundError(
        f"{text!r} is not in the Hugging Face cache ({cache_dir}) and could not be downloaded ({cause}); "
        f"download it with: hf download {text} --local-dir DIR (then pass DIR)"
    )


def _hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder the environment names now (the precedence of huggingface_hub)."""
    explicit = os.environ.get("HF_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(os.path.expanduser(explicit)))
    home = os.environ.get("HF_HOME")
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def _is_repo_id(text: str) -> bool:
    if _REPO_ID.fullmatch(text) is None:
        return False
    return all(side not in {".", ".."} for side in text.split("/"))


def _offline_variable() -> str | None:
    for variable in _OFFLINE_VARIABLES:
        if os.environ.get(variable, "").strip().lower() in _TRUE_VALUES:
            return variable
    return None


def _cached_snapshot(repo_id: str, cache_dir: Path) -> Path | None:
    """The cached snapshot ``refs/main`` names, if it holds a config.json; None otherwise (never the network)."""
    try:
        import huggingface_hub

        folder = huggingface_hub.snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True)
    except Exception as error:  # not cached, incomplete, unreadable: all mean "not there"
        logger.debug("%s not found in %s: %s", repo_id, cache_dir, _short_cause(error))
        return None
    snapshot = Path(folder)
    if not (snapshot / "config.json").is_file():
        logger.debug("cached snapshot %s has no config.json; treated as absent", snapshot)
        return None
    return snapshot


def _download(repo_id: str, cache_dir: Path) -> Path:
    import huggingface_hub

    logger.info("downloading %s into the Hugging Face cache %s", repo_id, cache_dir)
    folder = huggingface_hub.snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=_PUBLISHED_FILES)
    return Path(folder)


def _short_cause(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    cause = f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__
    return cause if len(cause) <= _CAUSE_CHARS else cause[: _CAUSE_CHARS - 1] + "…"


# --- the small files of a published checkpoint -----------------------------------------------------------------


def read_json_file(directory: str | os.PathLike, name: str) -> dict | None:
    """``directory/name`` as a JSON object, or None when there is no such file. A FIFO, device or directory of
    that name is refused without being opened, like anything that is not a JSON object:
    :class:`CheckpointFileError` naming the file and the problem."""
    path = Path(directory) / name
    if not path.exists():
        return None
    if not path.is_file():
        raise CheckpointFileError(f"{os.fspath(path)!r} is not a regular file")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CheckpointFileError(f"{os.fspath(path)!r} is not valid JSON ({_short_cause(error)})") from None
    if not isinstance(value, dict):
        raise CheckpointFileError(f"{os.fspath(path)!r} holds a JSON {type(value).__name__}, not an object")
    return value


def chat_template(directory: str | os.PathLike) -> str | None:
    """A checkpoint's chat template: ``chat_template.jinja`` (how every published checkpoint ships it, whatever
    its tokenizer format), else the ``chat_template`` of ``tokenizer_config.json`` (community copies fold it in
    there; a list of named templates gives the one named ``default``), else None (the built-in layout)."""
    path = Path(directory) / "chat_template.jinja"
    if path.exists():
        if not path.is_file():
            raise CheckpointFileError(f"{os.fspath(path)!r} is not a regular file")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CheckpointFileError(f"{os.fspath(path)!r} is not UTF-8 text") from None
    config = read_json_file(directory, "tokenizer_config.json") or {}
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": …}, {"name": "tool_use", …}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise CheckpointFileError(
            f"{os.fspath(Path(directory) / 'tokenizer_config.json')!r}: chat_template is a "
            f"{type(template).__name__}, not a string"
        )
    return template


@dataclass(frozen=True, kw_only=True)
class GenerationDefaults:
    """The sampling a checkpoint asks for in ``generation_config.json`` (spec §12), as transformers applies it:
    ``do_sample`` true samples with the file's ``temperature`` (1.0 when absent), ``top_k`` and ``top_p`` (absent:
    no cut); ``do_sample`` false or absent, or no file, is greedy. ``stop_ids``: its ``eos_token_id``."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    stop_ids: tuple[int, ...] = ()
    source: str | None = None  # the file's path; None when there is none

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def generation_defaults(directory: str | os.PathLike) -> GenerationDefaults:
    """The :class:`GenerationDefaults` of a checkpoint directory; :class:`CheckpointFileError` naming the key and
    its value for a value that is not a sampling setting (a negative temperature, ``top_p`` above 1 …)."""
    config = read_json_file(directory, "generation_config.json")
    if config is None:
        return GenerationDefaults()
    where = os.fspath(Path(directory) / "generation_config.json")

    def number(key: str, kind: type, low: float, high: float | None = None):
        value = config.get(key)
        if value is None:
            return None
        ok = isinstance(value, int | float) and not isinstance(value, bool) and (kind is float or value == int(value))
        if not ok or not math.isfinite(value) or value < low or (high is not None and value > high):
            bounds = f"≥ {low}" if high is None else f"in [{low}, {high}]"
            raise CheckpointFileError(f"{where!r}: {key} is {value!r}, not a {kind.__name__} {bounds}")
        return kind(value)

    stop = config.get("eos_token_id")
    stop = [] if stop is None else [stop] if isinstance(stop, int) else stop
    if not isinstance(stop, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in stop):
        raise CheckpointFileError(f"{where!r}: eos_token_id is {config.get('eos_token_id')!r}, not an id or ids")
    temperature, top_k, top_p = (
        number("temperature", float, 0.0),
        number("top_k", int, 0),
        number("top_p", float, 0.0, 1.0),
    )
    if top_p == 0:
        raise CheckpointFileError(f"{where!r}: top_p is 0, not a probability in (0, 1]")
    if not config.get("do_sample"):
        return GenerationDefaults(stop_ids=tuple(stop), source=where)
    return GenerationDefaults(
        temperature=1.0 if temperature is None else temperature,
        top_k=top_k or None,  # transformers: 0 means no cut
        top_p=None if top_p in (None, 1.0) else top_p,
        stop_ids=tuple(stop),
        source=where,
    )
