"""The gemma4 command line: each command's options, exit statuses and messages, the options generated from the
settings dataclasses, and which commands import what."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field, fields

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
    assert lines[0] == "input 1080 x 1920 px (h x w)"
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


@pytest.mark.slow
def test_bench_audio_command_line(capsys):
    assert cli.main(["bench", "audio", "--count", "2", "--long-minutes", "--repeat", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "gemma4 bench audio: 2 clips" in out and "one thread, exact" in out


@pytest.mark.slow
def test_model_benchmark_runs(capsys):
    # the smallest run: the tiny preset's decoder, one process per engine, one prefill each (two fresh processes)
    argv = [
        "bench",
        "model",
        "--tokens",
        "64",
        "--repeat",
        "1",
        "--rounds",
        "1",
        "--prefill-only",
        "--size",
        "tiny-e2b",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "gemma4 bench model" in out and "64 tokens" in out and "peak memory: ours" in out and "reference" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cuda"], "--device cuda: no CUDA device is usable here"),
        (["--device", "cpu", "--rounds", "2"], "--rounds is for the CPU mode"),
        (["--size", "e2b"], "--size: only with --device"),
        (["--dtype", "float32"], "--dtype: only with --device"),
    ],
)
def test_generate_benchmark_device_options_are_checked_before_anything_runs(argv, message, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    assert cli.main(["bench", "generate", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


PREPROCESS = ["preprocess", "m.jsonl", "out", "--tokenizer", "t"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*PREPROCESS, "--video-frames", "0"], "--video-frames: 0: must be at least 1"),
        ([*PREPROCESS, "--workers", "-3"], "--workers: -3: must be at least 1"),
        ([*PREPROCESS, "--rows-per-shard", "0"], "--rows-per-shard: 0: must be at least 1"),
        ([*PREPROCESS, "--max-prompt-tokens", "0"], "--max-prompt-tokens: 0: must be at least 1"),
        ([*PREPROCESS, "--workers", "two"], "'two' is not a whole number"),
        (["sample-data", "d", "--rows", "-1"], "--rows: -1: must be at least 0"),
        (["inspect", "out", "--frame", "-1"], "--frame: -1: must be at least 0"),
        (["bench", "images", "--count", "0"], "--count: 0: must be at least 1"),
    ],
)
def test_counts_must_be_positive(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, not here
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_budget_and_help_import_neither_torch_nor_the_heavy_libraries():
    """``gemma4 budget`` and ``gemma4 --help`` stay quick: the command line imports torch, numpy, Pillow and
    pyarrow only inside the commands that need them, and ``preprocess`` resolves its names lazily."""
    import subprocess
    import sys

    script = (
        "import sys, contextlib, io\n"
        "import pipelines.cli as cli\n"
        "cli.build_parser()\n"
        "assert cli.main(['budget', '1080', '1920']) == 0\n"
        "with contextlib.redirect_stdout(io.StringIO()) as help_text, contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        "assert 'sample-data' in help_text.getvalue(), help_text.getvalue()\n"
        "import preprocess, preprocess.budget\n"
        "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'pyarrow', 'sentencepiece') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


def test_budget_table_and_preview_caption_write_sizes_height_first():
    lines = cli.budget_table(300, 500, [70]).splitlines()
    assert lines[0] == "input 300 x 500 px (h x w)"
    assert "target px (h x w)" in lines[1] and "patch grid (h x w)" in lines[1]
    from pipelines.preview import caption

    th, tw = B.image_target_size(300, 500, 70)
    assert th < tw
    first = caption((300, 500), (th, tw), 70)[0]
    assert first == f"input 300 x 500 px (h x w) -> {th} x {tw} px at budget 70"


def test_sample_data_reports_every_manifest_line(tmp_path, capsys):
    assert cli.main(["sample-data", str(tmp_path / "s"), "--rows", "3", "--corrupt"]) == 0
    out = capsys.readouterr().out
    lines = (tmp_path / "s" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 10
    assert f"({len(lines)} rows, 7 of them broken on purpose)" in out
    assert "checkpoint" in out and (tmp_path / "s" / "checkpoint" / "config.json").is_file()
    assert cli.main(["sample-data", str(tmp_path / "t"), "--rows", "3"]) == 0
    assert "(3 rows)" in capsys.readouterr().out


def test_inspect_missing_row_names_it_without_quotes_around_the_message(small_output, capsys):
    out = small_output[1]
    assert cli.main(["inspect", str(out), "--row", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    expected = f"no row with id 'nope' in {out} (5 examples, 7 errors; a position is also accepted)"
    assert err == f"gemma4 inspect: error: {expected}"
    assert cli.main(["inspect", str(out), "--row", "bad-image"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"gemma4 inspect: error: row 'bad-image' of {out} produced no example: it failed at stage ")
    assert "CorruptImageError" in err or "NotAnImageError" in err


def test_inspect_previews_a_video_frame(small_output, tmp_path, capsys):
    from pipelines.readback import open_output

    out = small_output[1]
    video = open_output(out).example("ex0004").videos[0]
    for extra, frame in (([], 0), (["--frame", "1"], 1)):
        picture = tmp_path / f"frame{frame}.png"
        assert cli.main(["inspect", str(out), "--row", "ex0004", "--preview", str(picture), *extra]) == 0
        text = capsys.readouterr().out
        assert f"video 0, frame {frame} at {video.timestamps[frame]}" in text
        shown = np.asarray(Image.open(picture).convert("RGB"))
        h, w = video.frames[frame].size
        assert shown.shape[1] == max(w, 480) and shown.shape[0] > h
    n = len(video.frames)
    assert cli.main(["inspect", str(out), "--row", "ex0004", "--preview", str(picture), "--frame", str(n)]) == 2
    assert f"has {n} frames; --frame {n} is out of range" in capsys.readouterr().err
    assert cli.main(["inspect", str(out), "--row", "ex0000", "--preview", str(picture)]) == 2
    assert "row ex0000 has no image or video to preview" in capsys.readouterr().err
    assert cli.main(["inspect", str(out), "--row", "ex0001", "--preview", str(picture), "--video", "0"]) == 2
    assert "row ex0001 has no video to preview" in capsys.readouterr().err


def test_preprocess_limits_timeout_and_media_root_reach_the_job(tmp_path, capsys):
    from pipelines.readback import open_output
    from pipelines.sample_data import write_sample_dataset

    manifest, tokenizer = write_sample_dataset(tmp_path / "s", rows=8)
    out = tmp_path / "out"
    argv = ["preprocess", str(manifest), str(out), "--tokenizer", str(tokenizer), "--workers", "1"]
    argv += ["--limit", "max_media_parts=1", "--limit", "max-audio-seconds=none", "--row-timeout", "none"]
    argv += ["--media-root", str(tmp_path / "s")]
    assert cli.main(argv) == 0
    state = json.loads((out / "job.json").read_text())["settings"]
    assert state["limits"]["max_media_parts"] == 1 and state["limits"]["max_audio_seconds"] is None
    assert state["row_timeout_s"] is None and state["media_root"] == os.path.realpath(tmp_path / "s")
    errors = open_output(out).errors().to_pylist()
    assert errors and {e["error_type"] for e in errors} == {"TooManyMediaError"}
    assert all("max_media_parts" in e["message"] for e in errors)


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--limit", "max_pixel=5"], "unknown limit"),
        (["--limit", "max_pixels=lots"], "not a number"),
        (["--limit", "max_pixels=0"], "max_pixels must be a positive int"),
    ],
)
def test_bad_limits_are_named(tmp_path, capsys, extra, problem):
    argv = ["preprocess", str(tmp_path / "m.jsonl"), str(tmp_path / "o"), "--tokenizer", str(tmp_path), *extra]
    assert cli.main(argv) == 2
    assert problem in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--limit", "max_pixels"], ["--row-timeout", "0"], ["--row-timeout", "soon"]])
def test_bad_limit_syntax_is_refused_by_the_parser(args, capsys):
    with pytest.raises(SystemExit):
        cli.main(["preprocess", "m.jsonl", "o", "--tokenizer", "t", *args])
    assert "error:" in capsys.readouterr().err


def test_openai_image_url_and_input_audio_rows_preprocess_end_to_end(tokenizer_dir, tmp_path, capsys):
    import base64
    import io

    import soundfile

    from pipelines.readback import open_output
    from pipelines.sample_data import synthetic_speech
    from preprocess.prompt import build_example
    from preprocess.tokenizer import Tokenizer

    picture = synthetic_image(48, 64, seed=3)
    png, wav = io.BytesIO(), io.BytesIO()
    Image.fromarray(picture).save(png, format="PNG")
    soundfile.write(wav, synthetic_speech(1.5, seed=3), 16_000, format="WAV")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cat one.png").write_bytes(png.getvalue())
    data_url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()

    def row(row_id, part):
        return {"id": row_id, "messages": [{"role": "user", "content": [part, {"type": "text", "text": "What?"}]}]}

    rows = [
        row("data-url", {"type": "image_url", "image_url": {"url": data_url, "detail": "high"}}),
        row("file-url", {"type": "image_url", "image_url": {"url": "file:images/cat%20one.png"}, "budget": 70}),
        row(
            "speech",
            {
                "type": "input_audio",
                "input_audio": {"data": base64.b64encode(wav.getvalue()).decode(), "format": "wav"},
            },
        ),
        row("remote", {"type": "image_url", "image_url": "https://example.com/cat.png"}),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["preprocess", str(manifest), str(out), "--tokenizer", str(tokenizer_dir), "--workers", "1"]
    assert cli.main([*argv, "--media-root", str(tmp_path)]) == 0
    output = open_output(out)
    assert output.ids() == ["data-url", "file-url", "speech"]
    [error] = output.errors().to_pylist()
    assert error["id"] == "remote" and error["stage"] == "messages" and "never fetched" in error["message"]
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    ours = [{"type": "image", "image": picture}, {"type": "image", "image": picture, "budget": 70}]
    for row_id, part in zip(("data-url", "file-url"), ours, strict=True):
        expected = build_example(row(row_id, part)["messages"], tok)
        assert np.array_equal(output.example(row_id).input_ids, expected.input_ids)
        assert np.array_equal(output.example(row_id).images[0].patches, expected.images[0].patches)
    speech = output.example("speech")
    assert speech.summary["audio_tokens"] == B.audio_soft_tokens(24_000) > 0


def test_preprocess_takes_a_tokenizer_model_file_and_resumes_from_its_directory(tokenizer_dir, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "hello"}]}) + "\n")
    out = tmp_path / "out"
    argv = ["preprocess", str(manifest), str(out), "--workers", "1", "--tokenizer"]
    assert cli.main([*argv, str(tokenizer_dir / "tokenizer.model")]) == 0
    assert cli.main([*argv, str(tokenizer_dir)]) == 0  # the same tokenizer: the finished job is found, not refused
    assert "shards 1 (1 already done)" in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("hello")
    assert cli.main([*argv, str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt': not a SentencePiece model" in capsys.readouterr().err


def test_thinking_tools_and_template_kwargs_reach_build_example(tokenizer_dir, tmp_path, monkeypatch, capsys):
    from tests.pipelines.helpers import CLOCK, WEATHER, recording_build_example

    seen = recording_build_example(monkeypatch)
    rows = [
        {"id": "own", "messages": [{"role": "user", "content": "a"}], "tools": [CLOCK]},
        {"id": "job", "messages": [{"role": "user", "content": "b"}]},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER]))
    argv = ["preprocess", str(manifest), str(tmp_path / "out"), "--tokenizer", str(tokenizer_dir), "--workers", "1"]
    argv += ["--enable-thinking", "--tools", str(tools)]
    argv += ["--template-kwarg", "n=3", "--template-kwarg", "date=1 Dec", "--template-kwarg", 'flags=["x"]']
    argv += ["--template-kwarg", 'quoted="7"', "--template-kwarg", "empty="]
    assert cli.main(argv) == 0
    assert [(content, k["tools"]) for content, k in seen] == [("a", [CLOCK]), ("b", [WEATHER])]
    expected = {"n": 3, "date": "1 Dec", "flags": ["x"], "quoted": "7", "empty": ""}
    assert all(k["enable_thinking"] is True and k["template_kwargs"] == expected for _, k in seen)
    # the settings hold the tools' content, not the file's path: a changed file is another job
    tools.write_text(json.dumps([CLOCK]))
    assert cli.main(argv) == 2
    assert "settings.tools" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[{", "not JSON"),
        ('{"name": "f"}', "must be a list of tool specs"),
        ('[{"type": "function"}]', r"tools\[0\] must be"),
    ],
)
def test_bad_tools_files_are_named(tmp_path, capsys, content, problem):
    (tmp_path / "tools.json").write_text(content)
    argv = ["preprocess", str(tmp_path / "m.jsonl"), str(tmp_path / "o"), "--tokenizer", str(tmp_path)]
    assert cli.main([*argv, "--tools", str(tmp_path / "tools.json")]) == 2
    err = capsys.readouterr().err
    assert "tools.json" in err and re.search(problem, err)
    assert cli.main([*argv, "--tools", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_bad_template_kwargs_are_named(tmp_path, capsys):
    argv = ["preprocess", str(tmp_path / "m.jsonl"), str(tmp_path / "o"), "--tokenizer", str(tmp_path)]
    assert cli.main([*argv, "--template-kwarg", "a=1", "--template-kwarg", "a=2"]) == 2
    assert "--template-kwarg a: given twice" in capsys.readouterr().err
    assert cli.main([*argv, "--template-kwarg", "tools=[]"]) == 2
    assert "'tools' is an argument of its own" in capsys.readouterr().err
    for bad in ("novalue", "=3", "two words=3"):
        with pytest.raises(SystemExit):
            cli.main([*argv, "--template-kwarg", bad])
        assert "expected KEY=VALUE" in capsys.readouterr().err


def test_a_job_in_which_every_row_failed_is_not_a_success(tokenizer_dir, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    good = {"id": "a", "messages": [{"role": "user", "content": "hello"}]}
    bad = {"id": "b", "messages": [{"role": "user", "content": [{"type": "image", "image": "/no/such.png"}]}]}
    argv = ["preprocess", str(manifest), "--workers", "1", "--tokenizer", str(tokenizer_dir)]
    manifest.write_text(json.dumps(bad) + "\n")
    assert cli.main([*argv[:2], str(tmp_path / "all-failed"), *argv[2:]]) == cli.EXIT_ALL_FAILED == 3
    assert "every one of the 1 rows failed" in capsys.readouterr().err
    manifest.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    assert cli.main([*argv[:2], str(tmp_path / "some-failed"), *argv[2:]]) == 0  # the errors table has the row
    strict = [*argv[:2], str(tmp_path / "strict"), *argv[2:], "--fail-on-errors"]
    assert cli.main(strict) == cli.EXIT_SOME_FAILED == 4
    manifest.write_text(json.dumps(good) + "\n")
    assert cli.main([*argv[:2], str(tmp_path / "clean"), *argv[2:], "--fail-on-errors"]) == 0


def test_max_tokens_counts_new_tokens_and_the_prompt_cap_has_its_own_name():
    parser = cli.build_parser()
    infer = ["infer", "in", "out", "--checkpoint", "c"]
    assert parser.parse_args([*infer, "--max-tokens", "5"]).max_new_tokens == 5  # OpenAI's and vLLM's max_tokens
    assert parser.parse_args([*infer, "--max-new-tokens", "7"]).max_new_tokens == 7
    args = parser.parse_args([*infer, "--max-prompt-tokens", "900"])
    assert args.max_prompt_tokens == 900 and args.max_new_tokens == 256
    assert parser.parse_args([*PREPROCESS, "--max-prompt-tokens", "900"]).max_prompt_tokens == 900


def test_settings_that_fail_every_row_are_refused_before_the_model_loads(tmp_path, capsys):
    from pipelines.infer_job import InferSettings
    from pipelines.preprocess_job import PreprocessSettings

    with pytest.raises(ValueError, match="max_new_tokens 4096 leaves no room for a prompt in a context of 4096"):
        InferSettings(checkpoint="c", preprocess=PreprocessSettings(tokenizer="t"), max_new_tokens=4096, context=4096)
    # from the command line: one line, before the checkpoint's files are checked or its weights read
    argv = ["infer", "in", str(tmp_path / "o"), "--checkpoint", str(tmp_path), "--max-tokens", "64"]
    assert cli.main([*argv, "--context", "64"]) == 2
    assert "max_new_tokens 64 leaves no room" in capsys.readouterr().err


def test_version_and_verbose_anywhere(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("gemma4 ")
    parser = cli.build_parser()
    assert parser.parse_args(["budget", "10", "10"]).verbose is False
    assert parser.parse_args(["-v", "budget", "10", "10"]).verbose is True
    assert parser.parse_args(["budget", "10", "10", "-v"]).verbose is True
    assert parser.parse_args(["bench", "cache", "--verbose"]).verbose is True  # a nested command too


def test_ctrl_c_stops_a_job_with_one_line(tmp_path, monkeypatch, capsys):
    from pipelines.cli import preprocess as preprocess_command

    out = tmp_path / "out"

    def interrupted(args):
        out.mkdir()
        state = {"rows": 300, "settings": {"rows_per_shard": 128}, "shards": {"0": {}, "1": {}}}
        (out / "job.json").write_text(json.dumps(state))
        raise KeyboardInterrupt

    monkeypatch.setattr(preprocess_command, "run", interrupted)
    assert cli.main(["preprocess", "m.jsonl", str(out), "--tokenizer", "t"]) == 130
    err = capsys.readouterr().err
    assert err == "gemma4 preprocess: interrupted after 2 of 3 shards; run the same command to resume\n"
    monkeypatch.setattr(preprocess_command, "run", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main(["preprocess", "m.jsonl", str(tmp_path / "none"), "--tokenizer", "t"]) == 130
    assert "interrupted before any shard was written" in capsys.readouterr().err


def test_every_help_shows_each_default():
    import argparse

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    missing = []
    for parser in parsers(cli.build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            shown = action.default not in (None, False, argparse.SUPPRESS) and not isinstance(action.default, list)
            if action.option_strings and shown and action.help:
                text = formatter._expand_help(action) if hasattr(formatter, "_expand_help") else action.help
                if "default" not in text:
                    missing.append(f"{parser.prog} {action.option_strings[0]}")
    assert not missing, missing


def test_head_runs_the_first_rows_as_a_job_of_its_own(tokenizer_dir, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"hello {i}"}]} for i in range(7)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["preprocess", str(manifest), str(out), "--workers", "1", "--tokenizer", str(tokenizer_dir)]
    assert cli.main([*argv, "--head", "3"]) == 0
    assert "rows 3 = examples 3" in capsys.readouterr().out
    assert cli.main([*argv, "--head", "3"]) == 0  # the same smoke run: found done
    assert cli.main(argv) == 2  # the whole input is another job: refused by name, never mixed
    assert "gemma4 preprocess: error:" in capsys.readouterr().err
    assert cli.main([*argv[:2], str(tmp_path / "whole"), *argv[3:]]) == 0
    assert "rows 7 = examples 7" in capsys.readouterr().out


# --- options generated from the settings dataclasses ------------------------------------------------------------


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of ``gemma4 <name>``, its options added."""
    [commands] = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


