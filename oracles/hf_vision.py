"""The reference vision tower: ``Gemma4VisionModel`` built from a ``vision_config`` dict and a state dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import Gemma4VisionConfig, Gemma4VisionModel

__all__ = ["build", "run"]


def build(vision_config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None = None) -> Gemma4VisionModel:
    """A reference tower in eval mode; ``state_dict`` (reference names, no prefix) is loaded strictly when given."""
    model = Gemma4VisionModel(Gemma4VisionConfig(**vision_config)).eval()
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model


@torch.no_grad()
def run(model: Gemma4VisionModel, pixel_values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """pixel_values (N, M, 768), positions (N, M, 2) with (−1, −1) padding → (Σ n_i, D): every image's pooled
    soft tokens, flattened in image order (the reference drops the empty pooled slots)."""
    return model(pixel_values=pixel_values, pixel_position_ids=positions).last_hidden_state
