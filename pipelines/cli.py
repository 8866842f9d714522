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


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value}: must be at least {minimum}")
    return value


def _positive(text: str) -> int:
    """An argparse type: an int ≥ 1 (counts of workers, frames, rows per shard, tokens …)."""
    return _whole_number(text, 1)


def _seconds(text: str) -> float | None:
    """An argparse type: a positive number of seconds, or ``none`` for no limit."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (or 'none')") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number of seconds (or 'none')")
    return value


def _limit(text: str) -> tuple[str, str]:
    """An argparse type: ``NAME=VALUE`` for one ``MediaLimits`` field (checked when the limits are built)."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE, e.g. max_audio_seconds=3600")
    return name.strip().replace("-", "_"), value.strip()


def _media_limits(pairs: Sequence[tuple[str, str]]):
    """``MediaLimits`` with the ``--limit`` overrides; ``ValueError`` naming a bad name or value."""
    from dataclasses import fields

    from preprocess.limits import MediaLimits

    known = {f.name for f in fields(MediaLimits)}
    overrides: dict[str, float | int | None] = {}
    for name, value in pairs:
        if name not in known:
            raise ValueError(f"--limit {name}: unknown limit (known: {', '.join(sorted(known))})")
        if value.lower() == "none":
            overrides[name] = None
            continue
        try:
            overrides[name] = float(value) if name.endswith("_seconds") else int(value)
        except ValueError:
            raise ValueError(f"--limit {name}={value}: not a number (or 'none' for no limit)") from None
    return MediaLimits(**overrides)


def _template_kwarg(text: str) -> tuple[str, object]:
    """An argparse type: ``KEY=VALUE`` for one chat-template variable; VALUE is read as JSON when it parses
    (``true``, ``3``, ``["a"]``, ``"quoted"``), else kept as the string written."""
    import json

    key, equals, value = text.partition("=")
    key = key.strip()
    if not equals or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE with KEY a name, e.g. date_string=2026-12-01")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _template_kwargs(pairs: Sequence[tuple[str, object]]) -> dict[str, object]:
    """The ``--template-kwarg`` pairs as a dict; ``ValueError`` naming a key given twice."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"--template-kwarg {key}: given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def _tools_file(path: str | None) -> list | None:
    """The tool specs of a ``--tools`` JSON file (a list of specs); ``ValueError`` naming the file otherwise."""
    if path is None:
        return None
    import json

    from data_specs.manifest import check_tools

    with open(path, "rb") as fp:
        try:
            tools = json.load(fp)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"--tools {path!r}: not JSON ({exc})") from None
    return check_tools(tools, f"--tools {path!r}")


def _count(text: str) -> int:
    """An argparse type: an int ≥ 0 (an index, or a number of rows that may be zero)."""
    return _whole_number(text, 0)


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


def _cmd_budget(args: argparse.Namespace) -> int:
    print(budget_table(args.height, args.width, args.budget or SUPPORTED_BUDGETS))
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    from .preview import render_preview

    picture = render_preview(args.image, args.budget, exact=not args.fast)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    print(f"wrote {out} ({picture.height} x {picture.width} px, h x w)")
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


def _front_end_defaults(tokenizer: str):
    """The ``processor_config.json`` defaults of the checkpoint (or tokenizer folder) ``tokenizer`` names."""
    from data_specs.checkpoint_dir import resolve_checkpoint
    from preprocess.processor_config import read_processor_config

    path = Path(tokenizer)
    return read_processor_config(path.parent if path.is_file() else resolve_checkpoint(tokenizer))


def _preprocess_settings(args: argparse.Namespace, tokenizer: str):
    """The front end's settings from the options :func:`_front_end_options` added; the image budget, video frames
    and video budget left unsaid are the checkpoint's ``processor_config.json``'s, else the front end's own."""
    from .preprocess_job import PreprocessSettings

    defaults = _front_end_defaults(tokenizer)
    return PreprocessSettings(
        tokenizer=tokenizer,
        image_budget=_first(args.budget, defaults.image_budget, PreprocessSettings.image_budget),
        max_tokens=args.max_prompt_tokens,
        video_frames=_first(args.video_frames, defaults.video_frames, PreprocessSettings.video_frames),
        video_budget=_first(args.video_budget, defaults.video_budget, PreprocessSettings.video_budget),
        exact=not args.fast,
        rows_per_shard=args.rows_per_shard,
        media_root=args.media_root,
        row_timeout_s=args.row_timeout,
        limits=_media_limits(args.limit or ()),
        enable_thinking=args.enable_thinking,
        head=args.head,
        tools=_tools_file(args.tools),
        template_kwargs=_template_kwargs(args.template_kwarg or ()),
    )


