"""The example schema: Arrow round trip, 64-bit offsets, version checks."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_specs.example import (
    SCHEMA_VERSION,
    SchemaError,
    check_schema,
    example_schema,
    example_to_row,
    row_options,
    row_to_example,
)
from preprocess.prompt import build_example
from preprocess.tokenizer import Tokenizer
from tests.preprocess.helpers import assert_same, encode_video


def test_round_trip_through_parquet(tokenizer_dir, tmp_path):
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    clip = (0.1 * rng.standard_normal(40_000)).astype(np.float32)
    examples = [
        build_example([{"role": "user", "content": "hello"}], tok),
        build_example(
            [{"role": "user", "content": [{"type": "video", "video": encode_video(12), "num_frames": 3}]}], tok
        ),
        build_example(
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": picture}, {"type": "audio", "audio": (clip, 16_000)}],
                }
            ],
            tok,
        ),
    ]
    schema = example_schema({"gemma4.tokenizer": tok.fingerprint})
    table = pa.Table.from_pylist([example_to_row(f"row{i}", e) for i, e in enumerate(examples)], schema=schema)
    path = tmp_path / "shard.parquet"
    pq.write_table(table, path)
    read = pq.read_table(path)
    check_schema(read.schema)
    assert read.schema.metadata[b"gemma4.tokenizer"] == tok.fingerprint.encode()
    for original, row in zip(examples, read.to_pylist(), strict=True):
        example_id, recovered = row_to_example(row)
        assert example_id.startswith("row")
        assert_same(original, recovered)


def test_large_offsets():
    schema = example_schema()
    for name in ("input_ids", "mm_token_type_ids", "assistant_mask", "images", "audio", "videos"):
        assert pa.types.is_large_list(schema.field(name).type), name
    image_type = schema.field("images").type.value_type
    assert pa.types.is_large_binary(image_type.field("patches").type)


def test_version_checks():
    good = example_schema()
    check_schema(good)
    with pytest.raises(SchemaError, match="no gemma4.schema_version"):
        check_schema(good.remove_metadata())
    with pytest.raises(SchemaError, match=f"schema version 99; this code reads version {SCHEMA_VERSION}"):
        check_schema(good.with_metadata({b"gemma4.schema_version": b"99"}))
    with pytest.raises(SchemaError, match="columns differ"):
        check_schema(good.remove(0).with_metadata(good.metadata))


def test_assistant_mask_and_options_round_trip(tok, tmp_path):
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello world"}]
    examples = [build_example(chat, tok, add_generation_prompt=False), build_example(chat[:1], tok)]
    assert examples[0].assistant_mask.any() and not examples[1].assistant_mask.any()
    options = [{"temperature": 0.5, "stop": ["\n\n"], "max_new_tokens": 16, "top_p": 0.9, "top_k": 40, "seed": 3}, None]
    rows = [example_to_row(f"row{i}", e, o) for i, (e, o) in enumerate(zip(examples, options, strict=True))]
    assert rows[0]["options"] == json.dumps(options[0], sort_keys=True) and rows[1]["options"] is None
    path = tmp_path / "shard.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=example_schema()), path)
    read = pq.read_table(path)
    check_schema(read.schema)
    assert read.schema.field("options").nullable
    for original, given, row in zip(examples, options, read.to_pylist(), strict=True):
        _, recovered = row_to_example(row)
        assert np.array_equal(recovered.assistant_mask, original.assistant_mask)
        assert recovered.assistant_mask.dtype == np.int8
        assert row_options(row) == given
    assert example_to_row("x", examples[1])["options"] is None  # options left out: none
    with pytest.raises(TypeError, match="options must be a mapping"):
        example_to_row("x", examples[1], options=[("seed", 1)])


def test_a_version_1_table_is_refused_with_what_to_do():
    old = example_schema().remove(example_schema().get_field_index("options"))
    old = old.remove(old.get_field_index("assistant_mask")).with_metadata({b"gemma4.schema_version": b"1"})
    with pytest.raises(SchemaError) as caught:
        check_schema(old)
    assert str(caught.value) == (
        "the table was written by an older version of this pipeline (schema version 1); this code reads schema "
        "version 2: re-run `gemma4 preprocess` to write it again"
    )
