"""Helpers the pipelines tests share (their fixtures: tests/pipelines/conftest.py): two tool schemas, a recorder
of what each row's ``build_example`` receives, and a job folder turned into the layout of output version 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

VERSION_1_MESSAGE = "output version 1, both tables in shards/"

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}


def recording_build_example(monkeypatch) -> list[tuple[str, dict]]:
    """Record what each row's build_example receives, then build it without tools (this branch's renderer has
    none yet): the job's plumbing is under test, not the rendering of tools."""
    import preprocess.prompt

    real, seen = preprocess.prompt.build_example, []

    def build(messages, tokenizer, **kwargs):
        seen.append((messages[0]["content"], kwargs))
        kwargs = dict(kwargs, tools=None, template_kwargs=None)
        return real(messages, tokenizer, **kwargs)

    monkeypatch.setattr(preprocess.prompt, "build_example", build)
    return seen


def as_version_1(out: Path, target: Path) -> Path:
    """A copy of job folder ``out`` at ``target`` as output version 1 wrote it: both tables in ``shards/``
    (``examples-K.parquet`` or ``results-K.parquet`` beside ``errors-K.parquet``), no ``output_version`` in
    ``job.json``."""
    shutil.copytree(out, target)
    (target / "shards").mkdir()
    for folder in ("examples", "results", "errors"):
        if (target / folder).is_dir():
            for file in (target / folder).glob("shard-*"):
                file.rename(target / "shards" / file.name.replace("shard", folder, 1))
            shutil.rmtree(target / folder)
    state = json.loads((target / "job.json").read_text())
    assert state.pop("output_version") == 2
    (target / "job.json").write_text(json.dumps(state))
    return target
