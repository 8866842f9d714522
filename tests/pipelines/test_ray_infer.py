"""gemma4 infer on Ray Data (local Ray, CPU actors): the local engine's results and errors, a job the local engine
left half done finished by the Ray engine, the CLI's ``--engine ray``. GPU actors, tested on the CPU with a stand-in
for Ray (a cluster that reports GPUs, its stages run in this process) and for the GPU: more actors than GPUs are
refused before anything starts, and each actor resolves its own device and dtype, not the driver's."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from pipelines import cli, ray_infer
from pipelines.infer_job import InferSettings, run_infer
from pipelines.preprocess_job import PreprocessSettings
from pipelines.ray_infer import plan_actors, resolve_actor, run_infer_ray

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own context copies

TIMING = ("queue_s", "prefill_s", "ttft_s", "decode_s")


@pytest.fixture(scope="module")
def sample(infer_sample):
    """(manifest, checkpoint) of tests/pipelines/conftest.py: 13 rows, 4 shards of 4."""
    return infer_sample


def settings(checkpoint, **overrides) -> InferSettings:
    return InferSettings(
        checkpoint=str(checkpoint),
        preprocess=PreprocessSettings(tokenizer=str(checkpoint), rows_per_shard=4),
        max_new_tokens=6,
        batch_size=3,
        **overrides,
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
            for f in sorted((out / kind).glob("shard-*.parquet"))
            for row in pq.read_table(f).to_pylist()
        ]
        for kind in ("results", "errors")
    }


@pytest.mark.slow
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
    for table in ("results", "errors"):  # hidden temporary files included
        assert sorted(p.name for p in (tmp_path / "out" / table).iterdir()) == sorted(
            p.name for p in (theirs / table).iterdir()
        )


@pytest.mark.slow
def test_a_job_the_local_engine_left_half_done_is_finished_by_the_ray_engine(ray_instance, sample, local_run, tmp_path):
    manifest, checkpoint = sample
    theirs, _ = local_run
    out = tmp_path / "out"
    shutil.copytree(theirs, out)
    state = json.loads((out / "job.json").read_text())
    for shard in ("1", "3"):  # as if killed with these two unrecorded: their files gone or stale
        del state["shards"][shard]
        for f in out.glob(f"*/shard-{int(shard):05d}.parquet"):
            f.unlink()
    state.pop("complete")
    (out / "job.json").write_text(json.dumps(state))
    summary = run_infer_ray(manifest, out, settings(checkpoint), progress=False)
    assert (summary.shards, summary.shards_skipped) == (4, 2)
    assert summary.this_run["rows"] < summary.results
    assert tables(out) == tables(theirs)
    assert json.loads((out / "job.json").read_text())["complete"] is True


@pytest.mark.slow
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
    pytest.importorskip("ray")  # refused before Ray is needed, but without it the engine says so first
    manifest, checkpoint = sample
    with pytest.raises(ValueError, match="num_cpus must be a positive integer"):
        run_infer_ray(manifest, tmp_path / "out", settings(checkpoint), num_cpus=0)
    with pytest.raises(ValueError, match="actors"):
        run_infer_ray(manifest, tmp_path / "out", settings(checkpoint), actors=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_cluster_with_no_cpu_left_for_preparing_is_refused(ray_instance, sample, tmp_path):
    manifest, checkpoint = sample  # the module's Ray has 2 CPUs: two CPU actors would leave none for the tasks
    with pytest.raises(ValueError, match="has 2 CPUs: 2 model actors on CPUs take one each"):
        run_infer_ray(manifest, tmp_path / "out", settings(checkpoint), actors=2, progress=False)


# --- GPU actors, on the CPU: a stand-in for Ray and for the actors' GPUs ----------------------------------------


class FakeDataset:
    """Ray Data as the engine uses it, run in this process: each ``map_batches`` stage one block at a time, an
    actor class built once per dataset (one pool actor). Records every stage's arguments in ``stages``."""

    def __init__(self, blocks, stages, log):
        self.blocks, self.stages, self.log = blocks, stages, log
        self.context = types.SimpleNamespace(enable_progress_bars=True)

    def map_batches(self, fn, *, batch_size, batch_format, fn_kwargs=None, fn_constructor_kwargs=None, **options):
        assert (batch_size, batch_format) == (1, "pyarrow")
        self.log.append({"fn": fn, "kwargs": fn_kwargs, "constructor": fn_constructor_kwargs, **options})
        return FakeDataset(self.blocks, [*self.stages, (fn, fn_kwargs, fn_constructor_kwargs)], self.log)

    def iter_rows(self):
        threads = torch.get_num_threads()  # the preparing stage sets one thread, as in its own process
        try:
            tables = list(self.blocks)
            for fn, kwargs, constructor in self.stages:
                call = fn(**constructor) if isinstance(fn, type) else lambda t, fn=fn, kwargs=kwargs: fn(t, **kwargs)
                tables = [call(table) for table in tables]
        finally:
            torch.set_num_threads(threads)
        for table in tables:
            yield from table.to_pylist()


def fake_ray(resources: dict, log: list, run: bool = True):
    """A running Ray cluster of ``resources``; with ``run=False`` any work started is a test failure."""

    def refuse(*args, **kwargs):
        pytest.fail("work was started")

    data = types.SimpleNamespace(
        from_arrow_refs=(lambda refs: FakeDataset(refs, [], log)) if run else refuse,
        ActorPoolStrategy=lambda *, size: ("actor pool", size),
    )
    return types.SimpleNamespace(
        is_initialized=lambda: True,
        cluster_resources=lambda: dict(resources),
        put=(lambda value: value) if run else refuse,
        data=data,
    )


