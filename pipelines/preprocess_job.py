"""``gemma4 preprocess``: a manifest of chat examples → Parquet shards of model-ready examples + an errors table.

Layout of OUTPUT_DIR::

    job.json                     the source of truth: settings, input fingerprint, completed shards
    shards/examples-00000.parquet   data_specs.example schema, input rows 0 … S−1 that succeeded, in input order
    shards/errors-00000.parquet     data_specs.errors_table schema, the rows of the same range that failed
    …

Shard k always holds input rows ``k·S … (k+1)·S − 1`` (S = ``rows_per_shard``), so the contents do not depend on
the number of workers. A shard is written under a temporary name and renamed when complete; only then is it
added to ``job.json`` (itself replaced atomically). Killed at any point, the same command finishes the job:
completed shards are kept, anything else is redone. Every input row ends up in exactly one of the two tables.

Memory is bounded: the parent reads one shard of rows at a time and keeps at most ``2 × workers`` shards in
flight; each worker holds one shard.

Both engines (this module's local one and ``pipelines.ray_engine``) drive the same :class:`Job`:
``Job.open`` → ``start`` → for each of ``pending_shards()``, :func:`process_shard` (in a worker) and
``record`` → ``finish``. Only how shards reach the workers differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data_specs.errors_table import error_schema
from data_specs.example import SCHEMA_VERSION, example_schema, example_to_row
from data_specs.manifest import MANIFEST_VERSION, Manifest, ManifestError, open_manifest, resolve_media, validate_row
from preprocess.chat import ChatFormatError
from preprocess.errors import InvalidAudioError, InvalidImageError, InvalidVideoError

__all__ = [
    "Job",
    "JobMismatchError",
    "JobSummary",
    "PreprocessSettings",
    "ShardTarget",
    "init_worker",
    "process_rows",
    "process_shard",
    "run_preprocess",
]

log = logging.getLogger(__name__)
JOB_FILE = "job.json"
SETTINGS_KEY = "gemma4.settings"


class JobMismatchError(ValueError):
    """OUTPUT_DIR holds a job made from another input or with other settings."""


@dataclass(frozen=True, kw_only=True)
class PreprocessSettings:
    tokenizer: str  # checkpoint directory holding tokenizer.model (and maybe chat_template.jinja)
    image_budget: int = 280
    max_tokens: int | None = None
    video_frames: int = 32
    video_budget: int = 70
    exact: bool = True
    rows_per_shard: int = 128

    def __post_init__(self) -> None:
        from preprocess.budget import check_budget

        check_budget(self.image_budget)
        check_budget(self.video_budget)
        if self.rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be at least 1, got {self.rows_per_shard}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")


@dataclass
class JobSummary:
    rows: int
    examples: int
    errors: int
    errors_by_stage: dict[str, int]
    tokens: dict[str, int]
    bytes_written: int
    shards: int
    shards_skipped: int
    seconds: float

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k} {v}" for k, v in sorted(self.errors_by_stage.items())) or "none"
        tokens = ", ".join(f"{k} {v}" for k, v in self.tokens.items())
        return [
            f"rows {self.rows} = examples {self.examples} + errors {self.errors} (by stage: {stages})",
            f"tokens: {tokens}",
            f"shards {self.shards} ({self.shards_skipped} already done), {self.bytes_written / 1e6:.1f} MB written, "
            f"{self.seconds:.1f} s ({self.rows / max(self.seconds, 1e-9):.1f} rows/s)",
        ]


# --- the per-row work (engine-agnostic) -------------------------------------------------------------------

_STAGES = (  # the first matching class names the stage
    (ChatFormatError, "messages"),
    (InvalidImageError, "image"),
    (InvalidAudioError, "audio"),
    (InvalidVideoError, "video"),
    (ManifestError, "manifest"),
    (FileNotFoundError | IsADirectoryError | PermissionError, "media"),
    (ValueError | TypeError, "prompt"),
)


def _stage(exc: BaseException) -> str:
    return next((stage for kind, stage in _STAGES if isinstance(exc, kind)), "internal")


_WORKER: dict[str, Any] = {}


def _tokenizer(settings: PreprocessSettings):
    from preprocess.tokenizer import Tokenizer

    if _WORKER.get("key") != settings.tokenizer:
        _WORKER["tokenizer"] = Tokenizer.from_pretrained(settings.tokenizer)
        _WORKER["key"] = settings.tokenizer
    return _WORKER["tokenizer"]


def process_rows(items: list[tuple], settings: PreprocessSettings, base_dir: str) -> tuple[list[dict], list[dict]]:
    """``items`` = [(row index, id or None, messages or exception)] → (example rows, error rows), input order."""
    from preprocess.prompt import build_example

    tokenizer = _tokenizer(settings)
    examples, errors = [], []
    for index, row_id, payload in items:
        try:
            if isinstance(payload, BaseException):
                raise payload
            example = build_example(
                resolve_media(payload, Path(base_dir)),
                tokenizer,
                image_budget=settings.image_budget,
                max_tokens=settings.max_tokens,
                video_frames=settings.video_frames,
                video_budget=settings.video_budget,
                exact=settings.exact,
            )
            examples.append(example_to_row(row_id, example))
        except Exception as exc:  # every failure is recorded with its reason; the job goes on
            errors.append(
                {
                    "id": row_id if row_id is not None else f"row {index}",
                    "row": index,
                    "stage": _stage(exc),
                    "error_type": type(exc).__name__,
                    "message": str(exc),
                }
            )
    return examples, errors


# --- one shard (runs in a worker) --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardTarget:
    """What a worker needs to process and write any shard of one job (picklable: sent to processes and tasks)."""

    settings: PreprocessSettings
    base_dir: str  # relative media paths resolve against it
    out_dir: str
    metadata: dict[str, str]  # written into both Parquet files' schema metadata


def init_worker() -> None:
    """A worker process's (or Ray task's) setup: one torch thread, since parallelism comes from the workers, and
    float results must not depend on the worker count."""
    import torch

    torch.set_num_threads(1)


def _write_atomic(table: pa.Table, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")  # unique even across cluster nodes
    pq.write_table(table, temporary)
    os.replace(temporary, path)


def process_shard(shard: int, items: list[tuple], target: ShardTarget) -> dict:
    """Process one shard (``items`` from :meth:`Job.pending_shards`) and write its two files atomically; returns
    its statistics, for :meth:`Job.record`."""
    examples, errors = process_rows(items, target.settings, target.base_dir)
    shards = Path(target.out_dir) / "shards"
    example_path, error_path = shards / f"examples-{shard:05d}.parquet", shards / f"errors-{shard:05d}.parquet"
    _write_atomic(pa.Table.from_pylist(examples, schema=example_schema(target.metadata)), example_path)
    _write_atomic(pa.Table.from_pylist(errors, schema=error_schema(target.metadata)), error_path)
    tokens = Counter()
    for row in examples:
        summary = json.loads(row["summary"])
        for key in ("text_tokens", "image_tokens", "audio_tokens", "video_tokens"):
            tokens[key.removesuffix("_tokens")] += summary[key]
    return {
        "rows": len(items),
        "examples": len(examples),
        "errors": len(errors),
        "errors_by_stage": dict(Counter(e["stage"] for e in errors)),
        "tokens": dict(tokens),
        "bytes": example_path.stat().st_size + error_path.stat().st_size,
    }


# --- the job (runs in the driver) -------------------------------------------------------------------------


class Job:
    """One output directory's job, new or resumed: its manifest, its ``job.json`` state and its progress.

    ``Job.open`` sets up (and refuses a directory holding another job); ``start`` shows progress;
    ``pending_shards`` yields the shards still to do; ``record`` saves each finished one in ``job.json``;
    ``finish`` marks the job complete and returns its summary."""

    def __init__(self, manifest: Manifest, out_dir: Path, state: dict, target: ShardTarget, *, started: float) -> None:
        self.manifest, self.out_dir, self.state, self.target = manifest, out_dir, state, target
        self.shard_count = -(-len(manifest) // target.settings.rows_per_shard)
        self._done_before = len(state["shards"])
        self._started = started  # time.perf_counter() when opening began: the summary's seconds count from it
        self._bar = None

    @classmethod
    def open(
        cls, input_path: str | os.PathLike, output_dir: str | os.PathLike, settings: PreprocessSettings
    ) -> Job:
        """Open the manifest and the output directory; stale temporary files of a killed run are removed, and
        ``JobMismatchError`` is raised if the directory holds a job of another input, version or settings."""
        from preprocess.tokenizer import Tokenizer

        started = time.perf_counter()
        manifest = open_manifest(input_path)
        tokenizer = Tokenizer.from_pretrained(settings.tokenizer)
        template_hash = hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16]
        out_dir = Path(output_dir)
        (out_dir / "shards").mkdir(parents=True, exist_ok=True)
        for stale in (out_dir / "shards").glob(".*.tmp-*"):
            stale.unlink()  # a shard half-written when the last run was killed
        expected = {
            "schema_version": SCHEMA_VERSION,
            "manifest_version": MANIFEST_VERSION,
            "input": manifest.fingerprint,
            "settings": dict(
                asdict(settings), tokenizer_fingerprint=tokenizer.fingerprint, chat_template=template_hash
            ),
            "rows": len(manifest),
        }
        target = ShardTarget(
            settings=settings,
            base_dir=os.fspath(manifest.base_dir),
            out_dir=os.fspath(out_dir),
            metadata=_metadata(settings, tokenizer.fingerprint),
        )
        return cls(manifest, out_dir, _load_state(out_dir, expected), target, started=started)

    def start(self, progress: bool = True) -> None:
        """Show the progress bar, counting the rows of shards done by earlier runs."""
        self._bar = _progress(len(self.manifest), progress)
        self._bar.update(sum(s["rows"] for s in self.state["shards"].values()))

    def pending_shards(self) -> Iterator[tuple[int, list[tuple]]]:
        """``(shard, items)`` of every shard not yet done, in order. Every shard's rows are read and validated,
        done ones too: their ids still count for duplicate detection."""
        seen: dict[str, int] = {}
        for shard in range(self.shard_count):
            items = _shard_items(self.manifest, shard, self.target.settings.rows_per_shard, seen)
            if str(shard) not in self.state["shards"]:
                yield shard, items

    def record(self, shard: int, stats: dict) -> None:
        """Save a finished shard's statistics (from :func:`process_shard`) in ``job.json``."""
        self.state["shards"][str(shard)] = stats
        _save_state(self.out_dir, self.state)
        if self._bar is not None:
            self._bar.update(stats["rows"])
            self._bar.set_postfix(errors=sum(s["errors"] for s in self.state["shards"].values()))

    def finish(self) -> JobSummary:
        """Mark the job complete in ``job.json``; its summary."""
        if self._bar is not None:
            self._bar.close()
        _save_state(self.out_dir, dict(self.state, complete=True))
        summary = _summary(self.state, self.shard_count, self._done_before, time.perf_counter() - self._started)
        assert summary.rows == len(self.manifest) == summary.examples + summary.errors, summary
        return summary