def shown_help(parser: argparse.ArgumentParser, flag: str) -> str:
    """The help of one option as ``--help`` prints it (the default appended), on one line."""
    return parser._get_formatter()._expand_help(parser._option_string_actions[flag])


INFER = ["infer", "in", "out", "--checkpoint", "c"]
CHAT = ["chat", "hello", "--checkpoint", "c"]
# The command-line defaults that differ from the dataclass's, as the commands document them.
OVERRIDES = {("infer", "rows_per_shard"): 16}
FROM_CHECKPOINT = ("image_budget", "video_frames", "video_budget")  # None: processor_config.json, else the field's


@pytest.mark.parametrize("argv", [PREPROCESS, INFER, CHAT], ids=lambda argv: argv[0])
def test_each_generated_option_defaults_to_its_field_and_its_help_shows_it(argv):
    from pipelines.cli import chat, infer, preprocess

    command = argv[0]
    module = {"preprocess": preprocess, "infer": infer, "chat": chat}[command]
    parser = command_parser(command)
    args = cli.build_parser().parse_args(argv)
    seen = 0
    for group in module.field_options():
        field_defaults = {f.name: f.default for f in fields(group.cls)}
        values = group.values(args)
        for option in group.options:
            seen += 1
            name = option.field
            expected = OVERRIDES.get((command, name), field_defaults[name])
            if option.argparse_kwargs.get("required"):  # a field without a default: given in argv
                assert option.flags[0] in argv
                continue
            assert values[name] == expected, (command, name)
            text = shown_help(parser, option.flags[0])
            if name in FROM_CHECKPOINT:
                assert getattr(args, option.dest) is None
                assert f"(default: the checkpoint's processor_config.json, else {expected})" in text
            elif option.kind == "switch":  # the flag turns the default over: its name says which way
                assert option.flags[0].startswith("--no-") == expected or option.flags[0] == "--fast"
            elif expected not in (None, ()):
                assert f"(default: {expected})" in text, (command, name, text)
    assert seen >= {"preprocess": 13, "infer": 28, "chat": 8}[command]


