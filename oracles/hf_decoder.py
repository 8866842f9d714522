"""The reference text decoder: ``Gemma4ForCausalLM`` loaded from a checkpoint directory."""

from __future__ import annotations

from transformers import Gemma4ForCausalLM

__all__ = ["load"]


def load(path: str) -> Gemma4ForCausalLM:
    return Gemma4ForCausalLM.from_pretrained(path).eval()