def _metadata(settings: PreprocessSettings, tokenizer_fingerprint: str) -> dict[str, str]:
    return {
        SETTINGS_KEY: json.dumps(dict(asdict(settings), tokenizer_fingerprint=tokenizer_fingerprint), sort_keys=True)
    }


def _load_state(out_dir: Path, expected: dict) -> dict:
    path = out_dir / JOB_FILE
    if not path.exists():
        return dict(expected, shards={})
    state = json.loads(path.read_text())
    state.pop("complete", None)  # set again when this run finishes
    for key in ("schema_version", "manifest_version", "input", "settings", "rows"):
        if state.get(key) != expected[key]:
            raise JobMismatchError(
                f"{os.fspath(out_dir)!r} holds a job with another {key} ({state.get(key)!r} there, {expected[key]!r} "
                "now); use a new output directory"
            )
    return state


def _save_state(out_dir: Path, state: dict) -> None:
    temporary = out_dir / f".{JOB_FILE}.tmp"
    temporary.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(temporary, out_dir / JOB_FILE)


def _shard_items(manifest, shard: int, size: int, seen: dict[str, int]) -> list[tuple]:
    """Validated rows of one shard: (index, id, messages) or (index, id or None, ManifestError)."""
    items = []
    start = shard * size
    for index, raw in enumerate(manifest.rows(start, min(len(manifest), start + size)), start):
        if isinstance(raw, ManifestError):
            items.append((index, None, raw))
            continue
        try:
            row_id, messages = validate_row(raw, index)
        except ManifestError as exc:
            raw_id = raw.get("id") if isinstance(raw, dict) else None
            items.append((index, str(raw_id) if isinstance(raw_id, str | int) and raw_id != "" else None, exc))
            continue
        if row_id in seen:
            items.append((index, row_id, ManifestError(f"row {index}: id {row_id!r} repeats row {seen[row_id]}")))
            continue
        seen[row_id] = index
        items.append((index, row_id, messages))
    return items


