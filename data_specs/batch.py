"""The packed batch between the front end and the model: one typed contract (version 1).

``preprocess.collate.collate`` builds a :class:`Batch` from preprocessed examples; ``Batch.from_hf`` builds one
from the reference processor's padded tensors (the only adapter for that format); ``Gemma4.forward(batch)``
consumes it. What the front end knows is carried, never padded away for the model to rebuild:

* tokens: ``input_ids`` (B, T) int64, ``attention_mask`` (B, T) bool (True on real tokens, padding on either
  side), ``mm_token_type_ids`` (B, T) int64 with :class:`data_specs.media.Modality` values;
* images and video frames: :class:`PackedPatches`, every item's patches in raster order, items back to back,
  (P, 768) uint8 on the host, with each item's patch grid (rows, cols) as plain ints;
* audio: :class:`PackedAudio`, every segment's *valid* log-mel frames back to back, (F, 128) float32, with each
  segment's frame count as plain ints.

The grids and frame counts are host-side Python ints: the model plans its work (shapes, index tensors) from
them without reading anything back from the accelerator. ``Batch.to(device)`` moves every tensor in one go
(``non_blocking``; uint8 patches become float in [0, 1] on the device), and ``pin_memory()`` pins them first.

Validation: construction checks every shape against the host metadata; on the host (CPU tensors) it also checks
that the placeholder positions of each modality equal the soft tokens its media give (``MediaCountError``). A
batch whose tensors already live on an accelerator is not re-read for that check (it would stall the device).

Shapes: B examples, T tokens, I items (images or video frames), P patches of all items, S audio segments,
F valid feature frames of all segments, 768 patch values, 128 mel bins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .media import MEL_BINS, PATCH_VALUES, POOLING_KERNEL, Modality, audio_tokens_from_frames

__all__ = ["Batch", "BatchError", "MediaCountError", "PackedAudio", "PackedPatches", "BATCH_VERSION"]

BATCH_VERSION = 1

# Keys of the reference processor's output that carry nothing the batch does not already know.
_HF_INFORMATIONAL = frozenset({"num_soft_tokens_per_image", "num_frames_per_video", "num_soft_tokens_per_video"})


class BatchError(ValueError):
    """Tensors that do not form a valid batch; the message names the field and the problem."""


class MediaCountError(BatchError):
    """The placeholder tokens of a modality differ in number from the soft tokens its media give."""


def _on_host(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu"


@dataclass(frozen=True, eq=False)
class PackedPatches:
    """Images (or video frames), packed: ``values`` (P, 768) — uint8 on the host, float in [0, 1] after
    :meth:`Batch.to` — holds each item's rows·cols patches in raster order, items back to back; ``grids`` holds
    each item's (rows, cols) patch grid (multiples of the 3×3 pooling kernel)."""

    values: torch.Tensor
    grids: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        grids = tuple((int(r), int(c)) for r, c in self.grids)
        object.__setattr__(self, "grids", grids)
        if self.values.ndim != 2 or self.values.shape[1] != PATCH_VALUES:
            raise BatchError(f"patch values must be (patches, {PATCH_VALUES}), got {tuple(self.values.shape)}")
        if self.values.dtype != torch.uint8 and not self.values.is_floating_point():
            raise BatchError(f"patch values must be uint8 or floating point, got {self.values.dtype}")
        k = POOLING_KERNEL
        for index, (rows, cols) in enumerate(grids):
            if rows < k or cols < k or rows % k or cols % k:
                raise BatchError(
                    f"item {index}: the patch grid {rows}×{cols} (rows×columns) is not a positive multiple of the "
                    f"{k}×{k} pooling kernel"
                )
        if self.values.shape[0] != sum(self.num_patches):
            raise BatchError(
                f"the grids {grids} hold {sum(self.num_patches)} patches, but values has {self.values.shape[0]} rows"
            )

    @classmethod
    def empty(cls) -> PackedPatches:
        return cls(torch.zeros((0, PATCH_VALUES), dtype=torch.uint8))

    def __len__(self) -> int:
        return len(self.grids)

    @property
    def num_patches(self) -> tuple[int, ...]:
        """Patches of each item (rows·cols)."""
        return tuple(r * c for r, c in self.grids)

    @property
    def num_soft_tokens(self) -> tuple[int, ...]:
        """Soft tokens each item becomes (rows·cols / 9)."""
        k = POOLING_KERNEL
        return tuple((r // k) * (c // k) for r, c in self.grids)


@dataclass(frozen=True, eq=False)
class PackedAudio:
    """Audio segments, packed: ``features`` (F, 128) float holds each segment's valid log-mel frames, segments
    back to back; ``frames`` holds each segment's frame count."""

    features: torch.Tensor
    frames: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        frames = tuple(int(f) for f in self.frames)
        object.__setattr__(self, "frames", frames)
        if self.features.ndim != 2 or self.features.shape[1] != MEL_BINS:
            raise BatchError(f"audio features must be (frames, {MEL_BINS}), got {tuple(self.features.shape)}")
        if not self.features.is_floating_point():
            raise BatchError(f"audio features must be floating point, got {self.features.dtype}")
        for index, count in enumerate(frames):
            if count < 1:
                raise BatchError(f"audio segment {index} has {count} frames; every segment needs at least one")
        if self.features.shape[0] != sum(frames):
            raise BatchError(
                f"the segments' frame counts sum to {sum(frames)}, but features has {self.features.shape[0]} rows"
            )

    @classmethod
    def empty(cls) -> PackedAudio:
        return cls(torch.zeros((0, MEL_BINS), dtype=torch.float32))

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def num_soft_tokens(self) -> tuple[int, ...]:
        """Soft tokens each segment becomes (⌈⌈V/2⌉/2⌉ of its V frames)."""
        return tuple(audio_tokens_from_frames(f) for f in self.frames)


@dataclass(frozen=True, eq=False, kw_only=True)
class Batch:
    """Token ids, their masks and the packed media of B examples (see the module docstring)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor
    images: PackedPatches = field(default_factory=PackedPatches.empty)
    videos: PackedPatches = field(default_factory=PackedPatches.empty)
    audio: PackedAudio = field(default_factory=PackedAudio.empty)
    layout: tuple[Any, ...] = ()  # front-end bookkeeping that lets ``uncollate`` rebuild the examples
    padded: bool | None = None  # some row has padding: read on the host at construction, kept by ``to``
    # (lowest, highest) id at text positions, read on the host at construction and kept by ``to``: the model
    # checks it against its vocabulary without reading the device (placeholder ids are never looked up)
    text_id_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        ids, mask, types = self.input_ids, self.attention_mask, self.mm_token_type_ids
        if ids.ndim != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise BatchError(f"input_ids must be integer (batch, tokens), got {ids.dtype} {tuple(ids.shape)}")
        for name, tensor in (("attention_mask", mask), ("mm_token_type_ids", types)):
            if tuple(tensor.shape) != tuple(ids.shape):
                raise BatchError(f"{name} must have input_ids' shape {tuple(ids.shape)}, got {tuple(tensor.shape)}")
        if mask.dtype != torch.bool:
            raise BatchError(f"attention_mask must be bool, got {mask.dtype}")
        if types.is_floating_point() or types.dtype == torch.bool:
            raise BatchError(f"mm_token_type_ids must be integer, got {types.dtype}")
        if self.layout and len(self.layout) != ids.shape[0]:
            raise BatchError(f"layout describes {len(self.layout)} examples, but input_ids has {ids.shape[0]} rows")
        if _on_host(mask):
            padded = not bool(mask.all())
            if self.padded is not None and self.padded != padded:
                raise BatchError(f"padded={self.padded} was given, but the attention mask says {padded}")
            object.__setattr__(self, "padded", padded)
        if _on_host(ids) and _on_host(types):
            text = ids[types == Modality.TEXT]
            found = (int(text.min()), int(text.max())) if text.numel() else None
            if found is not None and found[0] < 0:
                raise BatchError(f"input_ids hold the negative id {found[0]}")
            object.__setattr__(self, "text_id_range", found)
        if _on_host(types):
            self._check_placeholders()

    def _check_placeholders(self) -> None:
        types = self.mm_token_type_ids
        if types.numel() and (int(types.min()) < 0 or int(types.max()) > max(Modality)):
            raise BatchError(
                f"mm_token_type_ids must hold {[int(m) for m in Modality]} ({', '.join(m.name for m in Modality)}), "
                f"got values {int(types.min())}…{int(types.max())}"
            )
        counts = torch.bincount(types.reshape(-1).long(), minlength=len(Modality)).tolist()
        labels = {Modality.IMAGE: "image", Modality.VIDEO: "video frame", Modality.AUDIO: "audio"}
        for kind, media in self.media:
            label = labels[kind]
            if counts[kind] != sum(media.num_soft_tokens):
                raise MediaCountError(
                    f"the prompt has {counts[kind]} {label} placeholder tokens, but the batch's {label} items give "
                    f"{sum(media.num_soft_tokens)} {label} soft tokens"
                )

    @property
    def media(self) -> tuple[tuple[Modality, PackedPatches | PackedAudio], ...]:
        """(modality, packed media) pairs, in the order the model concatenates their soft tokens."""
        return (Modality.IMAGE, self.images), (Modality.VIDEO, self.videos), (Modality.AUDIO, self.audio)

    # --- moving -------------------------------------------------------------------------------------------

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None, *, non_blocking: bool = True) -> Batch:
        """Every tensor on ``device``; uint8 patches become float in [0, 1] there (x / 255 in float32, then
        ``dtype``), and floating media take ``dtype`` when it is given. Token tensors keep their dtypes."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        def media(t: torch.Tensor) -> torch.Tensor:
            if t.dtype == torch.uint8:
                # float32 division by 255 rounds exactly like the reference's float64 multiply + cast.
                t = move(t).to(torch.float32).div_(255)
            else:
                t = move(t)
            return t if dtype is None else t.to(dtype)

        return self._map(move, media)

    def pin_memory(self) -> Batch:
        """The same batch in page-locked host memory, so that ``to(device, non_blocking=True)`` overlaps the copy
        with compute. Without an accelerator there is nothing to pin for: returns ``self``."""
        if not torch.cuda.is_available():
            return self
        return self._map(torch.Tensor.pin_memory, torch.Tensor.pin_memory)

    def _map(
        self, tokens: Callable[[torch.Tensor], torch.Tensor], media: Callable[[torch.Tensor], torch.Tensor]
    ) -> Batch:
        """The batch with ``tokens`` applied to the token tensors and ``media`` to the media values; the host
        metadata (grids, counts, layout, padding) stays as it is."""
        return dataclasses.replace(
            self,
            input_ids=tokens(self.input_ids),
            attention_mask=tokens(self.attention_mask),
            mm_token_type_ids=tokens(self.mm_token_type_ids),
            images=dataclasses.replace(self.images, values=media(self.images.values)),
            videos=dataclasses.replace(self.videos, values=media(self.videos.values)),
            audio=dataclasses.replace(self.audio, features=media(self.audio.features)),
        )

    # --- describing ---------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def vision_span(self) -> int:
        """The most soft tokens of one image or video frame (0 without either): how far a vision block reaches."""
        return max((*self.images.num_soft_tokens, *self.videos.num_soft_tokens), default=0)

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def __repr__(self) -> str:
        b, t = self.input_ids.shape
        parts = [f"B={b}", f"T={t}", f"device={self.device}"]
        for name, packed in (("images", self.images), ("videos", self.videos)):
            if len(packed):
                values = packed.values
                parts.append(f"{name}={len(packed)} ({tuple(values.shape)} {str(values.dtype).removeprefix('torch.')})")
        if len(self.audio):
            features = self.audio.features
            dtype = str(features.dtype).removeprefix("torch.")
            parts.append(f"audio={len(self.audio)} segments ({tuple(features.shape)} {dtype})")
        return f"Batch({', '.join(parts)})"

    # --- other formats ------------------------------------------------------------------------------------

    @classmethod
    def from_ids(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Batch:
        """A text-only batch: token ids (B, T) and optionally their mask (all tokens real by default)."""
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        return cls(input_ids=input_ids, attention_mask=mask, mm_token_type_ids=torch.zeros_like(input_ids))

    @classmethod
    def from_hf(
        cls,
        *,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_position_ids: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_position_ids: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        **informational: object,
    ) -> Batch:
        """The reference processor's padded tensors (``Gemma4Processor(...)`` output, as tensors) → a packed batch.

        Padding patches (position (−1, −1)) and padded feature frames are dropped; patches are put in raster
        order; the reference's count keys (``num_soft_tokens_per_image`` …) are accepted and ignored. Runs on the
        host (tensors on an accelerator are read back once). Any other keyword raises ``TypeError``.
        """
        unknown = sorted(set(informational) - _HF_INFORMATIONAL)
        if unknown:
            raise TypeError(f"Batch.from_hf got unexpected keyword(s) {unknown}")
        ids = input_ids.cpu().long()
        mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.cpu().bool()
        images = _patches_from_hf(pixel_values, image_position_ids, "pixel_values", "image_position_ids")
        videos = _patches_from_hf(pixel_values_videos, video_position_ids, "pixel_values_videos", "video_position_ids")
        audio = _audio_from_hf(input_features, input_features_mask)
        if mm_token_type_ids is None:
            if len(images) or len(videos) or len(audio):
                raise BatchError("Batch.from_hf needs mm_token_type_ids with media (the reference processor gives it)")
            types = torch.zeros_like(ids)
        else:
            types = mm_token_type_ids.cpu().long()
        return cls(
            input_ids=ids, attention_mask=mask, mm_token_type_ids=types, images=images, videos=videos, audio=audio
        )


def _patches_from_hf(
    values: torch.Tensor | None, positions: torch.Tensor | None, values_name: str, positions_name: str
) -> PackedPatches:
    """(N, M, 768) padded values and (N, M, 2) (x, y) positions, (−1, −1) for padding → packed raster order."""
    if values is None or values.shape[0] == 0:
        return PackedPatches.empty()
    if positions is None:
        raise BatchError(f"{values_name} needs its {positions_name}")
    if values.ndim != 3 or values.shape[-1] != PATCH_VALUES:
        raise BatchError(f"{values_name} must be (items, patches, {PATCH_VALUES}), got {tuple(values.shape)}")
    if tuple(positions.shape) != (*values.shape[:2], 2):
        raise BatchError(f"{positions_name} must be {(*values.shape[:2], 2)}, got {tuple(positions.shape)}")
    values, positions = values.cpu(), positions.cpu().long()
    packed, grids = [], []
    for index in range(values.shape[0]):
        real = (positions[index] != -1).any(dim=-1)  # (M,)
        pos = positions[index][real]  # (n, 2) (x, y)
        where = f"{values_name} item {index}"
        if pos.shape[0] == 0:
            raise BatchError(f"{where}: no real patches (every position is (−1, −1))")
        if int(pos.min()) < 0:
            raise BatchError(f"{where}: patch positions must be ≥ 0 or (−1, −1) padding, got {int(pos.min())}")
        cols, rows = (int(v) + 1 for v in pos.max(dim=0).values)
        raster = pos[:, 1] * cols + pos[:, 0]  # (n,)
        if pos.shape[0] != rows * cols or torch.bincount(raster, minlength=rows * cols).max() > 1:
            raise BatchError(f"{where}: {pos.shape[0]} patches do not cover the {rows}×{cols} grid once each")
        packed.append(values[index][real][torch.argsort(raster)])  # (n, 768) in raster order
        grids.append((rows, cols))
    try:
        return PackedPatches(torch.cat(packed), tuple(grids))
    except BatchError as exc:
        raise BatchError(f"{values_name}: {exc}") from None


def _audio_from_hf(features: torch.Tensor | None, mask: torch.Tensor | None) -> PackedAudio:
    """(S, F, 128) padded features and their (S, F) mask (a prefix of valid frames) → packed valid frames."""
    if features is None or features.shape[0] == 0:
        return PackedAudio.empty()
    if mask is None:
        raise BatchError("input_features needs its input_features_mask")
    if features.ndim != 3 or features.shape[-1] != MEL_BINS:
        raise BatchError(f"input_features must be (segments, frames, {MEL_BINS}), got {tuple(features.shape)}")
    if tuple(mask.shape) != tuple(features.shape[:2]):
        raise BatchError(f"input_features_mask must be {tuple(features.shape[:2])}, got {tuple(mask.shape)}")
    features, mask = features.cpu(), mask.cpu().bool()
    counts = mask.sum(dim=1)  # (S,)
    prefix = torch.arange(mask.shape[1])[None, :] < counts[:, None]  # (S, F)
    for segment, (count, bad) in enumerate(zip(counts.tolist(), (prefix != mask).any(dim=1).tolist(), strict=True)):
        if bad:
            raise BatchError(f"input_features_mask segment {segment}: not a prefix of valid frames (padding last)")
        if count == 0:
            raise BatchError(f"input_features_mask segment {segment}: no valid frame")
    return PackedAudio(features[mask], tuple(counts.tolist()))  # (F, 128): row-major = segment by segment
