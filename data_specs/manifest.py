"""The input manifest of ``gemma4 preprocess``: one row per example, ``id`` + ``messages`` (+ ``tools``) (version 2).

Formats: JSON Lines (``.jsonl``, or ``.json`` with one object per line), a JSON array of objects (``.json``
whose first character is ``[``), Parquet (``.parquet``, read one batch at a time), CSV (``.csv``, ``messages`` as a
JSON string; ids are read as text, so ``007`` stays ``"007"``), or a directory written by
``datasets.Dataset.save_to_disk``. Every row holds:

* ``id``: a non-empty string of valid UTF-8 (JSON numbers are accepted and turned into strings), unique within
  the manifest;
* ``messages``: the chat form of ``preprocess.chat`` (a list, or a JSON string of one). Media values are a
  path relative to the folder holding the manifest (file or ``save_to_disk`` directory) or absolute, raw
  ``bytes``, a ``datasets`` Image value (``{"bytes": …, "path": …}``) or Audio value
  (``{"array": …, "sampling_rate": …}`` or ``{"bytes": …, "path": …}``). OpenAI parts are accepted too
  (``image_url`` with a base64 data URL, a ``file:`` URL or a path, relative ones resolved as above;
  ``input_audio`` with base64 data; see :mod:`preprocess.openai_parts`), and media parts located by ``url`` or
  ``path`` (transformers' form: ``{"type": "image", "path": "images/cat.jpg"}``); remote URLs are refused, never
  fetched;
* ``tools`` (optional): the tool specs the row's conversation may call — a list of OpenAI-style specs
  ``{"type": "function", "function": {"name": …, "description": …, "parameters": {JSON schema}}}`` (or bare
  functions ``{"name": …}``), or a JSON string of one; missing, null or empty means the job's ``--tools``;
* generation options (optional, read through ``read_options`` by ``gemma4 infer``, and by ``gemma4 preprocess``,
  which carries them in its output for ``gemma4 infer`` to honour): ``max_new_tokens`` (alias ``max_tokens``),
  ``temperature``, ``top_k``, ``top_p``, ``seed``, ``stop`` (a string or a list of strings, see
  :func:`check_stop`), each a :class:`RowOptions` field; missing or null means the job's setting.

Example line::

    {"id": "q1", "messages": [{"role": "user", "content": [
        {"type": "image", "image": "images/cat.jpg", "budget": 280},
        {"type": "audio", "audio": "audio/q1.flac"},
        {"type": "text", "text": "What is happening?"}]}]}

``read_row`` (a :class:`ManifestRow`: id, messages, tools) and ``validate_row`` (id, messages) raise
:class:`ManifestError` naming the row; they never touch the media (decoding errors belong to the preprocessing
stages). It also refuses rows nested deeper than ``MAX_DEPTH`` levels and strings that
are not valid Unicode (lone surrogates): both would otherwise fail later, far from the row (pickling a deep row to
a worker overflows the stack; Parquet refuses invalid strings).

``read_options(row, where)`` gives a row's :class:`RowOptions`, validated (``ManifestError`` naming ``where``, the
field and the value). A value may be a JSON string, as CSV holds every column (``"64"``, ``"0.7"``; an empty cell
is missing), and an integral float counts as an integer (``64.0``: a Parquet integer column with gaps, written
through pandas, is float). ``read_row`` ignores these keys.

``resolve_media(messages, base_dir, media_root=None)`` confines file paths to ``media_root`` when one is given
(``gemma4 preprocess --media-root``, for manifests from elsewhere): a path that resolves outside it, symlinks
followed, raises :class:`MediaOutsideRootError`.

``MANIFEST_VERSION`` is the version of this format as the job reads it: ``gemma4 preprocess`` writes it into
``job.json`` and refuses to resume a job recorded under another version (the same input file could then mean
other examples). Version 2 (2026-12) added ``tools`` and OpenAI content parts: a version-1 job read them as
nothing or as errors. The generation options did not change the version: the examples a manifest gives are the
same with or without them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checks import MAX_SEED, SAMPLING_RULES, sampling_problem

__all__ = [
    "Manifest",
    "MANIFEST_VERSION",
    "ManifestError",
    "ManifestRow",
    "ROW_KEYS",
    "MAX_DEPTH",
    "MAX_ID_CHARS",
    "MAX_SEED",
    "MediaOutsideRootError",
    "RowOptions",
    "check_option",
    "check_stop",
    "content_hash",
    "check_tools",
    "check_values",
    "open_manifest",
    "read_options",
    "read_row",
    "resolve_media",
    "short_repr",
    "validate_row",
]

MANIFEST_VERSION = 2
MEDIA_KINDS = ("image", "audio", "video")
OPENAI_PART_TYPES = ("image_url", "audio_url", "video_url", "input_audio")  # preprocess.openai_parts converts them
MAX_ID_CHARS = 4096  # a row's id (an OpenAI custom_id): written whole in results and errors, so bounded
MAX_DEPTH = 64  # nesting levels of a row: ample for messages and tool schemas, far below the stack's limit
_PARQUET_BATCH = 256  # rows decoded at a time from a Parquet manifest
MAX_STOP_STRINGS = 64  # OpenAI takes 4, vLLM any number: enough for both, bounded so a row cannot stall the job
MAX_STOP_CHARS = 1000  # characters of one stop string


class ManifestError(ValueError):
    """A manifest row (or file) that does not follow the format."""


class MediaOutsideRootError(PermissionError):
    """A media path that resolves outside the allowed media root."""


def check_values(row: Any, where: str) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH`` and strings that cannot be encoded as UTF-8; iterative, so a
    100 000-deep row cannot overflow the stack here."""
    stack = [(row, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ManifestError(
                    f"{where}: a string holds {value[exc.start : exc.end]!r} at position {exc.start}, which is not "
                    "valid Unicode (a lone surrogate)"
                ) from None
            continue
        if not isinstance(value, Mapping | list | tuple):
            continue
        if depth > MAX_DEPTH:
            raise ManifestError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                stack.append((key, depth))
            stack.append((item, depth + 1))


@dataclass(frozen=True)
class ManifestRow:
    """One validated row: its id, its messages and its own tool specs (``None`` when it has none)."""

    id: str
    messages: list
    tools: list | None = None


def read_row(row: Any, index: int) -> ManifestRow:
    """The :class:`ManifestRow` of a raw row; ``ManifestError`` naming the row otherwise."""
    where = f"row {index}"
    if not isinstance(row, Mapping):
        raise ManifestError(f"{where}: expected an object with 'id' and 'messages', got {type(row).__name__}")
    row_id = row.get("id")
    if isinstance(row_id, bool) or not isinstance(row_id, str | int) or row_id == "":
        raise ManifestError(f"{where}: 'id' must be a non-empty string, got {short_repr(row_id)}")
    row_id = str(row_id)
    if len(row_id) > MAX_ID_CHARS:
        raise ManifestError(f"{where}: 'id' has {len(row_id)} characters; at most {MAX_ID_CHARS}")
    check_values(row, where if len(row_id) > 200 else f"{where} (id {row_id!r})")
    where = f"{where} (id {row_id!r})"
    messages = _json_column(row.get("messages"), "messages", where)
    if not isinstance(messages, list) or not messages:
        raise ManifestError(f"{where}: 'messages' must be a non-empty list of chat messages")
    return ManifestRow(row_id, messages, check_tools(_json_column(row.get("tools"), "tools", where), where))


@dataclass(frozen=True, kw_only=True)
class RowOptions:
    """One row's own generation settings; ``None`` keeps the job's."""

    max_new_tokens: int | None = None  # tokens generated at most, ≥ 1
    temperature: float | None = None  # finite, ≥ 0; 0 is greedy
    top_k: int | None = None  # ≥ 1
    top_p: float | None = None  # in (0, 1]
    seed: int | None = None  # 0 … MAX_SEED
    stop: tuple[str, ...] | None = None  # stop strings (see check_stop); None: the job's, () none
    model: str | None = None  # the model the request names (OpenAI's body.model): its response's, unless the job's

    def __post_init__(self) -> None:
        if self.stop is not None:
            object.__setattr__(self, "stop", check_stop(self.stop, "RowOptions"))
        for name in _OPTION_RULES:
            value = getattr(self, name)
            if value is not None and _option_problem(name, value):
                raise ManifestError(f"RowOptions: {name!r} must be {_OPTION_RULES[name]}, got {short_repr(value)}")


# field → what it must be; the checks are in _option_problem (the sampling ones: data_specs.checks, shared with
# runtime.sampler.Sampling, so a value a row passes never fails in the engine)
_OPTION_RULES = {"max_new_tokens": "a positive integer", **SAMPLING_RULES}
_INTEGER_OPTIONS = ("max_new_tokens", "top_k", "seed")


def _option_problem(name: str, value: Any) -> bool:
    """Whether ``value`` (not None) breaks the rule of option ``name``."""
    if name in SAMPLING_RULES:
        return sampling_problem(name, value)
    return isinstance(value, bool) or not isinstance(value, int) or value < 1


def read_options(row: Mapping, where: str) -> RowOptions:
    """The :class:`RowOptions` of a raw manifest row (keys ``max_new_tokens`` or its alias ``max_tokens``,
    ``temperature``, ``top_k``, ``top_p``, ``seed``); ``ManifestError`` naming ``where``, the field and the value
    otherwise. ``where`` names the row as errors do, e.g. ``"row 3 (id 'a')"``."""
    if not isinstance(row, Mapping):
        raise ManifestError(f"{where}: expected an object, got {type(row).__name__}")
    _refuse_misspelt_options(row, where)
    values = {name: check_option(name, _option_cell(row.get(name), name, where), where) for name in _OPTION_RULES}
    alias = _option_cell(row.get("max_tokens"), "max_tokens", where)
    alias = check_option("max_new_tokens", alias, where, "max_tokens")
    if alias is not None:
        if values["max_new_tokens"] not in (None, alias):
            raise ManifestError(
                f"{where}: 'max_new_tokens' ({values['max_new_tokens']}) and its alias 'max_tokens' ({alias}) "
                "disagree; give one"
            )
        values["max_new_tokens"] = alias
    stop = row.get("stop")  # a string is a stop string; a CSV cell holds a list as JSON text, an empty cell none
    if stop == "":
        stop = None
    elif isinstance(stop, str) and stop.lstrip().startswith("["):
        stop = _json_column(stop, "stop", where)
    return RowOptions(**values, stop=None if stop is None else check_stop(stop, where))


ROW_KEYS = ("id", "messages", "tools", *_OPTION_RULES, "max_tokens", "stop")  # what a manifest row may say


def _refuse_misspelt_options(row: Mapping, where: str) -> None:
    """A key that is not one of :data:`ROW_KEYS` but looks like one (``temprature``, ``max_token``, ``top-p``) is a
    misspelt option that would silently be the job's: refused, naming the key it resembles. Other keys (a
    dataset's own columns: ``answer``, ``source`` …) are left alone."""
    for key in row:
        if not isinstance(key, str) or key in ROW_KEYS:
            continue
        close = difflib.get_close_matches(key.lower().replace("-", "_"), ROW_KEYS, n=1, cutoff=0.8)
        if close:
            raise ManifestError(
                f"{where}: unknown key {short_repr(key)}: did you mean {close[0]!r}? (a misspelt option would "
                "silently be the job's)"
            )


def check_stop(value: Any, where: str) -> tuple[str, ...]:
    """Stop strings as given (a string, a list of strings; None or empty: none) as a tuple of distinct strings in
    their order; ``ManifestError`` naming ``where`` and the problem otherwise (an empty string would end every reply
    before it starts)."""
    if value is None:
        return ()
    strings = [value] if isinstance(value, str) else value
    if not isinstance(strings, list | tuple):
        raise ManifestError(f"{where}: 'stop' must be a string or a list of strings, got {short_repr(value)}")
    if len(strings) > MAX_STOP_STRINGS:
        raise ManifestError(f"{where}: 'stop' holds {len(strings)} strings; at most {MAX_STOP_STRINGS} are taken")
    out: list[str] = []
    for i, text in enumerate(strings):
        if not isinstance(text, str):
            raise ManifestError(f"{where}: 'stop' item {i} must be a string, got {short_repr(text)}")
        if not text:
            raise ManifestError(f"{where}: 'stop' item {i} is empty (it would end every reply before it starts)")
        if len(text) > MAX_STOP_CHARS:
            raise ManifestError(f"{where}: 'stop' item {i} has {len(text)} characters; at most {MAX_STOP_CHARS}")
        if text not in out:
            out.append(text)
    return tuple(out)


def check_option(name: str, value: Any, where: str, key: str | None = None) -> Any:
    """``value`` of the :class:`RowOptions` field ``name``, read from the input's key ``key`` (``name`` by
    default), checked: ``None`` stays ``None``, an integral float becomes an int for the integer fields, an int
    becomes a float for the others. ``ManifestError`` naming ``where``, the key and the value otherwise."""
    if value is None:
        return None
    if name in _INTEGER_OPTIONS and isinstance(value, float) and value.is_integer():
        value = int(value)
    if _option_problem(name, value):
        raise ManifestError(f"{where}: {key or name!r} must be {_OPTION_RULES[name]}, got {short_repr(value)}")
    return value if name in _INTEGER_OPTIONS else float(value)


def _option_cell(value: Any, key: str, where: str) -> Any:
    """An option as the row holds it, a CSV cell's text parsed as JSON (an empty cell is missing)."""
    if isinstance(value, str) and not value.strip():
        return None
    return _json_column(value, key, where)


def validate_row(row: Any, index: int) -> tuple[str, list]:
    """``(id, messages)`` of a raw row; ``ManifestError`` naming the row otherwise (:func:`read_row` gives its
    tools too)."""
    checked = read_row(row, index)
    return checked.id, checked.messages


def _json_column(value: Any, name: str, where: str) -> Any:
    """A column that may hold its value as a JSON string (CSV, or datasets that store nested data as text)."""
    if not isinstance(value, str):
        return value
    try:
        value = json.loads(value)
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, or an integer of > 4300 digits
        raise ManifestError(f"{where}: {name!r} is a string but not JSON: {short_repr(str(exc))}") from None
    check_values(value, where)
    return value


def check_tools(tools: Any, where: str) -> list | None:
    """``tools`` as a list of tool specs, or ``None`` for none (missing, null or an empty list: columnar formats
    write an empty list for rows without tools, so it means "the job's tools", not "no tools"). Each spec is
    OpenAI's ``{"type": "function", "function": {"name": …, "description": …, "parameters": …}}`` or the bare
    function ``{"name": …, …}`` (which the renderer, ``preprocess.chat``, wraps into the former: both render
    alike); the schema itself is the chat template's to read. ``ManifestError`` naming ``where`` and the tool
    otherwise."""
    if tools is None or (isinstance(tools, list | tuple) and not tools):
        return None
    if not isinstance(tools, list | tuple):
        raise ManifestError(f"{where}: 'tools' must be a list of tool specs, got {type(tools).__name__}")
    for k, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or not name.strip():
            raise ManifestError(
                f"{where}: tools[{k}] must be {{'type': 'function', 'function': {{'name': str, …}}}} (or the bare "
                f"function {{'name': str, …}}); got {_kind(tool)}"
            )
    return list(tools)


def _kind(value: Any) -> str:
    """A value's type and keys, never its contents."""
    if isinstance(value, Mapping):
        return f"an object with keys {sorted(map(str, value))[:8]}"
    return type(value).__name__


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def resolve_media(messages: list, base_dir: Path, media_root: str | os.PathLike | None = None) -> list:
    """A copy of ``messages`` whose media values are ready for ``build_example``: OpenAI parts and media parts
    located by ``url`` or ``path`` converted (``preprocess.openai_parts.normalize_part``; ``ChatFormatError``
    naming the part), relative paths — ``file:`` URLs and plain paths of those parts too — made absolute against
    ``base_dir``, ``datasets`` Image/Audio values unpacked. With ``media_root``, every path must resolve (symlinks
    followed) inside it, else :class:`MediaOutsideRootError`."""
    root = os.path.realpath(media_root) if media_root is not None else None
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), list):
            out.append(message)
            continue
        parts = []
        for j, part in enumerate(message["content"]):
            if isinstance(part, Mapping) and (part.get("type") in OPENAI_PART_TYPES or _located(part)):
                # Imported here: data_specs stays light, and only rows holding such parts pay for it.
                from preprocess.openai_parts import normalize_part

                part = normalize_part(part, f"messages[{i}].content[{j}]")
            if isinstance(part, Mapping) and part.get("type") in MEDIA_KINDS and part.get(part["type"]) is not None:
                kind = part["type"]
                part = dict(part, **{kind: _resolve_value(part[kind], base_dir, root, kind)})
            parts.append(part)
        out.append(dict(message, content=parts))
    return out


