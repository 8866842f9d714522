"""What a vLLM / OpenAI user expects of gemma4 infer's per-request options: stop strings (a row's own and
``--stop``), the response's ``model`` (``--served-model-name``, else the request's), duplicate ``custom_id`` s
refusing the whole batch, and front-end options refused on a preprocessed input."""

from __future__ import annotations

import json

import pytest

from data_specs.manifest import ManifestError
from pipelines.infer_job import InferSettings, read_results, run_infer
from pipelines.inputs import check_front_end
from pipelines.preprocess_job import PreprocessSettings, run_preprocess

QUESTIONS = ["Tell me about red.", "Who was where?", "Answer in a few words.", "Why?"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(directory, tokenizer, checkpoint) of the sample data's toy tokenizer and tiny checkpoint."""
    from pipelines.sample_data import write_sample_checkpoint, write_sample_dataset

    directory = tmp_path_factory.mktemp("options")
    _, tokenizer = write_sample_dataset(directory / "sample", rows=1)
    return directory, tokenizer, write_sample_checkpoint(directory / "checkpoint", tokenizer)


def write_manifest(path, rows: list[dict]):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rows(**extra_by_id) -> list[dict]:
    out = []
    for k, question in enumerate(QUESTIONS):
        row = {"id": f"q{k}", "messages": [{"role": "user", "content": question}]}
        out.append(row | extra_by_id.get(f"q{k}", {}))
    return out


def settings(checkpoint, **kwargs) -> InferSettings:
    front = kwargs.pop("preprocess", {})
    return InferSettings(
        checkpoint=str(checkpoint),
        preprocess=PreprocessSettings(tokenizer=str(checkpoint), rows_per_shard=2, **front),
        max_new_tokens=kwargs.pop("max_new_tokens", 12),
        greedy=True,
        **kwargs,
    )


def run(tmp_path, checkpoint, manifest, name, **kwargs) -> dict[str, dict]:
    run_infer(manifest, tmp_path / name, settings(checkpoint, **kwargs), workers=0, progress=False)
    return {row["id"]: row for row in read_results(tmp_path / name)}


def a_stop_string(text: str) -> str:
    """Three characters of ``text`` from its fourth on, occurring there first."""
    for start in range(3, len(text) - 3):
        piece = text[start : start + 3]
        if text.find(piece) == start:
            return piece
    pytest.skip(f"no usable stop string in {text!r}")


def test_stop_strings_end_a_reply_before_them_per_row_and_for_the_job(toy, tmp_path):
    _, _, checkpoint = toy
    free = run(tmp_path, checkpoint, write_manifest(tmp_path / "free.jsonl", rows()), "free")
    stop0, stop2 = a_stop_string(free["q0"]["raw_text"]), a_stop_string(free["q2"]["raw_text"])
    manifest = write_manifest(tmp_path / "stop.jsonl", rows(q0={"stop": stop0}, q1={"stop": []}))
    stopped = run(tmp_path, checkpoint, manifest, "stopped", stop=(stop2,))
    q0, q2 = stopped["q0"], stopped["q2"]
    assert q0["raw_text"] == free["q0"]["raw_text"][: free["q0"]["raw_text"].find(stop0)]
    assert q0["finish_reason"] == "stop" and q0["stop_reason"] == stop0
    assert q0["completion_tokens"] < free["q0"]["completion_tokens"]
    assert q2["raw_text"] == free["q2"]["raw_text"][: free["q2"]["raw_text"].find(stop2)]  # the job's --stop
    assert q2["stop_reason"] == stop2
    for key in ("q1", "q3"):  # q1 asks for no stop strings ([]); q3's text does not hold the job's
        if stop2 not in free[key]["raw_text"] or key == "q1":
            assert stopped[key]["completion_ids"] == free[key]["completion_ids"]
            assert stopped[key]["stop_reason"] is None


def test_a_bad_stop_in_a_row_fails_that_row_only(toy, tmp_path):
    _, _, checkpoint = toy
    manifest = write_manifest(tmp_path / "m.jsonl", rows(q1={"stop": [""]}))
    summary = run_infer(manifest, tmp_path / "out", settings(checkpoint), workers=0, progress=False)
    assert (summary.results, summary.errors) == (3, 1)
    with pytest.raises(ValueError, match="'stop' item 0 is empty"):
        settings(checkpoint, stop=("",))


def openai_line(custom_id: str, question: str, **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": question}], "max_completion_tokens": 4, **body},
    }


def test_the_response_names_the_served_model_else_the_requests_else_the_checkpoints(toy, tmp_path):
    _, _, checkpoint = toy
    batch = write_manifest(
        tmp_path / "batch.jsonl", [openai_line("a", "Hi", model="my-model"), openai_line("b", "Why?")]
    )
    answers = run(tmp_path, checkpoint, batch, "named", output_format="openai")
    models = {line["custom_id"]: line["response"]["body"]["model"] for line in answers.values()}
    assert models == {"a": "my-model", "b": "checkpoint"}
    served = run(tmp_path, checkpoint, batch, "served", output_format="openai", served_model_name="gemma-4-tiny")
    assert {line["response"]["body"]["model"] for line in served.values()} == {"gemma-4-tiny"}
    parquet = run(tmp_path, checkpoint, batch, "parquet")
    assert parquet["a"]["model"] == "my-model" and parquet["b"]["model"] == "checkpoint"


def test_openai_stop_is_honoured(toy, tmp_path):
    _, _, checkpoint = toy
    free = run(tmp_path, checkpoint, write_manifest(tmp_path / "free.jsonl", rows()), "free")
    stop = a_stop_string(free["q0"]["raw_text"])
    batch = write_manifest(tmp_path / "b.jsonl", [openai_line("q0", QUESTIONS[0], max_completion_tokens=12, stop=stop)])
    answer = run(tmp_path, checkpoint, batch, "openai", output_format="openai")
    body = next(iter(answer.values()))["response"]["body"]
    assert body["choices"][0]["finish_reason"] == "stop"
    assert stop not in (body["choices"][0]["message"]["content"] or "")


def test_duplicate_custom_ids_refuse_the_whole_batch_before_the_model_loads(toy, tmp_path, monkeypatch):
    _, _, checkpoint = toy
    batch = write_manifest(
        tmp_path / "batch.jsonl", [openai_line("a", "Hi"), openai_line("b", "Why?"), openai_line("a", "Again")]
    )

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("model.checkpoint.load_pretrained", no_load)
    with pytest.raises(ManifestError, match=r"custom_id 'a' is used by rows 0 and 2"):
        run_infer(batch, tmp_path / "out", settings(checkpoint), workers=0, progress=False)
    assert not (tmp_path / "out" / "job.json").exists()


def test_front_end_options_on_a_preprocessed_input_are_refused_naming_the_built_value(toy, tmp_path):
    _, tokenizer, _ = toy
    manifest = write_manifest(tmp_path / "m.jsonl", rows())
    out = tmp_path / "pre"
    run_preprocess(manifest, out, PreprocessSettings(tokenizer=str(tokenizer), image_budget=560), progress=False)
    with pytest.raises(ValueError, match=r"--budget 140: .* built with image_budget = 560; .*drop --budget"):
        check_front_end(out, {"--budget": ("image_budget", 140)})
    check_front_end(out, {})  # nothing given: fine
    check_front_end(manifest, {"--budget": ("image_budget", 140)})  # a manifest takes them


class _KillsItsWorker:
    """Unpickling this in a worker process ends the process, as the kernel's OOM killer would."""

    def __reduce__(self):
        import os

        return os._exit, (9,)


@pytest.mark.slow
def test_an_infer_worker_that_dies_costs_only_the_rows_that_kill_it(toy, tmp_path, monkeypatch):
    from pipelines.inputs import InferInput
    from pipelines.rows import Item

    _, _, checkpoint = toy
    manifest = write_manifest(tmp_path / "m.jsonl", rows())
    shards = InferInput.shards

    def poisoned(self, done):
        for shard, items in shards(self, done):
            yield shard, [Item(i.index, i.id, [_KillsItsWorker()]) if i.id == "q2" else i for i in items]

    monkeypatch.setattr(InferInput, "shards", poisoned)
    summary = run_infer(manifest, tmp_path / "out", settings(checkpoint), workers=2, progress=False)
    assert (summary.rows, summary.results, summary.errors_by_stage) == (4, 3, {"worker": 1})
    assert sorted(read_results(tmp_path / "out"), key=lambda r: r["row"])[2]["id"] == "q3"


def test_per_row_options_travel_in_the_preprocess_output_and_are_honoured_as_on_the_manifest(toy, tmp_path):
    _, _, checkpoint = toy
    free = run(tmp_path, checkpoint, write_manifest(tmp_path / "free.jsonl", rows()), "free")
    stop = a_stop_string(free["q3"]["raw_text"])
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        rows(q0={"max_new_tokens": 2}, q1={"temperature": 1.5, "top_k": 5, "seed": 3}, q3={"stop": [stop]}),
    )
    direct = run(tmp_path, checkpoint, manifest, "direct")
    pre = tmp_path / "pre"
    run_preprocess(manifest, pre, PreprocessSettings(tokenizer=str(checkpoint), rows_per_shard=2), progress=False)
    via = run(tmp_path, checkpoint, pre, "via")
    assert direct["q0"]["completion_tokens"] == via["q0"]["completion_tokens"] == 2
    assert via["q3"]["stop_reason"] == stop == direct["q3"]["stop_reason"]
    for key in direct:
        assert via[key]["completion_ids"] == direct[key]["completion_ids"], key
    assert via["q1"]["completion_ids"] != free["q1"]["completion_ids"]  # sampled with its own settings


