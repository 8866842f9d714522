"""gemma4 preprocess: end to end, bad rows, determinism, kill-and-resume, input formats, read-back, schema checks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_specs.example import SchemaError
from data_specs.manifest import MANIFEST_VERSION
from pipelines import cli
from pipelines.preprocess_job import JobMismatchError, PreprocessSettings, run_preprocess
from pipelines.readback import open_output
from pipelines.rows import Item
from pipelines.sample_data import write_sample_dataset
from preprocess.prompt import build_example
from preprocess.tokenizer import Tokenizer
from tests.pipelines.helpers import CLOCK, VERSION_1_MESSAGE, WEATHER, as_version_1, recording_build_example
from tests.preprocess.helpers import assert_same

BAD_IDS = {
    "bad-image": "image",
    "bad-audio": "audio",
    "missing-file": "media",
    "malformed": "messages",
    "no-messages": "manifest",
    "unknown-type": "messages",
    None: "manifest",  # the unreadable JSON line at the end: no id (never a made-up one)
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sample")
    manifest, tokenizer = write_sample_dataset(directory, rows=20, corrupt=True)
    return manifest, tokenizer


def settings(tokenizer, **kw) -> PreprocessSettings:
    return PreprocessSettings(tokenizer=str(tokenizer), rows_per_shard=kw.pop("rows_per_shard", 6), **kw)


def tables(out: Path) -> dict[str, pa.Table]:
    return {p.relative_to(out).as_posix(): pq.read_table(p) for p in sorted(out.glob("*/*.parquet"))}


def assert_same_shards(ours: Path, theirs: Path) -> None:
    """Both output directories hold the same shard files with equal tables."""
    a, b = tables(ours), tables(theirs)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].equals(b[name]), name


@pytest.fixture(scope="module")
def reference_run(sample, tmp_path_factory):
    manifest, tokenizer = sample
    out = tmp_path_factory.mktemp("ref")
    summary = run_preprocess(manifest, out, settings(tokenizer), workers=1, progress=False)
    return out, summary


def test_every_row_is_accounted_for(sample, reference_run):
    manifest, tokenizer = sample
    out, summary = reference_run
    lines = [line for line in manifest.read_text().splitlines() if line.strip()]
    assert summary.rows == len(lines) == summary.examples + summary.errors == 27
    output = open_output(out)
    errors = output.errors().to_pylist()
    assert {e["id"]: e["stage"] for e in errors} == BAD_IDS
    for e in errors:
        assert e["message"] and e["error_type"]
    example_ids = output.examples().to_table(columns=["id"]).column("id").to_pylist()
    assert len(example_ids) == 20 and len(set(example_ids)) == 20
    assert set(example_ids).isdisjoint(BAD_IDS)
    # Rows keep input order within and across shards.
    assert example_ids == sorted(example_ids)
    assert summary.tokens["image"] > 0 and summary.tokens["audio"] > 0 and summary.tokens["video"] > 0
    assert summary.bytes_written == sum(p.stat().st_size for p in out.glob("*/*.parquet"))


def test_rows_equal_building_the_example_directly(sample, reference_run):
    manifest, tokenizer = sample
    out, _ = reference_run
    output = open_output(out)
    tok = Tokenizer.from_pretrained(tokenizer)
    from data_specs.manifest import resolve_media

    for line in manifest.read_text().splitlines()[:8]:
        row = json.loads(line)
        if row["id"] in BAD_IDS:
            continue
        expected = build_example(resolve_media(row["messages"], manifest.parent), tok)
        assert_same(expected, output.example(row["id"]))
    assert output.ids()[0] == "ex0000"
    assert_same(output.example(0), output.example("ex0000"))
    with pytest.raises(KeyError, match="bad-image"):
        output.example("bad-image")
    dataset = output.to_datasets()
    assert len(dataset) == 20 and dataset[0]["id"] == "ex0000"


@pytest.mark.slow
def test_same_output_whatever_the_worker_count(sample, reference_run, tmp_path):
    manifest, tokenizer = sample
    out, _ = reference_run
    run_preprocess(manifest, tmp_path, settings(tokenizer), workers=2, progress=False)
    assert_same_shards(tmp_path, out)


def test_rerun_skips_completed_shards(sample, reference_run, tmp_path):
    manifest, tokenizer = sample
    first = run_preprocess(manifest, tmp_path, settings(tokenizer), workers=1, progress=False)
    again = run_preprocess(manifest, tmp_path, settings(tokenizer), workers=1, progress=False)
    assert again.shards_skipped == again.shards == first.shards
    assert (again.rows, again.examples, again.errors) == (first.rows, first.examples, first.errors)
    with pytest.raises(JobMismatchError) as info:
        run_preprocess(
            manifest, tmp_path, settings(tokenizer, image_budget=70, max_tokens=5000), workers=1, progress=False
        )
    # each differing key is named once with both values; nothing else is listed
    message = str(info.value)
    assert "settings.image_budget: 280 there, 70 now" in message
    assert "settings.max_tokens: None there, 5000 now" in message
    assert message.count(" there, ") == 2


def test_a_job_of_another_manifest_version_is_not_resumed(sample, reference_run, tmp_path):
    import shutil

    manifest, tokenizer = sample
    out, _ = reference_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    state = json.loads((copy / "job.json").read_text())
    assert state["manifest_version"] == MANIFEST_VERSION
    (copy / "job.json").write_text(json.dumps(dict(state, manifest_version=MANIFEST_VERSION + 1)))
    with pytest.raises(
        JobMismatchError, match=f"manifest_version: {MANIFEST_VERSION + 1} there, {MANIFEST_VERSION} now"
    ):
        run_preprocess(manifest, copy, settings(tokenizer), workers=1, progress=False)


def test_a_version_1_output_is_refused_in_one_line(sample, reference_run, tmp_path, capsys):
    """Output version 1 kept both tables in shards/: resuming into one is refused, whatever the settings."""
    manifest, tokenizer = sample
    old = as_version_1(reference_run[0], tmp_path / "old")
    with pytest.raises(JobMismatchError, match=re.escape(VERSION_1_MESSAGE)) as info:
        run_preprocess(manifest, old, settings(tokenizer), workers=1, progress=False)
    assert "run the job again into a new folder" in str(info.value) and "\n" not in str(info.value)
    args = ["preprocess", str(manifest), str(old), "--tokenizer", str(tokenizer), "--rows-per-shard", "6"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert VERSION_1_MESSAGE in err and "run the job again into a new folder" in err and len(err.splitlines()) == 1
    assert "output_version" not in json.loads((old / "job.json").read_text())  # left as it was
    assert not [p for p in old.rglob("*.parquet") if p.parent.name != "shards"]


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_output(sample, reference_run, tmp_path):
    manifest, tokenizer = sample
    out, _ = reference_run
    target = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "preprocess",
        str(manifest),
        str(target),
        "--tokenizer",
        str(tokenizer),
        "--rows-per-shard",
        "6",
        "--workers",
        "1",
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    job = target / "job.json"
    while time.time() < deadline:  # kill -9 as soon as the first shard is recorded, mid-job
        if job.exists() and json.loads(job.read_text() or "{}").get("shards"):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = json.loads(job.read_text())
    assert 0 < len(state["shards"]) < 5 and not state.get("complete")
    (target / "examples" / ".shard-00004.parquet.tmp-999").write_bytes(b"half a shard")  # as a kill would leave
    with pytest.raises(SchemaError, match="not finished"):
        open_output(target)
    assert cli.main(command[3:]) == 0
    assert not list(target.glob("*/.*"))
    assert_same_shards(target, out)


def test_input_formats_give_the_same_output(sample, reference_run, tmp_path):
    import datasets

    manifest, tokenizer = sample
    out, _ = reference_run
    rows = [json.loads(line) for line in manifest.read_text().splitlines()[:-1]]  # drop the broken JSON line
    clean = [dict(r, messages=json.dumps(r["messages"])) for r in rows if "messages" in r]
    parquet = manifest.parent / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(clean), parquet)
    saved = manifest.parent / "manifest_dataset"
    datasets.Dataset.from_list(clean).save_to_disk(str(saved))
    results = []
    for source in (parquet, saved):
        target = tmp_path / source.name
        summary = run_preprocess(source, target, settings(tokenizer, rows_per_shard=100), workers=1, progress=False)
        results.append(open_output(target).examples().to_table())
        assert summary.rows == len(clean)
    assert results[0].equals(results[1])
    expected = open_output(out).examples().to_table()
    assert results[0].column("input_ids").to_pylist() == expected.column("input_ids").to_pylist()


def test_duplicate_ids_and_unknown_format(tokenizer_dir, tmp_path):
    manifest = tmp_path / "m.jsonl"
    message = [{"role": "user", "content": "hi"}]
    manifest.write_text("\n".join(json.dumps({"id": i, "messages": message}) for i in ["a", "b", "a"]) + "\n")
    summary = run_preprocess(manifest, tmp_path / "out", settings(tokenizer_dir, rows_per_shard=2), progress=False)
    assert (summary.examples, summary.errors) == (2, 1)
    error = open_output(tmp_path / "out").errors().to_pylist()[0]
    assert error["row"] == 2 and "repeats row 0" in error["message"]
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown format"):
        run_preprocess(tmp_path / "m.txt", tmp_path / "o2", settings(tokenizer_dir), progress=False)


def test_readback_refuses_other_versions_and_settings(reference_run, tmp_path):
    import shutil

    out, _ = reference_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    state = json.loads((copy / "job.json").read_text())
    (copy / "job.json").write_text(json.dumps(dict(state, schema_version=1)))
    with pytest.raises(SchemaError, match="schema version 1"):
        open_output(copy)
    (copy / "job.json").write_text(json.dumps(dict(state, settings=dict(state["settings"], image_budget=70))))
    with pytest.raises(SchemaError, match="other settings"):
        open_output(copy)
    with pytest.raises(FileNotFoundError, match="job.json"):
        open_output(tmp_path)


def test_inspect_command(reference_run, tmp_path, capsys):
    out, _ = reference_run
    picture = tmp_path / "p.png"
    assert cli.main(["inspect", str(out), "--row", "ex0001", "--preview", str(picture)]) == 0
    text = capsys.readouterr().out
    assert "20 examples + 7 errors = 27 input rows" in text and "bad-image" in text and picture.exists()
    from PIL import Image

    example = open_output(out).example("ex0001")
    width = max(example.images[0].size[1], 480)
    assert Image.open(picture).width == width
    assert cli.main(["inspect", str(out), "--row", "ex0000", "--preview", str(picture)]) == 2  # text-only row


def test_preview_pixels_round_trip(reference_run):
    from pipelines.preview import unpatchify
    from preprocess.image import patchify

    example = open_output(reference_run[0]).example("ex0001")
    image = example.images[0]
    assert np.array_equal(patchify(unpatchify(image.patches, image.size)), image.patches)


@pytest.mark.parametrize("fast", [False, True])
def test_every_image_is_decoded_once_and_fast_jobs_draft_decode_jpegs(sample, tmp_path, monkeypatch, fast):
    """In a job (one in-process worker, so the counters see every call): one decode per image part that reaches
    the decoder (the images in the output plus the undecodable one), and JPEG draft decoding in fast mode only."""
    from PIL import JpegImagePlugin

    import preprocess.image_io as image_io

    manifest, tokenizer = sample
    decodes, drafts = [], []
    for name in ("_from_stream", "_from_pil", "_from_array"):
        original = getattr(image_io, name)
        monkeypatch.setattr(image_io, name, lambda *a, _f=original, **k: decodes.append(1) or _f(*a, **k))
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile, "draft", lambda im, *a, **k: drafts.append(a) or draft(im, *a, **k)
    )
    out = tmp_path / "out"
    summary = run_preprocess(manifest, out, settings(tokenizer, exact=not fast), workers=1, progress=False)
    output = open_output(out)
    images = sum(len(json.loads(s)["image_budgets"]) for s in output.examples().to_table()["summary"].to_pylist())
    image_errors = summary.errors_by_stage.get("image", 0)
    assert images > 0 and image_errors == 1
    assert len(decodes) == images  # the undecodable image is refused from its header, before any decoding
    assert bool(drafts) == fast  # every JPEG of the sample is drafted in fast mode, none in exact mode


# --- output other tools read; reruns; faults (issue: new user and hostile input) ---------------------------


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def text_row(row_id: str, text: str = "hi") -> dict:
    return {"id": row_id, "messages": [{"role": "user", "content": text}]}


def test_no_empty_parquet_files_and_other_readers_read_the_output(tokenizer_dir, tmp_path):
    # shard 0: all good; shard 1: all bad; shard 2: mixed
    rows = [text_row("a"), text_row("b"), {"id": "c"}, {"id": "d"}, text_row("e"), {"id": "f"}]
    manifest = write_lines(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    summary = run_preprocess(manifest, out, settings(tokenizer_dir, rows_per_shard=2), progress=False)
    assert (summary.examples, summary.errors) == (3, 3)
    files = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.parquet"))
    assert files == [
        "errors/shard-00001.parquet", "errors/shard-00002.parquet",
        "examples/shard-00000.parquet", "examples/shard-00002.parquet",
    ]  # fmt: skip
    for path in out.glob("*/*.parquet"):
        assert pq.read_metadata(path).num_rows > 0
    state = json.loads((out / "job.json").read_text())
    assert state["shards"]["1"]["examples"] == 0 and state["shards"]["0"]["errors"] == 0

    import datasets
    import duckdb
    import polars
    import pyarrow.dataset as pads

    pattern = str(out / "examples" / "*.parquet")
    loaded = datasets.load_dataset("parquet", data_files=pattern, split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded["id"]) == ["a", "b", "e"]
    assert sorted(datasets.Dataset.from_parquet(pattern, cache_dir=str(tmp_path / "cache2"))["id"]) == ["a", "b", "e"]
    assert sorted(pads.dataset(out / "examples", format="parquet").to_table()["id"].to_pylist()) == ["a", "b", "e"]
    by_folder = datasets.load_dataset("parquet", data_dir=str(out / "examples"), cache_dir=str(tmp_path / "cache3"))
    assert sorted(by_folder["train"]["id"]) == ["a", "b", "e"]
    assert sorted(polars.read_parquet(pattern)["id"].to_list()) == ["a", "b", "e"]
    errors = duckdb.sql(f"select id, stage from read_parquet('{out}/errors/*.parquet') order by id").fetchall()
    assert errors == [("c", "manifest"), ("d", "manifest"), ("f", "manifest")]


def test_each_table_folder_reads_as_that_table_alone(reference_run, tmp_path):
    """Output version 1 kept both tables in shards/: a reader given that folder mixed the errors' columns in."""
    import datasets
    import pandas as pd
    import pyarrow.dataset as pads

    from data_specs.errors_table import error_schema
    from data_specs.example import example_schema

    out, summary = reference_run
    assert json.loads((out / "job.json").read_text())["output_version"] == 2
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["errors", "examples", "job.json"]
    expected = (("examples", example_schema(), summary.examples), ("errors", error_schema(), summary.errors))
    for folder, schema, rows in expected:
        frame = pd.read_parquet(out / folder)
        assert list(frame.columns) == schema.names and len(frame) == rows, folder
        dataset = pads.dataset(out / folder, format="parquet")
        assert dataset.schema.names == schema.names and dataset.count_rows() == rows, folder
        loaded = datasets.load_dataset("parquet", data_dir=str(out / folder), cache_dir=str(tmp_path / folder))
        assert loaded["train"].column_names == schema.names and loaded["train"].num_rows == rows, folder
    assert pd.read_parquet(out / "examples")["id"].tolist() == open_output(out).ids()


