"""``gemma4 bench infer`` on tiny settings (the tiny-e2b text decoder, a few rows): both sides run end to end,
every row is printed with a ratio made of the measured figures and our model's busy share; without the reference
only our figures are printed."""

from __future__ import annotations

import re

import pytest

from bench import bench_infer
from bench.benchmarking import reference
from model.config import PRESETS
from pipelines import cli

TINY = PRESETS["tiny-e2b"].text


@pytest.mark.slow
def test_run_prints_rows_and_tokens_per_worker_count_beside_the_reference():
    lines: list[str] = []
    rows = bench_infer.run(rows=3, batch_size=2, new_tokens=3, emit=lines.append, text=TINY)
    text = "\n".join(lines)
    assert lines[0].startswith("gemma4 bench infer:") and "3 sample rows, batch 2, 3 new tokens" in lines[0]
    assert [(r.group, r.case) for r in rows] == [
        (group, case) for group in ("1 worker", "2 workers") for case in ("rows/s", "generated tok/s")
    ]
    assert all(r.ours > 0 for r in rows)
    assert [r.target for r in rows] == [bench_infer.TARGET, None] * 2
    assert len(re.findall(r"model busy \d+% \(waited \d+\.\d s for input\); 3 rows in", text)) == 2
    if reference("hf_model") is not None:
        for row in rows:
            assert row.baseline > 0 and row.ratio == row.ours / row.baseline
        # The tiny model's logits agree to float32 rounding (the parity tests), far closer than their gaps: the text
        # and image rows are identical. The audio row's clip is 32.8 s, which the reference's loop cuts at 30 s and
        # ours at the quietest point of the last second (bench docstring): its prompt, and so its reply, may differ.
        identical = re.findall(r"greedy tokens equal to the reference's: [\d.]+% \((\d)/3 rows identical\)", text)
        assert len(identical) == 2 and all(int(n) >= 2 for n in identical), identical
        assert "reference 3 in" in text and "(0 skipped)" in text


@pytest.mark.slow
def test_without_the_reference_only_our_figures_are_printed(monkeypatch):
    monkeypatch.setattr(bench_infer, "reference", lambda name: None)
    lines: list[str] = []
    rows = bench_infer.run(rows=2, batch_size=2, new_tokens=2, workers=(1,), emit=lines.append, text=TINY)
    assert "reference: transformers is not installed; printing our figures alone" in lines
    assert [r.baseline for r in rows] == [None, None] and all(r.ours > 0 for r in rows)
    assert "target ≥ 3.00× n/a: no reference" in "\n".join(lines)


def test_agreement_counts_positions_to_the_longer_reply_on_rows_both_answered():
    ours = {"a": [1, 2, 3], "b": [4, 5], "c": [9]}
    theirs = {"a": [1, 2, 3], "b": [4, 6, 7], "d": [1]}
    assert bench_infer._agreement(ours, theirs) == (4 / 6, 1, 2)
    assert bench_infer._agreement({}, theirs) == (1.0, 0, 0)


def test_command_line_options():
    args = cli.build_parser().parse_args(
        ["bench", "infer", "--rows", "5", "--batch-size", "2", "--new-tokens", "4", "--workers", "2"]
    )
    assert (args.rows, args.batch_size, args.new_tokens, args.workers) == (5, 2, 4, [2])
    assert args.func is cli._cmd_bench_infer
    defaults = cli.build_parser().parse_args(["bench", "infer"])
    assert (defaults.rows, defaults.batch_size, defaults.new_tokens, defaults.workers) == (24, 8, 32, None)
