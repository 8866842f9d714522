"""The Ray Data engine of ``gemma4 infer``: the job of ``pipelines.infer_job``, rows prepared by Ray tasks and answered
by Ray actors that each hold one copy of the model.

The output directory is the local engine's, file for file: the same ``job.json`` (settings, fingerprints, recorded
shards), the same shard files written by the same ``InferJob.write``, the same resumption and the same
``InferSummary``. A job may be started with one engine and finished with the other.

How rows flow. The driver reads the input one shard at a time (``InferInput.shards``, as the local engine does, so
validation and duplicate-id detection are identical) and puts each pending shard into the object store as a
one-row Arrow block (shard index, pickled items: each row's index, id, payload and generation options). A window
of such references becomes ``ray.data.from_arrow_refs(...)`` and two ``map_batches(batch_size=1)`` stages:

1. prepare — a Ray task per shard, on one CPU with one torch thread (``init_worker``), runs ``prepare_rows``
   (chat template, media, patches, features; the local engine's per-row function) and returns one row: the shard,
   its row count and the pickled prepared rows (one-row ``Batch`` and prompt summary, or an error row) with their
   options;
2. generate — a pool of ``actors`` actors (default: one per GPU of the cluster, else one; more actors than GPUs
   are refused before anything starts, :func:`plan_actors`), each of which loads the model once with a
   continuous ``runtime.engine.Engine``: on its own GPU when the cluster has GPUs (``num_gpus=1``), otherwise on
   the CPU with one CPU. The actor resolves its device and dtype itself (:func:`resolve_actor`: ``cuda``, and the
   checkpoint's default dtype unless the job names one), never taking the device and dtype the driver planned
   with (``--device cpu`` on a driver without a GPU), and checks its own device's free memory. Each call turns a
   prepared shard into requests (``make_request``: rows beyond the vocabulary or the context become error rows),
   runs them all through the engine (reused from call to call) and returns the shard's result and error rows
   (``finished_row``), pickled.

The driver consumes the stream with ``iter_rows`` and writes and records each shard (``InferJob.write``,
``InferJob.record``) as it arrives, so a killed job resumes like a local one. A CPU actor also reserves the memory
of the checkpoint's weights in the job's dtype and of its KV cache, so Ray places no more copies on a node than
fit; it also keeps Ray Data from fusing the two stages, as it would two that ask for
the same resources (preparation would then run in the actors, in turn with generation).

Memory is bounded. The driver holds one shard of rows at a time and the references of one window of pending
shards (``WINDOW_PER_CPU`` per cluster CPU, as ``pipelines.ray_engine``); Ray Data's backpressure bounds the
prepared shards waiting for an actor; an actor holds one shard and the engine's KV cache (``batch_size`` slots of
``context`` tokens). Deviation from the local engine: an actor's engine drains at the end of each shard (its last
rows decode with slots free) rather than admitting the next shard's rows; with shards of many times
``batch_size`` rows the cost is small.

Determinism. The same per-row functions as the local engine's prepare rows, make requests and convert
completions, and the model is loaded in the job's dtype (``--dtype``, or the checkpoint's default: the stored
dtype), also on a GPU actor; a job resumed with the other engine keeps that dtype. On the CPU in float32 the
computation is bit-exact whatever rows share the engine, so CPU actors give the local CPU engine's tokens, and
greedy decoding, or sampling with a seed, does not depend on the slot count or on which rows share the engine
(see ``pipelines.infer_job``). On GPU actors the tokens are the same only for the same device, dtype and slot
count: cuBLAS picks kernels by problem size and ``index_add_`` accumulates with atomics, so logits differ in
their last bits between batch sizes and a near-tie can flip a token; GPU results are compared with a tolerance
or by their agreement share. The summary's model time runs from the first window's start to the last shard; its
wait is that time less the actors' mean busy time (loading and generating), an estimate of how long the model had
nothing to run.

On a multi-node cluster, the checkpoint, the tokenizer and the input's media must be at the same path on every
node (the tasks read media, the actors load the model); the output directory is written by the driver alone.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from data_specs.checks import check_count

from .infer_job import (
    InferJob,
    InferSettings,
    InferSummary,
    ShardState,
    finished_row,
    make_request,
    model_name,
    plan_infer,
    prepare_rows,
    summarize,
)
from .jobdir import progress_bar
from .pool import init_worker
from .preprocess_job import PreprocessSettings
from .ray_engine import WINDOW_PER_CPU, import_ray
from .rows import Failed

if TYPE_CHECKING:
    import torch

    from model.checkpoint import CheckpointInfo

__all__ = ["plan_actors", "resolve_actor", "run_infer_ray"]


ACTOR_PROCESS_BYTES = 1 << 30  # a model actor's process beyond weights and cache: Python, torch, the engine


def run_infer_ray(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: InferSettings,
    *,
    num_cpus: int | None = None,
    address: str | None = None,
    actors: int | None = None,
    progress: bool = True,
    plan=None,
) -> InferSummary:
    """Run (or resume) the job on Ray Data; the output and summary are those of ``run_infer``.

    If Ray is not initialised, a Ray instance is started (``address`` to join a cluster, ``num_cpus`` to size a
    local one: that many CPUs for preparing rows, plus one per model actor) and shut down on return; otherwise
    the running one is used and both arguments are ignored. A cluster without GPUs needs a CPU per actor and at
    least one more (``ValueError`` otherwise, before any work).
    ``actors``: copies of the model (default: one per GPU of the cluster, or one without GPUs; on a cluster with
    GPUs each takes one, and more actors than GPUs are a ``ValueError`` naming both, before any work). ``plan``: the
    ``plan_infer(settings)`` the caller made already, if any. Raises
    ``ImportError`` without Ray, ``JobMismatchError`` (before Ray is started) if ``output_dir`` holds another job.
    """
    check_count(num_cpus, "num_cpus", optional=True, what="--workers with --engine ray")
    check_count(actors, "actors", optional=True)
    ray = import_ray()
    job = InferJob(input_path, output_dir, plan or plan_infer(settings), workers=0)  # every check before Ray starts
    try:
        started_ray = not ray.is_initialized()
        if started_ray:
            # A local Ray: ``num_cpus`` for the preparing tasks, and one more for each model actor (on a machine
            # without GPUs an actor holds a CPU; with one CPU in all, no task could ever run beside it).
            ray.init(
                address=address,
                num_cpus=None if num_cpus is None or address else num_cpus + (actors or 1),
                include_dashboard=False,
                ignore_reinit_error=True,
                log_to_driver=False,
                logging_level=logging.WARNING,  # a normal run prints no Ray info lines
            )
        try:
            return _run(ray, job, actors, progress)
        finally:
            if started_ray:
                ray.shutdown()
    finally:
        job.close()


def plan_actors(actors: int | None, gpus: int, cpus: int) -> int:
    """How many model actors a Ray cluster of ``gpus`` GPUs and ``cpus`` CPUs runs: ``actors``, or by default
    one per GPU (one on a cluster without GPUs). ``ValueError`` naming both numbers for more actors than GPUs
    (each actor of a GPU cluster holds a whole GPU: Ray would wait for the missing ones forever), and on a cluster
    without GPUs for fewer CPUs than the actors take plus one to prepare rows."""
    if actors is None:
        return max(1, gpus)
    if gpus and actors > gpus:
        raise ValueError(
            f"{actors} model actors asked for, and the Ray cluster has {gpus} GPUs: each actor takes one GPU (ask "
            f"for at most {gpus}, or leave actors unset for one per GPU)"
        )
    if not gpus and cpus < actors + 1:
        raise ValueError(
            f"the Ray cluster has {cpus} CPUs: {actors} model actors on CPUs take one each, and preparing rows needs "
            "at least one more (start Ray with more CPUs, or use fewer actors)"
        )
    return actors


def resolve_actor(settings: InferSettings, gpu: bool, job_dtype: torch.dtype) -> tuple[torch.device, CheckpointInfo]:
    """Where and in what a model actor loads the model, resolved in the actor for its own device, never taken
    from the driver (which may have planned the job for ``--device cpu``): ``(device, checkpoint info)``. A GPU
    actor's device is ``cuda`` as its process sees it (Ray sets ``CUDA_VISIBLE_DEVICES`` to the actor's GPU, so
    ``cuda:0``), a CPU actor's the CPU. The dtype (``info.dtype``) is ``settings.dtype`` if the job names one,
    else the checkpoint's default, resolved here (``model.checkpoint.default_dtype``: the stored dtype, float16 →
    bfloat16, today on every device; bfloat16 for the published checkpoints). Refuses a dtype other than
    ``job_dtype``, the one the job records as its identity (``ValueError``), and weights and KV cache beyond the
    device's free memory (``model.device.NotEnoughMemoryError``), before any weight is read."""
    from model.checkpoint import inspect_checkpoint
    from model.device import check_memory, resolve_device

    device = resolve_device("cuda" if gpu else "cpu")
    info = inspect_checkpoint(settings.preprocess.tokenizer, dtype=settings.dtype)  # the checkpoint's directory
    if info.dtype != job_dtype:
        mine, theirs = (str(d).removeprefix("torch.") for d in (info.dtype, job_dtype))
        raise ValueError(
            f"a model actor on {device} resolves {info.name} to {mine}, but the job records {theirs}: pass --dtype "
            "to choose one for every device"
        )
    advice = "lower --batch-size or --context, or use devices with more free memory"
    check_memory(info, device, settings.batch_size, settings.context, advice)
    return device, info