def test_prompt_ending_stop_strings_and_the_served_name_reach_the_settings(tmp_path):
    from pipelines.cli import infer, preprocess

    parser = cli.build_parser()
    pre = ["preprocess", "m.jsonl", "out", "--tokenizer", str(tmp_path)]
    inf = ["infer", "in", "out", "--checkpoint", str(tmp_path)]
    plain = preprocess.settings(parser.parse_args(pre))
    assert (plain.generation_prompt, plain.continue_final_message, plain.rows_per_shard) == (True, False, 128)
    ending = ["--no-generation-prompt", "--continue-final-message"]
    continued = preprocess.settings(parser.parse_args([*pre, *ending]))
    assert (continued.generation_prompt, continued.continue_final_message) == (False, True)
    assert preprocess.settings(parser.parse_args([*pre, "--no-generation-prompt"])).generation_prompt is False

    plain = infer.settings(parser.parse_args(inf))
    assert plain.stop == () and plain.served_model_name is None and plain.preprocess.generation_prompt is True
    assert plain.preprocess.rows_per_shard == 16 and plain.preprocess.tokenizer == str(tmp_path)
    extra = [*ending, "--stop", "END", "--stop", "\n\n", "--served-model-name", "gemma-4-e2b"]
    settings = infer.settings(parser.parse_args([*inf, *extra]))
    assert settings.stop == ("END", "\n\n") and settings.served_model_name == "gemma-4-e2b"
    assert (settings.preprocess.generation_prompt, settings.preprocess.continue_final_message) == (False, True)


