"""``gemma4 preprocess``: a manifest of chat examples → Parquet shards of model-ready examples + an errors table.

Layout of OUTPUT_DIR (``pipelines.jobdir``, output version 2)::

    job.json                        the source of truth: settings, input fingerprint, completed shards and counts
    .lock                           held (flock) by the job writing here; a second job is refused
    examples/shard-00000.parquet    data_specs.example schema, input rows 0 … S−1 that succeeded, in input order
    errors/shard-00000.parquet      data_specs.errors_table schema, the rows of the same range that failed
    …

No file is written empty: a shard whose rows all failed has no examples file, one without errors no errors file
(``job.json`` still records the shard with its counts), so ``datasets``, ``pyarrow.dataset``, pandas, polars or
duckdb can read the ``examples/`` folder directly. Rows are written in row groups of at most
``ROW_GROUP_BYTES``, so a worker holds about that much output at a time whatever the shard size.

Shard k always holds input rows ``k·S … (k+1)·S − 1`` (S = ``rows_per_shard``), so the contents do not depend on
the number of workers. A shard is written under a temporary name and renamed when complete; only then is it
added to ``job.json`` (itself replaced atomically). Killed at any point, the same command finishes the job:
completed shards are kept, anything else is redone. Every input row ends up in exactly one of the two tables.

Memory is bounded: the parent reads one shard of rows at a time and keeps at most ``2 × workers`` shards in
flight; each worker holds one shard's input rows, one row's media (``MediaLimits`` bound them before decoding) and
one row group of output.

Faults. A row that takes longer than ``row_timeout_s`` becomes an error row (stage ``timeout``). A worker that
dies (killed for memory, a crash in a decoder) costs no finished work: finished shards are recorded as they finish,
the shards it was running are retried alone in a fresh worker, and if one dies again its rows are run one per task
so that only the rows that kill a worker go to the errors table (stage ``worker``). Workers are started only when
there is more than one shard to do, and exit by themselves when the job's process dies.

Both engines (this module's local one and ``pipelines.ray_engine``) drive the same :class:`Job`:
``Job.open`` → ``start`` → for each of ``pending_shards()``, :func:`process_shard` (in a worker) and
``record`` → ``finish``. Only how shards reach the workers differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

from data_specs.checks import check_count
from data_specs.errors_table import error_schema
from data_specs.example import SCHEMA_VERSION, example_schema, example_to_row
from data_specs.manifest import (
    MANIFEST_VERSION,
    Manifest,
    ManifestError,
    ManifestRow,
    MediaOutsideRootError,
    RowOptions,
    check_tools,
    open_manifest,
    resolve_media,
)
from preprocess.chat import ChatFormatError
from preprocess.errors import InvalidAudioError, InvalidImageError, InvalidVideoError
from preprocess.limits import MediaLimits

from .jobdir import (
    JobFolder,
    JobMismatchError,
    OutputBusyError,
    TableWriter,
    progress_bar,
    shard_path,
)
from .pool import WORKER_DIED, ShardPool, Work, threads
from .rows import Built, Failed, Item, read_items

__all__ = [
    "Job",
    "JobMismatchError",
    "JobSummary",
    "OutputBusyError",
    "PreprocessSettings",
    "RowTimeoutError",
    "ShardTarget",
    "TABLES",
    "error_row",
    "build_rows",
    "dead_row",
    "options_from_json",
    "process_shard",
    "options_to_json",
    "settings_from_record",
    "run_preprocess",
]

log = logging.getLogger(__name__)
SETTINGS_KEY = "gemma4.settings"
TABLES = ("examples", "errors")  # the output's folders (pipelines.jobdir)


class RowTimeoutError(Exception):
    """A row took longer than ``row_timeout_s``."""


@dataclass(frozen=True, kw_only=True)
class PreprocessSettings:
    tokenizer: str = field(
        metadata={
            "help": "checkpoint directory with tokenizer.model, or that file; chat_template.jinja beside it is used too"
        }
    )
    image_budget: int = field(default=280, metadata={"flag": "--budget", "help": "image soft-token budget"})
    max_tokens: int | None = field(
        default=None,
        metadata={
            "flag": "--max-prompt-tokens",
            "min": 1,
            "help": "lower image budgets so each prompt fits this many tokens (nothing is cut: a row that cannot fit "
            "fails)",
        },
    )
    video_frames: int = field(default=32, metadata={"min": 1, "help": "frames sampled per video"})
    video_budget: int = field(default=70, metadata={"help": "budget per video frame"})
    exact: bool = field(default=True, metadata={"flag": "--fast", "help": "fast image/audio modes (not bit-identical)"})
    rows_per_shard: int = field(default=128, metadata={"min": 1, "help": "input rows per output shard"})
    media_root: str | None = field(
        default=None, metadata={"help": "media paths must resolve inside this directory (manifests from elsewhere)"}
    )
    row_timeout_s: float | None = field(
        default=300.0,
        metadata={
            "flag": "--row-timeout",
            "help": "seconds a row may take, or 'none'; a row taking longer becomes an error row (stage timeout)",
        },
    )
    limits: MediaLimits = field(default_factory=MediaLimits)  # checked from headers, before decoding
    enable_thinking: bool = field(default=False, metadata={"help": "render every prompt with thinking on"})
    tools: list | None = None  # tool specs (their content) for rows that have no tools of their own
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # extra variables of the chat template (JSON)
    head: int | None = field(  # None: every row
        default=None, metadata={"min": 1, "metavar": "N", "help": "only the first N input rows (a smoke run)"}
    )
    generation_prompt: bool = field(  # end each prompt with the model's turn opener; False: a finished conversation
        default=True,
        metadata={"help": "end each prompt without the model's turn opener: the conversation as it stands"},
    )
    continue_final_message: bool = field(
        default=False,
        metadata={
            "help": "the last message is a partial model turn the prompt ends inside, for the model to continue "
            "(with --no-generation-prompt)"
        },
    )

    def __post_init__(self) -> None:
        from preprocess.budget import check_budget

        check_tools(self.tools, "settings.tools")
        if self.template_kwargs:  # preprocess.prompt imports the media stack: only when there is something to check
            from preprocess.prompt import check_template_kwargs

            check_template_kwargs(self.template_kwargs)
        for name in ("tools", "template_kwargs"):
            try:
                json.dumps(getattr(self, name), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} must be JSON data (it is recorded in job.json): {exc}") from None

        check_budget(self.image_budget)
        check_budget(self.video_budget)
        for name in ("rows_per_shard", "video_frames"):
            check_count(getattr(self, name), name)
        for name in ("max_tokens", "head"):
            check_count(getattr(self, name), name, optional=True)
        if self.row_timeout_s is not None and not self.row_timeout_s > 0:
            raise ValueError(f"row_timeout_s must be positive (or None for no limit), got {self.row_timeout_s}")
        if self.continue_final_message and self.generation_prompt:
            raise ValueError(
                "continue_final_message continues the last (model) message, so no generation prompt may follow it: "
                "give it with generation_prompt=False (--no-generation-prompt)"
            )
        if self.media_root is not None and not os.path.isdir(self.media_root):
            raise ValueError(f"media_root {self.media_root!r} is not a directory")

    def comparable(self, tokenizer_fingerprint: str, template_hash: str) -> dict:
        """What must match for a job to resume: the settings with paths replaced by what they designate (the
        tokenizer by its fingerprint, the media root by its resolved path), so spellings do not matter."""
        settings = asdict(self)
        del settings["tokenizer"]
        if self.head is None:  # every row: the key is left out, so jobs written before it existed still resume
            del settings["head"]
        if self.media_root is not None:
            settings["media_root"] = os.path.realpath(self.media_root)
        # Tools by content (a file's path says nothing of what it held), as job.json will read them back; the hash
        # makes a difference in long specs visible at a glance.
        tools = json.loads(json.dumps(check_tools(self.tools, "settings.tools")))
        settings["tools"] = tools
        settings["tools_sha256"] = None if tools is None else hashlib.sha256(_canonical(tools)).hexdigest()[:16]
        settings["template_kwargs"] = json.loads(json.dumps(self.template_kwargs))
        return dict(settings, tokenizer_fingerprint=tokenizer_fingerprint, chat_template=template_hash)


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


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
    written: list[str] = field(default_factory=list)  # the output's paths: its tables' folders and job.json

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k} {v}" for k, v in sorted(self.errors_by_stage.items())) or "none"
        tokens = ", ".join(f"{k} {v}" for k, v in self.tokens.items())
        return [
            f"rows {self.rows} = examples {self.examples} + errors {self.errors} (by stage: {stages})",
            f"tokens: {tokens}",
            f"shards {self.shards} ({self.shards_skipped} already done), {self.bytes_written / 1e6:.1f} MB written, "
            f"{self.seconds:.1f} s ({self.rows / max(self.seconds, 1e-9):.1f} rows/s)",
            *(["written: " + ", ".join(self.written)] if self.written else []),
        ]


# --- the per-row work (engine-agnostic) -------------------------------------------------------------------

_STAGES = (  # the first matching class names the stage
    (ChatFormatError, "messages"),
    (InvalidImageError, "image"),
    (InvalidAudioError, "audio"),
    (InvalidVideoError, "video"),
    (ManifestError, "manifest"),
    (MediaOutsideRootError, "media"),
    (RowTimeoutError, "timeout"),
    (OSError, "media"),  # missing, unreadable, symlink loops …: per-row, while reading the row's media
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


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`RowTimeoutError` in the block after ``seconds`` (SIGALRM: POSIX, main thread only; elsewhere
    no limit). The signal interrupts blocking system calls too (an ``open`` of a FIFO, a stalled read)."""
    if seconds is None or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise RowTimeoutError(f"the row took longer than row_timeout_s={seconds:g} s and was stopped")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _text(value: object, limit: int | None = 2000) -> str:
    """``value`` as a string Parquet accepts (lone surrogates escaped, e.g. from undecodable file names), cut
    to ``limit`` characters (None: never) with a note saying so."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if limit is None or len(text) <= limit else f"{text[:limit]}… (message cut: {len(text)} characters)"


def error_row(index: int, row_id: str | None, stage: str, error_type: str, message: str) -> dict:
    """A row of the errors table. ``id`` is the row's own, whole (ids are bounded when rows are read:
    ``data_specs.manifest.MAX_ID_CHARS``), or null when the row had no readable id: never a made-up one, which
    could equal a real id."""
    return {
        "id": None if row_id is None else _text(row_id, limit=None),
        "row": index,
        "stage": stage,
        "error_type": error_type,
        "message": _text(message),
    }


def options_to_json(options: RowOptions | None) -> dict | None:
    """A row's own generation options as JSON data for the examples table's ``options`` column (the fields it
    sets; None when it sets none), read back by ``gemma4 infer`` (:func:`options_from_json`)."""
    if options is None:
        return None
    given = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items() if v is not None}
    return given or None


def settings_from_record(record: dict, tokenizer: str) -> PreprocessSettings:
    """The settings a job recorded in ``job.json`` (:meth:`PreprocessSettings.comparable`'s form: paths
    resolved, tools by content, plus fingerprints), with ``tokenizer``: to rebuild one row as that job did."""
    names = {f.name for f in fields(PreprocessSettings)} - {"tokenizer"}
    values = {k: v for k, v in record.items() if k in names}
    if isinstance(values.get("limits"), dict):
        values["limits"] = MediaLimits(**values["limits"])
    return PreprocessSettings(tokenizer=tokenizer, **values)


def options_from_json(data: dict | None) -> RowOptions | None:
    """The inverse of :func:`options_to_json`."""
    if not data:
        return None
    return RowOptions(**{k: (tuple(v) if k == "stop" else v) for k, v in data.items()})


def build_rows(items: Iterable[Item], settings: PreprocessSettings, base_dir: str) -> Iterator[Built | Failed]:
    """Each item (``pipelines.rows.Item``) through the front end: a :class:`Built` examples-table row, or a
    :class:`Failed` errors-table row naming the stage that failed; in input order."""
    from preprocess.prompt import build_example

    tokenizer = _tokenizer(settings)
    for item in items:
        index, row_id, payload = item.index, item.id, item.payload
        try:
            if isinstance(payload, BaseException):
                raise payload
            row = payload if isinstance(payload, ManifestRow) else ManifestRow(row_id, payload)
            with _time_limit(settings.row_timeout_s):
                example = build_example(
                    resolve_media(row.messages, Path(base_dir), settings.media_root),
                    tokenizer,
                    enable_thinking=settings.enable_thinking,
                    tools=row.tools if row.tools is not None else settings.tools or None,  # the row's own first
                    template_kwargs=settings.template_kwargs,
                    image_budget=settings.image_budget,
                    max_tokens=settings.max_tokens,
                    video_frames=settings.video_frames,
                    video_budget=settings.video_budget,
                    exact=settings.exact,
                    limits=settings.limits,
                    add_generation_prompt=settings.generation_prompt,
                    continue_final_message=settings.continue_final_message,
                )
            result = Built(index, example_to_row(row_id, example, options_to_json(item.options)))
        except Exception as exc:  # every failure is recorded with its reason; the job goes on
            result = Failed(error_row(index, row_id, _stage(exc), type(exc).__name__, str(exc)))
        yield result


def dead_row(item: Item) -> Failed:
    """The error row of an item whose row killed its worker twice (``pipelines.pool``)."""
    return Failed(error_row(item.index, item.id, "worker", "WorkerDiedError", WORKER_DIED))


# --- one shard (runs in a worker) --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardTarget:
    """What a worker needs to process and write any shard of one job (picklable: sent to processes and tasks)."""

    settings: PreprocessSettings
    base_dir: str  # relative media paths resolve against it
    out_dir: str
    metadata: dict[str, str]  # written into both Parquet files' schema metadata


def _row_bytes(row: dict) -> int:
    """About how many bytes a row of the examples table holds (media bytes + 5 per token)."""
    size = 5 * len(row["input_ids"])
    size += sum(len(i["patches"]) for i in row["images"])
    size += sum(len(a["features"]) + len(a["mask"]) for a in row["audio"])
    size += sum(len(f["patches"]) for v in row["videos"] for f in v["frames"])
    return size


def write_shard(shard: int, results: Iterable[Built | Failed], target: ShardTarget) -> dict:
    """Write one shard's outcomes (in input order) to its files; its statistics, for :meth:`Job.record`."""
    examples = TableWriter(shard_path(target.out_dir, "examples", shard), example_schema(target.metadata))
    errors = TableWriter(shard_path(target.out_dir, "errors", shard), error_schema(target.metadata))
    tokens: Counter = Counter()
    stages: Counter = Counter()
    counts = Counter()
    try:
        for outcome in results:
            row = outcome.row
            if isinstance(outcome, Built):
                counts["example"] += 1
                summary = json.loads(row["summary"])
                for key in ("text", "image", "audio", "video"):
                    tokens[key] += summary[f"{key}_tokens"]
                examples.add(row, _row_bytes(row))
            else:
                counts["error"] += 1
                stages[row["stage"]] += 1
                errors.add(row, len(row["message"]))
        written = examples.close() + errors.close()
    except BaseException:
        examples.abort()
        errors.abort()
        raise
    return {
        "rows": counts["example"] + counts["error"],
        "examples": counts["example"],
        "errors": counts["error"],
        "errors_by_stage": dict(stages),
        "tokens": dict(tokens),
        "bytes": written,
    }


