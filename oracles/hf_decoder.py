"""The reference text decoder: ``Gemma4ForCausalLM`` loaded from a checkpoint directory, or built random straight
on a device (``gemma4 bench generate --device``), with its text weights by name for filling."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Gemma4ForCausalLM, Gemma4TextConfig

__all__ = ["build", "load", "text_weights"]


def load(path: str) -> Gemma4ForCausalLM:
    return Gemma4ForCausalLM.from_pretrained(path).eval()


def build(text_config: dict, *, dtype: torch.dtype, device: str | torch.device) -> Gemma4ForCausalLM:
    """A ``Gemma4ForCausalLM`` of ``text_config`` (``config.json`` keys) allocated on ``device`` in ``dtype``,
    in eval mode, with the reference's own random initialisation (no checkpoint read). Built on the device rather
    than on ``meta``: the reference computes non-persistent buffers (RoPE frequencies, embedding scales) in its
    constructors, which ``to_empty`` would leave uninitialised."""
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(Gemma4TextConfig(**text_config), dtype=dtype)
    assert isinstance(model, Gemma4ForCausalLM), type(model)
    return model.eval()


def text_weights(model: Gemma4ForCausalLM) -> dict[str, torch.Tensor]:
    """Every persistent tensor of the decoder by its checkpoint name less the ``model.`` prefix (the names our
    ``TextDecoder`` uses), sharing storage with the model; the tied ``lm_head.weight`` (the embedding) left out."""
    assert model.lm_head.weight is model.model.embed_tokens.weight, "an untied output embedding is not Gemma 4"
    return {k.removeprefix("model."): v for k, v in model.state_dict().items() if k.startswith("model.")}