def test_a_rerun_that_now_has_no_rows_for_a_file_removes_the_stale_one(tokenizer_dir, tmp_path):
    # a killed run may have renamed a shard's files without recording them; the redo writes what is right now
    manifest = write_lines(tmp_path / "m.jsonl", [text_row("a")])
    out = tmp_path / "out"
    run_preprocess(manifest, out, settings(tokenizer_dir), progress=False)
    stale = out / "errors" / "shard-00000.parquet"
    stale.parent.mkdir()  # a job without errors makes no errors/ folder
    pq.write_table(pa.table({"x": [1]}), stale)
    state = json.loads((out / "job.json").read_text())
    (out / "job.json").write_text(json.dumps(dict(state, shards={})))
    run_preprocess(manifest, out, settings(tokenizer_dir), progress=False)
    assert not stale.exists()


def test_resume_compares_the_tokenizer_not_its_spelling(tokenizer_dir, tmp_path, monkeypatch):
    manifest = write_lines(tmp_path / "m.jsonl", [text_row("a"), text_row("b")])
    out = tmp_path / "out"
    first = run_preprocess(manifest, out, settings(tokenizer_dir, rows_per_shard=1), progress=False)
    monkeypatch.chdir(tokenizer_dir.parent)
    relative = os.path.join(".", tokenizer_dir.name, "")  # another spelling of the same directory
    again = run_preprocess(manifest, out, settings(relative, rows_per_shard=1), progress=False)
    assert again.shards_skipped == first.shards == 2
    # a copy of the tokenizer elsewhere is the same tokenizer
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "tokenizer.model").write_bytes((tokenizer_dir / "tokenizer.model").read_bytes())
    assert run_preprocess(manifest, out, settings(copy, rows_per_shard=1), progress=False).shards_skipped == 2