def test_gemma4_infer_refuses_front_end_flags_on_a_preprocessed_input(toy, tmp_path, capsys):
    from pipelines.cli import main

    _, tokenizer, checkpoint = toy
    manifest = write_manifest(tmp_path / "m.jsonl", rows())
    pre = tmp_path / "pre"
    run_preprocess(manifest, pre, PreprocessSettings(tokenizer=str(checkpoint), enable_thinking=False), progress=False)
    base = ["infer", str(pre), str(tmp_path / "out"), "--checkpoint", str(checkpoint), "--max-new-tokens", "2"]
    for flag, built in (
        (["--budget", "560"], "image_budget = 280"),
        (["--enable-thinking"], "enable_thinking = false"),
        (["--rows-per-shard", "3"], "rows_per_shard = 128"),
        (["--limit", "max_pixels=100"], "limits = {"),
        (["--no-generation-prompt"], "generation_prompt = true"),
    ):
        assert main(base + flag) == 2
        err = capsys.readouterr().err
        assert f"error: {flag[0]}" in err and built in err and "front-end options do not apply" in err, err
    assert not (tmp_path / "out").exists()
    assert main(base + ["--head", "2", "--greedy"]) == 0  # --head is the job's: it applies to any input


@pytest.mark.parametrize("output_format", ["jsonl", "openai"])
def test_a_finished_jsonl_job_run_again_keeps_its_results_file(toy, tmp_path, output_format):
    _, _, checkpoint = toy
    manifest = write_manifest(tmp_path / "m.jsonl", rows())
    out = tmp_path / "out"
    first = run_infer(manifest, out, settings(checkpoint, output_format=output_format), workers=0, progress=False)
    text = (out / "results.jsonl").read_text()
    again = run_infer(manifest, out, settings(checkpoint, output_format=output_format), workers=0, progress=False)
    assert (out / "results.jsonl").read_text() == text and len(text.splitlines()) == 4
    assert again.results == first.results == 4 and again.written == first.written
    assert sorted(p.name for p in out.iterdir()) == [".lock", "job.json", "results.jsonl"]  # no empty folders
