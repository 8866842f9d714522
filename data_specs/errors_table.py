"""The errors table of a batch job (version 1): one row per input row that produced no example.

| column | type | content |
|---|---|---|
| ``id`` | string (null) | the row's id, whole; null when the row had no readable id (never a made-up one) |
| ``row`` | int64 | the row's position in the input |
| ``stage`` | string | where it failed: manifest, messages, image, audio, video, prompt, internal |
| ``error_type`` | string | the exception's class name |
| ``message`` | string | the exception's message, which names the input |
"""

from __future__ import annotations

import pyarrow as pa

from .example import schema_metadata

__all__ = ["error_schema", "ERROR_COLUMNS"]

ERROR_COLUMNS = ("id", "row", "stage", "error_type", "message")  # in table order; "row" is int64, the rest strings


def error_schema(extra_metadata: dict[str, str] | None = None) -> pa.Schema:
    """The errors table's schema, its metadata carrying the schema version (and ``extra_metadata``)."""
    columns = [(name, pa.int64() if name == "row" else pa.string()) for name in ERROR_COLUMNS]
    return pa.schema(columns, metadata=schema_metadata(extra_metadata))
