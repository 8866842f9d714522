"""``gemma4 bench infer``: the ``gemma4 infer`` job against a plain loop over the reference, side by side.

The rows: ``pipelines.sample_data.write_sample_dataset`` (default 24 rows, cycling text only, one image, one audio
clip of 1–40 s, image + audio, one 4-frame video; no broken rows: the figure is a rate of answered rows). The
model: a random checkpoint whose text decoder is the ~110 M config of ``gemma4 bench model`` (with the toy
tokenizer's 600-odd-token vocabulary that is ~88 M parameters) and whose vision and audio towers are the
``tiny-e2b`` preset's (``write_sample_checkpoint(text=...)``), float32, layer scalars drawn in [0.5, 1.5] (as in
``gemma4 bench generate``). Both sides answer every row greedily with the same ``max_new_tokens``, stopping at the
checkpoint's stop ids.

* Ours: ``run_infer`` with 1 and with 2 worker processes preparing rows, ``batch_size`` engine slots.
* The reference: for each ``batch_size`` manifest rows, in order: decode the media (the reference's
  ``load_image`` / ``load_video``, ``soundfile``), render the prompt (``preprocess.chat.render_chat``: the toy
  checkpoint has no chat template for the reference processor to apply), call ``Gemma4Processor`` on the batch
  (left padding), then ``Gemma4ForConditionalGeneration.generate(do_sample=False)``. Its feature extractor stops
  at 30 s, so each longer clip is cut into 30 s pieces with one ``<|audio|>`` each (ours cuts near quiet points:
  prompts differ by a few audio tokens). A row whose media or processing fails is skipped and counted.

Each side runs in a fresh process with torch's default thread count. Counted on both sides: everything after the
imports — loading the checkpoint (and the tokenizer / processor), preparing every row, generating, and for ours
writing the result shards — until the last answer; not the process start. Rates: answered rows ÷ those seconds,
and generated tokens (stop id included) ÷ the same seconds. Ours also prints the model's busy share (the job's
own figure: 1 − seconds its engine waited for prepared rows ÷ seconds from model load to the last answer).
The greedy tokens of rows both sides answered are compared position by position (random weights on other batch
shapes and paddings: a near-tie may flip, so the share is printed, not required). The sample checkpoint draws its
token embedding small (``write_sample_checkpoint``), so each greedy token depends on the whole prompt. One run
per side (no best-of): the default run (24 rows, batch 8,
32 new tokens) takes about 1.5 minutes on 2 idle cores (the reference ~1.4 s per row, mostly prefilling prompts of
100–1 000 tokens); contention slows both sides by large, uneven factors. With few rows, start-up (loading,
the first shard's preparation) weighs on both sides and the ratio tends to 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .benchmarking import Row, format_row, reference, reference_row

__all__ = ["TARGET", "make_checkpoint", "run"]

TARGET = 3.0  # × the reference loop's rows per second


def make_checkpoint(directory: str | os.PathLike, tokenizer_dir: str | os.PathLike, seed: int = 0, text=None) -> Path:
    """The benchmark's checkpoint (see the module docstring) in ``directory``; returns it. ``text``: another text
    decoder config than ``bench_config()`` (the tests' tiny one)."""
    import torch

    from model.checkpoint import load_pretrained, save_pretrained
    from pipelines.sample_data import write_sample_checkpoint

    from .bench_model import bench_config

    directory = Path(directory)
    write_sample_checkpoint(directory, tokenizer_dir, seed=seed, text=text or bench_config())
    model = load_pretrained(directory)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in model.language_model.layers:  # all ones at init
            layer.layer_scalar.uniform_(0.5, 1.5)
    save_pretrained(model, directory)
    return directory


# --- the measuring processes --------------------------------------------------------------------------------


def _ours(manifest: str, checkpoint: str, out: str, workers: int, batch: int, new_tokens: int) -> dict:
    from pipelines.infer_job import InferSettings, read_results, run_infer
    from pipelines.preprocess_job import PreprocessSettings

    settings = InferSettings(
        checkpoint=checkpoint,
        preprocess=PreprocessSettings(tokenizer=checkpoint, rows_per_shard=16),  # gemma4 infer's default
        max_new_tokens=new_tokens,
        batch_size=batch,
        greedy=True,  # the sample checkpoint's generation_config.json samples; both sides decode greedily here
    )
    started = time.perf_counter()
    summary = run_infer(manifest, out, settings, workers=workers, progress=False)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "rows": summary.this_run.get("rows", 0),
        "generated": summary.this_run.get("generated", 0),
        "skipped": summary.errors,
        "busy": summary.busy,
        "waited": summary.waited_seconds,
        "tokens": {r["id"]: r["completion_ids"] for r in read_results(out)},
    }


