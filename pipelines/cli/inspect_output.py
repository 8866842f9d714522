"""``gemma4 inspect OUT``: report on a preprocess or infer output; show one row (an example, or a result), print its
decoded prompt (``--prompt``), preview one of its images or video frames.

(Named for what it inspects: a module ``inspect`` here would shadow the standard library's.)"""

from __future__ import annotations

import argparse

from .common import count

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="report on a preprocess or infer output; show one row, its prompt, preview one of its images",
        arguments=_arguments,
    )
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="output directory of gemma4 preprocess or gemma4 infer")
    p.add_argument(
        "--row", default=None, help="a row id, or a position (digits); an infer output shows its first result without"
    )
    p.add_argument(
        "--prompt", action="store_true", help="print the row's prompt decoded (media soft tokens shown as one marker)"
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="the tokenizer to decode with (default: the one the output's job.json records)",
    )
    p.add_argument("--image", type=count, default=0, help="which image of the row to preview")
    p.add_argument("--video", type=count, default=None, help="preview a frame of this video of the row instead")
    p.add_argument(
        "--frame", type=count, default=None, help="which frame of the video (default 0; rows without images: video 0)"
    )
    p.add_argument("--preview", default=None, help="write the image (or video frame) as the model sees it to this PNG")


def run(args: argparse.Namespace) -> int:
    from pipelines.readback import ResultsDir, open_job

    output = open_job(args.output)
    print("\n".join(output.report()))
    if isinstance(output, ResultsDir):
        return _result(output, args)
    if args.row is None:
        if args.prompt:
            raise ValueError("--prompt prints one row's prompt: give --row")
        return 0
    if args.row.isdigit():
        position = int(args.row)
        example = output.example(position)
        example_id = output.ids()[position]
    else:
        example, example_id = output.example(args.row), args.row
    print(f"row {example_id}: {len(example.input_ids)} tokens; summary {example.summary}")
    if args.prompt:
        _print_prompt(example, output.tokenizer(args.tokenizer))
    if args.preview is not None:
        image, what = _preview_source(example, example_id, args)
        from pipelines.preview import draw_preview, unpatchify

        picture = draw_preview(unpatchify(image.patches, image.size), image.original_size, image.budget)
        picture.save(args.preview)
        print(f"wrote {args.preview} ({what}; {picture.height} x {picture.width} px, h x w)")
    return 0


def _result(output, args: argparse.Namespace) -> int:
    """An infer output: one result row (``--row``'s, else the first) and with ``--prompt`` its prompt."""
    import json

    if args.preview is not None:
        raise ValueError("--preview draws an image of a preprocess output; this is an infer output")
    key = None if args.row is None else int(args.row) if args.row.isdigit() else args.row
    if key is None:
        results = output.results()
        if not results:
            print("no results (every row failed: see the errors table)")
            return 0
        row = results[0]
    else:
        row = output.result(key)
    print(json.dumps(row, ensure_ascii=False, indent=1))
    if args.prompt:
        row_key = row.get("custom_id", row.get("id")) if key is None else key
        _print_prompt(output.example(row_key), output.tokenizer(args.tokenizer))
    return 0


def _print_prompt(example, tokenizer) -> None:
    from pipelines.readback import prompt_text

    print("prompt:")
    print(prompt_text(example, tokenizer))


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
