"""Reading a ``gemma4 preprocess`` output back: checked datasets, one row as an example object, a report.

``open_output(dir)`` reads ``job.json``, refuses an unfinished job (unless ``allow_incomplete``: then the shards
finished so far) or another schema version, and checks every shard file's schema
(``data_specs.example.check_schema``) and settings metadata. Then ``examples()`` is a
pyarrow dataset over the example shards, ``to_datasets()`` the same rows as a ``datasets.Dataset``,
``errors()`` the errors table, ``ids()`` the example ids in input order, and ``example(key)`` one row (by id
or position) as a ``preprocess.prompt.Example``.

Files (``examples/`` and ``errors/``, ``pipelines.jobdir``) are found from ``job.json`` and what exists: a shard
whose rows all failed may have no examples file, a shard without failures no errors file (``job.json`` still
lists it with its counts). A file that ``job.json`` says holds rows but that is missing is an error; an output
with no examples at all (an empty manifest, or every row broken) reads as empty tables.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from data_specs.errors_table import error_schema
from data_specs.example import SCHEMA_VERSION, SchemaError, check_schema, example_schema, row_to_example

from .jobdir import JOB_FILE, JobMismatchError, check_version, read_job_file, shard_path
from .preprocess_job import SETTINGS_KEY

__all__ = [
    "IncompleteJobError",
    "OutputDir",
    "ResultsDir",
    "RowNotFoundError",
    "open_job",
    "open_output",
    "open_results",
    "prompt_text",
]


class IncompleteJobError(SchemaError):
    """The output's job has not finished (it is running, or was killed): ``job.json`` does not mark it complete."""


class RowNotFoundError(KeyError):
    """No example with the id asked for; the message says whether the row is in the errors table instead."""

    def __str__(self) -> str:  # KeyError's str() is the repr of its argument: quotes around the whole message
        return str(self.args[0]) if self.args else ""


@dataclass
class OutputDir:
    path: Path
    state: dict

    def _files(self, kind: str, count_key: str) -> list[str]:
        """The ``kind`` ("examples" or "errors") files of the recorded shards, in shard order: those that exist.
        A shard that ``job.json`` says has such rows must have its file."""
        files = []
        for k, stats in sorted(self.state["shards"].items(), key=lambda item: int(item[0])):
            file = shard_path(self.path, kind, int(k))
            if file.is_file():
                files.append(str(file))
            elif stats.get(count_key, 0):
                raise FileNotFoundError(
                    f"{file} is missing: {JOB_FILE} records {stats[count_key]} {kind} rows in shard {int(k)}"
                )
        return files

    @property
    def example_files(self) -> list[str]:
        return self._files("examples", "examples")

    @property
    def error_files(self) -> list[str]:
        return self._files("errors", "errors")

    @property
    def num_examples(self) -> int:
        return sum(s["examples"] for s in self.state["shards"].values())

    @property
    def num_errors(self) -> int:
        return sum(s["errors"] for s in self.state["shards"].values())

    def examples(self) -> ds.Dataset:
        """The example rows as one pyarrow dataset (empty, with the example schema, when there are none); its
        schema metadata holds the settings, as every file's does."""
        files = self.example_files
        schema = pq.read_schema(files[0]) if files else example_schema()
        return ds.dataset(files, schema=schema, format="parquet")

    def errors(self) -> pa.Table:
        """The errors table (empty, with its schema, when no row failed)."""
        tables = [pq.read_table(f) for f in self.error_files]
        if not tables:
            return error_schema().empty_table()
        return pa.concat_tables(tables)

    def to_datasets(self):
        """The examples as an in-memory ``datasets.Dataset`` (nothing is written to the datasets cache)."""
        import datasets

        return datasets.Dataset(datasets.table.InMemoryTable(self.examples().to_table()))

    def ids(self) -> list[str]:
        """The example ids, in input order (``ids()[k]`` is the id of ``example(k)``)."""
        return self.examples().to_table(columns=["id"]).column("id").to_pylist()

    def example(self, key: str | int):
        """The ``preprocess.prompt.Example`` with id ``key`` (a string) or at position ``key`` (an int).

        Raises :class:`RowNotFoundError` (a ``KeyError``) for an unknown id, saying so when the row is in the
        errors table, and ``IndexError`` for a position out of range."""
        dataset = self.examples()
        if isinstance(key, int):
            count = dataset.count_rows()
            if not 0 <= key < count:
                raise IndexError(f"{self.path}: no example at position {key} ({count} examples)")
            return row_to_example(dataset.take([key]).to_pylist()[0])[1]
        rows = dataset.to_table(filter=ds.field("id") == key).to_pylist()
        if not rows:
            raise RowNotFoundError(self._not_found(key))
        return row_to_example(rows[0])[1]

    def _not_found(self, key: str) -> str:
        errors = self.errors()
        failed = errors.filter(pc.equal(errors["id"], key)).to_pylist()
        if failed:
            e = failed[0]
            return (
                f"row {key!r} of {self.path} produced no example: it failed at stage {e['stage']} "
                f"(input row {e['row']}): {e['error_type']}: {e['message']}"
            )
        return (
            f"no row with id {key!r} in {self.path} ({self.num_examples} examples, {self.num_errors} errors; "
            f"a position is also accepted)"
        )

    def tokenizer(self, source: str | os.PathLike | None = None):
        """The tokenizer this output was built with: ``source``, else the one its ``job.json`` records; refused if
        it is not the one the output was built with (fingerprints differ)."""
        return _tokenizer_of(self, source or self.state.get("run", {}).get("tokenizer"))

    def report(self) -> list[str]:
        shards = self.state["shards"]
        settings = self.state["settings"]
        lines = [
            f"{self.path}: schema version {self.state['schema_version']}, {len(shards)} shards, "
            f"{self.num_examples} examples + {self.num_errors} errors = {self.state['rows']} input rows",
            "settings: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())),
        ]
        errors = self.errors()
        for row in errors.slice(0, 20).to_pylist():
            lines.append(
                f"  error  {row['id'] if row['id'] is not None else '(no id)'} (row {row['row']}, {row['stage']}): "
                f"{row['error_type']}: {row['message']}"
            )
        if errors.num_rows > 20:
            lines.append(f"  … {errors.num_rows - 20} more errors")
        return lines