def _located(part: Mapping[str, Any]) -> bool:
    """A media part in transformers' form, ``{"type": "image", "url" | "path": …}``: converted first, so that its
    path is resolved and confined like any other."""
    return part.get("type") in MEDIA_KINDS and (part.get("url") is not None or part.get("path") is not None)


def _resolve_value(value: Any, base_dir: Path, root: str | None, kind: str) -> Any:
    if isinstance(value, str):
        path = str(base_dir / value) if not os.path.isabs(value) else value
        if root is not None:
            real = os.path.realpath(path)
            if os.path.commonpath([real, root]) != root:
                raise MediaOutsideRootError(
                    f"{kind} path {value!r} resolves to {real!r}, outside the media root {root!r}"
                )
        return path
    if isinstance(value, Mapping):
        if value.get("array") is not None and value.get("sampling_rate") is not None:
            import numpy as np

            return (np.asarray(value["array"], dtype=np.float32), value["sampling_rate"])
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        if value.get("path"):
            return _resolve_value(value["path"], base_dir, root, kind)
    return value


def content_hash(path: Path) -> str:
    """A short hash of a file's bytes (or of every file of a directory, by relative path): what identifies an input
    for resuming. Touching a file (same bytes) keeps it; any change of content changes it."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(os.fspath(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with open(file, "rb") as fp:
            while chunk := fp.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class Manifest:
    """An opened manifest: ``len()`` rows, iterated in order as raw rows (dicts, or the exception that made a
    line unreadable). ``fingerprint`` identifies the input for resuming."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"manifest {os.fspath(path)!r} does not exist")
        if not self.path.is_dir() and not self.path.is_file():
            raise ManifestError(f"manifest {os.fspath(path)!r} is not a regular file or a directory")
        self.base_dir = self.path.parent  # relative media paths: siblings of the manifest (file or directory)
        suffix = self.path.suffix.lower()
        if self.path.is_dir():
            self.kind = "datasets"
            import datasets

            self._dataset = datasets.load_from_disk(str(self.path))
            self._length = len(self._dataset)
        elif suffix == ".json" and _starts_with(self.path, b"["):
            self.kind = "json"
            self._array = _read_array(self.path)
            self._length = len(self._array)
        elif suffix in (".jsonl", ".json"):
            self.kind = "jsonl"
            self._offsets = _line_offsets(self.path)
            self._length = len(self._offsets)
        elif suffix == ".parquet":
            self.kind = "parquet"
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetFile(self.path)
            self._length = self._parquet.metadata.num_rows
            self._cursor: tuple[int, Iterator] | None = None  # (next row, iterator of the rest)
        elif suffix == ".csv":
            self.kind = "csv"
            self._table = _read_csv(self.path)
            self._length = self._table.num_rows
        else:
            raise ManifestError(
                f"manifest {os.fspath(path)!r}: unknown format (use .jsonl, .json, .parquet, .csv or a datasets "
                "directory)"
            )
        self.fingerprint = f"{self.kind}:{self.path.resolve()}:{content_hash(self.path)}:{self._length}"

    def __len__(self) -> int:
        return self._length

    def head(self, rows: int) -> None:
        """Keep only the first ``rows`` rows (a smoke run); the fingerprint says so, so a job of the whole input
        is another job."""
        if rows < self._length:
            self._length = rows
            self.fingerprint += f":head{rows}"

    def rows(self, start: int, stop: int) -> Iterator[Any]:
        """Raw rows ``start … stop − 1`` in order; an unreadable line is yielded as its ``ManifestError``."""
        if self.kind == "jsonl":
            with open(self.path, "rb") as fp:
                for index in range(start, stop):
                    fp.seek(self._offsets[index])
                    yield _parse_line(fp.readline(), index)
        elif self.kind == "json":
            yield from self._array[start:stop]
        elif self.kind == "datasets":
            yield from (self._dataset[i] for i in range(start, stop))
        elif self.kind == "parquet":
            yield from self._parquet_rows(start, stop)
        else:
            yield from self._table.slice(start, stop - start).to_pylist()

    def _parquet_rows(self, start: int, stop: int) -> Iterator[Any]:
        """Streamed: rows are decoded ``_PARQUET_BATCH`` at a time, continuing from the last call (the job reads
        shards in order); a jump backwards starts a new pass."""
        if self._cursor is None or self._cursor[0] > start:
            batches = self._parquet.iter_batches(batch_size=_PARQUET_BATCH)
            self._cursor = (0, (row for batch in batches for row in batch.to_pylist()))
        position, rest = self._cursor
        for _ in range(start - position):
            next(rest)
        for _ in range(start, stop):
            yield next(rest)
            start += 1
            self._cursor = (start, rest)


