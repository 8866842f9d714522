"""Batch collation of preprocessed examples into the packed :class:`data_specs.batch.Batch`, its inverse, and
length bucketing.

``collate`` pads token sequences (left by default, for generation) and builds the attention mask; it packs the
media of all examples in order without padding: every image's uint8 patches back to back with its grid, every
video frame likewise, every audio segment's valid log-mel frames back to back with its frame count. Patches stay
uint8 (4× smaller to move); :meth:`Batch.to` rescales them to float on the target device. ``uncollate`` recovers
every example exactly, which the tests check.

For training, ``collate_training`` adds to the same :class:`Batch` the examples' assistant masks and the labels of
a causal-LM loss (:class:`TrainingBatch`): ``labels`` are ``input_ids`` where the model writes the token
(``Example.assistant_mask``), :data:`IGNORE_INDEX` (-100) everywhere else, padding included. Labels are *not*
shifted: they sit at the positions of their tokens, as transformers' causal-LM models expect (their loss shifts,
comparing the logits at position t with the label at t + 1). The :class:`Batch` contract is unchanged; the
training tensors travel beside it.

Shapes: B examples, T tokens, P patches of all images (or frames), F valid feature frames of all segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data_specs.batch import Batch, PackedAudio, PackedPatches

from .image import ImagePatches
from .prompt import AudioFeatures, Example
from .video import VideoPatches

__all__ = ["IGNORE_INDEX", "TrainingBatch", "collate", "collate_training", "uncollate", "bucket_by_length"]

IGNORE_INDEX = -100  # the label no loss is computed on (torch.nn.CrossEntropyLoss's default ignore_index)


def _pack_patches(items: Sequence[ImagePatches]) -> PackedPatches:
    if not items:
        return PackedPatches.empty()
    values = torch.from_numpy(np.concatenate([item.patches for item in items]))  # (P, 768) uint8
    return PackedPatches(values, tuple(item.grid for item in items))


def _valid_frames(segment: AudioFeatures, where: str) -> int:
    """The segment's valid-frame count; its mask must be a prefix and its padded frames zero, so that the packed
    form (valid frames only) loses nothing."""
    valid = int(segment.mask.sum())
    if not segment.mask[:valid].all():
        raise ValueError(f"{where}: the feature mask is not a prefix of valid frames")
    if segment.features[valid:].any():
        raise ValueError(f"{where}: padded feature frames (mask False) must be zero")
    return valid


def _pack_audio(segments: Sequence[tuple[str, AudioFeatures]]) -> PackedAudio:
    if not segments:
        return PackedAudio.empty()
    counts = [_valid_frames(segment, where) for where, segment in segments]
    features = np.concatenate([s.features[:n] for (_, s), n in zip(segments, counts, strict=True)])  # (F, 128)
    return PackedAudio(torch.from_numpy(features.astype(np.float32, copy=False)), tuple(counts))


def collate(examples: Sequence[Example], *, pad_id: int, padding_side: str = "left") -> Batch:
    """One packed :class:`Batch` of ``examples`` (see the module docstring), validated."""
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
    segments = [
        (f"example {row} audio segment {i}", a) for row, e in enumerate(examples) for i, a in enumerate(e.audio)
    ]
    return Batch(
        input_ids=input_ids,
        attention_mask=attention,
        mm_token_type_ids=types,
        images=_pack_patches([image for e in examples for image in e.images]),
        videos=_pack_patches([frame for e in examples for video in e.videos for frame in video.frames]),
        audio=_pack_audio(segments),
        layout=tuple(_layout(e) for e in examples),
    )


@dataclass(frozen=True, eq=False)
class TrainingBatch:
    """A :class:`Batch` with what a causal-LM loss needs: ``assistant_masks`` (B, T) bool, True on the tokens the
    model writes; ``labels`` (B, T) int64, ``input_ids`` there and :data:`IGNORE_INDEX` elsewhere (padding
    included), unshifted (see the module docstring)."""

    batch: Batch
    labels: torch.Tensor
    assistant_masks: torch.Tensor

    def __post_init__(self) -> None:
        shape = tuple(self.batch.input_ids.shape)
        for name in ("labels", "assistant_masks"):
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, but input_ids {shape}")

    def __len__(self) -> int:
        return len(self.batch)

    def to(
        self, device: str | torch.device, dtype: torch.dtype | None = None, *, non_blocking: bool = True
    ) -> TrainingBatch:
        """Every tensor on ``device`` (:meth:`Batch.to` for the batch: ``dtype`` is its media's)."""
        return TrainingBatch(
            batch=self.batch.to(device, dtype, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            assistant_masks=self.assistant_masks.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> TrainingBatch:
        """Every tensor pinned (a DataLoader with ``pin_memory=True`` calls this)."""
        return TrainingBatch(self.batch.pin_memory(), self.labels.pin_memory(), self.assistant_masks.pin_memory())


def collate_training(examples: Sequence[Example], *, pad_id: int, padding_side: str = "left") -> TrainingBatch:
    """:func:`collate` of ``examples`` with their assistant masks and labels (see :class:`TrainingBatch`)."""
    batch = collate(examples, pad_id=pad_id, padding_side=padding_side)
    masks = torch.zeros(batch.input_ids.shape, dtype=torch.bool)  # (B, T)
    for row, example in enumerate(examples):
        masks[row, batch.attention_mask[row]] = torch.from_numpy(example.assistant_mask != 0)
    labels = torch.where(masks, batch.input_ids, torch.tensor(IGNORE_INDEX, dtype=torch.int64))  # (B, T)
    return TrainingBatch(batch=batch, labels=labels, assistant_masks=masks)


def _layout(example: Example) -> dict:
    """What the batch's tensors do not say about an example: enough for ``uncollate`` to rebuild it (its tokens
    are where the attention mask says)."""
    return {
        "images": [(i.size, i.original_size, i.budget) for i in example.images],
        "audio": [(a.features.shape[0], a.num_tokens, a.start_s, a.end_s, a.part) for a in example.audio],
        "videos": [(v.timestamps, v.budget, [(f.size, f.original_size) for f in v.frames]) for v in example.videos],
        "summary": example.summary,
    }


def uncollate(batch: Batch) -> list[Example]:
    """The examples a host batch from :func:`collate` was made of, exactly (patches as uint8 arrays, audio
    segments with their padded frames and masks)."""
    if len(batch) and not batch.layout:
        raise ValueError("uncollate needs a batch made by collate (this one has no layout: e.g. Batch.from_hf)")
    if batch.images.values.dtype != torch.uint8 or batch.device.type != "cpu":
        raise ValueError("uncollate needs the host batch (uint8 patches on the CPU), not one moved with Batch.to")
    images = iter(torch.split(batch.images.values, batch.images.num_patches))
    frames = iter(torch.split(batch.videos.values, batch.videos.num_patches))
    segments = iter(torch.split(batch.audio.features, batch.audio.frames))
    examples = []
    for row, layout in enumerate(batch.layout):
        span = batch.attention_mask[row]  # (T,): the example's own tokens, whichever side the padding is
        example_images = [
            ImagePatches(patches=next(images).numpy().copy(), size=size, original_size=original, budget=budget)
            for size, original, budget in layout["images"]
        ]
        audio = []
        for total, tokens, start, end, part in layout["audio"]:
            valid = next(segments).numpy()
            features = np.zeros((total, valid.shape[1]), dtype=np.float32)  # padded frames are zero
            features[: valid.shape[0]] = valid
            audio.append(AudioFeatures(features, np.arange(total) < valid.shape[0], tokens, start, end, part))
        videos = []
        for timestamps, budget, frame_sizes in layout["videos"]:
            video_frames = tuple(
                ImagePatches(patches=next(frames).numpy().copy(), size=size, original_size=original, budget=budget)
                for size, original in frame_sizes
            )
            videos.append(VideoPatches(frames=video_frames, timestamps=tuple(timestamps), budget=budget))
        examples.append(
            Example(
                input_ids=batch.input_ids[row, span].numpy().astype(np.int32),
                mm_token_type_ids=batch.mm_token_type_ids[row, span].numpy().astype(np.int8),
                images=example_images,
                audio=audio,
                videos=videos,
                summary=layout["summary"],
            )
        )
    return examples


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
