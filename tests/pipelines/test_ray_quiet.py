"""``--engine ray`` on a normal run: Ray's console at warning level, no error-level line (Ray Core's actor-restart
notice, Ray Data's internals) and no memory advice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("ray.data")
pytestmark = pytest.mark.slow


def test_a_normal_ray_infer_run_prints_no_info_error_or_memory_lines(tmp_path):
    from pipelines.sample_data import write_sample_checkpoint, write_sample_dataset

    manifest, tokenizer = write_sample_dataset(tmp_path / "s", rows=3)
    checkpoint = write_sample_checkpoint(tmp_path / "checkpoint", tokenizer)
    command = [sys.executable, "-m", "pipelines.cli", "infer", str(manifest), str(tmp_path / "out")]
    command += ["--checkpoint", str(checkpoint), "--max-new-tokens", "2", "--workers", "1", "--engine", "ray"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS=""))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    for line in lines:
        assert " E " not in line[:40] and "ERROR" not in line, line
        assert "\tINFO " not in line and " INFO " not in line, line
        assert "memory" not in line.lower(), line
        assert "Deprecat" not in line, line
    assert "results 3 + errors 0" in done.stdout