def _parse_line(line: bytes, index: int) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError, and integers of more than 4300 digits
        reason = "nested too deeply to parse" if isinstance(exc, RecursionError) else str(exc)
        return ManifestError(f"row {index}: line {index + 1} is not valid JSON: {reason}")


def _starts_with(path: Path, char: bytes) -> bool:
    with open(path, "rb") as fp:
        head = fp.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1] == char


def _read_array(path: Path) -> list:
    """A ``.json`` file holding one JSON array of rows. Its elements are rows (validated later, one by one)."""
    try:
        rows = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply to parse" if isinstance(exc, RecursionError) else str(exc)
        raise ManifestError(
            f"manifest {os.fspath(path)!r} starts with '[' but is not a valid JSON array: {reason}"
        ) from None
    if not isinstance(rows, list):
        raise ManifestError(f"manifest {os.fspath(path)!r} starts with '[' but is not a JSON array")
    return rows


def _read_csv(path: Path):
    """A CSV manifest with every column read as text: ids ``007`` and ``7`` must stay two ids."""
    import pyarrow as pa
    import pyarrow.csv

    header = pyarrow.csv.open_csv(path).schema.names
    options = pyarrow.csv.ConvertOptions(column_types={name: pa.string() for name in header})
    return pyarrow.csv.read_csv(path, convert_options=options)


def _line_offsets(path: Path) -> list[int]:
    """Byte offsets of the non-blank lines of a JSON Lines file."""
    offsets = []
    position = 0
    with open(path, "rb") as fp:
        for line in fp:
            if line.strip():
                offsets.append(position)
            position += len(line)
    return offsets


def open_manifest(path: str | os.PathLike) -> Manifest:
    return Manifest(path)