def _summary(state: dict, count: int, done_before: int, seconds: float) -> JobSummary:
    """The summary of a finished ``state``."""
    shards = state["shards"].values()
    tokens = Counter()
    stages = Counter()
    for s in shards:
        tokens.update(s["tokens"])
        stages.update(s["errors_by_stage"])
    return JobSummary(
        rows=sum(s["rows"] for s in shards),
        examples=sum(s["examples"] for s in shards),
        errors=sum(s["errors"] for s in shards),
        errors_by_stage=dict(stages),
        tokens={k: tokens.get(k, 0) for k in ("text", "image", "audio", "video")},
        bytes_written=sum(s["bytes"] for s in shards),
        shards=count,
        shards_skipped=done_before,
        seconds=seconds,
    )


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="row", disable=not enabled, dynamic_ncols=True, desc="preprocess")


# --- the local engine -------------------------------------------------------------------------------------


def run_preprocess(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: PreprocessSettings,
    *,
    workers: int = 1,
    progress: bool = True,
) -> JobSummary:
    """Run (or resume) the local job; see the module docstring."""
    job = Job.open(input_path, output_dir, settings)
    job.start(progress)
    if workers <= 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in worker processes: float results must not depend on the worker count
        try:
            for shard, items in job.pending_shards():
                job.record(shard, process_shard(shard, items, job.target))
        finally:
            torch.set_num_threads(threads)
    else:
        context = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker) as pool:
            running: dict = {}
            for shard, items in job.pending_shards():
                while len(running) >= 2 * workers:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        job.record(running.pop(future), future.result())
                running[pool.submit(process_shard, shard, items, job.target)] = shard
            for future in list(running):
                job.record(running.pop(future), future.result())
    return job.finish()
