"""``gemma4 budget HEIGHT WIDTH``: target size, patch grid, soft tokens and padding of an image at each budget."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from preprocess.budget import (
    SUPPORTED_BUDGETS,
    image_grid,
    image_padding_patches,
    image_soft_tokens,
    image_target_size,
    max_patches,
)

from .common import budget, side

__all__ = ["add_parser", "budget_table", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "budget", help="image target size, patches and soft tokens for each budget", arguments=_arguments
    )
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("height", type=side, help="image height in px")
    p.add_argument("width", type=side, help="image width in px")
    p.add_argument("--budget", type=budget, action="append", help="only this budget (repeatable)")


def run(args: argparse.Namespace) -> int:
    print(budget_table(args.height, args.width, args.budget or SUPPORTED_BUDGETS))
    return 0


def budget_table(height: int, width: int, budgets: Sequence[int] = SUPPORTED_BUDGETS) -> str:
    """The ``gemma4 budget`` table for one input size."""
    header = ("budget", "target px (h x w)", "patch grid (h x w)", "soft tokens", "patches", "padding patches")
    rows = []
    for b in budgets:
        th, tw = image_target_size(height, width, b)
        rows_, cols = image_grid(height, width, b)
        rows.append(
            (
                str(b),
                f"{th} x {tw}",
                f"{rows_} x {cols}",
                str(image_soft_tokens(height, width, b)),
                f"{rows_ * cols} / {max_patches(b)}",
                str(image_padding_patches(height, width, b)),
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"input {height} x {width} px (h x w)"]
    for r in [header, *rows]:
        lines.append("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)))
    lines.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