def _run(ray, job: InferJob, actors: int | None, progress: bool) -> InferSummary:
    settings = job.settings
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    actors = plan_actors(actors, gpus, cpus)  # refused here, before any task or actor starts
    window = WINDOW_PER_CPU * max(1, cpus)
    prepare_kwargs = {
        "settings": settings.preprocess,
        "base_dir": os.fspath(job.input.base_dir),
        "pad_id": job.plan.info.config.tokens.pad,  # what the model would say, without loading it
    }
    # Each actor resolves its own device and dtype (``resolve_actor``); the driver's (its --device) are not passed.
    actor_kwargs = {"settings": settings, "gpu": bool(gpus), "job_dtype": job.dtype}
    # A CPU actor reserves its weights and KV cache, in the job's dtype, so Ray places no more than fit on a node.
    memory = job.plan.info.weight_bytes + job.plan.cache_bytes + ACTOR_PROCESS_BYTES
    # max_restarts 0: Ray cannot restart an actor whose constructor arguments live in the object store (Ray Data's
    # do: ray-project/ray#53727, an error-level line on every run otherwise); an actor that dies ends the run, the
    # shards written so far are kept and the same command resumes.
    generate_args = {"num_gpus": 1} if gpus else {"num_cpus": 1, "memory": memory}
    if gpus:  # what this run runs on, in job.json: the actors' GPUs, not the device the driver planned for
        job.state["run"] = dict(job.state["run"], device="cuda", ray_gpu_actors=actors)
    answered: Counter = Counter()  # this run's results and tokens (the summary's rates)
    busy = 0.0  # the actors' seconds loading and generating, all together
    bar = progress_bar(job.input.rows, progress, "infer")
    bar.update(sum(s["rows"] for s in job.state["shards"].values()))
    started = time.perf_counter()
    pending = _pending_blocks(ray, job)
    try:
        while refs := list(itertools.islice(pending, window)):
            # ``refs`` stays alive until the window is consumed: the blocks are owned by this driver.
            prepared = ray.data.from_arrow_refs(refs).map_batches(
                _prepare_shard,
                batch_size=1,
                batch_format="pyarrow",
                num_cpus=1,
                fn_kwargs=prepare_kwargs,
            )
            with warnings.catch_warnings():  # Ray 2.60 takes max_restarts only as a deprecated ray_remote_args
                warnings.simplefilter("ignore", DeprecationWarning)
                dataset = prepared.map_batches(
                    _Generator,
                    batch_size=1,
                    batch_format="pyarrow",
                    compute=ray.data.ActorPoolStrategy(size=actors),
                    fn_constructor_kwargs=actor_kwargs,
                    max_restarts=0,
                    **generate_args,
                )
            dataset.context.enable_progress_bars = False  # this dataset's copy of the context; the job shows progress
            for row in dataset.iter_rows():
                shard, state = int(row["shard"]), pickle.loads(row["state"])
                job.record(shard, job.write(shard, state))
                busy += row["seconds"]
                for result in state.results.values():
                    answered.update(rows=1, prompt=result["prompt_tokens"], generated=result["completion_tokens"])
                bar.update(state.count)
    finally:
        bar.close()
    model_seconds = time.perf_counter() - started if answered or busy else 0.0
    job.finish()
    return summarize(job, model_seconds, max(0.0, model_seconds - busy / actors), answered)


