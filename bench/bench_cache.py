"""``gemma4 bench cache``: KV-cache bytes per sequence for every preset at 8K, 32K and 128K tokens, ours beside the
reference's default cache, bfloat16.

Ours is ``model.cache.cache_bytes`` (what ``KVCache`` allocates: the theoretical minimum). The reference's is
measured, not modelled: for each preset, a reference model with the preset's attention layout (layer kinds, KV
sharing, K=V, KV heads, head dims, sliding window) but a tiny hidden size and vocabulary runs a prefill of W + 64
tokens through its default ``DynamicCache``; each layer's stored keys and values are then counted. A layer
that stored every prompt position grows with the context; one that stored fewer keeps that many. The figures at
8K–128K follow from those per-layer counts (a prefill of 128K tokens of the real sizes is not run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from .benchmarking import Row, format_row, reference

__all__ = ["run", "reference_layout"]

CONTEXTS = (8_192, 32_768, 131_072)
PRESETS_MEASURED = ("gemma4-e2b", "gemma4-e4b", "gemma4-31b", "gemma4-26b-a4b")


def reference_layout(text) -> list[tuple[int, int, bool]] | None:
    """Per stored layer of the reference's default cache after a prefill longer than the window:
    (elements per position, positions stored, grows with the context). None without the reference."""
    oracle = reference("hf_cache")
    if oracle is None:
        return None
    from model.checkpoint import text_to_hf

    small = replace(
        text,
        d_model=64,
        d_ff=64,
        vocab_size=256,
        ple_vocab_size=256,
        ple_dim=min(text.ple_dim, 8),
        moe_d_ff=8 if text.n_experts else 0,
    )
    prompt = text.sliding_window + 64
    return [(per, stored, stored == prompt) for per, stored in oracle.stored_layout(text_to_hf(small), prompt, 256)]


def _bytes(layout: list[tuple[int, int, bool]], context: int, element: int = 2) -> int:
    return element * sum(per * (context if grows else min(stored, context)) for per, stored, grows in layout)


def run(
    presets: Sequence[str] = PRESETS_MEASURED,
    contexts: Sequence[int] = CONTEXTS,
    *,
    emit: Callable[[str], None] = print,
) -> list[Row]:
    import torch

    from model.cache import cache_bytes
    from model.config import PRESETS

    emit("gemma4 bench cache: KV-cache MB per sequence, bfloat16, ours (the minimum) beside the reference's default")
    rows: list[Row] = []
    for name in presets:
        text = PRESETS[name].text
        layout = reference_layout(text)
        for context in contexts:
            ours = cache_bytes(text, 1, context, torch.bfloat16) / 2**20
            theirs = _bytes(layout, context) / 2**20 if layout is not None else None
            row = Row(
                name,
                f"{context // 1024}K tokens",
                theirs,
                ours,
                None,
                unit="MB",
                lower_is_better=True,
            )
            rows.append(row)
            emit(format_row(row))
    return rows
