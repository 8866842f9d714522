"""The ``gemma4`` command line: ``budget``, ``preview``, ``bench images`` and ``bench audio``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from preprocess.budget import (
    SUPPORTED_BUDGETS,
    check_budget,
    image_grid,
    image_padding_patches,
    image_soft_tokens,
    image_target_size,
    max_patches,
)

__all__ = ["main", "budget_table"]


def _budget(text: str) -> int:
    try:
        return check_budget(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _side(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} px: sides must be at least 1 px")
    return value


def budget_table(height: int, width: int, budgets: Sequence[int] = SUPPORTED_BUDGETS) -> str:
    """The ``gemma4 budget`` table for one input size."""
    header = ("budget", "target (h x w)", "patch grid", "soft tokens", "patches", "padding patches")
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
    lines = [f"input {height} x {width} px"]
    for r in [header, *rows]:
        lines.append("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)))
    lines.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cmd_budget(args: argparse.Namespace) -> int:
    print(budget_table(args.height, args.width, args.budget or SUPPORTED_BUDGETS))
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    from .preview import render_preview

    picture = render_preview(args.image, args.budget, exact=not args.fast)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    print(f"wrote {out} ({picture.width} x {picture.height} px)")
    return 0


def _cmd_bench_images(args: argparse.Namespace) -> int:
    from . import bench_images

    bench_images.run(
        args.budget or (280, 1120), count=args.count, repeat=args.repeat, workers=args.workers, seed=args.seed
    )
    return 0


def _cmd_bench_audio(args: argparse.Namespace) -> int:
    from . import bench_audio

    bench_audio.run(
        count=args.count, long_minutes=args.long_minutes, repeat=args.repeat, cores=args.threads, seed=args.seed
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemma4", description="Gemma 4 multimodal preprocessing and inference.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("budget", help="image target size, patches and soft tokens for each budget")
    p.add_argument("height", type=_side, help="image height in px")
    p.add_argument("width", type=_side, help="image width in px")
    p.add_argument("--budget", type=_budget, action="append", help="only this budget (repeatable)")
    p.set_defaults(func=_cmd_budget)

    p = sub.add_parser("preview", help="draw the resized image with its soft-token grid and padding")
    p.add_argument("image", help="image file")
    p.add_argument("--budget", type=_budget, default=280, help="soft-token budget (default 280)")
    p.add_argument("-o", "--output", required=True, help="output picture (PNG)")
    p.add_argument("--fast", action="store_true", help="fast mode: draft JPEG decode and torch resize (not bit-exact)")
    p.set_defaults(func=_cmd_preview)

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    b = bench.add_parser("images", help="image front end against the reference processor")
    b.add_argument("--budget", type=_budget, action="append", help="budget to measure (default 280 and 1120)")
    b.add_argument("--count", type=int, default=48, help="images in the set (default 48)")
    b.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts (default 3)")
    b.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_cmd_bench_images)
    b = bench.add_parser("audio", help="audio features against the reference feature extractor")
    b.add_argument("--count", type=int, default=32, help="clips in the set (default 32)")
    b.add_argument(
        "--long-minutes", type=float, nargs="*", default=[5, 20], help="long recordings, minutes (default 5 20)"
    )
    b.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts (default 3)")
    b.add_argument("--threads", type=int, default=None, help="threads for the batched rows (default: CPU count)")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_cmd_bench_audio)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # bad input: one clear line, no traceback
        print(f"gemma4 {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