def open_output(path: str | os.PathLike, *, allow_incomplete: bool = False) -> OutputDir:
    """The checked output at ``path``. An unfinished job raises :class:`IncompleteJobError`; with
    ``allow_incomplete`` the output holds the shards ``job.json`` records as finished (each is renamed into place
    before it is recorded, so a recorded shard is whole even while the job runs)."""
    path = Path(path)
    job = path / JOB_FILE
    if not job.is_file():
        raise FileNotFoundError(f"{os.fspath(path)!r} has no {JOB_FILE}: not a gemma4 preprocess output")
    state = _read_job(job)
    if "results_version" in state and "schema_version" not in state:
        raise SchemaError(
            f"{os.fspath(path)!r} is a gemma4 infer output (results), not a gemma4 preprocess output (examples): "
            "its results are in its results/ folder (pipelines.infer_job.read_results)"
        )
    try:
        check_version(state, path)
    except JobMismatchError as exc:
        raise SchemaError(str(exc)) from None
    if state.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(
            f"{os.fspath(path)!r} was written with schema version {state.get('schema_version')}; "
            f"this code reads version {SCHEMA_VERSION}"
        )
    if not state.get("complete") and not allow_incomplete:
        raise IncompleteJobError(
            f"{os.fspath(path)!r}: the job is not finished; run the same gemma4 preprocess command again"
        )
    _check_state(state, job)
    out = OutputDir(path, state)
    expected_settings = {k: v for k, v in state["settings"].items() if k != "chat_template"}
    for table in ("examples", "errors") if state.get("complete") else ():  # a running job renames before recording
        recorded = {os.fspath(shard_path(path, table, int(k))) for k in state["shards"]}
        for stray in sorted((path / table).glob("*.parquet")) if (path / table).is_dir() else ():
            if os.fspath(stray) not in recorded:
                raise SchemaError(f"{stray}: a file {JOB_FILE} does not record (from another job?)")
    for file in out.example_files + out.error_files:
        kind = Path(file).parent.name
        try:
            metadata = pq.read_metadata(file)
        except (OSError, pa.ArrowException) as exc:
            raise SchemaError(f"{file}: not a readable Parquet file ({exc})") from None
        schema = metadata.schema.to_arrow_schema()
        if kind == "examples":
            try:
                check_schema(schema)
            except SchemaError as exc:
                raise SchemaError(f"{file}: {exc}") from None
        stored = json.loads((schema.metadata or {}).get(SETTINGS_KEY.encode(), b"{}"))
        if stored != expected_settings:
            raise SchemaError(f"{file}: written with other settings than {JOB_FILE} records")
        shard = int(Path(file).stem.rsplit("-", 1)[1])
        count = state["shards"][str(shard)][kind]
        if metadata.num_rows != count:
            raise SchemaError(f"{file} holds {metadata.num_rows} rows, but {JOB_FILE} records {count} {kind}")
    return out


def _read_job(job: Path) -> dict:
    """``job.json``, which must be a JSON object; :class:`SchemaError` naming it otherwise."""
    try:
        return read_job_file(job)
    except JobMismatchError as exc:
        raise SchemaError(str(exc)) from None


