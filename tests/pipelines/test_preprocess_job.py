"""gemma4 preprocess: end to end, bad rows, determinism, kill-and-resume, input formats, read-back, schema checks."""

from __future__ import annotations

import json
import os
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
from pipelines.sample_data import write_sample_dataset
from preprocess.prompt import build_example
from preprocess.tokenizer import Tokenizer
from tests.preprocess.test_collate import assert_same

BAD_IDS = {
    "bad-image": "image",
    "bad-audio": "audio",
    "missing-file": "media",
    "malformed": "messages",
    "no-messages": "manifest",
    "unknown-type": "messages",
    "row 26": "manifest",  # the unreadable JSON line at the end
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sample")
    manifest, tokenizer = write_sample_dataset(directory, rows=20, corrupt=True)
    return manifest, tokenizer


def settings(tokenizer, **kw) -> PreprocessSettings:
    return PreprocessSettings(tokenizer=str(tokenizer), rows_per_shard=kw.pop("rows_per_shard", 6), **kw)


def tables(out: Path) -> dict[str, pa.Table]:
    return {p.name: pq.read_table(p) for p in sorted((out / "shards").glob("*.parquet"))}


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
    assert summary.bytes_written == sum(p.stat().st_size for p in (out / "shards").glob("*.parquet"))


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
        example_id, example = output.example(row["id"])
        assert example_id == row["id"]
        assert_same(expected, example)
    assert output.example(0)[0] == "ex0000"
    with pytest.raises(KeyError, match="bad-image"):
        output.example("bad-image")
    dataset = output.to_datasets()
    assert len(dataset) == 20 and dataset[0]["id"] == "ex0000"


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
    with pytest.raises(JobMismatchError, match="another settings"):
        run_preprocess(manifest, tmp_path, settings(tokenizer, image_budget=70), workers=1, progress=False)


def test_a_job_of_another_manifest_version_is_not_resumed(sample, reference_run, tmp_path):
    import shutil

    manifest, tokenizer = sample
    out, _ = reference_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    state = json.loads((copy / "job.json").read_text())
    assert state["manifest_version"] == MANIFEST_VERSION
    (copy / "job.json").write_text(json.dumps(dict(state, manifest_version=MANIFEST_VERSION + 1)))
    with pytest.raises(JobMismatchError, match=f"another manifest_version \\({MANIFEST_VERSION + 1} there"):
        run_preprocess(manifest, copy, settings(tokenizer), workers=1, progress=False)


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
    (target / "shards" / ".examples-00004.parquet.tmp-999").write_bytes(b"half a shard")  # as a kill would leave
    with pytest.raises(SchemaError, match="not finished"):
        open_output(target)
    assert cli.main(command[3:]) == 0
    assert not list((target / "shards").glob(".*"))
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
    (copy / "job.json").write_text(json.dumps(dict(state, schema_version=2)))
    with pytest.raises(SchemaError, match="schema version 2"):
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

    _, example = open_output(out).example("ex0001")
    width = max(example.images[0].size[1], 480)
    assert Image.open(picture).width == width
    assert cli.main(["inspect", str(out), "--row", "ex0000", "--preview", str(picture)]) == 2  # text-only row


def test_preview_pixels_round_trip(reference_run):
    from pipelines.preview import unpatchify
    from preprocess.image import patchify

    _, example = open_output(reference_run[0]).example("ex0001")
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
