"""``gemma4 bench checkpoint`` on the tiny sizes: the published config copies, the streamed safetensors file (with
the KV-shared layers' extra tensors), the build marker, one whole run printing both engines' figures, and the
line that skips a size this machine cannot hold."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from pathlib import Path

import pytest
import torch

from bench import bench_checkpoint
from model.checkpoint import inspect_checkpoint, load_config
from model.config import PRESETS
from model.gemma4 import Gemma4
from preprocess.tokenizer import Tokenizer
from tests.helpers import PUBLISHED_CONFIGS as PUBLISHED
from tests.helpers import SHARED_CONFIGS as SHARED


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The tiny-e2b checkpoint, built once for the module; its root folder."""
    root = tmp_path_factory.mktemp("bench-checkpoint")
    bench_checkpoint.build_checkpoint("tiny-e2b", root, emit=lambda _: None)
    return root


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/gemma4-configs is not beside this checkout")
def test_the_published_configs_are_copied_byte_for_byte():
    names = sorted(p.name for p in SHARED.glob("*.json"))
    assert names == sorted([*bench_checkpoint.PUBLISHED.values(), bench_checkpoint.GENERATION_CONFIG])
    for name in names:
        assert bench_checkpoint.published_file(name) == (SHARED / name).read_bytes(), name


def test_the_streamed_file_has_the_published_names_and_the_kv_shared_extras(built):
    from safetensors.torch import load_file

    folder = built / "tiny-e2b"
    path = folder / "model.safetensors"
    length = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + length])
    assert length % 8 == 0 and header["__metadata__"] == {"format": "pt"}
    tensors = load_file(path)
    config = load_config(folder)
    text = config.text
    with torch.device("meta"):
        expected = {f"model.{k}": v.shape for k, v in Gemma4(config).state_dict().items()}
    extras = set(tensors) - set(expected)
    shared = [i for i in range(text.n_layers) if text.kv_source(i) != i]
    assert shared and extras == {
        f"model.language_model.layers.{i}.self_attn.{part}.weight"
        for i in shared
        for part in ("k_proj", "v_proj", "k_norm")
    }
    for i in shared:  # shaped as their source layer's
        for part in ("k_proj", "v_proj", "k_norm"):
            name = "model.language_model.layers.{}.self_attn." + part + ".weight"
            assert tensors[name.format(i)].shape == expected[name.format(text.kv_source(i))]
    assert all(tensors[k].shape == shape for k, shape in expected.items())
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    # The values: ones for layer scalars, N(1, 0.05²) norm scales, N(0, 0.02²) the rest.
    assert all(torch.equal(v, torch.ones_like(v)) for k, v in tensors.items() if k.endswith("layer_scalar"))
    norms = torch.cat([v.float().flatten() for k, v in tensors.items() if k.endswith("norm.weight")])
    assert abs(float(norms.mean()) - 1) < 0.01 and abs(float(norms.std()) - 0.05) < 0.01
    embed = tensors["model.language_model.embed_tokens.weight"].float()
    assert abs(float(embed.std()) - 0.02) < 0.002
    # The folder is a checkpoint our loader accepts, with the published generation config and the config's ids.
    info = inspect_checkpoint(folder)
    assert info.dtype == torch.bfloat16 and info.config == config
    assert (folder / "generation_config.json").read_bytes() == (PUBLISHED / "generation_config.json").read_bytes()
    special = Tokenizer.from_pretrained(folder).special
    assert (special.image, special.eoa, special.pad) == (config.tokens.image, config.tokens.eoa, config.tokens.pad)
    assert config.tokens.image == PRESETS["tiny-e2b"].tokens.image


