"""The Arrow schema of one preprocessed example (version 2), and the conversion both ways.

One row per example:

* ``id`` (string): the input row's id.
* ``input_ids`` (large_list<int32>), ``mm_token_type_ids`` (large_list<int8>: 0 text, 1 image, 2 video, 3 audio).
* ``assistant_mask`` (large_list<int8>): 1 on the tokens the model writes (its turns' content and the ``<turn|>``
  closing each, ``preprocess.prompt.Example.assistant_mask``), 0 elsewhere: the training labels' mask.
* ``images`` (large_list<struct>): ``patches`` (large_binary: P × 768 uint8, raster order), ``height`` and
  ``width`` (resized), ``original_height``, ``original_width``, ``budget``.
* ``audio`` (large_list<struct>), one per ≤ 30 s segment: ``features`` (large_binary: F × 128 float32,
  little-endian), ``mask`` (large_binary: F bytes of 0/1), ``num_frames``, ``num_tokens``, ``start_s``,
  ``end_s``, ``part`` (which audio part of the conversation).
* ``videos`` (large_list<struct>): ``frames`` (large_list of the image struct), ``timestamps``
  (list<string>, ``MM:SS``), ``budget``.
* ``summary`` (string): JSON with token counts per modality, budgets and audio segments.
* ``options`` (string, nullable): JSON of the row's own generation options (``max_new_tokens``, ``temperature``,
  ``top_k``, ``top_p``, ``seed``, ``stop``), keys sorted, or null when the row has none (:func:`row_options`).

Version 2 added ``assistant_mask`` and ``options``; a version-1 table is refused by :func:`check_schema` (re-run
``gemma4 preprocess``: its examples have no mask to read).

Patch positions are not stored: they follow from each image's size (``preprocess.image.patch_positions``).
Every list and binary column uses 64-bit offsets (``large_*``), so a shard holding many 1120-budget images
(7.7 MB of patches each) cannot overflow Arrow's 2 GiB 32-bit offset limit. The schema version is stored in
the schema metadata (``gemma4.schema_version``) and checked by :func:`check_schema`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = [
    "SCHEMA_VERSION",
    "example_schema",
    "example_to_row",
    "row_to_example",
    "row_options",
    "check_schema",
    "SchemaError",
]

SCHEMA_VERSION = 2
VERSION_KEY = b"gemma4.schema_version"


class SchemaError(ValueError):
    """A table whose schema or version is not the one this code reads."""


_IMAGE = pa.struct(
    [
        ("patches", pa.large_binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("original_height", pa.int32()),
        ("original_width", pa.int32()),
        ("budget", pa.int16()),
    ]
)
_AUDIO = pa.struct(
    [
        ("features", pa.large_binary()),
        ("mask", pa.large_binary()),
        ("num_frames", pa.int32()),
        ("num_tokens", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("part", pa.int32()),
    ]
)
_VIDEO = pa.struct([("frames", pa.large_list(_IMAGE)), ("timestamps", pa.list_(pa.string())), ("budget", pa.int16())])


def schema_metadata(extra: dict[str, str] | None = None) -> dict[bytes, bytes]:
    """Schema metadata: the schema version plus ``extra`` (e.g. the preprocessing settings)."""
    return {VERSION_KEY: str(SCHEMA_VERSION).encode(), **{k.encode(): v.encode() for k, v in (extra or {}).items()}}


def example_schema(extra_metadata: dict[str, str] | None = None) -> pa.Schema:
    """The version-2 schema; ``extra_metadata`` (e.g. preprocessing settings) is added to its metadata."""
    return pa.schema(
        [
            ("id", pa.string()),
            ("input_ids", pa.large_list(pa.int32())),
            ("mm_token_type_ids", pa.large_list(pa.int8())),
            ("assistant_mask", pa.large_list(pa.int8())),
            ("images", pa.large_list(_IMAGE)),
            ("audio", pa.large_list(_AUDIO)),
            ("videos", pa.large_list(_VIDEO)),
            ("summary", pa.string()),
            ("options", pa.string()),
        ],
        metadata=schema_metadata(extra_metadata),
    )


def _image_row(image) -> dict:
    return {
        "patches": np.ascontiguousarray(image.patches, dtype=np.uint8).tobytes(),
        "height": image.size[0],
        "width": image.size[1],
        "original_height": image.original_size[0],
        "original_width": image.original_size[1],
        "budget": image.budget,
    }


def example_to_row(example_id: str, example, options: Mapping[str, Any] | None = None) -> dict:
    """A ``preprocess.prompt.Example`` as a row of :func:`example_schema`; ``options`` are the row's own
    generation options (JSON data), None when it has none."""
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of generation options or None, got {type(options).__name__}")
    return {
        "id": example_id,
        "input_ids": example.input_ids.astype(np.int32).tolist(),
        "mm_token_type_ids": example.mm_token_type_ids.astype(np.int8).tolist(),
        "assistant_mask": example.assistant_mask.astype(np.int8).tolist(),
        "images": [_image_row(i) for i in example.images],
        "audio": [
            {
                "features": np.ascontiguousarray(a.features, dtype="<f4").tobytes(),
                "mask": np.ascontiguousarray(a.mask, dtype=np.uint8).tobytes(),
                "num_frames": a.features.shape[0],
                "num_tokens": a.num_tokens,
                "start_s": a.start_s,
                "end_s": a.end_s,
                "part": a.part,
            }
            for a in example.audio
        ],
        "videos": [
            {"frames": [_image_row(f) for f in v.frames], "timestamps": list(v.timestamps), "budget": v.budget}
            for v in example.videos
        ],
        "summary": json.dumps(example.summary, sort_keys=True),
        "options": None if options is None else json.dumps(dict(options), sort_keys=True),
    }


def row_options(row: dict) -> dict | None:
    """The row's own generation options that :func:`example_to_row` wrote, or None when it has none."""
    value = row.get("options")
    return None if value is None else json.loads(value)


