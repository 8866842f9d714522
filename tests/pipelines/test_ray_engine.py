"""The Ray Data engine: the local engine's output file for file, resumption, job mismatch, Ray as an optional extra."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own context copies

from pipelines.preprocess_job import JobMismatchError, PreprocessSettings, run_preprocess  # noqa: E402
from pipelines.ray_engine import run_preprocess_ray  # noqa: E402
from pipelines.readback import open_output  # noqa: E402
from pipelines.sample_data import write_sample_dataset  # noqa: E402

ROWS = 12 + 7  # write_sample_dataset(rows=12, corrupt=True): 12 good rows, 6 broken ones and an unreadable line
SHARDS = 5  # ⌈19 / 4⌉


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    manifest, tokenizer = write_sample_dataset(tmp_path_factory.mktemp("sample"), rows=12, corrupt=True)
    return manifest, PreprocessSettings(tokenizer=str(tokenizer), rows_per_shard=4)


@pytest.fixture(scope="module")
def local_run(sample, tmp_path_factory):
    manifest, settings = sample
    out = tmp_path_factory.mktemp("local")
    return out, run_preprocess(manifest, out, settings, workers=1, progress=False)


@pytest.fixture(scope="module")
def ray_run(ray_instance, sample, tmp_path_factory):
    manifest, settings = sample
    out = tmp_path_factory.mktemp("ray")
    return out, run_preprocess_ray(manifest, out, settings, progress=False)


def table_files(out: Path) -> list[str]:
    """``examples/shard-00000.parquet``, … : every file in the output's table folders, hidden temporary ones too."""
    folders = [out / table for table in ("examples", "errors") if (out / table).is_dir()]  # made for a first file
    return sorted(p.relative_to(out).as_posix() for folder in folders for p in folder.iterdir())


def assert_same_output(ours: Path, theirs: Path) -> None:
    names = table_files(ours)
    assert names == table_files(theirs)
    shards = json.loads((theirs / "job.json").read_text())["shards"]
    assert len(shards) == SHARDS
    # one file per kind of row a shard holds: no empty files
    assert names == sorted(f"{kind}/shard-{int(k):05d}.parquet" for k, s in shards.items() for kind in s if kind in (
        "errors", "examples") and s[kind])  # fmt: skip
    for name in names:
        ours_table, theirs_table = pq.read_table(ours / name), pq.read_table(theirs / name)
        assert ours_table.equals(theirs_table, check_metadata=True), name
    assert json.loads((ours / "job.json").read_text()) == json.loads((theirs / "job.json").read_text())


def same_summary(a, b) -> bool:
    """Equal but for the time taken and where the output is."""

    def plain(summary):
        return dataclasses.replace(summary, seconds=0.0, written=[Path(p).name for p in summary.written])

    return plain(a) == plain(b)