def test_a_complete_folder_is_reused_and_one_without_its_marker_rebuilt(tmp_path):
    lines: list[str] = []
    folder = bench_checkpoint.build_checkpoint("tiny-moe", tmp_path, emit=lines.append)
    assert folder == tmp_path / "tiny-moe" and lines[0].startswith("building tiny-moe")
    marker = json.loads((folder / bench_checkpoint.MARKER).read_text())
    assert marker["size"] == "tiny-moe" and marker["bytes"] == (folder / "model.safetensors").stat().st_size
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert bench_checkpoint.build_checkpoint("tiny-moe", tmp_path, emit=pytest.fail) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    (folder / bench_checkpoint.MARKER).unlink()  # as a killed build leaves it
    lines.clear()
    bench_checkpoint.build_checkpoint("tiny-moe", tmp_path, emit=lines.append)
    assert lines[0].startswith("building tiny-moe") and (folder / bench_checkpoint.MARKER).is_file()
    assert (folder / "model.safetensors").stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_a_tiny_run_prints_both_engines_figures_on_every_line(built):
    pytest.importorskip("transformers")
    printed: list[str] = []
    lines = bench_checkpoint.bench_checkpoint("tiny-e2b", built, prompt=32, new_tokens=4, emit=printed.append)
    assert "\n".join(printed).splitlines() == lines
    assert not any(line.startswith("building") for line in lines)  # the module's folder was reused
    header, *rest = lines
    assert header.startswith("gemma4 bench checkpoint tiny-e2b:") and "bfloat16" in header and "threads" in header
    assert "machine RAM" in header
    cases = ["load", "peak RSS", "prefill 32 tokens, batch 1", "decode batch 1, 3 steps", "decode batch 4, 3 steps"]
    measured = [line for line in rest if line.startswith("tiny-e2b ") and "ratio" in line]
    assert len(measured) == len(cases)
    for line, case in zip(measured, cases, strict=True):
        found = re.fullmatch(
            r"tiny-e2b\s+(.+?)\s+reference\s+([\d.]+) (\S+)\s+ours\s+([\d.]+) (\S+)\s+ratio\s+([\d.]+)×\s+"
            r"target ≥ 1\.00× (met|NOT met)",
            line,
        )
        assert found, line
        assert found[1] == case and found[3] == found[5] and float(found[4]) > 0 and float(found[6]) > 0
    assert any(line.strip().startswith("target ours ≤ 12 GB: ") for line in rest)
    assert re.fullmatch(r"tiny-e2b +greedy agreement with the reference: batch 1 [\d.]+%, batch 4 [\d.]+% .*", rest[-2])
    assert rest[-1].strip().startswith("printed, not required")


def test_a_killed_measuring_process_ends_in_a_clear_line(built, tmp_path, monkeypatch):
    killer = tmp_path / "python"
    killer.write_text("#!/bin/sh\nkill -KILL $$\n")  # as the out-of-memory killer ends a process
    killer.chmod(0o755)
    monkeypatch.setattr(bench_checkpoint.sys, "executable", str(killer))
    lines = bench_checkpoint.bench_checkpoint("tiny-e2b", built, prompt=8, new_tokens=2, emit=lambda _: None)
    assert lines[0].startswith("gemma4 bench checkpoint tiny-e2b:")
    assert re.fullmatch(
        r"tiny-e2b +ours: its process was killed by SIGKILL \(SIGKILL: most likely the kernel's "
        r"out-of-memory killer\) after \d+ s; no figures",
        lines[1],
    )
    assert len(lines) == 2 + (importlib.util.find_spec("transformers") is not None)  # nothing more for this size


def test_a_size_too_large_for_this_machine_is_skipped_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_checkpoint, "machine_ram_bytes", lambda: 8_000_000_000)
    lines = bench_checkpoint.bench_checkpoint("26b-a4b", tmp_path, emit=lambda _: None)
    assert len(lines) == 1 and lines[0].startswith("26b-a4b     skipped, not built: its weights (")
    assert "exceed this machine's 8.0 GB of RAM" in lines[0]
    assert not (tmp_path / "26b-a4b").exists()


def test_the_command_runs_every_size_asked_for(tmp_path, monkeypatch, capsys):
    import argparse

    monkeypatch.setattr(bench_checkpoint, "machine_ram_bytes", lambda: 8_000_000_000)
    parser = argparse.ArgumentParser()
    bench_checkpoint.add_arguments(parser)
    args = parser.parse_args(["--size", "26b-a4b", "--size", "31b", "--dir", str(tmp_path)])
    assert bench_checkpoint.run(args) == 0  # skipping a size is not a failure
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in printed] == [["26b-a4b", "skipped,", "not"], ["31b", "skipped,", "not"]]


def test_the_command_options():
    import argparse

    parser = argparse.ArgumentParser()
    bench_checkpoint.add_arguments(parser)
    args = parser.parse_args(["--size", "e2b", "--size", "26b-a4b", "--dir", "x"])
    assert args.size == ["e2b", "26b-a4b"] and args.dir == Path("x") and (args.prompt, args.new_tokens) == (1024, 32)
    assert parser.parse_args([]).size is None  # run() measures e2b then
    with pytest.raises(SystemExit):
        parser.parse_args(["--size", "7b"])


def test_bad_settings_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="unknown size '7b'"):
        bench_checkpoint.bench_checkpoint("7b", tmp_path)
    with pytest.raises(ValueError, match="new_tokens must be at least 2"):
        bench_checkpoint.bench_checkpoint("tiny-e2b", tmp_path, new_tokens=1)
