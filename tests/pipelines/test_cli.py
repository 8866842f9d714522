"""The gemma4 command line: budget table, preview picture, the bench commands."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines import cli
from pipelines.sample_data import synthetic_image
from preprocess import budget as B
from preprocess.image import resize_to_target
from preprocess.image_io import load_image


def test_budget_table_lists_every_budget(capsys):
    assert cli.main(["budget", "1080", "1920"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0] == "input 1080 x 1920 px"
    rows = [line.split() for line in lines[3:]]
    assert [int(r[0]) for r in rows] == list(B.SUPPORTED_BUDGETS)
    for r in rows:
        b = int(r[0])
        th, tw = B.image_target_size(1080, 1920, b)
        gr, gc = B.image_grid(1080, 1920, b)
        assert r[1:4] == [str(th), "x", str(tw)]
        assert r[4:7] == [str(gr), "x", str(gc)]
        assert int(r[7]) == B.image_soft_tokens(1080, 1920, b)
        assert r[8:11] == [str(gr * gc), "/", str(9 * b)]
        assert int(r[11]) == B.image_padding_patches(1080, 1920, b)


def test_budget_table_single_budget(capsys):
    assert cli.main(["budget", "4", "4000", "--budget", "70"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[3:]
    assert len(rows) == 1 and rows[0].split()[:4] == ["70", "48", "x", "3360"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["budget", "0", "10"], "at least 1 px"),
        (["budget", "ten", "10"], "'ten' is not a whole number"),
        (["budget", "10", "10", "--budget", "100"], "70, 140, 280, 560, 1120"),
    ],
)
def test_budget_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_preview_draws_grid_over_the_resized_image(tmp_path):
    pixels = synthetic_image(300, 500, seed=3)
    src = tmp_path / "in.png"
    Image.fromarray(pixels).save(src)
    out = tmp_path / "sub" / "preview.png"
    assert cli.main(["preview", str(src), "--budget", "70", "-o", str(out)]) == 0
    picture = np.asarray(Image.open(out).convert("RGB"))
    th, tw = B.image_target_size(300, 500, 70)
    assert picture.shape[0] > th and picture.shape[1] == max(tw, 480)
    expected = resize_to_target(load_image(src), (th, tw))
    top = picture[:th, :tw]
    on_grid = np.zeros((th, tw), dtype=bool)
    on_grid[::48, :] = on_grid[:, ::48] = True
    on_grid[th - 1, :] = on_grid[:, tw - 1] = True
    assert np.array_equal(top[~on_grid], expected[~on_grid])  # the image itself, untouched off the grid
    assert (np.abs(top[on_grid].astype(int) - expected[on_grid]).sum(axis=1) > 0).mean() > 0.9  # lines drawn


def test_preview_bad_input(tmp_path, capsys):
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"hello, world")
    assert cli.main(["preview", str(bad), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "not-an-image.png" in err and "not a recognised image format" in err


def test_bench_audio_command_line(capsys):
    assert cli.main(["bench", "audio", "--count", "2", "--long-minutes", "--repeat", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "gemma4 bench audio: 2 clips" in out and "one thread, exact" in out


def test_model_benchmark_runs(capsys):
    assert cli.main(["bench", "model", "--tokens", "64", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "gemma4 bench model" in out and "64 tokens" in out and "peak memory: ours" in out and "reference" in out
