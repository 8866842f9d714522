"""``gemma4 bench generate`` on tiny settings: both engines' greedy tokens agree, ratios come from the measured
figures, the bandwidth line is computed from what this machine measures. The device mode runs here on the CPU with
the tiny presets, and its two model builders are compared tensor for tensor."""

from __future__ import annotations

import pytest

from bench import bench_generate
from bench.benchmarking import reference
from model.config import PRESETS
from model.decoder import TextDecoder


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


# --- the device mode (--device cuda on a GPU; here the same code on the CPU with tiny models) ---------------------


def test_device_mode_prints_prefill_decode_and_memory_rows_per_size_and_batch():
    lines: list[str] = []
    rows = bench_generate.run_device(
        "cpu", ("tiny-e2b", "tiny-31b"), (1, 2), prompt=12, new_tokens=4, repeat=1, dtype="float32", emit=lines.append
    )
    assert lines[0].startswith("gemma4 bench generate --device cpu:") and lines[-1].startswith("wall time ")
    groups = [f"{size} b{batch}" for size in ("tiny-e2b", "tiny-31b") for batch in (1, 2)]
    assert [(r.group, r.case) for r in rows] == [
        (group, case) for group in groups for case in ("prefill", "decode", "peak memory (process RSS)")
    ]
    assert all(r.target is None and r.ours > 0 for r in rows)
    if reference("hf_decoder") is not None:
        for row in rows:
            assert row.baseline > 0 and row.ratio == row.ours / row.baseline
        # The same float32 weights by construction, and on tiny models the engines compute the same logits to
        # float32 rounding (the parity tests), far closer than these logits' top-two gaps: every greedy token
        # agrees. (In bf16 on a GPU, rounding differences can flip near-ties there: the share is only printed.)
        for row in rows[1::3]:
            assert row.note == "greedy tokens equal to the reference's: 100.0% (first tokens: 100.0%)"


def test_device_mode_refuses_bad_settings_before_starting_anything(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda: no CUDA device is usable here"):
        bench_generate.run_device("cuda", ("tiny-e2b",), emit=pytest.fail)
    with pytest.raises(ValueError, match="unknown size 7b"):
        bench_generate.run_device("cpu", ("7b",), emit=pytest.fail)
    with pytest.raises(ValueError, match="--new-tokens 1, --repeat 2"):
        bench_generate.run_device("cpu", ("tiny-e2b",), new_tokens=1, emit=pytest.fail)


@pytest.mark.parametrize("size", ["tiny-e2b", "tiny-31b"])
def test_both_builders_hold_the_same_weights_by_name(size):
    """The two engines' random models agree tensor for tensor with no file between them: the same names (ours
    below ``language_model.``, the reference's below ``model.``), the same values; the reference's output
    embedding is still tied to its input embedding after the fill."""
    import torch

    oracle = pytest.importorskip("oracles.hf_decoder")
    config = PRESETS[size].text
    ours = bench_generate.build_ours(config, device="cpu", dtype=torch.bfloat16, seed=3)
    theirs = bench_generate.build_reference(config, device="cpu", dtype=torch.bfloat16, seed=3)
    mine, other = ours.language_model.state_dict(), oracle.text_weights(theirs)
    assert set(mine) == set(other)
    for name in mine:
        assert mine[name].dtype == other[name].dtype == torch.bfloat16
        torch.testing.assert_close(mine[name], other[name], rtol=0, atol=0, msg=name)
    assert torch.equal(theirs.lm_head.weight, mine["embed_tokens.weight"])
    # What the fill gives: N(0, 0.02²) matrices, N(1, 0.05²) scales; different names, different draws.
    assert abs(float(mine["layers.0.mlp.up_proj.weight"].float().std()) - bench_generate.INIT_STD) < 0.002
    assert abs(float(mine["layers.0.input_layernorm.weight"].float().mean()) - 1.0) < 0.03
    assert not torch.equal(mine["layers.0.mlp.up_proj.weight"], mine["layers.0.mlp.gate_proj.weight"])
    # Another seed, other weights; the RoPE buffers (built on meta) are rebuilt on the device as a plain
    # construction computes them.
    again = bench_generate.build_ours(config, device="cpu", dtype=torch.bfloat16, seed=4)
    assert not torch.equal(again.language_model.embed_tokens.weight, mine["embed_tokens.weight"])
    plain = TextDecoder(config)
    for name in ("sliding_freq", "full_freq"):
        torch.testing.assert_close(getattr(ours.language_model, name), getattr(plain, name), rtol=0, atol=0)
