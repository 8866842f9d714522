"""Reading a preprocess output back: files found by what exists, empty outputs, one row as an Example."""

from __future__ import annotations

import json
import re
import shutil

import pyarrow.parquet as pq
import pytest

from data_specs.example import SchemaError
from pipelines import cli
from pipelines.preprocess_job import PreprocessSettings, run_preprocess
from pipelines.readback import RowNotFoundError, open_output
from preprocess.prompt import Example
from tests.pipelines.helpers import VERSION_1_MESSAGE, as_version_1


def _without_empty_files(out, tmp_path):
    """A copy of ``out`` without its 0-row Parquet files (what the job will write: none for an empty shard)."""
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    removed = []
    for file in sorted(copy.glob("*/*.parquet")):
        if pq.read_metadata(file).num_rows == 0:
            file.unlink()
            removed.append(file.name)
    return copy, removed


def test_example_is_an_example_and_ids_are_in_input_order(small_output):
    output = open_output(small_output[1])
    assert output.ids() == ["ex0000", "ex0001", "ex0002", "ex0003", "ex0004"]
    example = output.example("ex0001")
    assert isinstance(example, Example) and example.images and example.summary
    assert isinstance(output.example(1), Example)
    assert output.example(1).summary == example.summary
    assert b"gemma4.settings" in output.examples().schema.metadata


def test_reads_shards_that_have_only_one_of_their_two_files(small_output, tmp_path):
    copy, removed = _without_empty_files(small_output[1], tmp_path)
    assert removed == []  # the job writes no empty files
    names = {p.relative_to(copy).as_posix() for p in copy.glob("*/*.parquet")}
    assert not names & {"errors/shard-00000.parquet", "examples/shard-00002.parquet", "examples/shard-00003.parquet"}
    output = open_output(copy)
    assert output.ids() == open_output(small_output[1]).ids()
    assert output.errors().num_rows == 7
    assert output.example("ex0004").videos
    assert "5 examples + 7 errors = 12 input rows" in output.report()[0]


def test_a_file_job_json_counts_rows_in_must_exist(small_output, tmp_path):
    copy, _ = _without_empty_files(small_output[1], tmp_path)
    (copy / "examples" / "shard-00001.parquet").unlink()
    missing = r"examples/shard-00001\.parquet is missing: job.json records 2 examples"
    with pytest.raises(FileNotFoundError, match=missing):
        open_output(copy)


@pytest.mark.parametrize("lines", [[], ["{not json"]], ids=["empty-manifest", "only-errors"])
def test_an_output_without_examples_reads_as_empty(small_output, tmp_path, capsys, lines):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(line + "\n" for line in lines))
    settings = PreprocessSettings(tokenizer=str(small_output[0] / "tokenizer"))
    out = tmp_path / "out"
    run_preprocess(manifest, out, settings, workers=1, progress=False)
    for file in out.glob("*/*.parquet"):  # as the job writes it from now on: no 0-row files
        if pq.read_metadata(file).num_rows == 0:
            file.unlink()
    output = open_output(out)
    assert output.ids() == [] and output.examples().count_rows() == 0 and len(output.to_datasets()) == 0
    assert output.errors().num_rows == len(lines)
    with pytest.raises(IndexError, match="0 examples"):
        output.example(0)
    assert cli.main(["inspect", str(out)]) == 0
    assert f"0 examples + {len(lines)} errors = {len(lines)} input rows" in capsys.readouterr().out


def test_unknown_id_says_where_the_row_went(small_output):
    output = open_output(small_output[1])
    with pytest.raises(RowNotFoundError) as info:
        output.example("bad-image")
    message = str(info.value)
    assert message.startswith("row 'bad-image' of ") and "stage image" in message and "input row 3" in message
    with pytest.raises(KeyError) as info:  # RowNotFoundError is a KeyError
        output.example("nope")
    expected = f"no row with id 'nope' in {small_output[1]} (5 examples, 7 errors; a position is also accepted)"
    assert str(info.value) == expected


def test_job_json_shards_are_the_source_of_truth(small_output, tmp_path):
    """A stray shard file that job.json does not list is refused in a finished output (a reader of the folder would
    read it); in an unfinished one (renamed into place, not yet recorded) it is not read."""
    copy, _ = _without_empty_files(small_output[1], tmp_path)
    shutil.copy(copy / "examples" / "shard-00000.parquet", copy / "examples" / "shard-00009.parquet")
    with pytest.raises(SchemaError, match=r"shard-00009\.parquet: a file job.json does not record"):
        open_output(copy)
    state = json.loads((copy / "job.json").read_text())
    (copy / "job.json").write_text(json.dumps({k: v for k, v in state.items() if k != "complete"}))
    assert len(open_output(copy, allow_incomplete=True).ids()) == 5
    state = json.loads((copy / "job.json").read_text())
    assert sorted(state["shards"], key=int) == ["0", "1", "2", "3"]


def test_a_version_1_output_is_refused_in_one_line(small_output, tmp_path, capsys):
    """Output version 1 kept both tables in shards/: it is not read as an empty output or a half one."""
    old = as_version_1(small_output[1], tmp_path / "old")
    with pytest.raises(SchemaError, match=re.escape(VERSION_1_MESSAGE)) as info:
        open_output(old)
    message = str(info.value)
    assert "run the job again into a new folder" in message and "\n" not in message
    assert cli.main(["inspect", str(old)]) == 2
    err = capsys.readouterr().err
    assert VERSION_1_MESSAGE in err and len(err.splitlines()) == 1