def _first(*values):
    """The first value that is not None."""
    return next(v for v in values if v is not None)


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from .preprocess_job import run_preprocess

    settings = _preprocess_settings(args, args.tokenizer)
    if args.engine == "ray":
        from .ray_engine import run_preprocess_ray

        # Joining a cluster: its size is the cluster's; ray.init refuses num_cpus then.
        cpus = None if args.ray_address else args.workers
        summary = run_preprocess_ray(args.input, args.output, settings, num_cpus=cpus, address=args.ray_address)
    else:
        summary = run_preprocess(args.input, args.output, settings, workers=args.workers)
    print("\n".join(summary.lines()))
    return _exit_status(summary.rows, summary.errors, args.fail_on_errors)


def _cmd_infer(args: argparse.Namespace) -> int:
    from .infer_job import InferSettings, plan_infer, run_infer

    settings = InferSettings(
        checkpoint=args.checkpoint,
        preprocess=_preprocess_settings(args, args.checkpoint),
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        seed=args.seed,
        batch_size=args.batch_size,
        context=args.context,
        prefill_chunk=args.prefill_chunk,
        output_format=args.output_format,
        device=args.device,
        dtype=args.dtype,
        cuda_graphs=not args.no_cuda_graphs,
    )
    plan = plan_infer(settings)  # every check, before the output folder, a worker or Ray exists
    print(plan.line(), flush=True)
    if args.engine == "ray":
        from .ray_infer import run_infer_ray

        cpus = None if args.ray_address else args.workers
        summary = run_infer_ray(args.input, args.output, settings, num_cpus=cpus, address=args.ray_address, plan=plan)
    else:
        summary = run_infer(args.input, args.output, settings, workers=args.workers, plan=plan)
    print("\n".join(summary.lines()))
    if args.show:
        _show_results(args.output, args.show)
    return _exit_status(summary.rows, summary.errors, args.fail_on_errors)


# Exit statuses of the jobs: 0 every row answered (or some failed, without --fail-on-errors); 2 bad input or
# settings (nothing ran); 3 every row failed; 4 some rows failed with --fail-on-errors.
EXIT_ALL_FAILED, EXIT_SOME_FAILED = 3, 4


def _exit_status(rows: int, errors: int, fail_on_errors: bool) -> int:
    """A job's exit status from its counts: a job in which every row failed is never a success."""
    if rows and errors == rows:
        print(f"every one of the {rows} rows failed (see the errors table)", file=sys.stderr)
        return EXIT_ALL_FAILED
    if errors and fail_on_errors:
        return EXIT_SOME_FAILED
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    """One question (and its media) to a checkpoint: the reply streamed as it comes, or parsed with --json."""
    import json

    from .chat_model import ChatModel, conversation

    options = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "greedy": args.greedy,
        "seed": args.seed,
        "enable_thinking": args.enable_thinking,
        "image_budget": args.budget,
    }
    messages = conversation(args.prompt, images=args.image, audio=args.audio, videos=args.video, system=args.system)
    model = ChatModel.from_pretrained(
        args.checkpoint,
        device=args.device,
        dtype=args.dtype,
        context=args.context,
        batch_size=1,
        cuda_graphs=not args.no_cuda_graphs,
    )
    if args.json:
        print(json.dumps(model.chat(messages, **options).to_dict(), ensure_ascii=False, indent=2))
        return 0
    for delta in model.stream(messages, **options):
        print(delta, end="", flush=True)
    print()
    return 0


def _show_results(output: str, count: int) -> None:
    """Print the first ``count`` result rows of an infer output (id, reason, tokens, the reply's parts)."""
    import json

    from .infer_job import read_results

    for row in read_results(output)[:count]:
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


