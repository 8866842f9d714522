"""``gemma4 bench audio``: every case reported."""

from __future__ import annotations

import pytest

from bench import bench_audio

pytestmark = pytest.mark.slow


def test_audio_benchmark_runs_and_reports_each_case():
    lines: list[str] = []
    rows = bench_audio.run(count=2, long_minutes=(0.75,), repeat=1, cores=2, emit=lines.append)
    assert [r.case for r in rows] == [
        "bound: numpy FFT alone",
        "one thread, exact",
        "one thread, fast",
        "batched, 2 threads, exact",
        "batched, reference vs exact",
        "batched, 2 threads, fast",
        "chunk + features, one thread, exact",
        "chunk + features, one thread, fast",
    ]
    assert all(r.ours > 0 and r.baseline is not None and r.baseline > 0 for r in rows)
    text = "\n".join(lines)
    assert "largest |Δ| vs reference" in text and "2 segments" in text and "audio s/s" in text
