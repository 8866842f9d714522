"""The reference multimodal model: ``Gemma4ForConditionalGeneration`` loaded from a checkpoint directory (ours,
written by ``model.checkpoint.save_pretrained``, is in its layout)."""

from __future__ import annotations

from transformers import Gemma4ForConditionalGeneration

__all__ = ["load"]


def load(path: str) -> Gemma4ForConditionalGeneration:
    return Gemma4ForConditionalGeneration.from_pretrained(path).eval()
