"""gemma4 infer on Ray Data (local Ray, CPU actors): the local engine's results and errors, a job the local engine
left half done finished by the Ray engine, the CLI's ``--engine ray``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own context copies

from pipelines import cli  # noqa: E402
from pipelines.infer_job import InferSettings, run_infer  # noqa: E402
from pipelines.preprocess_job import PreprocessSettings  # noqa: E402
from pipelines.ray_infer import run_infer_ray  # noqa: E402

TIMING = ("queue_s", "prefill_s", "decode_s")


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray for the whole file; the engine uses it and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """(manifest, checkpoint) of ``gemma4 sample-data --rows 6 --corrupt`` with the tiny checkpoint matched to its
    toy tokenizer: 13 rows, 4 shards of 4."""
    from pipelines.sample_data import write_sample_checkpoint, write_sample_dataset

    directory = tmp_path_factory.mktemp("ray-infer-sample")
    manifest, tokenizer = write_sample_dataset(directory, rows=6, corrupt=True)
    checkpoint = write_sample_checkpoint(directory / "checkpoint", tokenizer)
    return manifest, checkpoint


def settings(checkpoint) -> InferSettings:
    return InferSettings(
        checkpoint=str(checkpoint),
        preprocess=PreprocessSettings(tokenizer=str(checkpoint), rows_per_shard=4),
        max_new_tokens=6,
        batch_size=3,
    )


@pytest.fixture(scope="module")
def local_run(sample, tmp_path_factory):
    manifest, checkpoint = sample
    out = tmp_path_factory.mktemp("local") / "out"
    return out, run_infer(manifest, out, settings(checkpoint), workers=0, progress=False)


def tables(out: Path) -> dict[str, list[dict]]:
    """Results and errors, without the timing columns."""
    return {
        kind: [
            {k: v for k, v in row.items() if k not in TIMING}
            for f in sorted((out / "shards").glob(f"{kind}-*.parquet"))
            for row in pq.read_table(f).to_pylist()
        ]
        for kind in ("results", "errors")
    }


def test_results_and_errors_equal_the_local_engine(ray_instance, sample, local_run, tmp_path):
    manifest, checkpoint = sample
    theirs, local = local_run
    summary = run_infer_ray(manifest, tmp_path / "out", settings(checkpoint), progress=False)
    assert tables(tmp_path / "out") == tables(theirs)
    assert (summary.rows, summary.results, summary.errors) == (local.rows, local.results, local.errors)
    assert summary.errors_by_stage == local.errors_by_stage and summary.completion_tokens == local.completion_tokens
    assert summary.this_run["rows"] == summary.results and 0 <= summary.busy <= 1
    state, reference = (json.loads((d / "job.json").read_text()) for d in (tmp_path / "out", theirs))
    assert state["complete"] and state["settings"] == reference["settings"]
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == sorted(
        p.name for p in (theirs / "shards").iterdir()
    )


def test_a_job_the_local_engine_left_half_done_is_finished_by_the_ray_engine(ray_instance, sample, local_run, tmp_path):
    manifest, checkpoint = sample
    theirs, _ = local_run
    out = tmp_path / "out"
    shutil.copytree(theirs, out)
    state = json.loads((out / "job.json").read_text())
    for shard in ("1", "3"):  # as if killed with these two unrecorded: their files gone or stale
        del state["shards"][shard]
        for f in (out / "shards").glob(f"*-{int(shard):05d}.parquet"):
            f.unlink()
    state.pop("complete")
    (out / "job.json").write_text(json.dumps(state))
    summary = run_infer_ray(manifest, out, settings(checkpoint), progress=False)
    assert (summary.shards, summary.shards_skipped) == (4, 2)
    assert summary.this_run["rows"] < summary.results
    assert tables(out) == tables(theirs)
    assert json.loads((out / "job.json").read_text())["complete"] is True


def test_the_cli_runs_the_ray_engine(ray_instance, sample, local_run, tmp_path, capsys):
    manifest, checkpoint = sample
    theirs, _ = local_run
    out = tmp_path / "out"
    args = ["infer", str(manifest), str(out), "--checkpoint", str(checkpoint), "--max-new-tokens", "6"]
    args += ["--rows-per-shard", "4", "--batch-size", "2", "--engine", "ray", "--workers", "2", "--show", "1"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "rows 13 = results" in printed and "text:" in printed
    assert tables(out) == tables(theirs)


def test_bad_counts_are_refused_before_anything_starts(sample, tmp_path):
    manifest, checkpoint = sample
    with pytest.raises(ValueError, match="num_cpus must be a positive integer"):
        run_infer_ray(manifest, tmp_path / "out", settings(checkpoint), num_cpus=0)
    with pytest.raises(ValueError, match="actors"):
        run_infer_ray(manifest, tmp_path / "out", settings(checkpoint), actors=0)
    assert not (tmp_path / "out").exists()


def test_a_cluster_with_no_cpu_left_for_preparing_is_refused(ray_instance, sample, tmp_path):
    manifest, checkpoint = sample  # the module's Ray has 2 CPUs: two CPU actors would leave none for the tasks
    with pytest.raises(ValueError, match="has 2 CPUs: 2 model actors on CPUs take one each"):
        run_infer_ray(manifest, tmp_path / "out", settings(checkpoint), actors=2, progress=False)
