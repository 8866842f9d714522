"""``gemma4 sample-data DIR``: a small synthetic multimodal manifest, a toy tokenizer and a tiny random checkpoint
that matches it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import count

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sample-data",
        help="write a small synthetic multimodal manifest, a toy tokenizer and a tiny checkpoint",
        arguments=_arguments,
    )
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory")
    p.add_argument("--rows", type=count, default=40, help="rows besides the broken ones")
    p.add_argument("--corrupt", action="store_true", help="include broken rows (they go to the errors table)")


def run(args: argparse.Namespace) -> int:
    from pipelines.sample_data import BROKEN_ROWS, write_sample_checkpoint, write_sample_dataset

    manifest, tokenizer = write_sample_dataset(args.directory, rows=args.rows, corrupt=args.corrupt)
    checkpoint = write_sample_checkpoint(Path(args.directory) / "checkpoint", tokenizer)
    lines = sum(1 for line in manifest.read_text().splitlines() if line.strip())
    broken = f", {BROKEN_ROWS} of them broken on purpose" if args.corrupt else ""
    print(f"wrote {manifest} ({lines} rows{broken})")
    print(f"      {tokenizer} (a toy tokenizer: tokenizer.json, tokenizer_config.json, chat_template.jinja)")
    print(
        f"      {checkpoint} (a tiny random model that matches the tokenizer, laid out as the published checkpoints; "
        "its outputs mean nothing)"
    )
    return 0