def test_a_single_shard_starts_no_worker_processes(tokenizer_dir, tmp_path, monkeypatch):
    from pipelines import preprocess_job

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker pool was started for one shard")

    monkeypatch.setattr(preprocess_job, "ShardPool", no_pool)
    manifest = write_lines(tmp_path / "m.jsonl", [text_row("a"), text_row("b")])
    summary = run_preprocess(manifest, tmp_path / "out", settings(tokenizer_dir, rows_per_shard=10), workers=8)
    assert summary.examples == 2


@pytest.mark.parametrize("workers", [0, -3, 1.5, True])
def test_workers_must_be_a_positive_integer(tokenizer_dir, tmp_path, workers):
    manifest = write_lines(tmp_path / "m.jsonl", [text_row("a")])
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        run_preprocess(manifest, tmp_path / "out", settings(tokenizer_dir), workers=workers, progress=False)


@pytest.mark.parametrize(
    "field, value", [("video_frames", 0), ("rows_per_shard", 0), ("max_tokens", 0), ("row_timeout_s", 0.0)]
)
def test_settings_refuse_non_positive_values(tokenizer_dir, field, value):
    with pytest.raises(ValueError, match=field):
        settings(tokenizer_dir, **{field: value})


@pytest.mark.slow
def test_hostile_manifest_lines_become_error_rows(tokenizer_dir, tmp_path):
    deep_key: object = "x"
    for _ in range(600):
        deep_key = {"k": deep_key}
    lines = [
        text_row("ok0"),
        '{"id": "a", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"id": ' + "9" * 5000 + ', "messages": []}',
        '{"id": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}',
        '{"id": "s", "messages": [{"role": "user", "content": "x\\udfffy"}]}',
        {"id": "deep", "messages": [{"role": "user", "content": "hi", "x": deep_key}]},
        text_row("ok1"),
    ]
    manifest = write_lines(tmp_path / "m.jsonl", lines)
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        summary = run_preprocess(manifest, out, settings(tokenizer_dir, rows_per_shard=2), workers=workers)
        assert (summary.rows, summary.examples, summary.errors) == (7, 2, 5)
        errors = open_output(out).errors().to_pylist()
        assert [e["row"] for e in errors] == [1, 2, 3, 4, 5]
        assert {e["stage"] for e in errors} == {"manifest"}


