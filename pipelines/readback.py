"""Reading a ``gemma4 preprocess`` output back: checked datasets, one row as an example object, a report.

``open_output(dir)`` reads ``job.json``, refuses an unfinished job or another schema version, and checks every
shard's schema (``data_specs.example.check_schema``) and settings metadata. Then ``examples()`` is a pyarrow
dataset over the example shards, ``to_datasets()`` the same rows as a ``datasets.Dataset``, ``errors()`` the
errors table, and ``example(key)`` one row (by id or position) as a ``preprocess.prompt.Example``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from data_specs.example import SCHEMA_VERSION, SchemaError, check_schema, row_to_example

from .preprocess_job import JOB_FILE, SETTINGS_KEY

__all__ = ["OutputDir", "open_output"]


@dataclass
class OutputDir:
    path: Path
    state: dict

    @property
    def example_files(self) -> list[str]:
        return self._files("examples")

    @property
    def error_files(self) -> list[str]:
        return self._files("errors")

    def _files(self, kind: str) -> list[str]:
        paths = (self.path / "shards" / f"{kind}-{int(k):05d}.parquet" for k in sorted(self.state["shards"], key=int))
        return [str(p) for p in paths if p.exists()]

    def examples(self) -> ds.Dataset:
        return ds.dataset(self.example_files, format="parquet")

    def errors(self) -> pa.Table:
        return pa.concat_tables([pq.read_table(f) for f in self.error_files])

    def to_datasets(self):
        """The examples as an in-memory ``datasets.Dataset`` (nothing is written to the datasets cache)."""
        import datasets

        return datasets.Dataset(datasets.table.InMemoryTable(self.examples().to_table()))

    def example(self, key: str | int):
        """``(id, Example)`` of the row with id ``key`` (a string) or at position ``key`` (an int)."""
        dataset = self.examples()
        if isinstance(key, int):
            if not 0 <= key < dataset.count_rows():
                raise IndexError(f"{self.path}: no example at position {key} ({dataset.count_rows()} examples)")
            return row_to_example(dataset.take([key]).to_pylist()[0])
        rows = dataset.to_table(filter=ds.field("id") == key).to_pylist()
        if not rows:
            raise KeyError(f"{self.path}: no example with id {key!r} (it may be in the errors table)")
        return row_to_example(rows[0])

    def report(self) -> list[str]:
        shards = self.state["shards"].values()
        settings = self.state["settings"]
        lines = [
            f"{self.path}: schema version {self.state['schema_version']}, {len(shards)} shards, "
            f"{sum(s['examples'] for s in shards)} examples + {sum(s['errors'] for s in shards)} errors "
            f"= {self.state['rows']} input rows",
            "settings: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())),
        ]
        errors = self.errors()
        for row in errors.slice(0, 20).to_pylist():
            lines.append(
                f"  error  {row['id']} (row {row['row']}, {row['stage']}): {row['error_type']}: {row['message']}"
            )
        if errors.num_rows > 20:
            lines.append(f"  … {errors.num_rows - 20} more errors")
        return lines


def open_output(path: str | os.PathLike) -> OutputDir:
    path = Path(path)
    job = path / JOB_FILE
    if not job.is_file():
        raise FileNotFoundError(f"{os.fspath(path)!r} has no {JOB_FILE}: not a gemma4 preprocess output")
    state = json.loads(job.read_text())
    if state.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(
            f"{os.fspath(path)!r} was written with schema version {state.get('schema_version')}; "
            f"this code reads version {SCHEMA_VERSION}"
        )
    if not state.get("complete"):
        raise SchemaError(f"{os.fspath(path)!r}: the job is not finished; run the same gemma4 preprocess command again")
    out = OutputDir(path, state)
    expected_settings = {k: v for k, v in state["settings"].items() if k != "chat_template"}
    for file in out.example_files + out.error_files:
        schema = pq.read_schema(file)
        if "examples-" in file:
            check_schema(schema)
        stored = json.loads((schema.metadata or {}).get(SETTINGS_KEY.encode(), b"{}"))
        if stored != expected_settings:
            raise SchemaError(f"{file}: written with other settings than {JOB_FILE} records")
    return out
