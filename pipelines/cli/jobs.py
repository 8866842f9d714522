"""What ``gemma4 preprocess`` and ``gemma4 infer`` share: the front end's options (generated from
``PreprocessSettings``, plus the limits, tools and template variables, which need parsing of their own), the
settings built back from them, the engine options, the exit statuses and what an interrupted job says."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import budget as budget_type
from .common import limit, seconds, template_kwarg
from .options import FieldOptions, Unset

__all__ = [
    "EXIT_ALL_FAILED",
    "EXIT_SOME_FAILED",
    "add_engine_options",
    "add_front_end_options",
    "exit_status",
    "front_end_options",
    "interrupted",
    "preprocess_settings",
]

TOOLS_FILE_BYTES = 16 << 20  # a --tools file: tool specs, never this large

# Exit statuses of the jobs: 0 every row answered (or some failed, without --fail-on-errors); 2 bad input or
# settings (nothing ran); 3 every row failed; 4 some rows failed with --fail-on-errors.
EXIT_ALL_FAILED, EXIT_SOME_FAILED = 3, 4

# The PreprocessSettings fields with an option of their own; limits, tools and template_kwargs are parsed by hand
# (NAME=VALUE pairs, a JSON file, KEY=VALUE pairs), the tokenizer is each command's.
FRONT_END_FIELDS = (
    "image_budget",
    "max_tokens",
    "video_frames",
    "video_budget",
    "exact",
    "rows_per_shard",
    "media_root",
    "row_timeout_s",
    "enable_thinking",
    "head",
    "generation_prompt",
    "continue_final_message",
)
# Left unsaid, these come from the checkpoint (its processor_config.json), else PreprocessSettings' defaults.
CHECKPOINT = Unset("the checkpoint's processor_config.json")


def front_end_options(**defaults: Any) -> FieldOptions:
    """The generated front-end options; ``defaults``: a command's own defaults of some of the fields."""
    from pipelines.preprocess_job import PreprocessSettings

    return FieldOptions(
        PreprocessSettings,
        FRONT_END_FIELDS,
        defaults={"image_budget": CHECKPOINT, "video_frames": CHECKPOINT, "video_budget": CHECKPOINT, **defaults},
        types={"image_budget": budget_type, "video_budget": budget_type, "row_timeout_s": seconds},
    )


def add_front_end_options(p: argparse.ArgumentParser, front_end: FieldOptions) -> None:
    """The front end's options: ``front_end`` (generated) and the hand-parsed ones."""
    from dataclasses import fields

    from preprocess.limits import MediaLimits

    front_end.add_to(p)
    p.add_argument(
        "--limit",
        type=limit,
        action="append",
        metavar="NAME=VALUE",
        help="raise or lift ('none') one input limit, checked before decoding (repeatable); the limits and their "
        "defaults: " + ", ".join(f"{f.name}={f.default}" for f in fields(MediaLimits)),
    )
    p.add_argument(
        "--tools",
        default=None,
        metavar="FILE.json",
        help="a JSON list of tool specs for rows without a 'tools' of their own (its content is part of the job)",
    )
    p.add_argument(
        "--template-kwarg",
        type=template_kwarg,
        action="append",
        metavar="KEY=VALUE",
        help="a variable for the checkpoint's chat template (repeatable); VALUE is JSON when it parses, else text",
    )
    p.add_argument(
        "--fail-on-errors",
        action="store_true",
        help=f"exit with status {EXIT_SOME_FAILED} when any row failed (a job where every row failed always exits "
        f"{EXIT_ALL_FAILED})",
    )


def add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local processes or Ray Data")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")


def preprocess_settings(args: argparse.Namespace, tokenizer: str, front_end: FieldOptions | None = None):
    """The ``PreprocessSettings`` of the parsed ``args`` (options of ``front_end``, by default ``gemma4
    preprocess``'s); the image budget, video frames and video budget left unsaid are the checkpoint's
    ``processor_config.json``'s, else the front end's own."""
    from pipelines.preprocess_job import PreprocessSettings

    front_end = front_end or front_end_options()
    found = _front_end_defaults(tokenizer)
    resolved = {option.field: getattr(found, option.field) for option in front_end.options if option.unset}
    return PreprocessSettings(
        tokenizer=tokenizer,
        **front_end.values(args, resolved),
        limits=media_limits(args.limit or ()),
        tools=tools_file(args.tools),
        template_kwargs=template_kwargs(args.template_kwarg or ()),
    )


def _front_end_defaults(tokenizer: str):
    """The ``processor_config.json`` defaults of the checkpoint (or tokenizer folder) ``tokenizer`` names."""
    from data_specs.checkpoint_dir import resolve_checkpoint
    from preprocess.processor_config import read_processor_config

    path = Path(tokenizer)
    return read_processor_config(path.parent if path.is_file() else resolve_checkpoint(tokenizer))


def media_limits(pairs: Sequence[tuple[str, str]]):
    """``MediaLimits`` with the ``--limit`` overrides, each read as its field's type; ``ValueError`` naming a bad
    name or value."""
    import typing

    from preprocess.limits import MediaLimits

    kinds = typing.get_type_hints(MediaLimits)  # int | None or float | None
    overrides: dict[str, float | int | None] = {}
    for name, value in pairs:
        if name not in kinds:
            raise ValueError(f"--limit {name}: unknown limit (known: {', '.join(sorted(kinds))})")
        if value.lower() == "none":
            overrides[name] = None
            continue
        try:
            overrides[name] = float(value) if float in typing.get_args(kinds[name]) else int(value)
        except ValueError:
            raise ValueError(f"--limit {name}={value}: not a number (or 'none' for no limit)") from None
    return MediaLimits(**overrides)


def template_kwargs(pairs: Sequence[tuple[str, object]]) -> dict[str, object]:
    """The ``--template-kwarg`` pairs as a dict; ``ValueError`` naming a key given twice."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"--template-kwarg {key}: given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def tools_file(path: str | None) -> list | None:
    """The tool specs of a ``--tools`` JSON file (a list of specs); ``ValueError`` naming the file otherwise."""
    if path is None:
        return None
    import json
    import stat

    from data_specs.manifest import check_tools

    info = os.stat(path)  # FileNotFoundError names the path
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end: refused without opening
        raise ValueError(f"--tools {path!r} is not a regular file")
    if info.st_size > TOOLS_FILE_BYTES:
        raise ValueError(f"--tools {path!r} holds {info.st_size} bytes; tool specs take at most {TOOLS_FILE_BYTES}")
    with open(path, "rb") as fp:
        try:
            tools = json.load(fp)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"--tools {path!r}: not JSON ({exc})") from None
    return check_tools(tools, f"--tools {path!r}")


def exit_status(rows: int, errors: int, fail_on_errors: bool) -> int:
    """A job's exit status from its counts: a job in which every row failed is never a success."""
    if rows and errors == rows:
        print(f"every one of the {rows} rows failed (see the errors table)", file=sys.stderr)
        return EXIT_ALL_FAILED
    if errors and fail_on_errors:
        return EXIT_SOME_FAILED
    return 0


def interrupted(args: argparse.Namespace) -> str:
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
