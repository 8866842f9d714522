"""The reference's default KV cache, measured: what a ``Gemma4ForCausalLM`` keeps after a prefill (for
``gemma4 bench cache``)."""

from __future__ import annotations

import torch
from transformers import Gemma4ForCausalLM, Gemma4TextConfig

__all__ = ["stored_layout"]


def stored_layout(text_config: dict, prompt: int, vocab: int) -> list[tuple[int, int]]:
    """(elements per position, positions stored) of every cache layer that stores anything, after a prefill of
    ``prompt`` random tokens through a random model of ``text_config`` (the reference's ``config.json`` keys)."""
    torch.manual_seed(0)
    model = Gemma4ForCausalLM(Gemma4TextConfig(**text_config)).eval()
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, vocab, (1, prompt)), use_cache=True)
    layout = []
    for layer in out.past_key_values.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or keys.numel() == 0:
            continue  # nothing stored (KV-shared layers)
        layout.append(((keys.numel() + values.numel()) // keys.shape[-2], keys.shape[-2]))
    return layout
