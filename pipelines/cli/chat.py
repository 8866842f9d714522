"""``gemma4 chat PROMPT --checkpoint DIR``: one question (with images, audio or video) to a checkpoint, the reply
streamed as it comes or parsed with ``--json``.

The checkpoint, sampling and device options are ``InferSettings``' (the same meaning and defaults); the reply's
length, the context, the seed and the budget are chat's own: a conversation runs to the end of its context by
default, and a chat is not a resumable job, so its seed defaults to a new one."""

from __future__ import annotations

import argparse

from .common import budget, count, positive
from .options import FieldOptions

__all__ = ["add_parser", "field_options", "run"]

INFER_FIELDS = ("checkpoint", "temperature", "top_k", "top_p", "greedy", "device", "dtype", "cuda_graphs")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "chat",
        help="ask a checkpoint one question (with images, audio, video): the reply streamed as it comes",
        description="Ask a checkpoint one question, with images, audio or video, and stream its reply.",
        arguments=_arguments,
    )
    p.set_defaults(func=run)


def field_options() -> tuple[FieldOptions]:
    """The options generated from ``InferSettings``."""
    from pipelines.infer_job import InferSettings

    return (FieldOptions(InferSettings, INFER_FIELDS),)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the question")
    field_options()[0].add_to(p)
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="an image to ask about (repeatable)")
    p.add_argument("--audio", action="append", default=[], metavar="FILE", help="an audio file (repeatable)")
    p.add_argument("--video", action="append", default=[], metavar="FILE", help="a video file (repeatable)")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--enable-thinking", action="store_true", help="let the model think first (shown with --json)")
    p.add_argument("--json", action="store_true", help="print the parsed reply (text, thinking, tool calls, counts)")
    p.add_argument(
        "--max-new-tokens", type=positive, default=None, help="new tokens at most (default: to the end of --context)"
    )
    p.add_argument("--context", type=positive, default=8192, help="tokens of prompt and reply together")
    p.add_argument("--seed", type=count, default=None, help="makes the reply reproducible (default: a new one)")
    p.add_argument("--budget", type=budget, default=None, help="image soft-token budget (default: the checkpoint's)")


def run(args: argparse.Namespace) -> int:
    """One question (and its media) to a checkpoint: the reply streamed as it comes, or parsed with --json."""
    import json

    from pipelines.chat_model import ChatModel, conversation

    values = field_options()[0].values(args)
    options = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": values["temperature"],
        "top_k": values["top_k"],
        "top_p": values["top_p"],
        "greedy": values["greedy"],
        "seed": args.seed,
        "enable_thinking": args.enable_thinking,
        "image_budget": args.budget,
    }
    messages = conversation(args.prompt, images=args.image, audio=args.audio, videos=args.video, system=args.system)
    model = ChatModel.from_pretrained(
        values["checkpoint"],
        device=values["device"],
        dtype=values["dtype"],
        context=args.context,
        batch_size=1,
        cuda_graphs=values["cuda_graphs"],
    )
    if args.json:
        print(json.dumps(model.chat(messages, **options).to_dict(), ensure_ascii=False, indent=2))
        return 0
    for delta in model.stream(messages, **options):
        print(delta, end="", flush=True)
    print()
    return 0
