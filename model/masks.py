"""Attention masks of the text decoder (spec §2.7), as boolean ``(B, 1, T, S)`` tensors (True = may attend).

Full layers: causal and the key is not padding. Sliding layers: also ``k > q − W`` (exactly W keys including
the query itself). With ``bidirectional`` ("vision" presets), sliding layers also let every token of an image
(or video frame) block see the whole block, later tokens included; full layers stay causal. A block is a
maximal run of image (type 1) or video (type 2) soft-token positions. Query rows with no allowed key (left
padding) are opened to every key so that attention stays finite; their outputs are never used.

Shapes: B batch, T query tokens, S key tokens (S = T without a cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from data_specs.media import Modality

__all__ = ["vision_blocks", "full_mask", "sliding_mask", "chunk_masks", "BandedMask", "banded_mask"]


def vision_blocks(mm_token_type_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) types → (B, T) int64 block ids: 0, 1, 2 … per run of image/video soft tokens, −1 elsewhere."""
    vision = (mm_token_type_ids == Modality.IMAGE) | (mm_token_type_ids == Modality.VIDEO)  # (B, T)
    previous = torch.nn.functional.pad(vision[:, :-1], (1, 0), value=False)
    starts = vision & ~previous
    ids = starts.long().cumsum(dim=1) - 1  # (B, T)
    return torch.where(vision, ids, torch.full_like(ids, -1))


def _finish(allowed: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    allowed = allowed & key_valid[:, None, :]  # (B, T, S)
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)  # rows with no key: open them (output unused)
    return allowed[:, None]  # (B, 1, T, S)


def full_mask(attention_mask: torch.Tensor, rows: int = 0) -> torch.Tensor:
    """attention_mask (B, S) bool/int (1 = real token) → (B, 1, T, S) causal mask; T = S, or the last ``rows``
    query positions when ``rows`` > 0."""
    queries, keys = _positions(attention_mask, rows)
    causal = keys[None, :] <= queries[:, None]  # (T, S)
    return _finish(causal[None].expand(attention_mask.shape[0], -1, -1), attention_mask.bool())


def sliding_mask(
    attention_mask: torch.Tensor, window: int, mm_token_type_ids: torch.Tensor | None = None, rows: int = 0
) -> torch.Tensor:
    """(B, 1, T, S) sliding-window mask (rows as :func:`full_mask`); with ``mm_token_type_ids``, bidirectional
    inside vision blocks."""
    queries, keys = _positions(attention_mask, rows)
    causal = keys[None, :] <= queries[:, None]  # (T, S)
    recent = keys[None, :] > queries[:, None] - window  # (T, S)
    allowed = causal[None].expand(attention_mask.shape[0], -1, -1)
    if mm_token_type_ids is not None:
        blocks = vision_blocks(mm_token_type_ids)  # (B, S)
        query_blocks = blocks[:, queries, None]  # (B, T, 1)
        same = (query_blocks == blocks[:, None, :]) & (query_blocks >= 0)  # (B, T, S)
        allowed = allowed | same
    return _finish(allowed & recent[None], attention_mask.bool())


def chunk_masks(
    real: torch.Tensor,
    positions: torch.Tensor,
    start: torch.Tensor,
    window: int,
    full_slots: int,
    ring_slots: int,
    mm_token_type_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Masks of one chunk of a prompt after what the cache holds. real (B, T) bool and positions (B, T) of the
    chunk's tokens; start (B,) each row's real tokens before the chunk. Full layers read their first
    ``full_slots`` slots once the chunk is written (slot = position: every position up to the query's is the
    row's own). Sliding layers read ``ring_slots`` ring slots (slot = position mod W) before the chunk is
    written, then the chunk's own tokens. A chunk never splits a vision block, so the bidirectional part
    (``mm_token_type_ids``, the chunk's) stays inside the chunk. → {"full": (B, 1, T, F), "sliding":
    (B, 1, T, R + T)}, bool."""
    t = real.shape[1]
    index = torch.arange(t, device=real.device)
    q = positions[:, :, None]  # (B, T, 1) query positions
    causal = (index[None, :] <= index[:, None])[None] & real[:, None, :]  # (B, T, T) chunk keys
    recent = q - positions[:, None, :] < window  # (B, T, T)
    seen = causal
    if mm_token_type_ids is not None:
        blocks = vision_blocks(mm_token_type_ids)  # (B, T)
        same = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0)  # (B, T, T)
        seen = causal | (same & real[:, None, :])
    slots = torch.arange(full_slots, device=real.device)
    full = slots[None, None, :] <= q  # (B, T, F)
    ring = torch.arange(ring_slots, device=real.device)
    last = (start - 1)[:, None]  # (B, 1) the latest position held
    held = last - torch.remainder(last - ring[None, :], window)  # (B, R) the position each ring slot holds
    sliding_old = (held >= 0)[:, None, :] & (q - held[:, None, :] < window)  # (B, T, R)
    return {"full": _open(full), "sliding": _open(torch.cat([sliding_old, seen & recent], dim=-1))}


def _open(allowed: torch.Tensor) -> torch.Tensor:
    """(B, T, S) → (B, 1, T, S), rows with no key opened (padding: output unused)."""
    return (allowed | ~allowed.any(dim=-1, keepdim=True))[:, None]


def _positions(attention_mask: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query positions (T,) — all, or the last ``rows`` — and key positions (S,)."""
    keys = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (keys[-rows:] if rows else keys), keys


@dataclass(frozen=True)
class BandedMask:
    """A sliding mask cut into blocks of query rows, each with the only key columns its rows may see.

    ``blocks``: (row start, row stop, first key, key stop, additive float mask (B, 1, rows, keys)). Built once
    per forward pass and shared by every sliding layer, so no layer scans the (T, S) mask again.
    """

    blocks: list[tuple[int, int, int, int, torch.Tensor]]


def banded_mask(mask: torch.Tensor, block: int, dtype: torch.dtype, reach: tuple[int, int]) -> BandedMask:
    """mask (B, 1, T, S) bool → :class:`BandedMask` with blocks of ``block`` rows; masks in ``dtype``.

    ``reach`` = (back, ahead): a query at q may see keys q − back … q + ahead at most (the window, and the longest
    vision block on the bidirectional presets). The key columns of each block follow from it on the host, without
    reading the mask back; columns the mask hides inside that range cost a little work and change nothing.
    """
    _, _, t, s = mask.shape
    back, ahead = reach
    blocks = []
    for start in range(0, t, block):
        stop = min(t, start + block)
        first, last = max(0, start - back), min(s, stop + ahead)
        allowed = mask[:, :, start:stop, first:last]  # (B, 1, rows, keys)
        additive = torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill_(~allowed, float("-inf"))
        blocks.append((start, stop, first, last, additive))
    return BandedMask(blocks)
