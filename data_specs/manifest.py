"""The input manifest of ``gemma4 preprocess``: one row per example, ``id`` + ``messages`` (version 1).

Formats: JSON Lines (``.jsonl``, one object per line), Parquet (``.parquet``), CSV (``.csv``, ``messages`` as a
JSON string), or a directory written by ``datasets.Dataset.save_to_disk``. Every row holds:

* ``id``: a non-empty string (numbers are accepted and turned into strings), unique within the manifest;
* ``messages``: the chat form of ``preprocess.chat`` (a list, or a JSON string of one). Media values are a
  path relative to the folder holding the manifest (file or ``save_to_disk`` directory) or absolute, raw
  ``bytes``, a ``datasets`` Image value (``{"bytes": …, "path": …}``) or Audio value
  (``{"array": …, "sampling_rate": …}`` or ``{"bytes": …, "path": …}``).

Example line::

    {"id": "q1", "messages": [{"role": "user", "content": [
        {"type": "image", "image": "images/cat.jpg", "budget": 280},
        {"type": "audio", "audio": "audio/q1.flac"},
        {"type": "text", "text": "What is happening?"}]}]}

``validate_row`` raises :class:`ManifestError` naming the row; it never touches the media (decoding errors
belong to the preprocessing stages).

``MANIFEST_VERSION`` is the version of this format as the job reads it: ``gemma4 preprocess`` writes it into
``job.json`` and refuses to resume a job recorded under another version (the same input file could then mean
other examples).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST_VERSION", "ManifestError", "Manifest", "open_manifest", "validate_row", "resolve_media"]

MANIFEST_VERSION = 1
MEDIA_KINDS = ("image", "audio", "video")


class ManifestError(ValueError):
    """A manifest row (or file) that does not follow the format."""


def validate_row(row: Any, index: int) -> tuple[str, list]:
    """``(id, messages)`` of a raw row; ``ManifestError`` naming the row otherwise."""
    where = f"row {index}"
    if not isinstance(row, Mapping):
        raise ManifestError(f"{where}: expected an object with 'id' and 'messages', got {type(row).__name__}")
    row_id = row.get("id")
    if isinstance(row_id, bool) or not isinstance(row_id, str | int) or row_id == "":
        raise ManifestError(f"{where}: 'id' must be a non-empty string, got {row_id!r}")
    row_id = str(row_id)
    messages = row.get("messages")
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where} (id {row_id!r}): 'messages' is a string but not JSON: {exc}") from None
    if not isinstance(messages, list) or not messages:
        raise ManifestError(f"{where} (id {row_id!r}): 'messages' must be a non-empty list of chat messages")
    return row_id, messages


def resolve_media(messages: list, base_dir: Path) -> list:
    """A copy of ``messages`` whose media values are ready for ``build_example``: relative paths made
    absolute against ``base_dir``, ``datasets`` Image/Audio values unpacked."""
    out = []
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), list):
            out.append(message)
            continue
        parts = []
        for part in message["content"]:
            if isinstance(part, Mapping) and part.get("type") in MEDIA_KINDS and part.get(part["type"]) is not None:
                kind = part["type"]
                part = dict(part, **{kind: _resolve_value(part[kind], base_dir)})
            parts.append(part)
        out.append(dict(message, content=parts))
    return out


def _resolve_value(value: Any, base_dir: Path) -> Any:
    if isinstance(value, str):
        return str(base_dir / value) if not os.path.isabs(value) else value
    if isinstance(value, Mapping):
        if value.get("array") is not None and value.get("sampling_rate") is not None:
            import numpy as np

            return (np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"]))
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        if value.get("path"):
            return _resolve_value(value["path"], base_dir)
    return value


class Manifest:
    """An opened manifest: ``len()`` rows, iterated in order as raw rows (dicts, or the exception that made a
    line unreadable). ``fingerprint`` identifies the input for resuming."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"manifest {os.fspath(path)!r} does not exist")
        self.base_dir = self.path.parent  # relative media paths: siblings of the manifest (file or directory)
        suffix = self.path.suffix.lower()
        if self.path.is_dir():
            self.kind = "datasets"
            import datasets

            self._dataset = datasets.load_from_disk(str(self.path))
            self._length = len(self._dataset)
        elif suffix in (".jsonl", ".json"):
            self.kind = "jsonl"
            self._offsets = _line_offsets(self.path)
            self._length = len(self._offsets)
        elif suffix in (".parquet", ".csv"):
            self.kind = suffix[1:]
            import pyarrow.csv
            import pyarrow.parquet as pq

            self._table = pq.read_table(self.path) if suffix == ".parquet" else pyarrow.csv.read_csv(self.path)
            self._length = self._table.num_rows
        else:
            raise ManifestError(
                f"manifest {os.fspath(path)!r}: unknown format (use .jsonl, .parquet, .csv or a datasets directory)"
            )
        stat = self.path.stat()
        self.fingerprint = f"{self.kind}:{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{self._length}"

    def __len__(self) -> int:
        return self._length

    def rows(self, start: int, stop: int) -> Iterator[Any]:
        """Raw rows ``start … stop − 1`` in order; an unreadable line is yielded as its ``ManifestError``."""
        if self.kind == "jsonl":
            with open(self.path, "rb") as fp:
                for index in range(start, stop):
                    fp.seek(self._offsets[index])
                    line = fp.readline()
                    try:
                        yield json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        yield ManifestError(f"row {index}: line {index + 1} is not valid JSON: {exc}")
        elif self.kind == "datasets":
            yield from (self._dataset[i] for i in range(start, stop))
        else:
            yield from self._table.slice(start, stop - start).to_pylist()


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
