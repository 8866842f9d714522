"""gemma4 inspect reads both kinds of output: a preprocess output's report and rows, an infer output's summary and
one result row; --prompt prints a row's decoded prompt in either kind."""

from __future__ import annotations

import json

import pytest

from pipelines.cli import main
from pipelines.infer_job import InferSettings, run_infer
from pipelines.preprocess_job import PreprocessSettings, run_preprocess


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """(preprocess output, infer output on the manifest, infer output on the preprocess output) of a sample with
    text and image rows and broken lines."""
    from pipelines.sample_data import write_sample_checkpoint, write_sample_dataset

    directory = tmp_path_factory.mktemp("inspect")
    manifest, tokenizer = write_sample_dataset(directory, rows=3, corrupt=True)
    checkpoint = write_sample_checkpoint(directory / "checkpoint", tokenizer)
    front = PreprocessSettings(tokenizer=str(checkpoint), rows_per_shard=4)
    run_preprocess(manifest, directory / "pre", front, progress=False)
    job = InferSettings(checkpoint=str(checkpoint), preprocess=front, max_new_tokens=3, greedy=True)
    run_infer(manifest, directory / "inf", job, workers=0, progress=False)
    run_infer(directory / "pre", directory / "inf-pre", job, workers=0, progress=False)
    return directory / "pre", directory / "inf", directory / "inf-pre"


def test_a_preprocess_output_prints_a_rows_prompt(outputs, capsys):
    pre, _, _ = outputs
    assert main(["inspect", str(pre), "--row", "ex0001", "--prompt"]) == 0
    out = capsys.readouterr().out
    prompt = out.split("prompt:\n", 1)[1]
    assert prompt.startswith("<bos><|turn>user") and "<image soft tokens × " in prompt
    assert prompt.rstrip().endswith("<|turn>model\n<|channel>thought\n<channel|>")  # thinking off
    assert main(["inspect", str(pre), "--prompt"]) == 2  # which row?


def test_an_infer_output_shows_its_summary_and_a_result(outputs, capsys):
    _, inf, _ = outputs
    assert main(["inspect", str(inf)]) == 0
    out = capsys.readouterr().out
    assert "gemma4 infer output (results version 2, output version 2)" in out and "schema version None" not in out
    assert "errors by stage:" in out
    first = json.loads(out[out.index("{") :])
    assert first["id"] == "ex0000" and first["row"] == 0 and "text" in first


def test_an_infer_output_prints_a_rows_prompt_rebuilt_from_its_input(outputs, capsys):
    pre, inf, inf_pre = outputs
    prompts = []
    for output in (pre, inf, inf_pre):
        assert main(["inspect", str(output), "--row", "ex0001", "--prompt"]) == 0
        prompts.append(capsys.readouterr().out.split("prompt:\n", 1)[1])
    assert prompts[0] == prompts[1] == prompts[2]


def test_a_failed_row_says_why_it_has_no_result(outputs, capsys):
    _, inf, _ = outputs
    assert main(["inspect", str(inf), "--row", "bad-image"]) == 2
    assert "failed at stage image" in capsys.readouterr().err
