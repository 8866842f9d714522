"""``gemma4 bench images``: every case reported, the fixed image set."""

from __future__ import annotations

import numpy as np
import pytest

from bench import bench_images
from bench.benchmarking import benchmark_sizes
from pipelines.sample_data import synthetic_image


@pytest.mark.slow
def test_benchmark_runs_and_reports_each_case():
    lines: list[str] = []
    rows = bench_images.run((70,), count=3, repeat=1, workers=2, emit=lines.append)
    cases = [r.case for r in rows]
    assert cases == [
        "decoded, float32 outputs",
        "decoded, uint8 patches",
        "bound: bicubic resize alone",
        "JPEG files, float32 outputs",
        "JPEG files, fast mode",
        "JPEG files, fast mode, uint8",
        "worker processes, JPEG files",
    ]
    assert all(r.ours > 0 for r in rows)
    assert all(r.baseline is not None and r.baseline > 0 for r in rows)  # the reference is installed in tests
    assert [r.met is None for r in rows] == [False, False, True, True, False, False, False]
    text = "\n".join(lines)
    assert "PSNR vs exact mode" in text and "ratio" in text and "target" in text


def test_benchmark_set_is_fixed():
    sizes = benchmark_sizes()
    assert len(sizes) == 48 and sizes == benchmark_sizes()
    assert max(max(s) for s in sizes) == 3000 and min(max(s) for s in sizes) == 120
    assert min(min(s) for s in sizes) >= 120
    assert np.array_equal(synthetic_image(64, 80, seed=5), synthetic_image(64, 80, seed=5))
    assert not np.array_equal(synthetic_image(64, 80, seed=5), synthetic_image(64, 80, seed=6))
