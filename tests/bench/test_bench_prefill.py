"""``gemma4 bench prefill`` on a tiny model: one row per prompt length, the memory figures measured, the chunked
and one-pass logits agreeing."""

from __future__ import annotations

import dataclasses

import pytest

from bench import bench_prefill
from bench.benchmarking import reference
from model.config import PRESETS

pytestmark = pytest.mark.slow


def test_prefill_bench_prints_memory_chunked_beside_one_pass_and_the_reference():
    lines: list[str] = []
    config = dataclasses.replace(PRESETS["tiny-e2b"].text, sliding_window=16)
    rows = bench_prefill.run((96,), chunk=32, emit=lines.append, config=config)
    assert lines[0].startswith("gemma4 bench prefill:")
    [row] = rows
    assert row.group == "96 tokens" and row.case == "prefill in chunks of 32" and row.unit == "MB"
    assert row.ours >= 0 and row.extra_ok and "ours in one pass" in row.note
    assert (row.baseline is not None) == (reference("hf_decoder") is not None)
