"""``gemma4 bench preprocess`` on a small set: every line is printed, with positive figures and its target."""

from __future__ import annotations

import json

import pytest

from bench import bench_preprocess
from bench.benchmarking import reference

pytestmark = pytest.mark.slow


def test_make_dataset_mixes_every_kind(tmp_path):
    data = bench_preprocess.make_dataset(tmp_path, rows=20, seed=1)
    rows = [json.loads(line) for line in data.manifest.read_text().splitlines()]
    assert len(rows) == len(data.kinds) == 20
    assert sorted(set(data.kinds)) == ["audio", "image", "image+audio", "text", "video"]
    assert (data.tokenizer / "tokenizer.model").is_file() and (data.tokenizer_json / "tokenizer.json").is_file()
    for row, kind in zip(rows, data.kinds, strict=True):
        parts = row["messages"][0]["content"]
        media = sorted(p["type"] for p in parts if p["type"] != "text")
        assert media == ([] if kind == "text" else sorted(kind.split("+")))
        for part in parts:
            if part["type"] != "text":
                assert (data.manifest.parent / part[part["type"]]).is_file()


def test_run_prints_every_row_with_its_target(tmp_path):
    lines: list[str] = []
    rows = bench_preprocess.run(rows=25, workers=2, emit=lines.append, workdir=tmp_path)
    text = "\n".join(lines)
    assert lines[0].startswith("gemma4 bench preprocess: 25 rows")
    cases = [r.case for r in rows]
    assert cases == [
        "2 workers vs 1",
        "fast vs exact mode, 2 workers",
        "tokenizer.json vs tokenizer.model, job, 2 workers",
        "tokenizer.json vs tokenizer.model, the prompts alone, 1 thread",
        "ours vs datasets.map, 1 worker",
        "ours vs datasets.map, 2 workers",
        "Parquet bytes per image row",
        "Arrow bytes per image row",
    ]
    assert "target ≥ 1.70×" in text and "target ≥ 2.00×" in text and "target ≤ 0.30×" in text
    assert "FAILED" not in text  # every generated row went through our job
    assert rows[1].note == "25 examples, 0 errors (exact: 25, 0)"  # fast mode loses no row either
    assert list(tmp_path.iterdir()) == []  # the dataset and every output are removed
    if reference("hf_processor") is None:
        assert "transformers is not installed" in text
        return
    assert all(r.baseline is not None and r.baseline > 0 for r in rows)
    scaling, fast, job_format, prompt_format, one, many, parquet, _ = rows
    assert job_format.baseline == scaling.ours and job_format.target == prompt_format.target == 1.0
    assert one.ours == scaling.baseline and many.ours == scaling.ours  # like for like: the same runs of ours
    assert fast.baseline == scaling.ours and fast.target is None  # fast mode against the same exact run
    assert parquet.met == (parquet.ours / parquet.baseline <= 0.3)  # lower is better
