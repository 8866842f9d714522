"""The ``gemma4`` command line: one module per command, each with ``add_parser(subparsers)`` and ``run(args)``.

Commands: budget, preview, preprocess, infer, chat, demo, inspect (``inspect_output``), sample-data (``sample_data``)
and bench (its benchmarks registered by ``bench.cli``). What they share: ``common`` (argparse types, the help
formatter that shows each default, the parsers that give every command ``-v`` and add a command's options on first
use), ``options`` (options generated from a settings dataclass's fields, so each default is written once) and
``jobs`` (what preprocess and infer share). ``gemma4 budget`` and ``gemma4 --help`` import neither torch nor
pyarrow; no command but ``bench`` imports the benchmarks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import bench, budget, chat, demo, infer, inspect_output, preprocess, preview, sample_data
from .budget import budget_table
from .common import Parser
from .jobs import EXIT_ALL_FAILED, EXIT_SOME_FAILED, interrupted
from .jobs import preprocess_settings as _preprocess_settings  # noqa: F401  (tests/preprocess reach for it)

__all__ = ["EXIT_ALL_FAILED", "EXIT_SOME_FAILED", "budget_table", "build_parser", "main"]

COMMANDS = (budget, preview, preprocess, infer, chat, demo, inspect_output, sample_data, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gemma4", description="Gemma 4 multimodal preprocessing and inference.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; a job's finished shards are kept
        lead = "\n" if sys.stderr.isatty() else ""  # off the progress bar's line
        print(f"{lead}gemma4 {args.command}: {interrupted(args)}", file=sys.stderr)
        return 130
    except (ValueError, OSError, LookupError) as exc:  # bad input: one clear line, no traceback
        # A KeyError's str() is the repr of its message (quoted); print the message itself.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"gemma4 {args.command}: error: {message}", file=sys.stderr)
        return 2


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gemma4-pipeline")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def __getattr__(name: str):
    """``_cmd_bench_<what>``: the handler ``bench.cli`` registers for ``gemma4 bench <what>`` (tests/bench reach
    for it), imported on demand like the benchmarks themselves."""
    if name.startswith("_cmd_bench_"):
        from bench import cli as bench_cli

        return getattr(bench_cli, f"run_{name.removeprefix('_cmd_bench_')}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