@pytest.mark.slow
def test_ray_output_equals_the_local_engine(local_run, ray_run):
    (local_out, local_summary), (ray_out, ray_summary) = local_run, ray_run
    assert_same_output(ray_out, local_out)
    assert same_summary(ray_summary, local_summary) and ray_summary.shards_skipped == 0
    state = json.loads((ray_out / "job.json").read_text())
    assert state["complete"] and sorted(state["shards"], key=int) == [str(k) for k in range(SHARDS)]
    # Every input row is in exactly one table, in the shard of its position.
    assert ray_summary.rows == ray_summary.examples + ray_summary.errors == ROWS
    output = open_output(ray_out)
    example_ids = output.examples().to_table(columns=["id"]).column("id").to_pylist()
    errors = output.errors().to_pylist()
    assert len(example_ids) + len(errors) == ROWS == sum(s["rows"] for s in state["shards"].values())
    assert len(set(example_ids) | {e["id"] for e in errors}) == ROWS
    for k in range(SHARDS):
        path = ray_out / "errors" / f"shard-{k:05d}.parquet"
        shard_errors = pq.read_table(path).column("row").to_pylist() if path.exists() else []
        assert all(row // 4 == k for row in shard_errors)
        assert len(shard_errors) == state["shards"][str(k)]["errors"]
    assert {e["stage"] for e in errors} >= {"image", "audio", "media", "messages", "manifest"}


@pytest.mark.slow
def test_shards_flow_through_several_windows(local_run, sample, tmp_path, monkeypatch):
    from pipelines import ray_engine

    monkeypatch.setattr(ray_engine, "WINDOW_PER_CPU", 1)  # 2 CPUs: windows of 2 shards
    windows = []
    from_arrow_refs = ray.data.from_arrow_refs
    monkeypatch.setattr(ray.data, "from_arrow_refs", lambda refs: windows.append(len(refs)) or from_arrow_refs(refs))
    manifest, settings = sample
    summary = run_preprocess_ray(manifest, tmp_path, settings, progress=False)
    assert windows == [2, 2, 1]
    assert same_summary(summary, local_run[1])
    assert_same_output(tmp_path, local_run[0])


@pytest.mark.slow
def test_resume_redoes_only_the_missing_shard(ray_run, sample, tmp_path):
    manifest, settings = sample
    reference, reference_summary = ray_run
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    for kind in ("examples", "errors"):
        (out / kind / "shard-00002.parquet").unlink()
    state = json.loads((out / "job.json").read_text())
    del state["shards"]["2"]
    (out / "job.json").write_text(json.dumps(state))
    (out / "examples" / ".shard-00003.parquet.tmp-999").write_bytes(b"half a shard")  # as a kill would leave
    kept = {name: (out / name).stat().st_mtime_ns for name in table_files(out) if not name.endswith("-999")}

    summary = run_preprocess_ray(manifest, out, settings, progress=False)

    assert (summary.shards, summary.shards_skipped) == (SHARDS, SHARDS - 1)
    assert same_summary(summary, dataclasses.replace(reference_summary, shards_skipped=SHARDS - 1))
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # the others untouched
    assert_same_output(out, reference)

    again = run_preprocess_ray(manifest, out, settings, progress=False)  # a finished job: nothing to do
    assert again.shards_skipped == SHARDS and same_summary(again, dataclasses.replace(summary, shards_skipped=SHARDS))


@pytest.mark.slow
def test_a_job_with_other_settings_is_refused(ray_run, sample, tmp_path):
    manifest, settings = sample
    out = tmp_path / "out"
    shutil.copytree(ray_run[0], out)
    before = (out / "job.json").read_text()
    other = dataclasses.replace(settings, image_budget=70)
    with pytest.raises(JobMismatchError, match="settings.image_budget: 280 there, 70 now") as info:
        run_preprocess_ray(manifest, out, other, progress=False)
    assert str(out) in str(info.value)
    assert (out / "job.json").read_text() == before
    assert_same_output(out, ray_run[0])


def test_without_ray_the_error_names_the_extra(tmp_path):
    # A fresh interpreter in which ``import ray`` fails: importing the engine works, calling it explains.
    script = (
        "import sys; sys.modules['ray'] = None\n"
        "from pipelines.preprocess_job import PreprocessSettings\n"
        "from pipelines.ray_engine import run_preprocess_ray\n"
        "try:\n"
        f"    run_preprocess_ray('m.jsonl', {str(tmp_path)!r}, PreprocessSettings(tokenizer='t'))\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True)
    assert "pip install 'gemma4-pipeline[ray]'" in result.stdout
    assert not any(tmp_path.iterdir())  # nothing was started or written


@pytest.mark.slow
def test_tools_thinking_and_template_kwargs_travel_to_the_tasks(ray_instance, sample, tmp_path):
    import pickle

    from data_specs.manifest import ManifestRow
    from pipelines import ray_engine
    from pipelines.preprocess_job import Job

    weather = {"type": "function", "function": {"name": "get_weather"}}
    clock = {"type": "function", "function": {"name": "get_time"}}
    rows = [
        {"id": "own", "messages": [{"role": "user", "content": "a"}], "tools": [clock]},
        {"id": "job", "messages": [{"role": "user", "content": "b"}]},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = dataclasses.replace(
        sample[1], rows_per_shard=1, enable_thinking=True, tools=[weather], template_kwargs={"n": 1}
    )
    with Job.open(manifest, tmp_path / "probe", settings) as job:
        blocks = [ray.get(ref) for ref in ray_engine._pending_blocks(ray, job)]
        assert job.target.settings == settings  # what every task receives
    items = [pickle.loads(block["items"][0].as_py()) for block in blocks]
    assert [item.payload for shard in items for item in shard] == [
        ManifestRow("own", rows[0]["messages"], [clock]),
        ManifestRow("job", rows[1]["messages"], None),
    ]
    ours, local = tmp_path / "ray", tmp_path / "local"
    run_preprocess_ray(manifest, ours, settings, progress=False)
    run_preprocess(manifest, local, settings, workers=1, progress=False)
    assert table_files(ours) == table_files(local)
    for name in table_files(local):
        assert pq.read_table(ours / name).equals(pq.read_table(local / name), check_metadata=True)
    recorded = json.loads((ours / "job.json").read_text())["settings"]
    assert (recorded["tools"], recorded["enable_thinking"], recorded["template_kwargs"]) == ([weather], True, {"n": 1})
    with pytest.raises(JobMismatchError, match="settings.enable_thinking: True there, False now"):
        run_preprocess_ray(manifest, ours, dataclasses.replace(settings, enable_thinking=False), progress=False)
