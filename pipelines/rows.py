"""The records rows travel in through both batch jobs, and the one place input rows are read and checked.

An input row becomes an :class:`Item` (its position, its id, what to do with it, its own generation options).
Workers turn items into outcomes, one per item and in input order:

* :class:`Built`: a row of the examples table (``gemma4 preprocess``, or an example a preprocess output holds);
* :class:`Prepared`: a one-row batch ready for the model, with its prompt summary (``gemma4 infer``);
* :class:`Failed`: a row of the errors table (``data_specs.errors_table``), with the stage that failed.

Every record pickles (process pools, Ray's object store). :func:`read_items` reads one shard of a manifest or an
OpenAI batch file: every row is validated here (``data_specs.manifest``, ``data_specs.openai_batch``) and a
repeated id is an error row naming the row it repeats; what cannot be read becomes a :class:`Failed`-to-be
(the item's payload is the exception), so every input row is accounted for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_specs.manifest import MAX_ID_CHARS, ManifestError, ManifestRow, RowOptions, read_options, read_row
from data_specs.openai_batch import read_request

__all__ = ["Built", "Failed", "Item", "Prepared", "read_items", "row_id_of"]


@dataclass(frozen=True, slots=True)
class Item:
    """One input row on its way: its position in the input, its id (None when unreadable), and ``payload``: a
    :class:`ManifestRow` to prepare, an examples-table row (prepared already: a preprocess output), an
    errors-table row (carried over from a preprocess output) or the exception that makes it an error row.
    ``options``: its own generation options (None: the job's)."""

    index: int
    id: str | None
    payload: ManifestRow | dict | Exception
    options: RowOptions | None = None

    @property
    def carried_error(self) -> bool:
        """Whether the payload is an errors-table row carried over from a preprocess output."""
        return isinstance(self.payload, dict) and "stage" in self.payload


@dataclass(frozen=True, slots=True)
class Built:
    """A row of the examples table (``data_specs.example``)."""

    index: int
    row: dict


@dataclass(frozen=True, slots=True)
class Prepared:
    """A row ready for the model: a one-row ``data_specs.batch.Batch`` and its prompt summary."""

    index: int
    id: str
    batch: Any
    summary: dict


@dataclass(frozen=True, slots=True)
class Failed:
    """A row of the errors table (``data_specs.errors_table``: id, row, stage, error_type, message)."""

    row: dict

    @property
    def index(self) -> int:
        return self.row["row"]


def row_id_of(raw: Any, key: str = "id") -> str | None:
    """The id a raw row gives itself (``id``, or ``custom_id`` in an OpenAI batch), when it is usable as one."""
    raw_id = raw.get(key) if isinstance(raw, dict) else None
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or raw_id == "":
        return None
    return str(raw_id) if len(str(raw_id)) <= MAX_ID_CHARS else None


def read_items(manifest, start: int, stop: int, seen: dict[str, int], *, kind: str = "manifest") -> list[Item]:
    """Rows ``start … stop − 1`` of ``manifest`` (a ``data_specs.manifest.Manifest``) as items, validated: ``kind``
    ``"manifest"`` (rows with ``id``, ``messages``, ``tools`` and generation options) or ``"openai"`` (batch
    request lines). ``seen`` maps the ids of earlier rows to their positions (updated): a repeated id is an error
    naming the row it repeats. Read every shard in order, done ones too, so ids are seen."""
    items = []
    key = "custom_id" if kind == "openai" else "id"
    for index, raw in enumerate(manifest.rows(start, stop), start):
        try:
            if isinstance(raw, Exception):
                raise raw
            if kind == "openai":
                row, options = read_request(raw, index)
            else:
                row = read_row(raw, index)
                options = read_options(raw, f"row {index} (id {row.id!r})")
            if row.id in seen:
                raise ManifestError(f"row {index}: id {row.id!r} repeats row {seen[row.id]}")
            seen[row.id] = index
            items.append(Item(index, row.id, row, options))
        except ManifestError as exc:
            items.append(Item(index, row_id_of(raw, key), exc))
    return items