def test_a_slow_row_becomes_a_timeout_error_row(tokenizer_dir, tmp_path, monkeypatch):
    import preprocess.prompt

    real = preprocess.prompt.build_example

    def build(messages, *args, **kwargs):
        if messages[0]["content"] == "hang":
            time.sleep(30)
        return real(messages, *args, **kwargs)

    monkeypatch.setattr(preprocess.prompt, "build_example", build)
    manifest = write_lines(tmp_path / "m.jsonl", [text_row("a"), text_row("b", "hang"), text_row("c")])
    summary = run_preprocess(manifest, tmp_path / "out", settings(tokenizer_dir, row_timeout_s=0.5), progress=False)
    assert (summary.examples, summary.errors_by_stage) == (2, {"timeout": 1})
    error = open_output(tmp_path / "out").errors().to_pylist()[0]
    assert error["id"] == "b" and "row_timeout_s=0.5" in error["message"]


class _KillsItsWorker:
    """Unpickling this in a worker process ends the process, as the kernel's OOM killer would."""

    def __reduce__(self):
        return os._exit, (9,)


@pytest.mark.slow
def test_a_dead_worker_costs_only_the_rows_that_kill_it(tokenizer_dir, tmp_path, monkeypatch):
    from pipelines.preprocess_job import Job

    rows = [text_row(f"r{i}") for i in range(8)]
    manifest = write_lines(tmp_path / "m.jsonl", rows)
    pending = Job.pending_shards

    def poisoned(self):
        for shard, items in pending(self):
            yield shard, [Item(i.index, i.id, [_KillsItsWorker()]) if i.id == "r5" else i for i in items]

    monkeypatch.setattr(Job, "pending_shards", poisoned)
    out = tmp_path / "out"
    summary = run_preprocess(manifest, out, settings(tokenizer_dir, rows_per_shard=2), workers=2, progress=False)
    assert (summary.rows, summary.examples, summary.errors_by_stage) == (8, 7, {"worker": 1})
    error = open_output(out).errors().to_pylist()[0]
    assert (error["id"], error["row"]) == ("r5", 5) and "died again" in error["message"]
    assert open_output(out).examples().to_table(columns=["id"])["id"].to_pylist() == [
        f"r{i}" for i in range(8) if i != 5
    ]