@pytest.fixture
def gpu_stand_in(monkeypatch):
    """``resolve_device`` records the names asked for and answers with the CPU (standing in for the actor's GPU)."""
    asked: list[str] = []
    monkeypatch.setattr("model.device.resolve_device", lambda name: asked.append(name) or torch.device("cpu"))
    return asked


def bfloat16_copy(checkpoint: Path, directory: Path) -> Path:
    """The sample checkpoint with its floating-point weights stored in bfloat16 (the published checkpoints' dtype)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(checkpoint, directory)
    path = directory / "model.safetensors"
    tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})
    return directory


def test_actor_counts_against_the_cluster():
    assert plan_actors(None, 4, 16) == 4 and plan_actors(None, 0, 2) == 1
    assert plan_actors(2, 4, 1) == 2 and plan_actors(4, 4, 1) == 4  # GPU actors hold no CPU of their own
    with pytest.raises(ValueError, match="3 model actors asked for, and the Ray cluster has 2 GPUs") as info:
        plan_actors(3, 2, 64)
    assert "at most 2" in str(info.value)
    with pytest.raises(ValueError, match="has 2 CPUs: 2 model actors on CPUs take one each"):
        plan_actors(2, 0, 2)


def test_more_gpu_actors_than_gpus_are_refused_before_anything_starts(sample, tmp_path, monkeypatch):
    manifest, checkpoint = sample
    log: list = []
    monkeypatch.setattr(ray_infer, "import_ray", lambda: fake_ray({"CPU": 32.0, "GPU": 2.0}, log, run=False))
    with pytest.raises(ValueError, match="3 model actors asked for, and the Ray cluster has 2 GPUs"):
        run_infer_ray(manifest, tmp_path / "out", settings(checkpoint, device="cpu"), actors=3, progress=False)
    assert log == [] and not list((tmp_path / "out").glob("*/*"))


def test_gpu_actors_resolve_their_own_device_and_dtype(sample, local_run, tmp_path, monkeypatch, gpu_stand_in):
    """A driver that planned for ``--device cpu`` on a cluster with 2 GPUs: one actor per GPU, each asking Ray
    for a GPU and resolving ``cuda`` itself; the driver hands it no device or dtype of its own. (The stand-in
    GPU is the CPU, so the results are the local engine's.)"""
    manifest, checkpoint = sample
    log: list = []
    monkeypatch.setattr(ray_infer, "import_ray", lambda: fake_ray({"CPU": 4.0, "GPU": 2.0}, log))
    out = tmp_path / "out"
    summary = run_infer_ray(manifest, out, settings(checkpoint, device="cpu"), progress=False)
    generate = [stage for stage in log if stage["fn"] is ray_infer._Generator]
    assert generate and all(stage["compute"] == ("actor pool", 2) and stage["num_gpus"] == 1 for stage in generate)
    assert all("num_cpus" not in stage and "memory" not in stage for stage in generate)
    for stage in generate:
        assert set(stage["constructor"]) == {"settings", "gpu", "job_dtype"} and stage["constructor"]["gpu"] is True
        assert stage["constructor"]["settings"].dtype is None  # the job's request, not a resolved dtype
    driver, *actors = gpu_stand_in  # the driver planned for its --device, each actor resolved its GPU
    assert driver == "cpu" and actors and set(actors) == {"cuda"}
    assert tables(out) == tables(local_run[0]) and summary.results == local_run[1].results
    run = json.loads((out / "job.json").read_text())["run"]
    assert (run["device"], run["ray_gpu_actors"], run["dtype"]) == ("cuda", 2, "float32")


def test_a_gpu_actor_resolves_cuda_and_the_checkpoints_default_dtype(sample, tmp_path, monkeypatch):
    """For a checkpoint stored in bfloat16 (as the published ones) an actor resolves ``cuda`` and bfloat16 for
    its GPU, checks that GPU's free memory, loads what ``--dtype`` names where the job names one, and refuses a
    dtype other than the job's."""
    from model.device import NotEnoughMemoryError

    _, checkpoint = sample
    bf16 = bfloat16_copy(Path(checkpoint), tmp_path / "bf16")
    gpu = torch.device("cuda", 0)  # a device object only: nothing runs on it
    asked, checked = [], []
    monkeypatch.setattr("model.device.resolve_device", lambda name: asked.append(name) or gpu)
    monkeypatch.setattr("model.device.free_memory", lambda device: checked.append(device) or 10**12)
    device, info = resolve_actor(settings(bf16), True, torch.bfloat16)
    assert (asked, device, info.dtype, checked) == (["cuda"], gpu, torch.bfloat16, [gpu])
    device, info = resolve_actor(settings(bf16, dtype="float32"), True, torch.float32)
    assert info.dtype == torch.float32
    with pytest.raises(ValueError, match="resolves bf16 to bfloat16, but the job records float32"):
        resolve_actor(settings(bf16), True, torch.float32)
    asked.clear()
    resolve_actor(settings(bf16, device="cpu"), False, torch.bfloat16)  # a CPU actor: the CPU
    assert asked == ["cpu"]
    monkeypatch.setattr("model.device.free_memory", lambda device: 1000)
    with pytest.raises(NotEnoughMemoryError, match="not enough memory on cuda:0"):
        resolve_actor(settings(bf16), True, torch.bfloat16)