def _cmd_demo(args: argparse.Namespace) -> int:
    """sample-data → preprocess → inspect → infer → chat, as ``make demo`` runs them, under one directory."""
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


DEMO_INFER = ["infer", "--max-new-tokens", "16", "--show", "1"]
DEMO_CHAT = ["What is in this picture?", "--max-new-tokens", "24", "--seed", "0"]
DEMO_NOTE = (
    "The checkpoint above is a tiny random model made on the spot: its replies are meaningless text. "
    "gemma4 infer ... --checkpoint DIR runs a real Gemma 4 checkpoint the same way."
)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .readback import open_output

    output = open_output(args.output)
    print("\n".join(output.report()))
    if args.row is None:
        return 0
    if args.row.isdigit():
        position = int(args.row)
        example = output.example(position)
        example_id = output.ids()[position]
    else:
        example, example_id = output.example(args.row), args.row
    print(f"row {example_id}: {len(example.input_ids)} tokens; summary {example.summary}")
    if args.preview is not None:
        image, what = _preview_source(example, example_id, args)
        from .preview import draw_preview, unpatchify

        picture = draw_preview(unpatchify(image.patches, image.size), image.original_size, image.budget)
        picture.save(args.preview)
        print(f"wrote {args.preview} ({what}; {picture.height} x {picture.width} px, h x w)")
    return 0


def _preview_source(example, example_id: str, args: argparse.Namespace):
    """The image or video frame of a row that ``--preview`` draws, and a few words saying which it is: the
    ``--image``-th image, or with ``--video``/``--frame`` (or in a row without images) a frame of a video."""
    if args.video is None and args.frame is None and example.images:
        if args.image >= len(example.images):
            raise IndexError(f"row {example_id} has {len(example.images)} images; --image {args.image} is out of range")
        return example.images[args.image], f"image {args.image}"
    if not example.videos:
        raise ValueError(f"row {example_id} has no {'video' if example.images else 'image or video'} to preview")
    number, frame = args.video or 0, args.frame or 0
    if number >= len(example.videos):
        raise IndexError(f"row {example_id} has {len(example.videos)} videos; --video {number} is out of range")
    video = example.videos[number]
    if frame >= len(video.frames):
        raise IndexError(
            f"video {number} of row {example_id} has {len(video.frames)} frames; --frame {frame} is out of range"
        )
    return video.frames[frame], f"video {number}, frame {frame} at {video.timestamps[frame]}"


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from .sample_data import BROKEN_ROWS, write_sample_checkpoint, write_sample_dataset

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


def _cmd_bench_preprocess(args: argparse.Namespace) -> int:
    from bench import bench_preprocess

    bench_preprocess.run(rows=args.rows, workers=args.workers, seed=args.seed)
    return 0


def _cmd_bench_model(args: argparse.Namespace) -> int:
    from bench import bench_model

    bench_model.run(args.tokens or (512, 2048), repeat=args.repeat, all_logits=not args.prefill_only)
    return 0


