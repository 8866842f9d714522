"""The Ray Data engine of ``gemma4 infer``: the job of ``pipelines.infer_job``, rows prepared by Ray tasks and answered
by Ray actors that each hold one copy of the model.

The output directory is the local engine's, file for file: the same ``job.json`` (settings, fingerprints, recorded
shards), the same shard files written by the same ``InferJob.write``, the same resumption and the same
``InferSummary``. A job may be started with one engine and finished with the other.

How rows flow. The driver reads the input one shard at a time (``_Input.shards``, as the local engine does, so
validation and duplicate-id detection are identical) and puts each pending shard into the object store as a
one-row Arrow block (shard index, pickled items: each row's index, id, payload and generation options). A window
of such references becomes ``ray.data.from_arrow_refs(...)`` and two ``map_batches(batch_size=1)`` stages:

1. prepare — a Ray task per shard, on one CPU with one torch thread (``init_worker``), runs ``prepare_rows``
   (chat template, media, patches, features; the local engine's per-row function) and returns one row: the shard,
   its row count and the pickled prepared rows (one-row ``Batch`` and prompt summary, or an error row) with their
   options;
2. generate — a pool of ``actors`` actors (default: one per GPU of the cluster, else one), each of which loads the
   model once (on its GPU when the cluster has GPUs, ``num_gpus=1``; otherwise on ``settings.device`` with one
   CPU) with a continuous ``model.engine.Engine``. Each call turns a prepared shard into requests
   (``make_request``: rows beyond the vocabulary or the context become error rows), runs them all through the
   engine (reused from call to call) and returns the shard's result and error rows (``result_row``), pickled.

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

Determinism. Results equal the local engine's: the same per-row functions prepare rows, make requests and convert
completions, and greedy decoding, or sampling with a seed, does not depend on which rows share the engine (see
``pipelines.infer_job``). The model is loaded in the job's dtype (``--dtype``, or the checkpoint's stored dtype),
also on a GPU actor, so a job resumed with the other engine keeps its numerics. The summary's model time runs
from the first window's start to the last shard; its wait is that time less the actors' mean busy time (loading
and generating), an estimate of how long the model had nothing to run.

On a multi-node cluster, the checkpoint, the tokenizer and the input's media must be at the same path on every
node (the tasks read media, the actors load the model); the output directory is written by the driver alone.
"""

from __future__ import annotations

import itertools
import os
import pickle
import time
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa

from .infer_job import (
    InferJob,
    InferSettings,
    InferSummary,
    ShardState,
    make_request,
    plan_infer,
    prepare_rows,
    result_row,
    summarize,
)
from .preprocess_job import PreprocessSettings, init_worker, progress_bar, save_state
from .ray_engine import WINDOW_PER_CPU, import_ray

__all__ = ["run_infer_ray"]


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
    ``actors``: copies of the model (default: one per GPU of the cluster, or one without GPUs). ``plan``: the
    ``plan_infer(settings)`` the caller made already, if any. Raises
    ``ImportError`` without Ray, ``JobMismatchError`` (before Ray is started) if ``output_dir`` holds another job.
    """
    for name, value in (("num_cpus", num_cpus), ("actors", actors)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer (--workers with --engine ray), got {value!r}")
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
            )
        try:
            return _run(ray, job, actors, progress)
        finally:
            if started_ray:
                ray.shutdown()
    finally:
        job.close()


def _run(ray, job: InferJob, actors: int | None, progress: bool) -> InferSummary:
    settings = job.settings
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    actors = actors or max(1, gpus)
    window = WINDOW_PER_CPU * max(1, int(resources.get("CPU", 1)))
    prepare_kwargs = {
        "settings": settings.preprocess,
        "base_dir": os.fspath(job.input.base_dir),
        "pad_id": job.plan.info.config.tokens.pad,  # what the model would say, without loading it
    }
    device = "cuda" if gpus else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
    # A CPU actor reserves its weights and KV cache, in the job's dtype, so Ray places no more than fit on a node.
    memory = job.plan.info.weight_bytes + job.plan.cache_bytes
    generate_args = {"num_gpus": 1} if gpus else {"num_cpus": 1, "memory": memory}
    cpus = int(resources.get("CPU", 0))
    if not gpus and cpus < actors + 1:
        raise ValueError(
            f"the Ray cluster has {cpus} CPUs: {actors} model actors on CPUs take one each, and preparing rows needs "
            "at least one more (start Ray with more CPUs, or use fewer actors)"
        )
    answered: Counter = Counter()  # this run's results and tokens (the summary's rates)
    busy = 0.0  # the actors' seconds loading and generating, all together
    bar = progress_bar(job.input.rows, progress, "infer")
    bar.update(sum(s["rows"] for s in job.state["shards"].values()))
    started = time.perf_counter()
    pending = _pending_blocks(ray, job)
    try:
        while refs := list(itertools.islice(pending, window)):
            # ``refs`` stays alive until the window is consumed: the blocks are owned by this driver.
            dataset = (
                ray.data.from_arrow_refs(refs)
                .map_batches(
                    _prepare_shard,
                    batch_size=1,
                    batch_format="pyarrow",
                    num_cpus=1,
                    fn_kwargs=prepare_kwargs,
                )
                .map_batches(
                    _Generator,
                    batch_size=1,
                    batch_format="pyarrow",
                    compute=ray.data.ActorPoolStrategy(size=actors),
                    fn_constructor_kwargs={"settings": settings, "dtype": job.dtype, "device": device},
                    **generate_args,
                )
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
    save_state(job.out_dir, dict(job.state, complete=True))
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
    prepared = prepare_rows(
        [(index, row_id, payload) for index, row_id, payload, _ in items], settings, base_dir, pad_id
    )
    options = {index: row_options for index, _, _, row_options in items}
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

    def __init__(self, *, settings: InferSettings, dtype, device: str) -> None:
        from model.checkpoint import load_pretrained
        from model.engine import Engine
        from preprocess.tokenizer import Tokenizer

        started = time.perf_counter()
        self.settings = settings
        self.tokenizer = Tokenizer.from_pretrained(settings.preprocess.tokenizer)  # the checkpoint's directory
        self.model = load_pretrained(
            settings.preprocess.tokenizer, dtype=dtype, device=device, tokenizer=self.tokenizer
        )
        self.engine = Engine(
            self.model, slots=settings.batch_size, context=settings.context, prefill_chunk=settings.prefill_chunk
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
        for item in prepared:
            if item[0] == "error":
                state.errors[item[1]["row"]] = item[1]
                continue
            _, index, row_id, row_batch, summary = item
            request = make_request(self.model, self.settings, (shard, index), row_id, row_batch, options.get(index))
            if isinstance(request, dict):
                state.errors[index] = request
                continue
            rows[index] = (row_id, summary)
            requests.append(request)
        with torch.inference_mode():
            for completion in self.engine.run(requests):
                index = completion.id[1]
                row_id, summary = rows[index]
                state.results[index] = result_row(completion, row_id, index, summary, self.tokenizer)
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