def _check_state(state: dict, job: Path) -> None:
    """The counts of a preprocess output's ``job.json`` are whole and add up: every shard 0 … K−1 recorded (a
    finished job) with ``rows = examples + errors``, each shard full but the last, the shards' rows summing to
    ``rows``. :class:`SchemaError` naming the file and the first count that does not."""

    def count(value: object, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SchemaError(f"{job}: {what} is {value!r}, not a count")
        return value

    rows = count(state.get("rows"), "rows")
    settings = state.get("settings")
    if not isinstance(settings, dict):
        raise SchemaError(f"{job}: settings is {type(settings).__name__}, not an object")
    size = count(settings.get("rows_per_shard"), "settings.rows_per_shard")
    if size < 1:
        raise SchemaError(f"{job}: settings.rows_per_shard is 0")
    shards = state.get("shards")
    if not isinstance(shards, dict):
        raise SchemaError(f"{job}: shards is {type(shards).__name__}, not an object")
    expected = -(-rows // size)
    for key, stats in shards.items():
        if not key.isdigit() or int(key) >= expected or not isinstance(stats, dict):
            raise SchemaError(f"{job}: shard {key!r} is not one of the {expected} shards of {rows} rows")
        total, examples, errors = (count(stats.get(k), f"shard {key} {k}") for k in ("rows", "examples", "errors"))
        if total != examples + errors:
            raise SchemaError(f"{job}: shard {key} has {total} rows but {examples} examples + {errors} errors")
        full = min(size, rows - int(key) * size)
        if total != full:
            raise SchemaError(f"{job}: shard {key} has {total} rows; shard {key} of {rows} rows has {full}")
    if state.get("complete") and len(shards) != expected:
        missing = sorted(set(range(expected)) - {int(k) for k in shards})
        raise SchemaError(f"{job}: the job is marked complete, but shards {missing[:5]} are not recorded")


# --- gemma4 infer outputs -----------------------------------------------------------------------------------


@dataclass
class ResultsDir:
    """A ``gemma4 infer`` output: its ``job.json`` (``state``), its results (Parquet rows, or the lines of
    ``results.jsonl``) and its errors table."""

    path: Path
    state: dict

    def results(self) -> list[dict]:
        """Every result in input order (rows of ``data_specs.results``, or OpenAI batch output lines)."""
        from .infer_job import read_results

        return read_results(self.path)

    def errors(self) -> pa.Table:
        files = [str(shard_path(self.path, "errors", int(k))) for k, s in self.state["shards"].items() if s["errors"]]
        if not files:
            return error_schema().empty_table()
        return pa.concat_tables(pq.read_table(f) for f in sorted(files))

    def result(self, key: str | int) -> dict:
        """The result of the row with id (``custom_id``) ``key``, or at input position ``key`` (an int)."""
        for row in self.results():
            row_id = row.get("custom_id", row.get("id"))
            if (isinstance(key, int) and row.get("row", -1) == key) or row_id == key:
                return row
        failed = self.errors()
        failed = failed.filter(pc.equal(failed["id" if isinstance(key, str) else "row"], key)).to_pylist()
        if failed:
            e = failed[0]
            raise RowNotFoundError(
                f"row {key!r} of {self.path} has no result: it failed at stage {e['stage']} (input row {e['row']}): "
                f"{e['error_type']}: {e['message']}"
            )
        raise RowNotFoundError(f"no row {key!r} in {self.path} ({self.state['rows']} input rows)")

    def report(self) -> list[str]:
        shards = self.state["shards"].values()
        results, errors = sum(s["results"] for s in shards), sum(s["errors"] for s in shards)
        settings, run = self.state["settings"], self.state.get("run", {})
        where = self.state.get("results_file") or "results/"
        lines = [
            f"{self.path}: gemma4 infer output (results version {self.state['results_version']}, output version "
            f"{self.state.get('output_version')}), {len(self.state['shards'])} shards, {results} results + "
            f"{errors} errors = {self.state['rows']} input rows{'' if self.state.get('complete') else ' (unfinished)'}",
            f"results in {where}, errors in errors/",
            "generation: "
            + ", ".join(f"{k}={v}" for k, v in sorted(settings["generation"].items()))
            + f", context={settings['context']}, output_format={settings['output_format']}",
            f"model: {run.get('checkpoint')} ({settings['checkpoint_fingerprint']}), {settings['dtype']} on "
            f"{run.get('device')}",
        ]
        stages: dict[str, int] = {}
        for s in shards:
            for stage, count in s["errors_by_stage"].items():
                stages[stage] = stages.get(stage, 0) + count
        if stages:
            lines.append("errors by stage: " + ", ".join(f"{k} {v}" for k, v in sorted(stages.items())))
        return lines

    def example(self, key: str | int):
        """The ``preprocess.prompt.Example`` the job built for row ``key`` (id or input position), rebuilt from the
        job's input with its recorded settings (media are decoded again), or read from its preprocessed input."""
        from .inputs import InferInput
        from .preprocess_job import build_rows, settings_from_record
        from .rows import Failed

        run = self.state.get("run", {})
        if "input" not in run:
            raise ValueError(f"{self.path}: its job.json does not record its input (written before 2026-12)")
        settings = settings_from_record(self.state["settings"]["preprocess"], run["checkpoint_dir"])
        source = InferInput(run["input"], settings.rows_per_shard)
        for _, items in source.shards(set()):
            for item in items:
                if item.id != key and item.index != key:
                    continue
                if item.carried_error or isinstance(item.payload, Exception):
                    problem = item.payload["message"] if item.carried_error else str(item.payload)
                    raise RowNotFoundError(f"row {key!r} of {run['input']} has no prompt: {problem}")
                if isinstance(item.payload, dict):  # an example of a preprocess output
                    return row_to_example(item.payload)[1]
                (outcome,) = build_rows([item], settings, os.fspath(source.base_dir))
                if isinstance(outcome, Failed):
                    raise RowNotFoundError(f"row {key!r} of {run['input']} has no prompt: {outcome.row['message']}")
                return row_to_example(outcome.row)[1]
        raise RowNotFoundError(f"no row {key!r} in the input of {self.path} ({run['input']})")

    def tokenizer(self, source: str | os.PathLike | None = None):
        """The checkpoint's tokenizer (``source``, else the checkpoint directory ``job.json`` records)."""
        return _tokenizer_of(self, source or self.state.get("run", {}).get("checkpoint_dir"))


def _tokenizer_of(output: OutputDir | ResultsDir, source: str | os.PathLike | None):
    from preprocess.tokenizer import Tokenizer

    if source is None:
        raise ValueError(f"{output.path}: its job.json does not record its tokenizer: give one (--tokenizer)")
    tokenizer = Tokenizer.from_pretrained(source)
    settings = output.state["settings"]
    built = settings.get("tokenizer_fingerprint") or settings.get("preprocess", {}).get("tokenizer_fingerprint")
    if built is not None and tokenizer.fingerprint != built:
        raise ValueError(
            f"{os.fspath(source)!r} is not the tokenizer {output.path} was built with (fingerprint "
            f"{tokenizer.fingerprint}, built with {built})"
        )
    return tokenizer


def open_results(path: str | os.PathLike, *, allow_incomplete: bool = False) -> ResultsDir:
    """The ``gemma4 infer`` output at ``path``; an unfinished job raises :class:`IncompleteJobError` unless
    ``allow_incomplete``."""
    path = Path(path)
    job = path / JOB_FILE
    if not job.is_file():
        raise FileNotFoundError(f"{os.fspath(path)!r} has no {JOB_FILE}: not a gemma4 infer output")
    state = json.loads(job.read_text())
    if "results_version" not in state:
        raise SchemaError(f"{os.fspath(path)!r} is a gemma4 preprocess output (examples), not a gemma4 infer output")
    try:
        check_version(state, path)
    except JobMismatchError as exc:
        raise SchemaError(str(exc)) from None
    if not state.get("complete") and not allow_incomplete:
        raise IncompleteJobError(
            f"{os.fspath(path)!r}: the job is not finished; run the same gemma4 infer command again"
        )
    return ResultsDir(path, state)


def open_job(path: str | os.PathLike) -> OutputDir | ResultsDir:
    """Either kind of job folder, by what its ``job.json`` says it is."""
    job = Path(path) / JOB_FILE
    if job.is_file() and "results_version" in json.loads(job.read_text()):
        return open_results(path)
    return open_output(path)


def prompt_text(example, tokenizer) -> str:
    """An example's prompt as text: its tokens decoded with their control tokens, each run of media soft tokens
    shown as one marker (``<image soft tokens × 280>``)."""
    from data_specs.media import Modality

    ids, types = example.input_ids.tolist(), example.mm_token_type_ids.tolist()
    parts, start = [], 0
    while start < len(ids):
        stop = start
        while stop < len(ids) and types[stop] == types[start]:
            stop += 1
        if types[start] == Modality.TEXT:
            parts.append(tokenizer.decode(ids[start:stop]))
        else:
            parts.append(f"<{Modality(types[start]).name.lower()} soft tokens × {stop - start}>")
        start = stop
    return "".join(parts)
