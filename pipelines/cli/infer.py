"""``gemma4 infer INPUT OUT --checkpoint DIR``: replies for a manifest, an OpenAI batch file or a preprocess output,
on local processes or Ray Data."""

from __future__ import annotations

import argparse

from .common import count
from .jobs import add_engine_options, add_front_end_options, exit_status, front_end_options, preprocess_settings
from .options import FieldOptions

__all__ = ["add_parser", "field_options", "given_front_end", "run", "settings"]

# The InferSettings fields with an option of their own (preprocess is the front end's options).
GENERATION_FIELDS = (
    "checkpoint",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "greedy",
    "seed",
    "batch_size",
    "context",
    "prefill_chunk",
    "output_format",
    "device",
    "dtype",
    "cuda_graphs",
    "stop",
    "served_model_name",
)
# Infer's shards are smaller than preprocess's: the model starts once the first shard is prepared, and a shard is
# the unit of resumption.
FRONT_END_DEFAULTS = {"rows_per_shard": 16}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "infer",
        help="generate replies for a manifest, an OpenAI batch file or a preprocess output",
        arguments=_arguments,
    )
    p.set_defaults(func=run)


def field_options() -> tuple[FieldOptions, FieldOptions]:
    """The options generated from ``InferSettings`` and from its ``PreprocessSettings`` (the front end's)."""
    from pipelines.infer_job import InferSettings

    return FieldOptions(InferSettings, GENERATION_FIELDS), front_end_options(**FRONT_END_DEFAULTS)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input", help="manifest (.jsonl, .parquet, .csv, datasets dir), OpenAI batch .jsonl, or preprocess output"
    )
    p.add_argument("output", help="output directory (re-running the same command resumes)")
    generation, front_end = field_options()
    generation.add_to(p)
    p.add_argument("--workers", type=count, default=1, help="processes preparing rows; 0: the model's")
    add_engine_options(p)
    p.add_argument("--show", type=count, default=0, help="print this many result rows after the summary")
    add_front_end_options(p, front_end)


def settings(args: argparse.Namespace):
    """The job's ``InferSettings`` from the parsed ``args``."""
    from pipelines.infer_job import InferSettings

    generation, front_end = field_options()
    return InferSettings(**generation.values(args), preprocess=preprocess_settings(args, args.checkpoint, front_end))


def given_front_end(args: argparse.Namespace) -> dict[str, tuple[str, object]]:
    """The front-end options given on the command line: flag → (``PreprocessSettings`` field, value); ``--head``
    is the job's (it applies to any input) and is left out."""
    _, front_end = field_options()
    given = {flag: pair for flag, pair in front_end.given(args).items() if pair[0] != "head"}
    for flag, name, value in (
        ("--limit", "limits", args.limit),
        ("--tools", "tools", args.tools),
        ("--template-kwarg", "template_kwargs", args.template_kwarg),
    ):
        if value is not None:
            given[flag] = (name, value)
    return given


def run(args: argparse.Namespace) -> int:
    from pipelines.infer_job import plan_infer, run_infer
    from pipelines.inputs import check_front_end

    check_front_end(args.input, given_front_end(args))  # a preprocessed input's prompts are built already
    job = settings(args)
    plan = plan_infer(job)  # every check, before the output folder, a worker or Ray exists
    print(plan.line(), flush=True)
    if args.engine == "ray":
        from pipelines.ray_infer import run_infer_ray

        cpus = None if args.ray_address else args.workers
        summary = run_infer_ray(args.input, args.output, job, num_cpus=cpus, address=args.ray_address, plan=plan)
    else:
        summary = run_infer(args.input, args.output, job, workers=args.workers, plan=plan)
    print("\n".join(summary.lines()))
    if args.show:
        _show_results(args.output, args.show)
    return exit_status(summary.rows, summary.errors, args.fail_on_errors)


def _show_results(output: str, rows: int) -> None:
    """Print the first ``rows`` result rows of an infer output (id, reason, tokens, the reply's parts)."""
    import json

    from pipelines.infer_job import read_results

    for row in read_results(output)[:rows]:
        if "custom_id" in row:  # an OpenAI batch output line
            print(json.dumps(row, ensure_ascii=False))
            continue
        calls = ", ".join(f"{c['name']}({c['arguments']})" for c in row["tool_calls"]) or "none"
        print(
            f"row {row['id']}: {row['finish_reason']}, {row['prompt_tokens']} prompt tokens (image "
            f"{row['image_tokens']}, audio {row['audio_tokens']}, video {row['video_tokens']}), "
            f"{row['completion_tokens']} new"
        )
        print(f"  text: {row['text']!r}")
        if row["thinking"] is not None:
            print(f"  thinking: {row['thinking']!r}")
        print(f"  tool calls: {calls}")
