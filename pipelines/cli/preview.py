"""``gemma4 preview IMAGE -o OUT``: the image resized for a budget, with its soft-token grid and padding drawn."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import budget

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "preview", help="draw the resized image with its soft-token grid and padding", arguments=_arguments
    )
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image file")
    p.add_argument("--budget", type=budget, default=280, help="soft-token budget")
    p.add_argument("-o", "--output", required=True, help="output picture (PNG)")
    p.add_argument("--fast", action="store_true", help="fast mode: draft JPEG decode and torch resize (not bit-exact)")


def run(args: argparse.Namespace) -> int:
    from pipelines.preview import render_preview

    picture = render_preview(args.image, args.budget, exact=not args.fast)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    print(f"wrote {out} ({picture.height} x {picture.width} px, h x w)")
    return 0
