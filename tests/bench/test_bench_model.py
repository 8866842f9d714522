"""``gemma4 bench model`` and ``gemma4 bench encoders`` on tiny settings: the two engines' outputs agree, ratios
are computed from the measured figures, targets sit on the right lines."""

from __future__ import annotations

import pytest

from bench import bench_audio_tower, bench_model, bench_vision_tower
from bench.benchmarking import reference
from model.config import PRESETS


@pytest.mark.slow
def test_model_bench_prints_prefill_and_full_forward_lines():
    lines: list[str] = []
    rows = bench_model.run((40,), repeat=1, emit=lines.append, config=PRESETS["tiny-e2b"].text, rounds=1)
    assert lines[0].startswith("gemma4 bench model:") and "KV-shared" in lines[0]
    assert [r.case for r in rows] == ["prefill (last logits)", "forward, all logits"]
    assert rows[0].target == bench_model.TARGET_512 and rows[1].target is None
    if reference("hf_decoder") is not None:
        for row in rows:
            assert row.extra_ok and "last logits max |Δ|" in row.note  # the engines computed the same logits
            assert row.ratio == row.ours / row.baseline and f"ratio {row.ratio:5.2f}×" in lines[rows.index(row) + 1]


def test_the_bench_config_is_about_100m_parameters_with_ple_and_kv_sharing():
    config = bench_model.bench_config()
    assert 90e6 <= config.num_parameters()["total"] <= 130e6
    assert config.ple_dim and config.n_kv_shared_layers and config.sliding_window < 2048


def test_vision_tower_bench_runs():
    lines: list[str] = []
    rows = bench_vision_tower.run((70,), repeat=1, emit=lines.append)
    assert lines[0].startswith("gemma4 bench vision tower")
    assert len(rows) == 1 and rows[0].target == 1.3
    if reference("hf_vision") is not None:
        assert rows[0].extra_ok and "max |Δ| of the soft tokens" in rows[0].note  # same soft tokens
        assert rows[0].ratio == rows[0].ours / rows[0].baseline and f"ratio {rows[0].ratio:5.2f}×" in lines[1]


@pytest.mark.parametrize("threads", [1, None])
def test_audio_tower_bench_runs(threads):
    lines: list[str] = []
    rows = bench_audio_tower.run(repeat=1, emit=lines.append, threads=threads, durations=(0.6, 1.4))
    assert lines[0].startswith("audio tower:")
    assert [r.target for r in rows] == [1.3, None]
    if reference("hf_audio_tower") is not None:
        assert all(r.extra_ok and "token counts equal: True" in r.note for r in rows)  # same outputs
        assert all(r.ratio == r.ours / r.baseline for r in rows)
