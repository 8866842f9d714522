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

Reading a checkpoint's files safely is here too, for every caller (the model's loader, the job's fingerprint,
the front end's processor config): a checkpoint folder is input like any other and must never hang a job or
exhaust its memory.

* Only regular files are opened. Each path is ``os.stat``-ed after its symlinks are followed and refused, never
  opened, when it is a FIFO (opening one blocks until a writer comes), a device (``/dev/zero`` reads forever), a
  socket or a directory; it is then opened without blocking and ``fstat``-ed again, and refused if what was
  opened is not the file that was checked (:func:`open_checkpoint_file`).
* Whole files are read with a size bound (:func:`read_checkpoint_file`; :data:`MAX_JSON_BYTES` for the JSON
  files and the chat template, whose published sizes are a few KB), refused before reading when ``st_size`` says
  more, and never read past the bound whatever ``st_size`` says.
* A safetensors file is read only through its header (:func:`safetensors_header`), checked as the safetensors
  library checks it before anything trusts it: a length of at most 100 MB that fits in the file, a JSON object
  whose tensors have known dtypes, shapes of non-negative integers and data offsets that tile the file's data
  exactly, each tensor's byte count equal to its shape times its dtype's size.
* The weight files (:func:`weight_files`) are ``model.safetensors`` or those ``model.safetensors.index.json``
  names. A name read from that file must stay inside the checkpoint folder: relative, without ``..``, and not a
  symlink that leads out of it (a Hugging Face cache snapshot's links into its repository's ``blobs/`` folder
  are how the cache stores files, so that folder counts as inside). Names fixed by the layout
  (``config.json``, ``model.safetensors`` …) may be symlinks to anywhere that is a regular file: users link
  weights in from other disks.

Every refusal is one :class:`CheckpointFileError` line naming the file. Only the standard library is imported
here; huggingface_hub is imported when a repo id is looked up.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