def _reference(manifest: str, checkpoint: str, batch: int, new_tokens: int) -> dict:
    import torch

    import oracles
    from preprocess.tokenizer import SPECIAL_STRINGS

    with open(manifest) as fp:
        source = [json.loads(line) for line in fp if line.strip()]
    # the stop ids ours uses: config.json's eos_token_id, then generation_config.json's (tokenizer's turn ids in it)
    stop = json.loads((Path(checkpoint) / "config.json").read_text())["eos_token_id"]
    stop = list(
        dict.fromkeys(stop + json.loads((Path(checkpoint) / "generation_config.json").read_text())["eos_token_id"])
    )
    started = time.perf_counter()
    processor = oracles.load("hf_processor").processor(checkpoint, list(SPECIAL_STRINGS.values()))
    processor.tokenizer.padding_side = "left"  # generation appends at the right
    model = oracles.load("hf_model").load(checkpoint)
    tokens: dict[str, list[int]] = {}
    generated = skipped = 0
    for start in range(0, len(source), batch):
        rows, ids = [], []
        for raw in source[start : start + batch]:
            try:
                rows.append(reference_row(raw["messages"], os.path.dirname(manifest)))
                ids.append(raw["id"])
            except Exception:  # broken media, malformed rows: skipped and counted
                skipped += 1
        if not rows:
            continue
        kwargs: dict = {"text": [r["text"] for r in rows], "padding": True, "add_special_tokens": False}
        if any(r["images"] for r in rows):
            kwargs["images"] = [r["images"] for r in rows]
        if audio := [piece for r in rows for piece in r["audio"]]:
            kwargs["audio"] = audio
        if videos := [video for r in rows for video in r["videos"]]:
            frames = next(r["num_frames"] for r in rows if r["videos"])
            kwargs["videos"] = videos
            kwargs["videos_kwargs"] = {
                "video_metadata": [m for r in rows for m in r["metadata"]],
                "num_frames": frames,
                "do_sample_frames": True,
            }
        inputs = processor(**kwargs, return_tensors="pt").data
        if "input_features_mask" in inputs:
            inputs["input_features_mask"] = inputs["input_features_mask"].bool()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, eos_token_id=stop)
        for row_id, new in zip(ids, out[:, inputs["input_ids"].shape[1] :].tolist(), strict=True):
            cut = next((i + 1 for i, t in enumerate(new) if t in stop), len(new))  # stop id kept, as ours keeps it
            tokens[row_id] = new[:cut]
            generated += cut
    return {
        "seconds": time.perf_counter() - started,
        "rows": len(tokens),
        "generated": generated,
        "skipped": skipped,
        "tokens": tokens,
    }


def _child(argv: Sequence[str]) -> None:
    """The measuring process's entry: ``ours MANIFEST CHECKPOINT OUT WORKERS BATCH NEW RESULT`` or ``reference
    MANIFEST CHECKPOINT BATCH NEW RESULT``; writes its figures as JSON to RESULT."""
    import torch

    torch.set_grad_enabled(False)
    import pipelines.infer_job  # noqa: F401  (imports out of the timings, on both sides)
    import preprocess.prompt  # noqa: F401

    if argv[0] == "ours":
        manifest, checkpoint, out, workers, batch, new, result = argv[1:]
        figures = _ours(manifest, checkpoint, out, int(workers), int(batch), int(new))
    else:
        import oracles

        oracles.load("hf_model"), oracles.load("hf_processor")
        manifest, checkpoint, batch, new, result = argv[1:]
        figures = _reference(manifest, checkpoint, int(batch), int(new))
    Path(result).write_text(json.dumps(figures))


