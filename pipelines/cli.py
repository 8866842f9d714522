"""The ``gemma4`` command line: budget, preview, preprocess, inspect, sample-data and the benchmarks."""

from __future__ import annotations

import argparse
import logging
import os
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
    from bench import bench_images

    bench_images.run(
        args.budget or (280, 1120), count=args.count, repeat=args.repeat, workers=args.workers, seed=args.seed
    )
    return 0


def _cmd_bench_audio(args: argparse.Namespace) -> int:
    from bench import bench_audio

    bench_audio.run(
        count=args.count, long_minutes=args.long_minutes, repeat=args.repeat, cores=args.threads, seed=args.seed
    )
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from .preprocess_job import PreprocessSettings, run_preprocess

    settings = PreprocessSettings(
        tokenizer=args.tokenizer,
        image_budget=args.budget,
        max_tokens=args.max_tokens,
        video_frames=args.video_frames,
        video_budget=args.video_budget,
        exact=not args.fast,
        rows_per_shard=args.rows_per_shard,
    )
    if args.engine == "ray":
        from .ray_engine import run_preprocess_ray

        # Joining a cluster: its size is the cluster's; ray.init refuses num_cpus then.
        cpus = None if args.ray_address else args.workers
        summary = run_preprocess_ray(args.input, args.output, settings, num_cpus=cpus, address=args.ray_address)
    else:
        summary = run_preprocess(args.input, args.output, settings, workers=args.workers)
    print("\n".join(summary.lines()))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .preview import draw_preview, unpatchify
    from .readback import open_output

    output = open_output(args.output)
    print("\n".join(output.report()))
    if args.row is None:
        return 0
    example_id, example = output.example(int(args.row) if args.row.isdigit() else args.row)
    print(f"row {example_id}: {len(example.input_ids)} tokens; summary {example.summary}")
    if args.preview is not None:
        if not example.images:
            raise ValueError(f"row {example_id} has no image to preview")
        image = example.images[args.image]
        picture = draw_preview(unpatchify(image.patches, image.size), image.original_size, image.budget)
        picture.save(args.preview)
        print(f"wrote {args.preview} ({picture.width} x {picture.height} px)")
    return 0


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from .sample_data import write_sample_dataset

    manifest, tokenizer = write_sample_dataset(args.directory, rows=args.rows, corrupt=args.corrupt)
    print(f"wrote {manifest} ({args.rows} rows) and a toy tokenizer in {tokenizer}")
    return 0


def _cmd_bench_preprocess(args: argparse.Namespace) -> int:
    from bench import bench_preprocess

    bench_preprocess.run(rows=args.rows, workers=args.workers, seed=args.seed)
    return 0


def _cmd_bench_model(args: argparse.Namespace) -> int:
    from bench import bench_model

    bench_model.run(args.tokens or (512, 2048), repeat=args.repeat, all_logits=not args.prefill_only)
    return 0


def _cmd_bench_encoders(args: argparse.Namespace) -> int:
    from bench import bench_audio_tower, bench_vision_tower

    if args.only in (None, "vision"):
        bench_vision_tower.run(repeat=args.repeat)
    if args.only in (None, "audio"):
        bench_audio_tower.run(repeat=args.repeat, threads=args.threads)
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

    p = sub.add_parser("preprocess", help="preprocess a manifest of chat examples into Parquet shards")
    p.add_argument("input", help="manifest: .jsonl, .parquet, .csv or a datasets directory (save_to_disk)")
    p.add_argument("output", help="output directory (re-running the same command resumes)")
    p.add_argument("--tokenizer", required=True, help="directory with tokenizer.model (and chat_template.jinja)")
    p.add_argument("--budget", type=_budget, default=280, help="image soft-token budget (default 280)")
    p.add_argument("--max-tokens", type=int, default=None, help="lower image budgets so each example fits")
    p.add_argument("--video-frames", type=int, default=32, help="frames sampled per video (default 32)")
    p.add_argument("--video-budget", type=_budget, default=70, help="budget per video frame (default 70)")
    p.add_argument("--fast", action="store_true", help="fast image/audio modes (not bit-identical)")
    p.add_argument("--rows-per-shard", type=int, default=128, help="input rows per output shard (default 128)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local processes or Ray Data")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("inspect", help="report on a preprocess output; show one row, preview one of its images")
    p.add_argument("output", help="output directory of gemma4 preprocess")
    p.add_argument("--row", default=None, help="a row id, or a position (digits)")
    p.add_argument("--image", type=int, default=0, help="which image of the row to preview (default 0)")
    p.add_argument("--preview", default=None, help="write the image as the model sees it to this PNG")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("sample-data", help="write a small synthetic multimodal manifest and a toy tokenizer")
    p.add_argument("directory")
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--corrupt", action="store_true", help="include broken rows (they go to the errors table)")
    p.set_defaults(func=_cmd_sample_data)

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
    b = bench.add_parser("preprocess", help="the batch job against datasets.map with the reference processor")
    b.add_argument("--rows", type=int, default=2000, help="rows in the generated dataset (default 2000)")
    b.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_cmd_bench_preprocess)
    b = bench.add_parser("model", help="text decoder prefill against the reference")
    b.add_argument("--tokens", type=int, action="append", help="prompt length (repeatable; default 512 and 2048)")
    b.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts (default 3)")
    b.add_argument("--prefill-only", action="store_true", help="skip the informational all-logits lines")
    b.set_defaults(func=_cmd_bench_model)
    b = bench.add_parser("encoders", help="vision and audio towers against the reference")
    b.add_argument("--only", choices=("vision", "audio"), default=None, help="one tower only")
    b.add_argument("--threads", type=int, default=None, help="threads for the audio tower (default: torch's)")
    b.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts (default 3)")
    b.set_defaults(func=_cmd_bench_encoders)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError, KeyError, IndexError) as exc:  # bad input: one clear line, no traceback
        print(f"gemma4 {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
