"""The job folder both batch jobs write (``gemma4 preprocess`` and ``gemma4 infer``), and what their readers share.

Layout (output version 2)::

    job.json                  the source of truth: kind and version, settings, input fingerprint, shards done, counts
    .lock                     held (flock) by the job writing here; a second job is refused (``OutputBusyError``)
    examples/shard-00000.parquet   preprocess: the examples of input rows 0 … S−1 (``data_specs.example``)
    results/shard-00000.parquet    infer: the answers of input rows 0 … S−1 (``data_specs.results``)
    errors/shard-00000.parquet     both: the rows of the same range that failed (``data_specs.errors_table``)

Each table has a folder of its own, so a reader can take the folder (``pd.read_parquet("OUT/examples")``,
``datasets.load_dataset("parquet", data_dir="OUT/results")``, polars, duckdb) and get one schema. No file is
written empty; files are written under a hidden temporary name (``.shard-….tmp-…``, which Arrow's dataset reader
skips) and renamed when complete, and only then recorded in ``job.json`` (itself replaced atomically).

Version 1 put both tables in ``shards/`` (``examples-K.parquet`` beside ``errors-K.parquet``); such a folder is
refused with one line (:func:`check_version`): run the job again into a new folder.

This module holds the folder's plumbing: the lock, ``job.json`` (:func:`load_state` compares a resumed job's
settings key by key, :func:`save_state`), the paths, the Parquet writer (:class:`TableWriter`), atomic text
writes and the progress bar.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "JOB_FILE",
    "LOCK_FILE",
    "OUTPUT_KINDS",
    "OUTPUT_VERSION",
    "ROW_GROUP_BYTES",
    "JobFolder",
    "JobMismatchError",
    "OutputBusyError",
    "TableWriter",
    "check_version",
    "differences",
    "load_state",
    "lock_output",
    "open_folder",
    "progress_bar",
    "read_job_file",
    "read_state",
    "save_state",
    "shard_path",
    "write_text",
    "written_paths",
]

JOB_FILE = "job.json"
LOCK_FILE = ".lock"
OUTPUT_VERSION = 2
ROW_GROUP_BYTES = 64 << 20  # output a worker holds before writing a row group


class JobMismatchError(ValueError):
    """OUTPUT_DIR holds a job made from another input or with other settings."""


class OutputBusyError(OSError):
    """Another live job is writing to OUTPUT_DIR."""


class JobFolder:
    """An output folder opened for one job: created and locked (``OutputBusyError`` if a live job holds it), stale
    temporary files removed, its ``job.json`` state loaded and compared with ``expected`` (``JobMismatchError``
    naming what differs) or new; ``run`` (how this run runs: not part of the job's identity) recorded in it.
    ``record`` saves each finished shard, ``complete`` marks the job done; ``close`` (or leaving the ``with``
    block) releases the folder."""

    def __init__(self, out_dir: str | os.PathLike, tables: tuple[str, ...], expected: dict, run: dict) -> None:
        self.out_dir, self.tables = Path(out_dir), tables
        self.lock: int | None = open_folder(self.out_dir, tables)
        try:
            self.state = load_state(self.out_dir, expected)
        except BaseException:
            self.close()
            raise
        self.state["run"] = run
        self.done_before = len(self.state["shards"])

    def record(self, shard: int, stats: dict) -> None:
        """Save a finished shard's statistics in ``job.json`` (its files are in place already)."""
        self.state["shards"][str(shard)] = stats
        save_state(self.out_dir, self.state)

    def complete(self, **extra: Any) -> None:
        """Mark the job complete in ``job.json`` (with ``extra`` keys)."""
        self.state.update(extra)
        save_state(self.out_dir, dict(self.state, complete=True))

    def written(self) -> list[str]:
        return written_paths(self.out_dir, self.tables)

    def close(self) -> None:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def __enter__(self) -> JobFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shard_path(out_dir: str | os.PathLike, table: str, shard: int, ext: str = "parquet") -> Path:
    """Where shard ``shard`` of ``table`` (``examples``, ``results`` or ``errors``) lives."""
    return Path(out_dir) / table / f"shard-{shard:05d}.{ext}"


def open_folder(out_dir: Path, tables: tuple[str, ...]) -> int:
    """Create ``out_dir``, take its lock (:func:`lock_output`) and remove the temporary files a killed run left
    in its tables' folders (no live job writes here: we hold the lock); the lock's file descriptor. A table's
    folder is made when its first file is written, so a table with no rows has none."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_output(out_dir)
    for table in tables:
        for stale in (out_dir / table).glob(".*.tmp-*"):
            stale.unlink()
    return lock


def written_paths(out_dir: Path, tables: tuple[str, ...]) -> list[str]:
    """What a job wrote, for its summary: each table folder holding files, and ``job.json``."""
    folders = [out_dir / t for t in tables if (out_dir / t).is_dir() and any((out_dir / t).glob("*.parquet"))]
    return [os.fspath(f) + os.sep for f in folders] + [os.fspath(out_dir / JOB_FILE)]


def check_version(state: dict, where: str | os.PathLike) -> None:
    """``JobMismatchError`` with one line unless ``state`` (a ``job.json``) is of this output version."""
    version = state.get("output_version", 1)
    if version != OUTPUT_VERSION:
        raise JobMismatchError(
            f"{os.fspath(where)!r} was written by another version of gemma4 (output version {version}"
            + (", both tables in shards/" if version == 1 else "")
            + f"); this version reads and writes output version {OUTPUT_VERSION} (examples/ or results/ beside "
            "errors/): run the job again "
            "into a new folder"
        )


def read_state(out_dir: str | os.PathLike) -> dict:
    """The ``job.json`` of a job folder, checked to be of this output version (:func:`check_version`);
    ``FileNotFoundError`` when there is none."""
    state = read_job_file(Path(out_dir) / JOB_FILE)
    check_version(state, out_dir)
    return state


def read_job_file(path: Path) -> dict:
    """A ``job.json``, which must be a JSON object; :class:`JobMismatchError` naming it otherwise."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise JobMismatchError(f"{os.fspath(path)!r}: not JSON ({exc})") from None
    if not isinstance(state, dict):
        raise JobMismatchError(f"{os.fspath(path)!r}: expected a JSON object, got {type(state).__name__}")
    return state


def write_text(path: Path, text: str) -> int:
    """Write ``path`` atomically (a temporary name, then a rename); its size in bytes."""
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    temporary.parent.mkdir(exist_ok=True)
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path.stat().st_size


class TableWriter:
    """One Parquet file written in row groups of about ``ROW_GROUP_BYTES``, under a temporary name until
    ``close``; a file that would hold no rows is not written (and an old one of a killed run is removed)."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path, self.schema = path, schema
        self.rows: list[dict] = []
        self.pending_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")  # unique even across nodes

    def add(self, row: dict, size: int) -> None:
        self.rows.append(row)
        self.pending_bytes += size
        if self.pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        if self._writer is None:
            self._temporary.parent.mkdir(exist_ok=True)
            self._writer = pq.ParquetWriter(self._temporary, self.schema)
        self._writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), row_group_size=len(self.rows))
        self.rows, self.pending_bytes = [], 0

    def close(self) -> int:
        """Finish the file; its size in bytes (0 when there were no rows)."""
        self._flush()
        if self._writer is None:
            self.path.unlink(missing_ok=True)
            return 0
        self._writer.close()
        os.replace(self._temporary, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._temporary.unlink(missing_ok=True)


def lock_output(out_dir: Path) -> int:
    """Take the output directory's lock (an ``flock`` on ``.lock``, released by the kernel if the process dies);
    its file descriptor. ``OutputBusyError`` names the pid of the job holding it."""
    fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise OutputBusyError(
            f"another job is writing to {os.fspath(out_dir)!r} (pid {holder}); wait for it to finish or use another "
            "output directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


_ABSENT = "(absent)"


def differences(there: dict, now: dict, prefix: str = "") -> list[str]:
    """``key: value there, value now`` for each differing key (settings compared key by key)."""
    lines = []
    for key in sorted(set(there) | set(now)):
        a, b = there.get(key, _ABSENT), now.get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {_short(a)} there, {_short(b)} now")
    return lines


def _short(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters (tool specs can be long: their hash tells them apart)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


# The kinds of job folder, by the version key their job.json holds.
OUTPUT_KINDS = {"results_version": "a gemma4 infer output (results)", "schema_version": "a gemma4 preprocess output"}


def load_state(out_dir: Path, expected: dict) -> dict:
    """The state of the job in ``out_dir`` to resume, or a new one (``expected`` with no shard done);
    ``JobMismatchError`` with one line if the folder holds another kind of output, an output of an older version,
    or a job of another input or settings (naming each differing key)."""
    path = out_dir / JOB_FILE
    expected = dict(expected, output_version=OUTPUT_VERSION)
    if not path.exists():
        return dict(expected, shards={})
    state = json.loads(path.read_text())
    theirs, ours = (next((kind for key, kind in OUTPUT_KINDS.items() if key in d), None) for d in (state, expected))
    if theirs and ours and theirs != ours:  # one line, not every differing key of two different kinds of job
        raise JobMismatchError(
            f"{os.fspath(out_dir)!r} holds {theirs}, and this job writes {ours}: use another output directory"
        )
    check_version(state, out_dir)
    state.pop("complete", None)  # set again when this run finishes
    if isinstance(state.get("settings"), dict):
        state["settings"].pop("tokenizer", None)  # a path: jobs before 2026-12 recorded it; its fingerprint counts
    found = differences({key: state.get(key, _ABSENT) for key in expected}, expected)
    if found:
        raise JobMismatchError(
            f"{os.fspath(out_dir)!r} holds another job ({'; '.join(found)}); use a new output directory, or "
            "delete this one to start again"
        )
    return state


def save_state(out_dir: Path, state: dict) -> None:
    """Replace ``job.json`` atomically."""
    temporary = out_dir / f".{JOB_FILE}.tmp"
    temporary.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(temporary, out_dir / JOB_FILE)


def progress_bar(total: int, enabled: bool, desc: str = "preprocess"):
    from tqdm import tqdm

    return tqdm(total=total, unit="row", disable=not enabled, dynamic_ncols=True, desc=desc)