__all__ = [
    "INDEX_FILE",
    "MAX_JSON_BYTES",
    "SAFETENSORS_DTYPE_BITS",
    "WEIGHTS_FILE",
    "CheckpointFileError",
    "CheckpointNotFoundError",
    "GenerationDefaults",
    "chat_template",
    "generation_defaults",
    "open_checkpoint_file",
    "read_checkpoint_file",
    "read_json_file",
    "resolve_checkpoint",
    "safetensors_header",
    "weight_files",
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
    """A checkpoint file that is there but cannot be used: not a regular file, too large, not UTF-8 JSON, not an
    object, not a safetensors file, or named from outside the checkpoint folder."""


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


# --- reading a checkpoint's files -----------------------------------------------------------------------------

MAX_JSON_BYTES = 16 * 2**20  # config.json 4–5 KB, processor_config.json 1.7 KB, a shard index ~100 KB (spec §12)
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_MAX_HEADER = 100_000_000  # bytes: the safetensors library's own limit (E2B's header is ~0.2 MB)
# Bits per element of the safetensors dtypes this project reads.
SAFETENSORS_DTYPE_BITS = {
    "BF16": 16,
    "F16": 16,
    "F32": 32,
    "F64": 64,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "I64": 64,
    "I32": 32,
    "I16": 16,
    "I8": 8,
    "U8": 8,
    "BOOL": 8,
}
_KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISFIFO: "a FIFO",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


def _regular(path: Path, what: str = "") -> os.stat_result | None:
    """``path``'s status after its symlinks are followed; None when there is nothing there (a dangling link
    too); :class:`CheckpointFileError` for anything but a regular file, which is therefore never opened.
    ``what`` follows the path in the message (`` (the weights)``)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as error:  # a symlink loop, a name too long, no permission to search a folder
        raise CheckpointFileError(f"{os.fspath(path)!r}{what} cannot be read ({error.strerror})") from None
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in _KINDS.items() if test(status.st_mode)), "of another kind")
        raise CheckpointFileError(f"{os.fspath(path)!r}{what} is not a regular file ({kind})")
    return status


def open_checkpoint_file(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file (after its symlinks): a FIFO, device, socket
    or directory is refused without being opened, a missing file too, each with :class:`CheckpointFileError`.
    The file is opened without blocking and checked again, so one swapped in between is refused as well."""
    path = Path(path)
    status = _regular(path)
    if status is None:
        raise CheckpointFileError(f"{os.fspath(path)!r} is missing")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise CheckpointFileError(f"{os.fspath(path)!r} cannot be read ({error.strerror})") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (status.st_dev, status.st_ino):
            raise CheckpointFileError(f"{os.fspath(path)!r} changed while it was being opened")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_checkpoint_file(path: str | os.PathLike, *, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_checkpoint_file`), at most ``limit`` of them: a larger
    file is :class:`CheckpointFileError` naming it and its size, before a byte is read when its size says so."""
    with open_checkpoint_file(path) as fp:
        size = os.fstat(fp.fileno()).st_size
        data = fp.read(limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:  # st_size can understate (a file growing; /proc)
            shown = f"{size} bytes" if size > limit else f"more than {limit} bytes"
            raise CheckpointFileError(f"{os.fspath(path)!r} is {shown}; at most {limit} are read from it")
    return data


def read_json_file(directory: str | os.PathLike, name: str) -> dict | None:
    """``directory/name`` as a JSON object, or None when there is no such file. A FIFO, device or directory of
    that name is refused without being opened, a file over :data:`MAX_JSON_BYTES` without being read, like
    anything that is not a JSON object: :class:`CheckpointFileError` naming the file and the problem."""
    path = Path(directory) / name
    if _regular(path) is None:
        return None
    data = read_checkpoint_file(path, limit=MAX_JSON_BYTES)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:  # RecursionError: nesting thousands deep
        raise CheckpointFileError(f"{os.fspath(path)!r} is not valid JSON ({_short_cause(error)})") from None
    if not isinstance(value, dict):
        raise CheckpointFileError(f"{os.fspath(path)!r} holds a JSON {type(value).__name__}, not an object")
    return value


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint: those ``model.safetensors.index.json`` lists (each name confined to
    the folder, see the module docstring), else ``model.safetensors``; each checked to be a regular file.
    :class:`CheckpointFileError` naming the file otherwise."""
    directory = Path(directory)
    index = read_json_file(directory, INDEX_FILE)
    if index is not None:
        where = os.fspath(directory / INDEX_FILE)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointFileError(f"{where!r} has no weight_map")
        names = set(weight_map.values())
        if bad := next((n for n in names if not isinstance(n, str)), None):
            raise CheckpointFileError(f"{where!r} names {repr(bad)[:80]} as a file: not a file name")
        files = [_inside(directory, name, where) for name in sorted(names)]
        listed = f"listed by {INDEX_FILE}"
    elif os.path.lexists(directory / WEIGHTS_FILE):
        files, listed = [directory / WEIGHTS_FILE], "the weights"
    else:
        raise CheckpointFileError(f"{os.fspath(directory)!r} has neither {WEIGHTS_FILE} nor {INDEX_FILE}")
    for file in files:
        if _regular(file, f" ({listed})") is None:
            raise CheckpointFileError(f"{os.fspath(file)!r} ({listed}) is missing")
    return files


def _inside(directory: Path, name: str, where: str) -> Path:
    """``directory/name`` for a ``name`` read from a file, if it stays in the folder (or, for a hub-cache
    snapshot, its repository's ``blobs/``, where the snapshot's links lead)."""
    pure = PurePosixPath(name)
    if not name or "\x00" in name or "\\" in name or pure.is_absolute() or ".." in pure.parts:
        raise CheckpointFileError(f"{where!r} names {name[:80]!r}, not a file inside the checkpoint folder")
    path = directory / name
    roots = [directory.resolve()]
    snapshot = Path(os.path.abspath(directory))
    if snapshot.parent.name == "snapshots" and snapshot.parent.parent.name.startswith("models--"):
        roots.append((snapshot.parent.parent / "blobs").resolve())
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise CheckpointFileError(f"{os.fspath(path)!r} (listed by {where!r}) is a symlink loop") from None
    if not any(target.is_relative_to(root) for root in roots):
        raise CheckpointFileError(
            f"{os.fspath(path)!r} (listed by {where!r}) is a symlink out of the checkpoint folder (to {target})"
        )
    return path


def safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """The tensors a safetensors file declares (name → ``dtype``, ``shape``, ``data_offsets``; the
    ``__metadata__`` entry left out), after checking the header as the safetensors library does (see the module
    docstring); :class:`CheckpointFileError` naming the file and the first problem otherwise."""
    where = os.fspath(path)
    with open_checkpoint_file(path) as fp:
        size = os.fstat(fp.fileno()).st_size
        start = fp.read(8)
        length = int.from_bytes(start, "little")
        if len(start) < 8 or not 2 <= length <= min(_MAX_HEADER, size - 8):
            cause = f"{size} bytes in all" if len(start) < 8 else f"header length {length}, file size {size}"
            raise CheckpointFileError(f"{where!r} is not a safetensors file ({cause})")
        raw = fp.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointFileError(f"{where!r} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointFileError(f"{where!r} is not a safetensors file (its header is not an object)")
    header.pop("__metadata__", None)
    end = 0
    for name, entry in sorted(header.items(), key=lambda item: _offsets(item[1])):
        offsets, shape = _offsets(entry), entry.get("shape") if isinstance(entry, dict) else None
        ok = (
            offsets[0] == end <= offsets[1]  # the tensors tile the data, in order, no gaps
            and entry.get("dtype") in SAFETENSORS_DTYPE_BITS
            and isinstance(shape, list)
            and all(_count(n) for n in shape)
            and math.prod(shape) * SAFETENSORS_DTYPE_BITS[entry["dtype"]] == 8 * (offsets[1] - offsets[0])
        )
        if not ok:
            raise CheckpointFileError(f"{where!r}: tensor {name[:80]!r} has a bad header entry {str(entry)[:120]}")
        end = offsets[1]
    if end != size - 8 - length:
        raise CheckpointFileError(
            f"{where!r} is not a whole safetensors file: its header declares {end} bytes of data, the file holds "
            f"{size - 8 - length} (truncated, or something appended)"
        )
    return header


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _offsets(entry) -> tuple[int, int]:
    """An entry's ``data_offsets``, or (-1, -1) (sorted first, then refused) when they are not two counts."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if isinstance(offsets, list) and len(offsets) == 2 and all(_count(n) for n in offsets):
        return offsets[0], offsets[1]
    return -1, -1


# --- the small files of a published checkpoint -----------------------------------------------------------------


def chat_template(directory: str | os.PathLike) -> str | None:
    """A checkpoint's chat template: ``chat_template.jinja`` (how every published checkpoint ships it, whatever
    its tokenizer format), else the ``chat_template`` of ``tokenizer_config.json`` (community copies fold it in
    there; a list of named templates gives the one named ``default``), else None (the built-in layout)."""
    path = Path(directory) / "chat_template.jinja"
    if _regular(path) is not None:
        try:
            text = read_checkpoint_file(path, limit=MAX_JSON_BYTES).decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointFileError(f"{os.fspath(path)!r} is not UTF-8 text") from None
        if not text.strip():  # every prompt would render to nothing
            raise CheckpointFileError(f"{os.fspath(path)!r} is empty: a chat template renders every prompt")
        return text
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
    if template is not None and not template.strip():
        raise CheckpointFileError(f"{os.fspath(Path(directory) / 'tokenizer_config.json')!r}: chat_template is empty")
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