def process_shard(shard: int, items: list[Item], target: ShardTarget) -> dict:
    """Process one shard (``items`` from :meth:`Job.pending_shards`) and write its files atomically; returns
    its statistics, for :meth:`Job.record`."""
    return write_shard(shard, build_rows(items, target.settings, target.base_dir), target)


def build_list(items: list[Item], target: ShardTarget) -> list[Built | Failed]:
    """:func:`build_rows` as a list (a worker's task when a shard's rows run one at a time)."""
    return list(build_rows(items, target.settings, target.base_dir))


# --- the job (runs in the driver) -------------------------------------------------------------------------


class Job:
    """One output directory's job, new or resumed: its manifest, its ``job.json`` state and its progress.

    ``Job.open`` sets up (and refuses a directory holding another job); ``start`` shows progress;
    ``pending_shards`` yields the shards still to do; ``record`` saves each finished one in ``job.json``;
    ``finish`` marks the job complete and returns its summary."""

    def __init__(self, manifest: Manifest, folder: JobFolder, target: ShardTarget, *, started: float) -> None:
        self.manifest, self.folder, self.target = manifest, folder, target
        self.out_dir, self.state = folder.out_dir, folder.state
        self.shard_count = -(-len(manifest) // target.settings.rows_per_shard)
        self._started = started  # time.perf_counter() when opening began: the summary's seconds count from it
        self._bar = None

    @property
    def pending_count(self) -> int:
        return self.shard_count - len(self.state["shards"])

    def close(self) -> None:
        """Release the output directory (also done when the process ends)."""
        self.folder.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def open(cls, input_path: str | os.PathLike, output_dir: str | os.PathLike, settings: PreprocessSettings) -> Job:
        """Open the manifest and the output directory, and lock the directory (``OutputBusyError`` if another live
        job holds it); stale temporary files of a killed run are then removed, and ``JobMismatchError`` is raised
        if the directory holds a job of another input, version or settings. Close the job (or use it as a context
        manager) to release the directory."""
        from preprocess.tokenizer import Tokenizer

        started = time.perf_counter()
        manifest = open_manifest(input_path)
        if settings.head is not None:
            manifest.head(settings.head)
        tokenizer = Tokenizer.from_pretrained(settings.tokenizer)
        template_hash = hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16]
        expected = {
            "schema_version": SCHEMA_VERSION,
            "manifest_version": MANIFEST_VERSION,
            "input": manifest.fingerprint,
            "settings": settings.comparable(tokenizer.fingerprint, template_hash),
            "rows": len(manifest),
        }
        # How this run ran (recorded, not part of the job's identity): the tokenizer as given, which ``gemma4
        # inspect --prompt`` decodes the prompts with.
        folder = JobFolder(output_dir, TABLES, expected, run={"tokenizer": os.path.realpath(settings.tokenizer)})
        target = ShardTarget(
            settings=settings,
            base_dir=os.fspath(manifest.base_dir),
            out_dir=os.fspath(folder.out_dir),
            metadata=_metadata(expected["settings"]),
        )
        return cls(manifest, folder, target, started=started)

    def start(self, progress: bool = True) -> None:
        """Show the progress bar, counting the rows of shards done by earlier runs."""
        self._bar = progress_bar(len(self.manifest), progress)
        self._bar.update(sum(s["rows"] for s in self.state["shards"].values()))

    def pending_shards(self) -> Iterator[tuple[int, list[Item]]]:
        """``(shard, items)`` of every shard not yet done, in order. Every shard's rows are read and validated,
        done ones too: their ids still count for duplicate detection."""
        seen: dict[str, int] = {}
        size = self.target.settings.rows_per_shard
        for shard in range(self.shard_count):
            start = shard * size
            items = read_items(self.manifest, start, min(len(self.manifest), start + size), seen)
            if str(shard) not in self.state["shards"]:
                yield shard, items

    def record(self, shard: int, stats: dict) -> None:
        """Save a finished shard's statistics (from :func:`process_shard`) in ``job.json``."""
        self.folder.record(shard, stats)
        if self._bar is not None:
            self._bar.update(stats["rows"])
            self._bar.set_postfix(errors=sum(s["errors"] for s in self.state["shards"].values()))

    def finish(self) -> JobSummary:
        """Mark the job complete in ``job.json``; its summary."""
        if self._bar is not None:
            self._bar.close()
        self.folder.complete()
        seconds = time.perf_counter() - self._started
        summary = _summary(self.state, self.shard_count, self.folder.done_before, seconds)
        summary.written = self.folder.written()
        assert summary.rows == len(self.manifest) == summary.examples + summary.errors, summary
        return summary


