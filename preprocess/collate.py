"""Batch collation of preprocessed examples, its inverse, and length bucketing.

``collate`` pads token sequences (left by default, for generation), builds the attention mask and position
ids, and stacks the media of all examples in order: image patches padded to the largest budget in the batch,
audio segments padded to the longest, video frames padded like images. Patches stay uint8 (4× smaller to move);
:func:`to_device` rescales them to float on the target device. ``uncollate`` recovers every example exactly,
which the tests check.

Shapes: B examples, T tokens, I images, M patches per image (9 × the largest budget), S audio segments,
F frames, V video frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .budget import max_patches
from .image import PATCH_VALUES, ImagePatches
from .prompt import AudioFeatures, Example
from .video import VideoPatches

__all__ = ["collate", "uncollate", "to_device", "bucket_by_length"]


def _pad_patches(items: Sequence[ImagePatches]) -> tuple[torch.Tensor, torch.Tensor]:
    """(I, M, 768) uint8 zero-padded patches and (I, M, 2) int64 positions, (−1, −1) for padding."""
    width = max((max_patches(item.budget) for item in items), default=0)
    patches = torch.zeros((len(items), width, PATCH_VALUES), dtype=torch.uint8)  # (I, M, 768)
    positions = torch.full((len(items), width, 2), -1, dtype=torch.int64)  # (I, M, 2)
    for row, item in enumerate(items):
        patches[row, : item.num_patches] = torch.from_numpy(item.patches)
        positions[row, : item.num_patches] = torch.from_numpy(np.array(item.positions))
    return patches, positions


def collate(examples: Sequence[Example], *, pad_id: int, padding_side: str = "left") -> dict:
    """One batch from ``examples`` (see the module docstring for the keys)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    lengths = [len(e.input_ids) for e in examples]
    width = max(lengths, default=0)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.int64)  # (B, T)
    types = torch.zeros((len(examples), width), dtype=torch.int64)  # (B, T)
    attention = torch.zeros((len(examples), width), dtype=torch.bool)  # (B, T)
    for row, (example, length) in enumerate(zip(examples, lengths, strict=True)):
        span = slice(width - length, width) if padding_side == "left" else slice(0, length)
        input_ids[row, span] = torch.from_numpy(example.input_ids.astype(np.int64))
        types[row, span] = torch.from_numpy(example.mm_token_type_ids.astype(np.int64))
        attention[row, span] = True
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)  # (B, T): 0 on padding
    images = [image for e in examples for image in e.images]
    frames = [frame for e in examples for video in e.videos for frame in video.frames]
    segments = [segment for e in examples for segment in e.audio]
    pixel_values, image_positions = _pad_patches(images)
    video_values, video_positions = _pad_patches(frames)
    longest = max((s.features.shape[0] for s in segments), default=0)
    features = torch.zeros((len(segments), longest, 128), dtype=torch.float32)  # (S, F, 128)
    feature_mask = torch.zeros((len(segments), longest), dtype=torch.bool)  # (S, F)
    for row, segment in enumerate(segments):
        features[row, : segment.features.shape[0]] = torch.from_numpy(segment.features)
        feature_mask[row, : segment.mask.shape[0]] = torch.from_numpy(segment.mask)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "position_ids": position_ids,
        "mm_token_type_ids": types,
        "pixel_values": pixel_values,  # uint8: see to_device
        "image_position_ids": image_positions,
        "num_soft_tokens_per_image": [i.num_soft_tokens for i in images],
        "pixel_values_videos": video_values,  # uint8
        "video_position_ids": video_positions,
        "num_frames_per_video": [v.num_frames for e in examples for v in e.videos],
        "input_features": features,
        "input_features_mask": feature_mask,
        "padding_side": padding_side,
        "_examples": [_layout(e) for e in examples],  # what uncollate needs
    }


def _layout(example: Example) -> dict:
    return {
        "length": len(example.input_ids),
        "images": [(i.size, i.original_size, i.budget) for i in example.images],
        "audio": [(a.features.shape[0], a.num_tokens, a.start_s, a.end_s, a.part) for a in example.audio],
        "videos": [(v.timestamps, v.budget, [(f.size, f.original_size) for f in v.frames]) for v in example.videos],
        "summary": example.summary,
    }


def uncollate(batch: dict) -> list[Example]:
    """The examples a batch was made of, exactly (patches back to uint8 arrays, unpadded)."""
    examples = []
    image_row = frame_row = segment_row = 0
    for row, layout in enumerate(batch["_examples"]):
        length = layout["length"]
        width = batch["input_ids"].shape[1]
        span = slice(width - length, width) if batch["padding_side"] == "left" else slice(0, length)
        images = []
        for size, original, budget in layout["images"]:
            count = (size[0] // 16) * (size[1] // 16)
            patches = batch["pixel_values"][image_row, :count].numpy().copy()
            images.append(ImagePatches(patches=patches, size=size, original_size=original, budget=budget))
            image_row += 1
        audio = []
        for frames, tokens, start, end, part in layout["audio"]:
            audio.append(
                AudioFeatures(
                    batch["input_features"][segment_row, :frames].numpy().copy(),
                    batch["input_features_mask"][segment_row, :frames].numpy().copy(),
                    tokens,
                    start,
                    end,
                    part,
                )
            )
            segment_row += 1
        videos = []
        for timestamps, budget, frame_sizes in layout["videos"]:
            frames_out = []
            for size, original in frame_sizes:
                count = (size[0] // 16) * (size[1] // 16)
                patches = batch["pixel_values_videos"][frame_row, :count].numpy().copy()
                frames_out.append(ImagePatches(patches=patches, size=size, original_size=original, budget=budget))
                frame_row += 1
            videos.append(VideoPatches(frames=tuple(frames_out), timestamps=tuple(timestamps), budget=budget))
        examples.append(
            Example(
                input_ids=batch["input_ids"][row, span].numpy().astype(np.int32),
                mm_token_type_ids=batch["mm_token_type_ids"][row, span].numpy().astype(np.int8),
                images=images,
                audio=audio,
                videos=videos,
                summary=layout["summary"],
            )
        )
    return examples


def to_device(batch: dict, device: str | torch.device, dtype: torch.dtype = torch.float32) -> dict:
    """Move a batch's tensors to ``device``; uint8 patches become ``dtype`` in [0, 1] there (x / 255)."""
    out = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            out[key] = value
        elif value.dtype == torch.uint8:
            out[key] = value.to(device, non_blocking=True).to(torch.float32).div_(255).to(dtype)
        else:
            out[key] = value.to(device, non_blocking=True)
    return out


def bucket_by_length(lengths: Sequence[int], batch_size: int, *, seed: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted, then cut), so padding stays small; with
    ``seed``, the order of the batches is shuffled reproducibly. Every index appears exactly once."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if seed is not None:
        rng = np.random.default_rng(seed)
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
