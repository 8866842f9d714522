"""The errors table of a batch job (version 1): one row per input row that produced no example.

| column | type | content |
|---|---|---|
| ``id`` | string | the row's id (``"row N"`` when the row had no readable id) |
| ``row`` | int64 | the row's position in the input |
| ``stage`` | string | where it failed: manifest, messages, image, audio, video, prompt, internal |
| ``error_type`` | string | the exception's class name |
| ``message`` | string | the exception's message, which names the input |
"""

from __future__ import annotations

import pyarrow as pa

from .example import schema_metadata

__all__ = ["error_schema", "ERROR_COLUMNS"]

ERROR_COLUMNS = ("id", "row", "stage", "error_type", "message")


def error_schema(extra_metadata: dict[str, str] | None = None) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.string()),
            ("row", pa.int64()),
            ("stage", pa.string()),
            ("error_type", pa.string()),
            ("message", pa.string()),
        ],
        metadata=schema_metadata(extra_metadata),
    )
