"""``gemma4 bench cache`` on tiny presets: our cache size beside the reference's measured default cache."""

from __future__ import annotations

import pytest

from bench import bench_cache
from bench.benchmarking import reference

pytestmark = pytest.mark.slow


def test_cache_bench_prints_ours_beside_the_reference():
    lines: list[str] = []
    rows = bench_cache.run(("tiny-31b", "tiny-e2b"), (64, 128), emit=lines.append)
    assert lines[0].startswith("gemma4 bench cache:") and len(rows) == 4
    if reference("hf_decoder") is not None:
        # K=V: our full layers keep values only, so we hold less; without K=V the two agree but for the one
        # sliding position the reference appends at attention time
        assert rows[0].ours < rows[0].baseline and rows[1].ours < rows[1].baseline
        assert rows[2].ratio >= 1.0 and rows[2].ours - rows[2].baseline < 0.01
