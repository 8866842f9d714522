"""Helpers the GPU tests share (their fixtures: tests/gpu/conftest.py)."""

from __future__ import annotations

import torch

CUDA = torch.device("cuda")


def prompt(rows: int, length: int, vocab: int, padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (B, T) and a bool mask (B, T) on the device; with ``padded``, rows 1… are left padded."""
    generator = torch.Generator().manual_seed(length)
    ids = torch.randint(3, vocab, (rows, length), generator=generator)
    mask = torch.ones(rows, length, dtype=torch.bool)
    if padded:
        for row in range(1, rows):
            mask[row, : min(3 * row, length - 1)] = False
    return ids.to(CUDA), mask.to(CUDA)