def _pending_blocks(ray, job: InferJob) -> Iterator:
    """References to one-row blocks (shard, pickled items) of the job's pending shards, in order."""
    for shard, items in job.input.shards({int(k) for k in job.state["shards"]}):
        # Pickled as the local engine's process pool would: items hold exceptions, ManifestRows and options.
        payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
        yield ray.put(pa.table({"shard": pa.array([shard], pa.int64()), "items": pa.array([payload], pa.binary())}))


def _prepare_shard(batch: pa.Table, *, settings: PreprocessSettings, base_dir: str, pad_id: int) -> pa.Table:
    """Stage 1, a Ray task: one shard's items → one row (shard, rows, pickled (prepared rows, options by index))."""
    assert batch.num_rows == 1, batch.num_rows
    shard = batch["shard"][0].as_py()
    items = pickle.loads(batch["items"][0].as_py())
    init_worker()  # one thread per task: parallelism comes from the tasks, as from the local engine's processes
    prepared = prepare_rows(items, settings, base_dir, pad_id)
    options = {item.index: item.options for item in items}
    payload = pickle.dumps((prepared, options), protocol=pickle.HIGHEST_PROTOCOL)
    return pa.table(
        {
            "shard": pa.array([shard], pa.int64()),
            "rows": pa.array([len(items)], pa.int64()),
            "prepared": pa.array([payload], pa.binary()),
        }
    )