def _measure(args: list[str], result: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    code = "import sys; from bench.bench_infer import _child; _child(sys.argv[1:])"
    done = subprocess.run(
        [sys.executable, "-c", code, *args, os.fspath(result)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"gemma4 bench infer: {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(result.read_text())


def _agreement(ours: dict[str, list[int]], theirs: dict[str, list[int]]) -> tuple[float, int, int]:
    """Over rows both answered: the share of positions (to the longer of the two) holding the same token, the
    number of rows whose tokens are all equal, and the number of rows compared."""
    both = sorted(set(ours) & set(theirs))
    equal = total = same_rows = 0
    for row_id in both:
        a, b = ours[row_id], theirs[row_id]
        equal += sum(x == y for x, y in zip(a, b, strict=False))
        total += max(len(a), len(b))
        same_rows += a == b
    return (equal / total if total else 1.0), same_rows, len(both)


def run(
    *,
    rows: int = 24,
    batch_size: int = 8,
    new_tokens: int = 32,
    workers: Sequence[int] = (1, 2),
    seed: int = 0,
    emit: Callable[[str], None] = print,
    text=None,
) -> list[Row]:
    """Make the sample and the checkpoint, measure both sides (see the module docstring), emit the lines.
    ``text``: the text decoder's config (default ``bench_config()``; the tests pass a tiny one)."""
    import torch

    from model.checkpoint import load_config
    from pipelines.sample_data import write_sample_dataset

    if rows < 1 or batch_size < 1 or new_tokens < 1 or not workers or min(workers) < 1:
        raise ValueError(f"rows, batch size, new tokens and workers must be positive: {rows}, {batch_size}, "
                         f"{new_tokens}, {tuple(workers)}")  # fmt: skip
    with_reference = reference("hf_model") is not None and reference("hf_processor") is not None
    with tempfile.TemporaryDirectory(prefix="gemma4-bench-infer-") as tmp:
        tmp = Path(tmp)
        manifest, tokenizer_dir = write_sample_dataset(tmp / "data", rows=rows, seed=seed)
        checkpoint = make_checkpoint(tmp / "checkpoint", tokenizer_dir, seed, text)
        parameters = load_config(checkpoint).num_parameters()["total"]
        decoder = "a custom" if text else "the bench model's"
        emit(
            f"gemma4 bench infer: {parameters / 1e6:.0f} M parameters ({decoder} text decoder, tiny-e2b towers), "
            f"float32; {rows} "
            f"sample rows, batch {batch_size}, {new_tokens} new tokens, greedy; {torch.get_num_threads()} threads; "
            "one run per side, checkpoint load included"
        )
        theirs = None
        if with_reference:
            theirs = _measure(
                ["reference", os.fspath(manifest), os.fspath(checkpoint), str(batch_size), str(new_tokens)],
                tmp / "reference.json",
            )
        else:
            emit("reference: transformers is not installed; printing our figures alone")
        result: list[Row] = []
        for count in workers:
            ours = _measure(
                ["ours", os.fspath(manifest), os.fspath(checkpoint), os.fspath(tmp / f"out-{count}"), str(count),
                 str(batch_size), str(new_tokens)],
                tmp / f"ours-{count}.json",
            )  # fmt: skip
            group = f"{count} worker" + ("s" if count > 1 else "")
            note = (
                f"model busy {ours['busy']:.0%} (waited {ours['waited']:.1f} s for input); {ours['rows']} rows in "
                f"{ours['seconds']:.1f} s"
            )
            if theirs is not None:
                share, same_rows, compared = _agreement(ours["tokens"], theirs["tokens"])
                note += (
                    f", reference {theirs['rows']} in {theirs['seconds']:.1f} s ({theirs['skipped']} skipped); "
                    f"greedy tokens equal to the reference's: {share:.1%} ({same_rows}/{compared} rows identical)"
                )
            rate = Row(
                group,
                "rows/s",
                theirs["rows"] / theirs["seconds"] if theirs else None,
                ours["rows"] / ours["seconds"],
                TARGET,
                unit="rows/s",
                baseline_label="plain loop",
                note=note,
            )
            tokens = Row(
                group,
                "generated tok/s",
                theirs["generated"] / theirs["seconds"] if theirs else None,
                ours["generated"] / ours["seconds"],
                None,
                unit="tok/s",
                baseline_label="plain loop",
                note=f"generated tokens: ours {ours['generated']}"
                + (f", reference {theirs['generated']}" if theirs else ""),
            )
            for row in (rate, tokens):
                result.append(row)
                emit(format_row(row))
    return result
