"""``gemma4 preprocess MANIFEST OUT --tokenizer DIR``: a manifest of chat examples into Parquet shards, on local
processes or Ray Data."""

from __future__ import annotations

import argparse
import os

from .common import positive
from .jobs import add_engine_options, add_front_end_options, exit_status, front_end_options, preprocess_settings
from .options import FieldOptions

__all__ = ["add_parser", "field_options", "run", "settings"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "preprocess", help="preprocess a manifest of chat examples into Parquet shards", arguments=_arguments
    )
    p.set_defaults(func=run)


def field_options() -> tuple[FieldOptions, FieldOptions]:
    """The options generated from ``PreprocessSettings``: the tokenizer, and the front end's."""
    from pipelines.preprocess_job import PreprocessSettings

    return FieldOptions(PreprocessSettings, ("tokenizer",)), front_end_options()


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="manifest: .jsonl, .parquet, .csv or a datasets directory (save_to_disk)")
    p.add_argument("output", help="output directory (re-running the same command resumes)")
    tokenizer, front_end = field_options()
    tokenizer.add_to(p)
    add_front_end_options(p, front_end)
    p.add_argument("--workers", type=positive, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    add_engine_options(p)


def settings(args: argparse.Namespace):
    """The job's ``PreprocessSettings`` from the parsed ``args``."""
    return preprocess_settings(args, args.tokenizer, field_options()[1])


def run(args: argparse.Namespace) -> int:
    from pipelines.preprocess_job import run_preprocess

    job = settings(args)
    if args.engine == "ray":
        from pipelines.ray_engine import run_preprocess_ray

        # Joining a cluster: its size is the cluster's; ray.init refuses num_cpus then.
        cpus = None if args.ray_address else args.workers
        summary = run_preprocess_ray(args.input, args.output, job, num_cpus=cpus, address=args.ray_address)
    else:
        summary = run_preprocess(args.input, args.output, job, workers=args.workers)
    print("\n".join(summary.lines()))
    return exit_status(summary.rows, summary.errors, args.fail_on_errors)