def _cmd_bench_generate(args: argparse.Namespace) -> int:
    from bench import bench_generate

    if args.device is None:
        if given := [f"--{n}" for n in ("size", "dtype") if getattr(args, n) is not None]:
            raise ValueError(f"{' and '.join(given)}: only with --device (the device mode)")
        try:
            bench_generate.run(
                args.batch or (1, 8),
                prompt=args.prompt or 256,
                new_tokens=args.new_tokens,
                repeat=args.repeat,
                rounds=args.rounds or 2,
            )
        except bench_generate.MeasurementError as exc:  # the rows measured and each failure are printed already
            print(f"gemma4 bench generate: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.rounds is not None:
        raise ValueError("--rounds is for the CPU mode: --device runs one process per engine and size")
    try:
        bench_generate.run_device(
            args.device,
            args.size or ("e2b", "31b"),
            args.batch or (1, 32),
            prompt=args.prompt or 1024,
            new_tokens=args.new_tokens,
            repeat=args.repeat,
            dtype=args.dtype or "bfloat16",
            cuda_graphs=not args.no_cuda_graphs,
        )
    except bench_generate.MeasurementError as exc:  # the rows measured and each failure are printed already
        print(f"gemma4 bench generate: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_bench_prefill(args: argparse.Namespace) -> int:
    from bench import bench_prefill

    bench_prefill.run(args.tokens or (8192,), chunk=args.chunk)
    return 0


def _cmd_bench_cache(args: argparse.Namespace) -> int:
    from bench import bench_cache

    bench_cache.run(args.preset or bench_cache.PRESETS_MEASURED)
    return 0


def _cmd_bench_infer(args: argparse.Namespace) -> int:
    from bench import bench_infer

    bench_infer.run(
        rows=args.rows, batch_size=args.batch_size, new_tokens=args.new_tokens, workers=args.workers or (1, 2)
    )
    return 0


def _bench_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    from bench import bench_checkpoint

    bench_checkpoint.add_arguments(parser)


def _cmd_bench_checkpoint(args: argparse.Namespace) -> int:
    from bench import bench_checkpoint

    return bench_checkpoint.run(args)


def _cmd_bench_encoders(args: argparse.Namespace) -> int:
    from bench import bench_audio_tower, bench_vision_tower

    if args.only in (None, "vision"):
        bench_vision_tower.run(repeat=args.repeat)
    if args.only in (None, "audio"):
        bench_audio_tower.run(repeat=args.repeat, threads=args.threads)
    return 0


def _front_end_options(p: argparse.ArgumentParser, *, rows_per_shard: int) -> None:
    """The options of the front end that ``preprocess`` and ``infer`` share."""
    checkpoint = "the checkpoint's processor_config.json, else"
    p.add_argument("--budget", type=_budget, default=None, help=f"image soft-token budget (default: {checkpoint} 280)")
    p.add_argument(
        "--max-prompt-tokens",
        type=_positive,
        default=None,
        help="lower image budgets so each prompt fits this many tokens (nothing is cut: a row that cannot fit fails)",
    )
    p.add_argument(
        "--video-frames", type=_positive, default=None, help=f"frames sampled per video (default: {checkpoint} 32)"
    )
    p.add_argument(
        "--video-budget", type=_budget, default=None, help=f"budget per video frame (default: {checkpoint} 70)"
    )
    p.add_argument("--fast", action="store_true", help="fast image/audio modes (not bit-identical)")
    p.add_argument(
        "--rows-per-shard",
        type=_positive,
        default=rows_per_shard,
        help=f"input rows per output shard (default {rows_per_shard})",
    )
    p.add_argument(
        "--media-root", default=None, help="media paths must resolve inside this directory (manifests from elsewhere)"
    )
    p.add_argument(
        "--row-timeout", type=_seconds, default=300.0, help="seconds a row may take, or 'none' (default 300)"
    )
    p.add_argument(
        "--limit",
        type=_limit,
        action="append",
        metavar="NAME=VALUE",
        help="raise or lift ('none') one input limit, checked before decoding (repeatable): max_pixels, "
        "max_audio_seconds, max_audio_samples, max_video_frames, max_video_frame_pixels, max_video_pixels, "
        "max_media_parts, max_template_seconds, max_template_chars",
    )
    p.add_argument("--enable-thinking", action="store_true", help="render every prompt with thinking on")
    p.add_argument("--head", type=_positive, default=None, help="only the first N input rows (a smoke run)")
    p.add_argument(
        "--fail-on-errors",
        action="store_true",
        help=f"exit with status {EXIT_SOME_FAILED} when any row failed (a job where every row failed always exits "
        f"{EXIT_ALL_FAILED})",
    )
    p.add_argument(
        "--tools",
        default=None,
        metavar="FILE.json",
        help="a JSON list of tool specs for rows without a 'tools' of their own (its content is part of the job)",
    )
    p.add_argument(
        "--template-kwarg",
        type=_template_kwarg,
        action="append",
        metavar="KEY=VALUE",
        help="a variable for the checkpoint's chat template (repeatable); VALUE is JSON when it parses, else text",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gemma4-pipeline")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows every option's default: appended as "(default: X)" where the help text does not already
    say it, and where there is one to show (not None, not a switch's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "default" not in text
            and default not in (None, False, argparse.SUPPRESS)
            and not isinstance(default, list)
        ):
            text += " (default: %(default)s)"
        return text


def _verbose_anywhere(subparsers):
    """Give every parser ``subparsers`` makes (and the subparsers they make) the ``-v`` option too, so that it
    works after the command as well as before it, and help that shows the defaults."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages")
    add_parser = subparsers.add_parser

    def with_common(name, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        parser = add_parser(name, parents=[common, *kwargs.pop("parents", [])], **kwargs)
        original = parser.add_subparsers
        parser.add_subparsers = lambda **kw: _verbose_anywhere(original(**kw))
        return parser

    subparsers.add_parser = with_common
    return subparsers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma4", description="Gemma 4 multimodal preprocessing and inference.", formatter_class=_DefaultsFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = _verbose_anywhere(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))

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
    p.add_argument(
        "--tokenizer",
        required=True,
        help="checkpoint directory with tokenizer.model, or that file; chat_template.jinja beside it is used too",
    )
    _front_end_options(p, rows_per_shard=128)
    p.add_argument("--workers", type=_positive, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local processes or Ray Data")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("infer", help="generate replies for a manifest, an OpenAI batch file or a preprocess output")
    p.add_argument(
        "input", help="manifest (.jsonl, .parquet, .csv, datasets dir), OpenAI batch .jsonl, or preprocess output"
    )
    p.add_argument("output", help="output directory (re-running the same command resumes)")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint directory as published (config.json, safetensors, tokenizer.json …), or a Hugging Face repo "
        "id found in the local hub cache (e.g. google/gemma-4-E2B-it)",
    )
    p.add_argument(
        "--max-new-tokens",
        "--max-tokens",
        dest="max_new_tokens",
        type=_positive,
        default=256,
        help="new tokens per row, as OpenAI's and vLLM's max_tokens (default 256)",
    )
    p.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature; 0 is greedy (default: the checkpoint's)"
    )
    p.add_argument("--top-k", type=_count, default=None, help="sample among the k likeliest tokens; 0: no cut")
    p.add_argument("--top-p", type=float, default=None, help="sample in the smallest set holding this probability")
    p.add_argument("--greedy", action="store_true", help="greedy decoding, whatever the checkpoint's sampling")
    p.add_argument("--seed", type=_count, default=0, help="sampling seed (each row: seed + its id; default 0)")
    p.add_argument("--batch-size", type=_positive, default=8, help="rows decoded together (engine slots; default 8)")
    p.add_argument("--context", type=_positive, default=4096, help="tokens per row, prompt + new (default 4096)")
    p.add_argument("--prefill-chunk", type=_positive, default=1024, help="prompt tokens per prefill step")
    p.add_argument("--workers", type=_count, default=1, help="processes preparing rows; 0: the model's (default 1)")
    p.add_argument("--device", default="auto", help="auto (CUDA if there is a GPU, else cpu), cpu, cuda, cuda:1 …")
    p.add_argument("--dtype", default=None, help="bfloat16, float32 … (default: the checkpoint's stored dtype)")
    p.add_argument(
        "--no-cuda-graphs", action="store_true", help="decode eagerly on CUDA (default: decode steps as CUDA graphs)"
    )
    p.add_argument("--output-format", choices=("parquet", "jsonl", "openai"), default="parquet", help="results files")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local processes or Ray Data")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--show", type=_count, default=0, help="print this many result rows after the summary")
    _front_end_options(p, rows_per_shard=16)
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser(
        "chat",
        help="ask a checkpoint one question (with images, audio, video): the reply streamed as it comes",
        description="Ask a checkpoint one question, with images, audio or video, and stream its reply.",
    )
    p.add_argument("prompt", help="the question")
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint directory as published, or a repo id in the local hub cache"
    )
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="an image to ask about (repeatable)")
    p.add_argument("--audio", action="append", default=[], metavar="FILE", help="an audio file (repeatable)")
    p.add_argument("--video", action="append", default=[], metavar="FILE", help="a video file (repeatable)")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--enable-thinking", action="store_true", help="let the model think first (shown with --json)")
    p.add_argument("--json", action="store_true", help="print the parsed reply (text, thinking, tool calls, counts)")
    p.add_argument(
        "--max-new-tokens", type=_positive, default=None, help="new tokens at most (default: to the end of --context)"
    )
    p.add_argument("--context", type=_positive, default=8192, help="tokens of prompt and reply together")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the checkpoint's)")
    p.add_argument("--top-k", type=_count, default=None, help="sample among the k likeliest tokens; 0: no cut")
    p.add_argument("--top-p", type=float, default=None, help="sample in the smallest set holding this probability")
    p.add_argument("--greedy", action="store_true", help="greedy decoding, whatever the checkpoint's sampling")
    p.add_argument("--seed", type=_count, default=None, help="makes the reply reproducible (default: a new one)")
    p.add_argument("--budget", type=_budget, default=None, help="image soft-token budget (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="auto (CUDA if there is a GPU, else cpu), cpu, cuda, cuda:1 …")
    p.add_argument("--dtype", default=None, help="bfloat16, float32 … (default: the checkpoint's stored dtype)")
    p.add_argument(
        "--no-cuda-graphs", action="store_true", help="decode eagerly on CUDA (default: decode steps as CUDA graphs)"
    )
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("demo", help="the main job on a sample made here: sample-data, preprocess, inspect, infer, chat")
    p.add_argument("directory", nargs="?", default="out/demo", help="where to write it all (default out/demo)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("inspect", help="report on a preprocess output; show one row, preview one of its images")
    p.add_argument("output", help="output directory of gemma4 preprocess")
    p.add_argument("--row", default=None, help="a row id, or a position (digits)")
    p.add_argument("--image", type=_count, default=0, help="which image of the row to preview (default 0)")
    p.add_argument("--video", type=_count, default=None, help="preview a frame of this video of the row instead")
    p.add_argument(
        "--frame", type=_count, default=None, help="which frame of the video (default 0; rows without images: video 0)"
    )
    p.add_argument("--preview", default=None, help="write the image (or video frame) as the model sees it to this PNG")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "sample-data", help="write a small synthetic multimodal manifest, a toy tokenizer and a tiny checkpoint"
    )
    p.add_argument("directory")
    p.add_argument("--rows", type=_count, default=40, help="rows besides the broken ones (default 40)")
    p.add_argument("--corrupt", action="store_true", help="include broken rows (they go to the errors table)")
    p.set_defaults(func=_cmd_sample_data)

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    b = bench.add_parser("images", help="image front end against the reference processor")
    b.add_argument("--budget", type=_budget, action="append", help="budget to measure (default 280 and 1120)")
    b.add_argument("--count", type=_positive, default=48, help="images in the set (default 48)")
    b.add_argument("--repeat", type=_positive, default=3, help="timed passes; the best counts (default 3)")
    b.add_argument("--workers", type=_positive, default=None, help="worker processes (default: CPU count)")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_cmd_bench_images)
    b = bench.add_parser("audio", help="audio features against the reference feature extractor")
    b.add_argument("--count", type=_positive, default=32, help="clips in the set (default 32)")
    b.add_argument(
        "--long-minutes", type=float, nargs="*", default=[5, 20], help="long recordings, minutes (default 5 20)"
    )
    b.add_argument("--repeat", type=_positive, default=3, help="timed passes; the best counts (default 3)")
    b.add_argument("--threads", type=_positive, default=None, help="threads for the batched rows (default: CPU count)")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_cmd_bench_audio)
    b = bench.add_parser("preprocess", help="the batch job against datasets.map with the reference processor")
    b.add_argument("--rows", type=_positive, default=2000, help="rows in the generated dataset (default 2000)")
    b.add_argument("--workers", type=_positive, default=None, help="worker processes (default: CPU count)")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_cmd_bench_preprocess)
    b = bench.add_parser("model", help="text decoder prefill against the reference")
    b.add_argument("--tokens", type=_positive, action="append", help="prompt length (repeatable; default 512 and 2048)")
    b.add_argument("--repeat", type=_positive, default=3, help="timed passes; the best counts (default 3)")
    b.add_argument("--prefill-only", action="store_true", help="skip the informational all-logits lines")
    b.set_defaults(func=_cmd_bench_model)
    b = bench.add_parser("generate", help="new tokens per second of generate against the reference's")
    b.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="the device mode: random E2B- and 31B-sized decoders built on this device, prefill and decode tok/s "
        "and peak memory (default: the CPU mode, a ~110 M float32 checkpoint)",
    )
    b.add_argument(
        "--size",
        choices=("e2b", "31b", "tiny-e2b", "tiny-31b"),
        action="append",
        help="with --device: model size (repeatable; default e2b and 31b)",
    )
    b.add_argument("--dtype", choices=("bfloat16", "float32"), default=None, help="with --device (default bfloat16)")
    b.add_argument("--batch", type=_positive, action="append", help="rows (repeatable; default 1, 8; --device 1, 32)")
    b.add_argument("--prompt", type=_positive, default=None, help="prompt tokens (default 256; --device 1024)")
    b.add_argument("--new-tokens", type=_positive, default=64, help="new tokens per row (default 64)")
    b.add_argument("--repeat", type=_positive, default=2, help="timed calls per process; the best counts (default 2)")
    b.add_argument(
        "--rounds", type=_positive, default=None, help="processes per engine; the best counts (default 2; not --device)"
    )
    b.add_argument("--no-cuda-graphs", action="store_true", help="with --device cuda: our decode steps eagerly")
    b.set_defaults(func=_cmd_bench_generate)
    b = bench.add_parser(
        "prefill", help="memory of a long prompt's prefill, chunked and in one pass, and the reference's"
    )
    b.add_argument("--tokens", type=_positive, action="append", help="prompt length (repeatable; default 8192)")
    b.add_argument("--chunk", type=_positive, default=None, help="prefill chunk (default: generate's, 1024)")
    b.set_defaults(func=_cmd_bench_prefill)
    b = bench.add_parser("cache", help="KV-cache bytes per preset at 8K, 32K and 128K beside the reference's")
    b.add_argument("--preset", action="append", help="only this preset (repeatable; default the four models)")
    b.set_defaults(func=_cmd_bench_cache)
    b = bench.add_parser("encoders", help="vision and audio towers against the reference")
    b.add_argument("--only", choices=("vision", "audio"), default=None, help="one tower only")
    b.add_argument("--threads", type=_positive, default=None, help="threads for the audio tower (default: torch's)")
    b.add_argument("--repeat", type=_positive, default=3, help="timed passes; the best counts (default 3)")
    b.set_defaults(func=_cmd_bench_encoders)
    b = bench.add_parser(
        "checkpoint",
        help="a checkpoint at published size (published config, random bf16 weights) against the reference: load, "
        "memory, prefill, decode",
    )
    b.set_defaults(func=_cmd_bench_checkpoint)
    _bench_checkpoint_arguments(b)
    b = bench.add_parser("infer", help="the infer job (1 and 2 workers) against a plain loop of reference generate")
    b.add_argument("--rows", type=_positive, default=24, help="sample rows (default 24)")
    b.add_argument("--batch-size", type=_positive, default=8, help="rows decoded together, both sides (default 8)")
    b.add_argument("--new-tokens", type=_positive, default=32, help="new tokens per row (default 32)")
    b.add_argument("--workers", type=_positive, action="append", help="our job's workers (repeatable; default 1, 2)")
    b.set_defaults(func=_cmd_bench_infer)
    return parser


def _interrupted(args: argparse.Namespace) -> str:
    """What an interrupted command says: for a job, how many shards it had written and how to resume."""
    import json

    output = getattr(args, "output", None)
    if args.command not in ("preprocess", "infer") or output is None:
        return "interrupted"
    try:
        state = json.loads((Path(output) / "job.json").read_text())
    except (OSError, ValueError):
        return "interrupted before any shard was written; run the same command to start again"
    settings = state.get("settings", {})
    per_shard = settings.get("rows_per_shard") or settings.get("preprocess", {}).get("rows_per_shard")
    done = len(state.get("shards", {}))
    total = f" of {-(-state['rows'] // per_shard)}" if isinstance(per_shard, int) and "rows" in state else ""
    return f"interrupted after {done}{total} shards; run the same command to resume"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; a job's finished shards are kept
        lead = "\n" if sys.stderr.isatty() else ""  # off the progress bar's line
        print(f"{lead}gemma4 {args.command}: {_interrupted(args)}", file=sys.stderr)
        return 130
    except (ValueError, OSError, LookupError) as exc:  # bad input: one clear line, no traceback
        # A KeyError's str() is the repr of its message (quoted); print the message itself.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"gemma4 {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