def test_errors_with_undecodable_file_names_are_written(tokenizer_dir, tmp_path):
    from pipelines.preprocess_job import ShardTarget, process_shard

    target = ShardTarget(settings=settings(tokenizer_dir), base_dir=str(tmp_path), out_dir=str(tmp_path), metadata={})
    (tmp_path / "errors").mkdir()
    name = os.fsdecode(b"\xff.png")  # a file name that is not UTF-8: the surrogate escape \udcff
    messages = [{"role": "user", "content": [{"type": "image", "image": str(tmp_path / name)}]}]
    stats = process_shard(0, [Item(0, "a", messages)], target)
    assert stats["errors"] == 1
    message = pq.read_table(tmp_path / "errors" / "shard-00000.parquet")["message"][0].as_py()
    assert "\\udcff.png" in message


def test_a_second_job_on_the_same_output_is_refused(tokenizer_dir, tmp_path):
    from pipelines.preprocess_job import Job, OutputBusyError

    manifest = write_lines(tmp_path / "m.jsonl", [text_row("a")])
    out = tmp_path / "out"
    with Job.open(manifest, out, settings(tokenizer_dir)):
        live = out / "examples" / ".shard-00000.parquet.tmp-live"
        live.parent.mkdir()  # as the live job's first file makes it
        live.write_bytes(b"being written")
        with pytest.raises(OutputBusyError, match=f"another job is writing to .* \\(pid {os.getpid()}\\)"):
            run_preprocess(manifest, out, settings(tokenizer_dir), progress=False)
        assert live.exists()  # the live job's temporary file is untouched
    assert run_preprocess(manifest, out, settings(tokenizer_dir), progress=False).examples == 1
    assert not live.exists()  # now stale: removed


