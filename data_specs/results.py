"""The results table of ``gemma4 infer`` (version 2): one row per input row that was answered.

| column | type | content |
|---|---|---|
| ``id`` | string | the input row's id (an OpenAI batch line's ``custom_id``) |
| ``row`` | int64 | the row's position in the input |
| ``text`` | string | the answer: the reply without its thought channel, tool calls and control tokens |
| ``thinking`` | string (null) | the thought channel's text; null when the reply has none |
| ``tool_calls`` | list<struct<name: string, arguments: string>> | the calls of the reply; arguments as JSON text |
| ``finish_reason`` | string | ``stop`` (a stop id drawn or a stop string written) or ``length`` (at max) |
| ``stop_reason`` | string (null) | the stop string that ended the reply (not part of ``text``); null otherwise |
| ``model`` | string | ``--served-model-name``, else the request's ``model``, else the checkpoint's name |
| ``completion_ids`` | list<int32> | the new token ids, the stop id included |
| ``completion_tokens`` | int64 | their number |
| ``prompt_tokens`` | int64 | tokens of the prompt, all modalities |
| ``text_tokens`` … ``video_tokens`` | int64 | the prompt's tokens per modality (soft tokens and their markers) |
| ``problems`` | list<string> | what ``parse_reply`` found malformed (a cut call, …); empty when none |
| ``raw_text`` | string | the new tokens decoded with their control tokens, as the model wrote them |
| ``queue_s`` | float64 | seconds from the row being prepared (ready to run) to its admission into an engine slot |
| ``prefill_s`` | float64 | seconds from its admission to its first new token on the host: its own prefill |
| ``ttft_s`` | float64 | time to first token: ``queue_s + prefill_s`` |
| ``decode_s`` | float64 | seconds from its first new token to its last |

``prefill_s`` is the row's own: its prompt's chunks run in steps shared with other rows' decoding, which it
includes, but not the prefill of rows admitted before it. Version 2 added ``stop_reason``, ``model`` and
``ttft_s``.

Rows that were not answered are in the errors table (``data_specs.errors_table``). Every file's schema metadata
carries the schema version, the job's settings and the checkpoint's fingerprint.
"""

from __future__ import annotations

import pyarrow as pa

from .example import schema_metadata

__all__ = ["RESULTS_VERSION", "RESULT_COLUMNS", "MODALITY_COLUMNS", "result_schema"]

RESULTS_VERSION = 2
MODALITY_COLUMNS = ("text_tokens", "image_tokens", "audio_tokens", "video_tokens")

_CALL = pa.struct([("name", pa.string()), ("arguments", pa.string())])
_FIELDS = (
    ("id", pa.string()),
    ("row", pa.int64()),
    ("text", pa.string()),
    ("thinking", pa.string()),
    ("tool_calls", pa.list_(_CALL)),
    ("finish_reason", pa.string()),
    ("stop_reason", pa.string()),
    ("model", pa.string()),
    ("completion_ids", pa.list_(pa.int32())),
    ("completion_tokens", pa.int64()),
    ("prompt_tokens", pa.int64()),
    *((name, pa.int64()) for name in MODALITY_COLUMNS),
    ("problems", pa.list_(pa.string())),
    ("raw_text", pa.string()),
    ("queue_s", pa.float64()),
    ("prefill_s", pa.float64()),
    ("ttft_s", pa.float64()),
    ("decode_s", pa.float64()),
)
RESULT_COLUMNS = tuple(name for name, _ in _FIELDS)


def result_schema(extra_metadata: dict[str, str] | None = None) -> pa.Schema:
    """The results table's schema; its metadata carries the results version (and ``extra_metadata``)."""
    metadata = schema_metadata(extra_metadata)
    metadata[b"gemma4.results_version"] = str(RESULTS_VERSION).encode()
    return pa.schema(list(_FIELDS), metadata=metadata)
