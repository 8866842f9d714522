"""``gemma4 demo [DIR]``: sample-data → preprocess → inspect → infer → chat, as ``make demo`` runs them, under one
directory."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run"]

DEMO_INFER = ["infer", "--max-new-tokens", "16", "--show", "1"]
DEMO_CHAT = ["What is in this picture?", "--max-new-tokens", "24", "--seed", "0"]
DEMO_NOTE = (
    "The checkpoint above is a tiny random model made on the spot: its replies are meaningless text. "
    "gemma4 infer ... --checkpoint DIR runs a real Gemma 4 checkpoint the same way."
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job on a sample made here: sample-data, preprocess, inspect, infer, chat",
        arguments=_arguments,
    )
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", nargs="?", default="out/demo", help="where to write it all (default out/demo)")


def run(args: argparse.Namespace) -> int:
    from pipelines.cli import main

    base = Path(args.directory)
    sample, pre, inferred = base / "sample", base / "preprocessed", base / "inferred"
    steps = [
        ["sample-data", str(sample), "--rows", "40", "--corrupt"],
        ["preprocess", str(sample / "manifest.jsonl"), str(pre), "--tokenizer", str(sample / "tokenizer")],
        ["inspect", str(pre), "--row", "ex0001", "--preview", str(base / "preview.png")],
        DEMO_INFER + [str(pre), str(inferred), "--checkpoint", str(sample / "checkpoint")],
        ["chat", "--checkpoint", str(sample / "checkpoint"), "--image", str(sample / "media" / "img1.jpg")] + DEMO_CHAT,
    ]
    for step in steps:
        print(f"$ gemma4 {' '.join(step)}")
        code = main(step)
        if code:
            return code
    print(DEMO_NOTE)
    return 0
