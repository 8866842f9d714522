"""gemma4 infer end to end on a tiny checkpoint: every row answered or in the errors table, results equal to
generate on each row alone, the same whatever the batch size and workers, from a manifest or a preprocess output,
kill -9 and resume, OpenAI batch files in and out, rows too long for the context."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import cli
from pipelines.infer_job import InferSettings, read_results, run_infer
from pipelines.preprocess_job import JobMismatchError, PreprocessSettings, run_preprocess
from tests.pipelines.helpers import VERSION_1_MESSAGE, as_version_1

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
    files = sorted((out / kind).glob("shard-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def listing(out: Path) -> list[str]:
    """The names in a job folder, its lock and hidden temporary files aside."""
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


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
        # the model that answered (the checkpoint's name by default) and the time to the first token
        assert r["model"] == "checkpoint" and r["stop_reason"] is None
        assert r["ttft_s"] == r["queue_s"] + r["prefill_s"] and r["ttft_s"] > 0
    kinds = {r["id"]: r for r in results}
    assert any(r["image_tokens"] for r in results) and any(r["audio_tokens"] for r in results)
    assert any(r["video_tokens"] for r in results) and len(kinds) == len(results)
    assert json.loads((out / "job.json").read_text())["complete"] is True
    assert 0 <= summary.busy <= 1 and any("busy" in line for line in summary.lines())


def test_results_equal_generate_on_each_row_alone(sample, reference_run):
    from data_specs.manifest import read_row, resolve_media
    from model.checkpoint import load_pretrained
    from preprocess.collate import collate
    from preprocess.prompt import build_example
    from preprocess.tokenizer import Tokenizer
    from runtime.generate import generate

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


@pytest.mark.slow
def test_batch_size_workers_and_a_preprocessed_input_give_the_same_results(sample, reference_run, tmp_path):
    manifest, checkpoint = sample
    out, _ = reference_run
    expected = {r["id"]: r["completion_ids"] for r in table(out, "results")}
    one = run_infer(manifest, tmp_path / "b1", settings(checkpoint, batch_size=1), workers=2, progress=False)
    assert one.results == len(expected)
    rows = table(tmp_path / "b1", "results")
    assert {r["id"]: r["completion_ids"] for r in rows} == expected
    # one slot: rows prepared ahead wait for it, and that wait is their queue time (from being ready)
    assert sum(r["queue_s"] > 0.01 for r in rows) >= len(rows) // 2
    pre = tmp_path / "pre"
    run_preprocess(manifest, pre, PreprocessSettings(tokenizer=str(checkpoint), rows_per_shard=5), progress=False)
    run_infer(pre, tmp_path / "from-pre", settings(checkpoint, batch_size=4), workers=0, progress=False)
    assert {r["id"]: r["completion_ids"] for r in table(tmp_path / "from-pre", "results")} == expected
    carried = table(tmp_path / "from-pre", "errors")
    assert sorted((e["row"], e["id"], e["stage"]) for e in carried) == sorted(
        (e["row"], e["id"], e["stage"]) for e in table(out, "errors")
    )  # ids may be null (an unreadable line): ordered by row


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


@pytest.mark.slow
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
    assert not list(target.glob("*/.*"))
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
    # a broken first line costs that line only: the format is the first parsed line's (an OpenAI batch)
    batch.write_text('{"custom_id": "broken", "body": \n' + "".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    job = settings(checkpoint, output_format="openai", rows_per_shard=2)  # two shards' lines, joined in order
    summary = run_infer(batch, out, job, workers=0, progress=False)
    assert (summary.results, summary.errors) == (2, 2)
    # one results.jsonl, a line per input row (answers and errors), in input order; no results/ folder left
    assert listing(out) == ["errors", "job.json", "results.jsonl"]
    assert json.loads((out / "job.json").read_text())["results_file"] == "results.jsonl"
    assert summary.written == [str(out / "results.jsonl"), str(out / "errors") + "/", str(out / "job.json")]
    assert summary.lines()[-1] == "written: " + ", ".join(summary.written)
    written = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(written) == summary.rows == 4 and read_results(out) == written
    assert [w["custom_id"] for w in written][1:] == ["a", "b", "c"]
    assert written[0]["response"] is None and written[0]["error"]["code"] == "manifest"
    a, b, c = written[1:]
    assert a["response"]["status_code"] == 200 and a["error"] is None
    # the model a response names: the request's, else the checkpoint's name
    assert a["response"]["body"]["model"] == "x" and b["response"]["body"]["model"] == "checkpoint"
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
    manifest, checkpoint = sample
    out, _ = reference_run
    target = tmp_path / "jsonl"
    summary = run_infer(manifest, target, settings(checkpoint, output_format="jsonl"), workers=0, progress=False)
    assert summary.shards == 4  # four shards' lines, joined in input order into one file
    # one results.jsonl, a line per answered row in input order; no results/ folder left
    assert listing(target) == ["errors", "job.json", "results.jsonl"]
    assert summary.written == [str(target / "results.jsonl"), str(target / "errors") + "/", str(target / "job.json")]
    lines = [json.loads(line) for line in (target / "results.jsonl").read_text().splitlines()]
    assert len(lines) == summary.results and [r["row"] for r in lines] == [r["row"] for r in table(out, "results")]
    assert lines == read_results(target)
    untimed = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in read_results(target)]
    assert untimed == [{k: v for k, v in r.items() if not k.endswith("_s")} for r in read_results(out)]
    assert table(target, "errors") == table(out, "errors")


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


# --- published checkpoints: fail before anything starts, device and dtype, the checkpoint's sampling ------------


def broken_copies(checkpoint, tmp_path):
    """(name, checkpoint directory, message) of checkpoints broken in one way each."""
    import shutil

    from pipelines.sample_data import toy_tokenizer_json

    def copy(name):
        target = tmp_path / name
        shutil.copytree(checkpoint, target)
        return target

    cases = []
    other = copy("other-tokenizer")
    (other / "tokenizer.json").write_bytes(toy_tokenizer_json(seed=1, vocab_size=700))
    cases.append((other, "vocab_size: tokenizer 700"))
    llama = copy("llama")
    config = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps(dict(config, model_type="llama")))
    cases.append((llama, "model_type 'llama'"))
    fifo = copy("fifo")
    (fifo / "generation_config.json").unlink()
    os.mkfifo(fifo / "generation_config.json")
    cases.append((fifo, "generation_config.json' is not a regular file"))
    weightless = copy("weightless")
    (weightless / "model.safetensors").unlink()
    cases.append((weightless, "has neither model.safetensors nor"))
    bad_json = copy("bad-json")
    (bad_json / "config.json").write_text("{not json")
    cases.append((bad_json, "config.json' is not valid JSON"))
    return cases


def test_every_checkpoint_problem_is_refused_before_the_output_folder_or_a_worker_exists(sample, tmp_path, monkeypatch):
    import pipelines.infer_job as infer_job
    from model import device

    manifest, checkpoint = sample
    monkeypatch.setattr(infer_job, "ShardPool", lambda *a: pytest.fail("a worker started"))
    out = tmp_path / "out"
    for broken, message in broken_copies(checkpoint, tmp_path):
        with pytest.raises(ValueError, match=message):
            run_infer(manifest, out, settings(broken), workers=1, progress=False)
        assert not out.exists(), broken
    for name, message in (("gpu", "device 'gpu' is not a device name"), ("cuda:9", "device 'cuda:9'")):
        with pytest.raises(device.DeviceError, match=message):
            run_infer(manifest, out, settings(checkpoint, device=name), workers=1, progress=False)
    monkeypatch.setattr(device, "free_memory", lambda _: 10_000_000)
    with pytest.raises(
        device.NotEnoughMemoryError, match=r"needs .* of weights \(float32\) \+ .* of KV cache \(8 slots"
    ):
        run_infer(manifest, out, settings(checkpoint, batch_size=8), workers=1, progress=False)
    assert not out.exists()


def test_the_cli_refuses_in_one_line_before_making_the_output_folder(sample, tmp_path, capsys):
    manifest, checkpoint = sample
    out = tmp_path / "out"
    for extra, message in (
        (["--device", "gpu"], "device 'gpu' is not a device name"),
        (["--max-new-tokens", "5000"], "max_new_tokens 5000 leaves no room for a prompt in a context of 4096"),
    ):
        assert cli.main(["infer", str(manifest), str(out), "--checkpoint", str(checkpoint), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and not out.exists()


@pytest.mark.slow
def test_device_dtype_and_the_checkpoints_sampling_are_printed_and_recorded(sample, tmp_path, capsys):
    manifest, checkpoint = sample
    base = ["infer", str(manifest), "--checkpoint", str(checkpoint), "--max-new-tokens", "3", "--rows-per-shard", "8"]
    assert cli.main([base[0], base[1], str(tmp_path / "default"), *base[2:]]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("model: checkpoint, float32 on cpu, weights ") and "(8 slots × 4096 tokens)" in first
    assert first.endswith("sampling: temperature 1, top_k 64, top_p 0.95, seed 0")
    run = json.loads((tmp_path / "default" / "job.json").read_text())["run"]
    assert (run["device"], run["dtype"]) == ("cpu", "float32")
    assert run["sampling"] == {
        "temperature": {"value": 1.0, "from": "generation_config.json"},
        "top_k": {"value": 64, "from": "generation_config.json"},
        "top_p": {"value": 0.95, "from": "generation_config.json"},
        "seed": {"value": 0, "from": "job"},
    }
    # the same command again: the same sampled tokens (the default seed makes the job reproducible)
    assert cli.main([base[0], base[1], str(tmp_path / "again"), *base[2:]]) == 0

    def untimed(name):
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in table(tmp_path / name, "results")]

    assert untimed("again") == untimed("default")
    # an explicit flag overrides its value only; --greedy overrides them all
    assert cli.main([base[0], base[1], str(tmp_path / "cold"), *base[2:], "--temperature", "0.5", "--top-k", "0"]) == 0
    sampling = json.loads((tmp_path / "cold" / "job.json").read_text())["run"]["sampling"]
    assert sampling["temperature"] == {"value": 0.5, "from": "job"} and sampling["top_k"] == {"value": 0, "from": "job"}
    assert sampling["top_p"] == {"value": 0.95, "from": "generation_config.json"}
    assert cli.main([base[0], base[1], str(tmp_path / "greedy"), *base[2:], "--greedy"]) == 0
    greedy = json.loads((tmp_path / "greedy" / "job.json").read_text())["run"]["sampling"]
    assert {v["from"] for k, v in greedy.items() if k != "seed"} == {"greedy"}
    capsys.readouterr()
    greedy_rows = untimed("greedy")
    assert greedy_rows != untimed("default")
    reference = run_infer(
        manifest,
        tmp_path / "t0",
        settings(checkpoint, temperature=0.0, max_new_tokens=3, rows_per_shard=8),
        workers=0,
        progress=False,
    )
    assert reference.results == len(greedy_rows)
    assert greedy_rows == untimed("t0")


def test_a_repo_id_in_the_hub_cache_runs(sample, tmp_path, monkeypatch, capsys):
    manifest, checkpoint = sample
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--google--gemma-4-tiny-it"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / revision).symlink_to(checkpoint, target_is_directory=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    args = ["infer", str(manifest), str(out), "--checkpoint", "google/gemma-4-tiny-it", "--max-new-tokens", "2"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith("model: gemma-4-tiny-it, float32 on cpu")
    assert json.loads((out / "job.json").read_text())["run"]["checkpoint"] == "google/gemma-4-tiny-it"


def test_a_finished_job_run_again_reports_without_loading_the_model(sample, reference_run, tmp_path, monkeypatch):
    import shutil

    import model.checkpoint

    manifest, checkpoint = sample
    out, first = reference_run
    again = tmp_path / "again"
    shutil.copytree(out, again)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished job loaded the model")

    monkeypatch.setattr(model.checkpoint, "load_pretrained", refuse)
    summary = run_infer(manifest, again, settings(checkpoint, batch_size=3), workers=2, progress=False)
    assert summary.shards_skipped == summary.shards
    assert (summary.results, summary.errors) == (first.results, first.errors)
    assert summary.this_run == {}


def test_a_one_shard_job_prepares_its_rows_in_process(sample, tmp_path, monkeypatch):
    import pipelines.infer_job as infer_job

    manifest, checkpoint = sample
    one = tmp_path / "one.jsonl"
    one.write_text(manifest.read_text().splitlines()[0] + "\n")

    def no_pool(*args):
        raise AssertionError("a worker process was started for one shard")

    monkeypatch.setattr(infer_job, "ShardPool", no_pool)
    summary = run_infer(one, tmp_path / "out", settings(checkpoint), workers=2, progress=False)
    assert summary.rows == 1


def test_head_answers_the_first_rows_of_a_manifest_and_of_a_preprocess_output(sample, tmp_path):
    manifest, checkpoint = sample
    head = settings(checkpoint, preprocess={"head": 4})
    summary = run_infer(manifest, tmp_path / "m", head, workers=0, progress=False)
    assert summary.rows == 4 == summary.results + summary.errors
    pre = tmp_path / "pre"
    run_preprocess(manifest, pre, PreprocessSettings(tokenizer=str(checkpoint), rows_per_shard=3), progress=False)
    again = run_infer(pre, tmp_path / "p", head, workers=0, progress=False)
    assert again.rows == 4 and again.shards == 2  # shards of 3 rows: the head ends inside the second

    def rows(out):  # (input row, id) of every result and error: the first four rows of the input, both times
        return sorted(
            [(r["row"], r["id"]) for r in table(out, "results")] + [(e["row"], e["id"]) for e in table(out, "errors")]
        )

    assert rows(tmp_path / "m") == rows(tmp_path / "p") and [row for row, _ in rows(tmp_path / "m")] == [0, 1, 2, 3]


def test_a_version_1_output_is_refused_in_one_line(sample, reference_run, tmp_path, capsys):
    """Output version 1 kept both tables in shards/: such a folder is refused as infer's input and as its output."""
    manifest, checkpoint = sample
    pre = tmp_path / "pre"
    run_preprocess(manifest, pre, PreprocessSettings(tokenizer=str(checkpoint), rows_per_shard=5), progress=False)
    old_input = as_version_1(pre, tmp_path / "old-pre")
    with pytest.raises(JobMismatchError, match=re.escape(VERSION_1_MESSAGE)) as info:
        run_infer(old_input, tmp_path / "out", settings(checkpoint), workers=0, progress=False)
    assert "run the job again into a new folder" in str(info.value) and "\n" not in str(info.value)
    old_output = as_version_1(reference_run[0], tmp_path / "old-out")
    with pytest.raises(JobMismatchError, match=re.escape(VERSION_1_MESSAGE)):
        run_infer(manifest, old_output, settings(checkpoint, batch_size=3), workers=0, progress=False)
    with pytest.raises(JobMismatchError, match=re.escape(VERSION_1_MESSAGE)):
        read_results(old_output)
    for source, target in ((old_input, tmp_path / "cli-out"), (manifest, old_output)):
        args = ["infer", str(source), str(target), "--checkpoint", str(checkpoint), "--max-new-tokens", "6"]
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert VERSION_1_MESSAGE in err and "run the job again into a new folder" in err and len(err.splitlines()) == 1


def test_one_kind_of_output_where_the_other_is_expected_is_one_line(sample, reference_run, tmp_path, capsys):
    manifest, checkpoint = sample
    out, _ = reference_run
    from pipelines.readback import open_output

    with pytest.raises(ValueError, match="is a gemma4 infer output .results., not a gemma4 preprocess output"):
        open_output(out)  # gemma4 inspect reads both kinds (tests/pipelines/test_inspect.py); the API names its kind
    pre = tmp_path / "pre"
    run_preprocess(manifest, pre, PreprocessSettings(tokenizer=str(checkpoint), rows_per_shard=5), progress=False)
    with pytest.raises(JobMismatchError, match="holds a gemma4 preprocess output, and this job writes a gemma4 infer"):
        run_infer(manifest, pre, settings(checkpoint), workers=0, progress=False)
    with pytest.raises(JobMismatchError, match="holds a gemma4 infer output .results., and this job writes"):
        run_preprocess(manifest, out, PreprocessSettings(tokenizer=str(checkpoint)), progress=False)