class _Generator:
    """Stage 2, a Ray actor: one model and its engine, loaded once; a prepared shard → one row (shard, the pickled
    ``ShardState`` of its result and error rows, seconds spent)."""

    def __init__(self, *, settings: InferSettings, gpu: bool, job_dtype: torch.dtype) -> None:
        from model.checkpoint import load_pretrained
        from preprocess.tokenizer import Tokenizer
        from runtime.engine import Engine

        started = time.perf_counter()
        self.settings = settings
        self.device, info = resolve_actor(settings, gpu, job_dtype)
        self.name = info.name
        self.tokenizer = Tokenizer.from_pretrained(info.directory)
        self.model = load_pretrained(info.directory, dtype=info.dtype, device=self.device, tokenizer=self.tokenizer)
        self.engine = Engine(
            self.model,
            slots=settings.batch_size,
            context=settings.context,
            prefill_chunk=settings.prefill_chunk,
            cuda_graphs=settings.cuda_graphs,
        )
        self.loading = time.perf_counter() - started  # counted once, with the first shard

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        assert batch.num_rows == 1, batch.num_rows
        started = time.perf_counter()
        shard = batch["shard"][0].as_py()
        prepared, options = pickle.loads(batch["prepared"][0].as_py())
        state = ShardState(batch["rows"][0].as_py())
        requests, rows = [], {}
        for outcome in prepared:
            if isinstance(outcome, Failed):
                state.errors[outcome.index] = outcome.row
                continue
            index, row_id, row_batch, summary = outcome.index, outcome.id, outcome.batch, outcome.summary
            row_options = options.get(index)
            request = make_request(
                self.engine, self.settings, (shard, index), row_id, row_batch, row_options, self.tokenizer
            )
            if isinstance(request, dict):
                state.errors[index] = request
                continue
            rows[index] = (row_id, summary, model_name(self.settings, row_options, self.name))
            requests.append(request)
        with torch.inference_mode():
            for completion in self.engine.run(requests):
                index = completion.id[1]
                row_id, summary, model = rows[index]
                answered, row = finished_row(completion, row_id, index, summary, self.tokenizer, model)
                (state.results if answered else state.errors)[index] = row
        assert state.complete, (shard, state.count, len(state.results), len(state.errors))
        seconds = time.perf_counter() - started + self.loading
        self.loading = 0.0
        return pa.table(
            {
                "shard": pa.array([shard], pa.int64()),
                "state": pa.array([pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)], pa.binary()),
                "seconds": pa.array([seconds], pa.float64()),
            }
        )