def _image_from_row(row: dict):
    from preprocess.image import PATCH_VALUES, ImagePatches

    patches = np.frombuffer(row["patches"], dtype=np.uint8).reshape(-1, PATCH_VALUES).copy()
    return ImagePatches(
        patches=patches,
        size=(row["height"], row["width"]),
        original_size=(row["original_height"], row["original_width"]),
        budget=row["budget"],
    )


def row_to_example(row: dict):
    """The inverse of :func:`example_to_row`: ``(id, Example)``."""
    from preprocess.prompt import AudioFeatures, Example
    from preprocess.video import VideoPatches

    audio = []
    for a in row["audio"]:
        features = np.frombuffer(a["features"], dtype="<f4").reshape(a["num_frames"], 128).astype(np.float32)
        mask = np.frombuffer(a["mask"], dtype=np.uint8).astype(bool)
        audio.append(AudioFeatures(features, mask, a["num_tokens"], a["start_s"], a["end_s"], a["part"]))
    videos = [
        VideoPatches(
            frames=tuple(_image_from_row(f) for f in v["frames"]), timestamps=tuple(v["timestamps"]), budget=v["budget"]
        )
        for v in row["videos"]
    ]
    example = Example(
        input_ids=np.asarray(row["input_ids"], dtype=np.int32),
        mm_token_type_ids=np.asarray(row["mm_token_type_ids"], dtype=np.int8),
        images=[_image_from_row(i) for i in row["images"]],
        audio=audio,
        videos=videos,
        summary=json.loads(row["summary"]),
        assistant_mask=np.asarray(row["assistant_mask"], dtype=np.int8),
    )
    return row["id"], example


def check_schema(schema: pa.Schema) -> None:
    """Raise :class:`SchemaError` unless ``schema`` is version 2 of this schema (metadata aside)."""
    version = (schema.metadata or {}).get(VERSION_KEY)
    if version is None:
        raise SchemaError("the table has no gemma4.schema_version: it was not written by this pipeline")
    if version.isdigit() and int(version) < SCHEMA_VERSION:
        raise SchemaError(
            f"the table was written by an older version of this pipeline (schema version {version.decode()}); this "
            f"code reads schema version {SCHEMA_VERSION}: re-run `gemma4 preprocess` to write it again"
        )
    if version != str(SCHEMA_VERSION).encode():
        raise SchemaError(f"the table has schema version {version.decode()}; this code reads version {SCHEMA_VERSION}")
    expected = example_schema()
    if not schema.remove_metadata().equals(expected.remove_metadata()):
        ours, theirs = {f.name: f.type for f in expected}, {f.name: f.type for f in schema}
        problems = [f"missing {name}" for name in ours if name not in theirs]
        problems += [f"extra {name}" for name in theirs if name not in ours]
        problems += [f"{n} is {theirs[n]}, not {ours[n]}" for n in ours if n in theirs and theirs[n] != ours[n]]
        if not problems:
            problems = [f"the columns are in another order: {', '.join(theirs)}"]
        raise SchemaError(f"the table's columns differ from schema version {SCHEMA_VERSION}: {'; '.join(problems)}")
