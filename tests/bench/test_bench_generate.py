"""``gemma4 bench generate`` on tiny settings: both engines' greedy tokens agree, ratios come from the measured
figures, the bandwidth line is computed from what this machine measures."""

from __future__ import annotations

from bench import bench_generate
from bench.benchmarking import reference
from model.config import PRESETS


def test_generate_bench_prints_each_batch_and_the_bandwidth_line():
    lines: list[str] = []
    config = PRESETS["tiny-e2b"].text
    rows = bench_generate.run((1, 2), prompt=12, new_tokens=4, repeat=1, rounds=1, emit=lines.append, config=config)
    assert lines[0].startswith("gemma4 bench generate:")
    assert [r.group for r in rows] == ["batch 1", "batch 2", "batch 1"]
    assert rows[0].target == rows[1].target == bench_generate.TARGET
    assert rows[2].case == "decode vs bandwidth bound" and rows[2].target == bench_generate.BANDWIDTH_AIM
    if reference("hf_decoder") is not None:
        for row in rows[:2]:
            assert "greedy tokens equal to the reference's: 100.0%" in row.note
            assert row.ratio == row.ours / row.baseline


def test_weight_bytes_count_every_weight_but_the_per_layer_table():
    config = PRESETS["gemma4-e2b"].text
    total = config.num_parameters()["total"]
    table = config.ple_vocab_size * config.n_layers * config.ple_dim
    assert bench_generate.weight_bytes_per_token(config, 2) == 2 * (total - table + config.n_layers * config.ple_dim)
