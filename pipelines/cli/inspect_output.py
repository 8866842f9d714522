"""``gemma4 inspect OUT``: report on a preprocess output; show one row, preview one of its images or video frames.

(Named for what it inspects: a module ``inspect`` here would shadow the standard library's.)"""

from __future__ import annotations

import argparse

from .common import count

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="report on a preprocess output; show one row, preview one of its images", arguments=_arguments
    )
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="output directory of gemma4 preprocess")
    p.add_argument("--row", default=None, help="a row id, or a position (digits)")
    p.add_argument("--image", type=count, default=0, help="which image of the row to preview")
    p.add_argument("--video", type=count, default=None, help="preview a frame of this video of the row instead")
    p.add_argument(
        "--frame", type=count, default=None, help="which frame of the video (default 0; rows without images: video 0)"
    )
    p.add_argument("--preview", default=None, help="write the image (or video frame) as the model sees it to this PNG")


def run(args: argparse.Namespace) -> int:
    from pipelines.readback import open_output

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
        from pipelines.preview import draw_preview, unpatchify

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