@pytest.mark.parametrize("argv", [PREPROCESS, INFER], ids=lambda argv: argv[0])
def test_continue_final_message_without_no_generation_prompt_is_a_usage_error(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    where = {"preprocess": "--tokenizer", "infer": "--checkpoint"}[argv[0]]
    argv = [*argv[: argv.index(where)], where, str(tmp_path)]
    assert cli.main([*argv, "--continue-final-message"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gemma4 {argv[0]}: error: continue_final_message") and err.count("\n") == 1
    assert "--no-generation-prompt" in err
    assert not (tmp_path / "out").exists()


def test_only_gemma4_bench_imports_the_benchmarks_or_transformers():
    """``gemma4 --help``, ``gemma4 budget`` and ``gemma4 infer`` (its parser and its settings) import neither a
    benchmark nor transformers; parsing ``gemma4 bench model`` imports the registry alone, not the benchmark."""
    script = (
        "import sys, contextlib, io, tempfile\n"
        "import pipelines.cli as cli\n"
        "found = lambda: sorted(m for m in sys.modules if m.split('.')[0] in ('bench', 'transformers'))\n"
        "cli.build_parser()\n"
        "assert cli.main(['budget', '10', '10']) == 0\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['infer', '--help'])\n"
        "with contextlib.redirect_stderr(io.StringIO()):  # refused by InferSettings, once its settings are built\n"
        "    code = cli.main(['infer', 'in', 'out', '--checkpoint', tempfile.mkdtemp(), '--max-tokens', '64', "
        "'--context', '64'])\n"
        "assert code == 2, code\n"
        "print(found())\n"
        "cli.build_parser().parse_args(['bench', 'model', '--size', 'tiny-e2b'])\n"
        "print(found())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    before, after = done.stdout.strip().splitlines()[-2:]
    assert before == "[]" and after == "['bench', 'bench.cli']", done.stdout


# --- the generator, on a dataclass of its own -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Toy:
    name: str = field(metadata={"help": "a required name"})
    max_new_tokens: int = field(
        default=4, metadata={"flag": ("--max-new-tokens", "--max-tokens"), "min": 1, "help": "n"}
    )
    ratio: float | None = field(default=None, metadata={"help": "a ratio"})
    label: str = field(default="x", metadata={"choices": ("x", "y"), "help": "a label"})
    thinking: bool = field(default=False, metadata={"help": "on"})
    exact: bool = field(default=True, metadata={"help": "off"})
    graphs: bool = field(default=True, metadata={"flag": "--eager", "help": "off, by another name"})
    stop: tuple[str, ...] = field(default=(), metadata={"metavar": "STRING", "help": "repeatable"})
    budget: int = field(default=280, metadata={"help": "a budget"})
    note: str | None = None  # no help: never an option


def toy_options(**kwargs):
    from pipelines.cli.options import FieldOptions

    names = ("name", "max_new_tokens", "ratio", "label", "thinking", "exact", "graphs", "stop", "budget")
    return FieldOptions(Toy, names, **kwargs)


def toy_parser(options) -> argparse.ArgumentParser:
    from pipelines.cli.common import Parser

    parser = Parser(prog="toy")
    options.add_to(parser)
    return parser


def test_the_generator_names_types_and_defaults_each_option_from_its_field():
    options = toy_options()
    flags = {o.field: o.flags for o in options.options}
    assert flags == {
        "name": ("--name",),
        "max_new_tokens": ("--max-new-tokens", "--max-tokens"),
        "ratio": ("--ratio",),
        "label": ("--label",),
        "thinking": ("--thinking",),
        "exact": ("--no-exact",),
        "graphs": ("--eager",),
        "stop": ("--stop",),
        "budget": ("--budget",),
    }
    parser = toy_parser(options)
    values = options.values(parser.parse_args(["--name", "n"]))
    assert Toy(**values) == Toy(name="n")
    argv = ["--name", "n", "--max-tokens", "9", "--ratio", "0.5", "--label", "y", "--thinking", "--no-exact"]
    argv += ["--eager", "--stop", "a", "--stop", "b", "--budget", "70"]
    values = options.values(parser.parse_args(argv))
    changed = dict(max_new_tokens=9, ratio=0.5, label="y", thinking=True, exact=False, graphs=False, budget=70)
    assert Toy(**values) == Toy(name="n", stop=("a", "b"), **changed)
    assert "(default: 4)" in shown_help(parser, "--max-new-tokens") and "STRING" in parser.format_help()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: --name"),
        (["--name", "n", "--max-new-tokens", "0"], "--max-new-tokens/--max-tokens: 0: must be at least 1"),
        (["--name", "n", "--budget", "lots"], "'lots' is not a whole number"),
        (["--name", "n", "--label", "z"], "invalid choice: 'z'"),
    ],
)
def test_generated_options_refuse_bad_values_by_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        toy_parser(toy_options()).parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_a_command_default_of_its_own_is_said_once_at_the_call():
    from pipelines.cli.common import budget
    from pipelines.cli.options import Unset

    options = toy_options(defaults={"max_new_tokens": 7, "budget": Unset("the checkpoint")}, types={"budget": budget})
    parser = toy_parser(options)
    args = parser.parse_args(["--name", "n"])
    assert (args.max_new_tokens, args.budget) == (7, None)
    assert "(default: 7)" in shown_help(parser, "--max-new-tokens")
    assert "(default: the checkpoint, else 280)" in shown_help(parser, "--budget")
    assert options.values(args)["budget"] == 280  # nothing found: the field's default
    assert options.values(args, {"budget": 560})["budget"] == 560
    assert options.values(parser.parse_args(["--name", "n", "--budget", "70"]), {"budget": 560})["budget"] == 70
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "n", "--budget", "100"])  # the caller's type: a supported budget


def test_the_generator_refuses_what_it_cannot_make_an_option_of():
    from pipelines.cli.options import FieldOptions

    with pytest.raises(TypeError, match=r"Toy\.note: no metadata\['help'\]"):
        FieldOptions(Toy, ("note",))
    with pytest.raises(TypeError, match="Toy has no field nme"):
        FieldOptions(Toy, ("nme",))
    with pytest.raises(TypeError, match="for ratio, which are not among the options"):
        FieldOptions(Toy, ("name",), defaults={"ratio": 1.0})
