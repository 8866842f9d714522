"""The input of ``gemma4 infer``, whichever kind it is: a manifest, an OpenAI batch file or a ``gemma4 preprocess``
output, read as shards of :class:`pipelines.rows.Item` s (rows validated and ids checked by
``pipelines.rows.read_items``; a preprocess output's examples with the generation options their rows gave, its
error rows carried over). :func:`check_front_end` refuses front-end options given for a preprocessed input."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from data_specs.example import SchemaError, row_options
from data_specs.manifest import ManifestError, content_hash, open_manifest
from data_specs.openai_batch import check_unique_ids, is_openai_batch

from .jobdir import JOB_FILE, read_state, shard_path
from .preprocess_job import options_from_json
from .rows import Item, read_items

__all__ = ["InferInput", "check_front_end"]


class InferInput:
    """The input as shards of items ``(index, id or None, payload, options)``; a payload is a ``ManifestRow``
    (to prepare), an example row (prepared already), an error row (carried over) or an exception."""

    def __init__(self, path: str | os.PathLike, rows_per_shard: int, head: int | None = None) -> None:
        self.path = Path(path)
        if (self.path / JOB_FILE).is_file():
            from .readback import IncompleteJobError, open_output

            self.kind = "preprocessed"
            state = read_state(self.path)
            if isinstance(state, dict) and "results_version" in state:
                raise ValueError(
                    f"{os.fspath(path)!r} is a gemma4 infer output (results), and gemma4 infer reads a manifest, an "
                    "OpenAI batch file or a gemma4 preprocess output"
                )
            try:  # every file and count checked against job.json before any work
                self.state = open_output(self.path).state
            except IncompleteJobError:
                raise ValueError(
                    f"{os.fspath(path)!r} holds an unfinished gemma4 preprocess job: finish it first"
                ) from None
            self.rows = self.state["rows"] if head is None else min(head, self.state["rows"])
            self.rows_per_shard = self.state["settings"]["rows_per_shard"]  # the preprocess job's shards
            self.fingerprint = f"preprocessed:{self.path.resolve()}:{content_hash(self.path / JOB_FILE)}"
            if self.rows < self.state["rows"]:
                self.fingerprint += f":head{self.rows}"
            self.base_dir = self.path
            return
        self.manifest = open_manifest(path)
        if head is not None:
            self.manifest.head(head)
        self.rows, self.rows_per_shard = len(self.manifest), rows_per_shard
        # the format of the first row that parses: a broken first line costs that line only, not the file's format
        first = next((raw for raw in self.manifest.rows(0, self.rows) if not isinstance(raw, Exception)), None)
        self.kind = "openai" if is_openai_batch(first) else "manifest"
        if self.kind == "openai":
            check_unique_ids(self.manifest.rows(0, self.rows), path)
        self.fingerprint = f"{self.kind}:{self.manifest.fingerprint}"
        self.base_dir = self.manifest.base_dir

    @property
    def shard_count(self) -> int:
        return -(-self.rows // self.rows_per_shard)

    def shards(self, done: set[int]) -> Iterator[tuple[int, list[Item]]]:
        """``(shard, items)`` of every shard not in ``done``, in order (ids of done shards still count for
        duplicate detection)."""
        seen: dict[str, int] = {}
        for shard in range(self.shard_count):
            if self.kind == "preprocessed":
                if shard not in done:
                    yield shard, self._preprocessed(shard)
                continue
            start = shard * self.rows_per_shard
            items = read_items(self.manifest, start, min(self.rows, start + self.rows_per_shard), seen, kind=self.kind)
            if shard not in done:
                yield shard, items

    def _preprocessed(self, shard: int) -> list[Item]:
        """Shard k of the preprocess job: its example rows (with the generation options their input rows gave)
        and error rows, merged in input order (examples fill the positions the errors leave, in order)."""
        stats = self.state["shards"].get(str(shard), {})
        start = shard * self.rows_per_shard
        count = min(stats.get("rows", self.rows_per_shard), self.rows - start)  # a --head may end inside a shard
        files = {kind: shard_path(self.path, kind, shard) for kind in ("examples", "errors")}
        errors = pq.read_table(files["errors"]).to_pylist() if files["errors"].is_file() else []
        by_row = {e["row"]: e for e in errors}
        full = stats.get("rows", 0)
        if len(by_row) != len(errors) or not all(start <= k < start + full for k in by_row):
            raise SchemaError(f"{files['errors']}: its rows are not distinct positions of shard {shard}")
        examples = iter(pq.read_table(files["examples"]).to_pylist() if files["examples"].is_file() else [])
        items = []
        for index in range(start, start + count):
            if index in by_row:
                items.append(Item(index, by_row[index]["id"], by_row[index]))
                continue
            row = next(examples)
            try:
                options = options_from_json(row_options(row))
            except (TypeError, ValueError) as exc:  # a damaged options cell: that row's error
                message = f"row {index} (id {row['id']!r}): its options in {files['examples']} are damaged: {exc}"
                items.append(Item(index, row["id"], ManifestError(message)))
                continue
            items.append(Item(index, row["id"], row, options))
        return items


def check_front_end(input_path: str | os.PathLike, given: dict[str, tuple[str, object]]) -> None:
    """Refuse front-end options given for an input that is a ``gemma4 preprocess`` output: its prompts are built
    already, so they would be silently ignored. ``given`` maps each option given (its flag, e.g. ``--budget``) to
    the ``PreprocessSettings`` field it sets and its value; the ``ValueError`` names the flag, the value given
    and the value the input was built with."""
    path = Path(input_path)
    if not given or not (path / JOB_FILE).is_file():
        return
    state = json.loads((path / JOB_FILE).read_text())
    if "schema_version" not in state:
        return  # not a preprocess output: the input's own check says what it is
    built = state.get("settings", {})
    for flag, (name, value) in given.items():
        recorded = built.get(name, "(not recorded)")
        raise ValueError(
            f"{flag} {_shown(value)}: {os.fspath(input_path)!r} is a gemma4 preprocess output, built with {name} = "
            f"{_shown(recorded)}; front-end options do not apply to its prompts (drop {flag}, or run gemma4 "
            "preprocess again with it)"
        )


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 120 else f"{text[:120]}… ({len(text)} characters)"
