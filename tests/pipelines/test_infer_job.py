"""gemma4 infer end to end on a tiny checkpoint: every row answered or in the errors table, results equal to
generate on each row alone, the same whatever the batch size and workers, from a manifest or a preprocess output,
kill -9 and resume, OpenAI batch files in and out, rows too long for the context."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import cli
from pipelines.infer_job import InferSettings, run_infer
from pipelines.preprocess_job import PreprocessSettings, run_preprocess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """(manifest, checkpoint) of ``gemma4 sample-data --rows 6 --corrupt``: text, image, audio, video rows and 7
    broken ones, with the tiny checkpoint matched to the toy tokenizer."""
    from pipelines.sample_data import write_sample_checkpoint, write_sample_dataset

    directory = tmp_path_factory.mktemp("infer-sample")
    manifest, tokenizer = write_sample_dataset(directory, rows=6, corrupt=True)
    checkpoint = write_sample_checkpoint(directory / "checkpoint", tokenizer)
    return manifest, checkpoint


def settings(checkpoint, **kwargs) -> InferSettings:
    front = kwargs.pop("preprocess", {})
    return InferSettings(
        checkpoint=str(checkpoint),
        preprocess=PreprocessSettings(
            tokenizer=str(checkpoint), rows_per_shard=kwargs.pop("rows_per_shard", 4), **front
        ),
        max_new_tokens=kwargs.pop("max_new_tokens", 6),
        greedy=kwargs.pop("greedy", "temperature" not in kwargs),  # the sample checkpoint samples by default
        **kwargs,
    )


def table(out: Path, kind: str) -> list[dict]:
    files = sorted((out / "shards").glob(f"{kind}-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def reference_run(sample, tmp_path_factory):
    manifest, checkpoint = sample
    out = tmp_path_factory.mktemp("infer-ref") / "out"
    summary = run_infer(manifest, out, settings(checkpoint, batch_size=3), workers=0, progress=False)
    return out, summary


def test_every_row_is_answered_or_in_the_errors_table(sample, reference_run):
    manifest, _ = sample
    out, summary = reference_run
    lines = [line for line in manifest.read_text().splitlines() if line.strip()]
    results, errors = table(out, "results"), table(out, "errors")
    assert summary.rows == len(lines) == len(results) + len(errors) == summary.results + summary.errors
    assert sorted(r["row"] for r in results + errors) == list(range(len(lines)))
    assert len(errors) == 7 and all(e["stage"] and e["message"] for e in errors)
    for r in results:
        assert r["completion_tokens"] == len(r["completion_ids"]) and r["finish_reason"] in ("stop", "length")
        assert r["prompt_tokens"] == sum(r[k] for k in ("text_tokens", "image_tokens", "audio_tokens", "video_tokens"))
    kinds = {r["id"]: r for r in results}
    assert any(r["image_tokens"] for r in results) and any(r["audio_tokens"] for r in results)
    assert any(r["video_tokens"] for r in results) and len(kinds) == len(results)
    assert json.loads((out / "job.json").read_text())["complete"] is True
    assert 0 <= summary.busy <= 1 and any("busy" in line for line in summary.lines())


def test_results_equal_generate_on_each_row_alone(sample, reference_run):
    from data_specs.manifest import read_row, resolve_media
    from model.checkpoint import load_pretrained
    from model.generate import generate
    from preprocess.collate import collate
    from preprocess.prompt import build_example
    from preprocess.tokenizer import Tokenizer

    manifest, checkpoint = sample
    out, _ = reference_run
    tok = Tokenizer.from_pretrained(checkpoint)
    model = load_pretrained(checkpoint, tokenizer=tok)
    rows = {
        json.loads(line).get("id"): json.loads(line) for line in manifest.read_text().splitlines()[:8] if "{" in line
    }
    results = {r["id"]: r for r in table(out, "results")}
    checked = 0
    for row_id, raw in rows.items():
        if row_id not in results:
            continue
        row = read_row(raw, 0)
        example = build_example(resolve_media(row.messages, manifest.parent), tok)
        expected = generate(model, collate([example], pad_id=tok.special.pad), max_new_tokens=6)[0]
        assert results[row_id]["completion_ids"] == expected.token_ids, row_id
        assert results[row_id]["raw_text"] == tok.decode(expected.token_ids)
        checked += 1
    assert checked >= 4


def test_batch_size_workers_and_a_preprocessed_input_give_the_same_results(sample, reference_run, tmp_path):
    manifest, checkpoint = sample
    out, _ = reference_run
    expected = {r["id"]: r["completion_ids"] for r in table(out, "results")}
    one = run_infer(manifest, tmp_path / "b1", settings(checkpoint, batch_size=1), workers=2, progress=False)
    assert one.results == len(expected)
    assert {r["id"]: r["completion_ids"] for r in table(tmp_path / "b1", "results")} == expected
    pre = tmp_path / "pre"
    run_preprocess(manifest, pre, PreprocessSettings(tokenizer=str(checkpoint), rows_per_shard=5), progress=False)
    run_infer(pre, tmp_path / "from-pre", settings(checkpoint, batch_size=4), workers=0, progress=False)
    assert {r["id"]: r["completion_ids"] for r in table(tmp_path / "from-pre", "results")} == expected
    carried = table(tmp_path / "from-pre", "errors")
    assert sorted((e["id"], e["stage"]) for e in carried) == sorted((e["id"], e["stage"]) for e in table(out, "errors"))


def test_seeded_sampling_is_the_same_whatever_the_batch_size(sample, tmp_path):
    manifest, checkpoint = sample
    runs = []
    for slots in (1, 4):
        target = tmp_path / f"s{slots}"
        run_infer(
            manifest, target, settings(checkpoint, batch_size=slots, temperature=1.0, seed=3), workers=0, progress=False
        )
        runs.append({r["id"]: r["completion_ids"] for r in table(target, "results")})
    assert runs[0] == runs[1]


def test_kill_and_resume_gives_the_uninterrupted_results(sample, reference_run, tmp_path):
    manifest, checkpoint = sample
    out, _ = reference_run
    target = tmp_path / "out"
    args = ["infer", str(manifest), str(target), "--checkpoint", str(checkpoint), "--max-new-tokens", "6", "--greedy"]
    args += ["--rows-per-shard", "4", "--batch-size", "2", "--workers", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    job, deadline = target / "job.json", time.time() + 180
    while time.time() < deadline:  # kill -9 as soon as the first shard is recorded, mid-job
        if job.exists() and json.loads(job.read_text() or "{}").get("shards"):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = json.loads(job.read_text())
    assert 0 < len(state["shards"]) < 4 and not state.get("complete")
    assert cli.main(args) == 0
    assert not list((target / "shards").glob(".*"))
    for kind in ("results", "errors"):
        ours = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in table(target, kind)]
        theirs = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in table(out, kind)]
        assert ours == theirs


def test_a_row_longer_than_the_context_is_an_error_row(sample, tmp_path):
    manifest, checkpoint = sample
    summary = run_infer(manifest, tmp_path / "out", settings(checkpoint, context=90), workers=0, progress=False)
    context = [e for e in table(tmp_path / "out", "errors") if e["stage"] == "context"]
    assert context and summary.errors_by_stage["context"] == len(context)
    assert "context of 90 tokens" in context[0]["message"] and "--context" in context[0]["message"]
    assert summary.rows == summary.results + summary.errors


def test_openai_batch_in_and_out(sample, tmp_path):
    manifest, checkpoint = sample
    lines = [
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "x", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4},
        },
        {
            "custom_id": "b",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.7, "seed": 5},
        },
        {"custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": {"input": "no"}},
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    summary = run_infer(batch, out, settings(checkpoint, output_format="openai"), workers=0, progress=False)
    assert (summary.results, summary.errors) == (2, 1)
    written = [
        json.loads(line)
        for f in sorted((out / "shards").glob("results-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert [w["custom_id"] for w in written] == ["a", "b", "c"]
    a, b, c = written
    assert a["response"]["status_code"] == 200 and a["error"] is None
    body = a["response"]["body"]
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 4
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert b["response"]["body"]["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    assert c["response"] is None and c["error"]["code"] == "manifest"


def test_the_dtype_is_the_one_asked_for_and_recorded(sample, tmp_path):
    import torch

    manifest, checkpoint = sample
    for dtype, recorded in (("bfloat16", torch.bfloat16), ("checkpoint", torch.float32), (None, torch.float32)):
        out = tmp_path / str(dtype)
        run_infer(manifest, out, settings(checkpoint, dtype=dtype, max_new_tokens=2), workers=0, progress=False)
        assert json.loads((out / "job.json").read_text())["settings"]["dtype"] == str(recorded)


def test_jsonl_results_hold_the_parquet_rows(sample, reference_run, tmp_path):
    from pipelines.infer_job import read_results

    manifest, checkpoint = sample
    out, _ = reference_run
    run_infer(manifest, tmp_path / "jsonl", settings(checkpoint, output_format="jsonl"), workers=0, progress=False)
    untimed = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in read_results(tmp_path / "jsonl")]
    assert untimed == [{k: v for k, v in r.items() if not k.endswith("_s")} for r in read_results(out)]
    assert table(tmp_path / "jsonl", "errors") == table(out, "errors")


def test_bad_settings_and_another_job_are_refused_by_name(sample, reference_run, tmp_path):
    from pipelines.preprocess_job import JobMismatchError

    manifest, checkpoint = sample
    out, _ = reference_run
    with pytest.raises(ValueError, match="has no config.json"):
        run_infer(manifest, tmp_path / "never", settings(tmp_path), workers=0, progress=False)
    assert not (tmp_path / "never").exists()  # refused before the output folder was made
    with pytest.raises(ValueError, match="output_format must be one of"):
        settings(checkpoint, output_format="csv")
    with pytest.raises(ValueError, match="max_new_tokens: 6 there, 7 now"):
        run_infer(manifest, out, settings(checkpoint, max_new_tokens=7), workers=0, progress=False)
    assert issubclass(JobMismatchError, ValueError)