def test_media_root_confines_rows_to_it(tokenizer_dir, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    rows = [
        {"id": "in", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {"id": "out", "messages": [{"role": "user", "content": [{"type": "image", "image": "/etc/passwd"}]}]},
    ]
    manifest = write_lines(root / "m.jsonl", rows)
    summary = run_preprocess(manifest, tmp_path / "o", settings(tokenizer_dir, media_root=str(root)), progress=False)
    assert (summary.examples, summary.errors_by_stage) == (1, {"media": 1})
    error = open_output(tmp_path / "o").errors().to_pylist()[0]
    assert "outside the media root" in error["message"] and "root:" not in error["message"]


def test_an_empty_manifest_completes(tokenizer_dir, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    summary = run_preprocess(manifest, tmp_path / "out", settings(tokenizer_dir), workers=4, progress=False)
    assert (summary.rows, summary.shards) == (0, 0)
    assert json.loads((tmp_path / "out" / "job.json").read_text())["complete"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.slow
def test_workers_exit_when_the_job_is_killed(sample, tmp_path):
    manifest, tokenizer = sample
    command = [sys.executable, "-m", "pipelines.cli", "preprocess", str(manifest), str(tmp_path / "out")]
    command += ["--tokenizer", str(tokenizer), "--workers", "2", "--rows-per-shard", "1"]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(children := _children(job.pid)) < 2 and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.02)
        assert len(children) >= 2, "the job started no workers"
        descendants = children + [c for child in children for c in _children(child)]
        job.send_signal(signal.SIGKILL)
        job.wait()
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in descendants if _alive(p)], "processes outlived the killed job"
    finally:
        if job.poll() is None:
            job.kill()


def test_workers_write_row_groups_as_they_go(sample, reference_run, tmp_path, monkeypatch):
    from pipelines import jobdir

    manifest, tokenizer = sample
    monkeypatch.setattr(jobdir, "ROW_GROUP_BYTES", 1)  # every row is its own row group
    run_preprocess(manifest, tmp_path, settings(tokenizer), workers=1, progress=False)
    for path in (tmp_path / "examples").glob("*.parquet"):
        metadata = pq.read_metadata(path)
        assert metadata.num_row_groups == metadata.num_rows
    ours, theirs = tables(tmp_path), tables(reference_run[0])
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].equals(theirs[name]), name


def test_thinking_tools_and_template_kwargs_reach_build_example(tokenizer_dir, tmp_path, monkeypatch):
    seen = recording_build_example(monkeypatch)
    rows = [text_row("a", "own tools"), text_row("b", "job tools"), text_row("c", "json tools"), text_row("d", "[]")]
    rows[0]["tools"] = [CLOCK]
    rows[2]["tools"] = json.dumps([CLOCK])
    rows[3]["tools"] = []  # no tools of its own: the job's
    manifest = write_lines(tmp_path / "m.jsonl", rows)
    job = settings(tokenizer_dir, enable_thinking=True, tools=[WEATHER], template_kwargs={"date": "today", "n": 2})
    summary = run_preprocess(manifest, tmp_path / "out", job, progress=False)
    assert summary.examples == 4
    assert [(content, kwargs["tools"]) for content, kwargs in seen] == [
        ("own tools", [CLOCK]),
        ("job tools", [WEATHER]),
        ("json tools", [CLOCK]),
        ("[]", [WEATHER]),
    ]
    assert all(k["enable_thinking"] is True and k["template_kwargs"] == {"date": "today", "n": 2} for _, k in seen)
    recorded = json.loads((tmp_path / "out" / "job.json").read_text())["settings"]
    assert recorded["tools"] == [WEATHER] and recorded["enable_thinking"] is True
    assert recorded["template_kwargs"] == {"date": "today", "n": 2} and len(recorded["tools_sha256"]) == 16
    seen.clear()
    run_preprocess(manifest, tmp_path / "plain", settings(tokenizer_dir), progress=False)
    assert [k["tools"] for _, k in seen] == [[CLOCK], None, [CLOCK], None]
    assert not any(k["enable_thinking"] for _, k in seen)


@pytest.mark.parametrize(
    "first, then, key",
    [
        ({"tools": [WEATHER]}, {"tools": [CLOCK]}, "settings.tools"),
        ({"tools": [WEATHER]}, {}, "settings.tools_sha256"),
        ({}, {"enable_thinking": True}, "settings.enable_thinking: False there, True now"),
        ({"template_kwargs": {"n": 1}}, {"template_kwargs": {"n": 2}}, "settings.template_kwargs.n: 1 there, 2 now"),
    ],
)
def test_resume_with_other_tools_or_thinking_is_refused_naming_the_key(tokenizer_dir, tmp_path, first, then, key):
    manifest = write_lines(tmp_path / "m.jsonl", [text_row("a")])
    out = tmp_path / "out"
    run_preprocess(manifest, out, settings(tokenizer_dir, **first), progress=False)
    assert run_preprocess(manifest, out, settings(tokenizer_dir, **first), progress=False).shards_skipped == 1
    with pytest.raises(JobMismatchError, match=re.escape(key)):
        run_preprocess(manifest, out, settings(tokenizer_dir, **then), progress=False)


def test_long_tool_specs_are_shown_short_in_a_mismatch(tokenizer_dir, tmp_path):
    manifest = write_lines(tmp_path / "m.jsonl", [text_row("a")])
    long = {"type": "function", "function": {"name": "f", "description": "x" * 5000}}
    run_preprocess(manifest, tmp_path / "out", settings(tokenizer_dir, tools=[long]), progress=False)
    with pytest.raises(JobMismatchError) as info:
        run_preprocess(manifest, tmp_path / "out", settings(tokenizer_dir, tools=[WEATHER]), progress=False)
    assert "settings.tools_sha256" in str(info.value) and len(str(info.value)) < 1500


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("tools", [{"type": "function"}], r"settings.tools: tools\[0\] must be"),
        ("tools", {"name": "f"}, "must be a list of tool specs"),
        ("tools", [{"name": "f", "default": float("nan")}], "tools must be JSON data"),
        ("template_kwargs", {"enable_thinking": True}, "'enable_thinking' is an argument of its own"),
        ("template_kwargs", {"when": object()}, "template_kwargs must be JSON data"),
    ],
)
def test_settings_refuse_bad_tools_and_template_kwargs(tokenizer_dir, field, value, problem):
    with pytest.raises(ValueError, match=problem):
        settings(tokenizer_dir, **{field: value})