def _metadata(settings: dict) -> dict[str, str]:
    """The Parquet files' schema metadata: the job's comparable settings, less the template hash."""
    return {SETTINGS_KEY: json.dumps({k: v for k, v in settings.items() if k != "chat_template"}, sort_keys=True)}


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


# --- the local engine -------------------------------------------------------------------------------------


def run_preprocess(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: PreprocessSettings,
    *,
    workers: int = 1,
    progress: bool = True,
) -> JobSummary:
    """Run (or resume) the local job; see the module docstring. With ``workers`` > 1 and more than one shard to
    do, shards run in that many worker processes (at most one per pending shard); otherwise in this process."""
    check_count(workers, "workers")
    with Job.open(input_path, output_dir, settings) as job:
        job.start(progress)
        workers = min(workers, job.pending_count)
        if workers <= 1:
            _run_here(job)
        else:
            _run_pool(job, workers)
        return job.finish()


def _run_here(job: Job) -> None:
    with threads(1):  # as in worker processes: float results must not depend on the worker count
        for shard, items in job.pending_shards():
            job.record(shard, process_shard(shard, items, job.target))


def _run_pool(job: Job, workers: int) -> None:
    """Shards through ``workers`` processes, at most ``2 × workers`` in flight, each recorded as it finishes; a
    worker that dies costs only the rows that kill it (``pipelines.pool``)."""
    target = job.target
    work = Work(
        shard=partial(process_shard, target=target),
        rows=partial(build_list, target=target),
        from_rows=partial(write_shard, target=target),
        dead_row=dead_row,
    )
    with ShardPool(workers, work) as pool:
        for shard, items in job.pending_shards():
            pool.submit(shard, items)
            while len(pool) >= 2 * workers:
                for done, stats in pool.finished(block=True):
                    job.record(done, stats)
        while len(pool):
            for done, stats in pool.finished(block=True):
                job.record(done, stats)
