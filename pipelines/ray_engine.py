"""The Ray Data engine of ``gemma4 preprocess``: the job of ``pipelines.preprocess_job``, its shards run as Ray tasks.

The output directory is the local engine's, file for file: the same shards (shard k holds input rows
``k·S … (k+1)·S − 1``), written by the same ``preprocess_job.process_shard`` (same per-row functions, same atomic
renames), the same ``job.json`` recorded after every shard by the same ``Job``, the same resumption and the same
``JobSummary``. A job may be started with one engine and finished with the other.

How shards flow. The driver reads the manifest one shard at a time with ``Job.pending_shards``, as the local engine
does, so validation and duplicate-id detection are identical (the ids of finished shards still count). Each pending
shard goes into the object store as a one-row Arrow block (shard index, pickled items: each row's index, id and
``ManifestRow`` — messages and own tools — or its error), and the driver keeps only the reference. The job's settings
(thinking, tools, template kwargs, limits …) reach every task in the ``ShardTarget``. A window of such references
becomes ``ray.data.from_arrow_refs(...)``, and ``map_batches(batch_size=1)`` runs ``_run_shard`` on each block in a
Ray task that writes the shard's files and returns its statistics. The driver consumes the stream with ``iter_rows``
and records each shard (``Job.record``) as it completes, so a killed job resumes like a local one.

Memory is bounded. The driver holds one shard of rows at a time, the object store at most one window of pending
shards (``WINDOW_PER_CPU`` per cluster CPU), and each task holds one shard. Execution streams: nothing is
materialised. Deviation from a single ``from_items`` dataset: it would need every shard's items in the object
store before the first task starts. Windows keep that bounded, at the cost of a partly idle cluster while the
last shards of a window finish (about one shard's time per window).

On a multi-node cluster, the output directory, the manifest's media and the tokenizer must be at the same path
on every node (a shared filesystem): the tasks read and write them directly.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
from collections.abc import Iterator

import pyarrow as pa

from pipelines.pool import init_worker
from pipelines.preprocess_job import Job, JobSummary, PreprocessSettings, ShardTarget, process_shard

__all__ = ["WINDOW_PER_CPU", "import_ray", "run_preprocess_ray"]

WINDOW_PER_CPU = 8  # pending shards per cluster CPU in one dataset: a window's tail idles CPUs ~1/8 of its time


def run_preprocess_ray(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: PreprocessSettings,
    *,
    num_cpus: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> JobSummary:
    """Run (or resume) the job on Ray Data; the output and summary are those of ``run_preprocess``.

    If Ray is not initialised, a Ray instance is started (``address`` to join a cluster, ``num_cpus`` to size a
    local one) and shut down on return; otherwise the running one is used and both arguments are ignored.
    One shard runs per task, on one CPU. Raises ``ImportError`` without Ray, ``JobMismatchError`` (before Ray is
    started) if ``output_dir`` holds another job.
    """
    ray = import_ray()
    with Job.open(input_path, output_dir, settings) as job:
        started_ray = not ray.is_initialized()
        if started_ray:
            ray.init(
                address=address,
                num_cpus=num_cpus,
                include_dashboard=False,
                ignore_reinit_error=True,
                log_to_driver=False,
                logging_level=logging.WARNING,  # a normal run prints no Ray info lines
            )
        try:
            return _run(ray, job, progress)
        finally:
            if started_ray:
                ray.shutdown()


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the extra, not only Ray core)
    except ImportError as exc:
        raise ImportError(
            "the Ray engine needs Ray Data, which is not installed: pip install 'gemma4-pipeline[ray]'"
        ) from exc
    # Ray Data logs its plan and progress to the console at INFO (its log file keeps them): warnings and errors
    # only on the console, and no warning that its progress bars are off (the job shows its own progress).
    for handler in logging.getLogger("ray.data").handlers:
        if "File" not in type(handler).__name__:  # the console's (its file handler is Ray's own class)
            handler.setLevel(max(handler.level, logging.WARNING))
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    return ray


def _run(ray, job: Job, progress: bool) -> JobSummary:
    job.start(progress)
    window = WINDOW_PER_CPU * max(1, int(ray.cluster_resources().get("CPU", 1)))
    pending = _pending_blocks(ray, job)
    while refs := list(itertools.islice(pending, window)):
        # ``refs`` stays alive until the window is consumed: the blocks are owned by this driver.
        dataset = ray.data.from_arrow_refs(refs).map_batches(
            _process_shard, batch_size=1, batch_format="pyarrow", num_cpus=1, fn_kwargs={"target": job.target}
        )
        dataset.context.enable_progress_bars = False  # this dataset's copy of the context; the job shows progress
        for row in dataset.iter_rows():
            job.record(int(row["shard"]), json.loads(row["stats"]))
    return job.finish()


def _pending_blocks(ray, job: Job) -> Iterator:
    """References to one-row blocks (shard, pickled items) of the job's pending shards, in order."""
    for shard, items in job.pending_shards():
        # Pickled as the local engine's process pool would: items hold exceptions and arbitrary media values.
        payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
        yield ray.put(pa.table({"shard": pa.array([shard], pa.int64()), "items": pa.array([payload], pa.binary())}))


def _process_shard(batch: pa.Table, *, target: ShardTarget) -> pa.Table:
    """The Ray task: one shard per batch (``batch_size=1``) → one row (shard, its statistics as JSON)."""
    assert batch.num_rows == 1, batch.num_rows
    shard = batch["shard"][0].as_py()
    init_worker()  # one thread per task: parallelism comes from the tasks, as from the local engine's processes
    stats = process_shard(shard, pickle.loads(batch["items"][0].as_py()), target)
    # JSON, not a struct column: ``errors_by_stage`` and ``tokens`` have different keys from shard to shard.
    return pa.table({"shard": pa.array([shard], pa.int64()), "stats": [json.dumps(stats)]})
