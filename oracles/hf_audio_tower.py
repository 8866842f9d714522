"""The reference audio tower: a ``Gemma4AudioModel`` built from an ``audio_config`` dict and a state dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import Gemma4AudioConfig, Gemma4AudioModel

__all__ = ["build", "run"]


def build(audio_config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None = None) -> Gemma4AudioModel:
    """A float32 reference tower in eval mode; ``state_dict`` (checkpoint names below ``model.audio_tower.``)
    is loaded strictly when given, else the weights stay random."""
    model = Gemma4AudioModel(Gemma4AudioConfig(**audio_config)).eval()
    if state_dict is not None:
        model.load_state_dict(dict(state_dict), strict=True)
    return model


@torch.no_grad()
def run(model: Gemma4AudioModel, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """features (B, F, 128) float, mask (B, F) bool → (tower output (B, T, E), output mask (B, T) bool)."""
    out = model(features, mask)
    return out.last_hidden_state, out.attention_mask
