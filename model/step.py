"""The attention metadata of one forward step of the text decoder, planned once per step on the host and shared by
every layer (as vLLM's per-step attention metadata): where each token's K/V are written, which keys each layer kind
attends to, the masks, the RoPE tables and the per-layer inputs.

Every call of the decoder is such a step: a whole prompt (``forward``), a chunk of a prompt after what the cache
holds, or one token per row (``decode``). The layers know nothing of which; they read their kind's entries.

Where a layer kind's keys come from (``keys``):

* ``"own"``: the step's own K/V (a prompt from position 0: nothing cached before it); a cache, if any, stores
  them after they are computed;
* ``"cache"``: the step's K/V are written into the cache first, and attention reads the cache's first ``span``
  slots as a view (full layers, slot = position, and every layer of a one-token step);
* ``"joined"``: sliding layers of a multi-token chunk after a prefix: the ring (at most W slots) read before the
  write, then the chunk's own K/V (a ring slot the chunk overwrites may still be seen by the chunk's earlier
  queries, so the ring cannot be written first; the copy is bounded by the window, not the context).

Shapes: B rows, T tokens per row (the residual stream is (B·T, D)), S keys, H head dim, L layers, P PLE width.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .masks import BandedMask

__all__ = ["KINDS", "StepMeta", "additive"]

KINDS = ("full", "sliding")


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = may attend) → the additive float mask SDPA takes (0 / −inf) in ``dtype``: built once
    per step, so no layer converts a boolean mask again."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


@dataclass(frozen=True)
class StepMeta:
    """One step's plan. ``rope``: kind → (cos, signed sin) (B·T, 1, H); ``masks``: kind → additive float mask
    (B, 1, T, S), a :class:`~model.masks.BandedMask`, or None (plain causal attention over the step's own keys);
    ``keys``: kind → "own" | "cache" | "joined"; ``write``: kind → (B, T) int64 cache slot of each token (the
    cache's spare slot for a token that must not be stored: padding, or a ring position overwritten within the
    same step), or None without a cache; ``span``: kind → cache slots read (host ints); ``ple``: (B·T, L, P) or
    None; ``narrow``: the same for the last ``rows`` tokens of each row, from the layer where only those matter."""

    batch: int
    tokens: int
    rope: dict[str, tuple[torch.Tensor, torch.Tensor]]
    masks: dict[str, torch.Tensor | BandedMask | None]
    keys: dict[str, str]
    write: dict[str, torch.Tensor] | None = None
    span: dict[str, int] | None = None
    ple: torch.Tensor | None = None
    narrow: StepMeta | None = None

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """x (B·T₀, …) of the step this one narrows → its last T tokens of each row (B·T, …)."""
        rows = x.view(self.batch, -1, *x.shape[1:])  # (B, T₀, …)
        return rows[:, -self.tokens :].reshape(self.batch * self.tokens, *x.shape[1:])

    def narrowed(self, rows: int, masks: dict) -> StepMeta:
        """The plan of the last ``rows`` tokens of each row, with their ``masks`` (as the queries see them)."""
        rope = {kind: tuple(self._last(t, rows) for t in pair) for kind, pair in self.rope.items()}
        ple = None if self.ple is None else self._last(self.ple, rows)
        return replace(self, tokens=rows, rope=rope, masks=masks, ple=ple, narrow=None)

    def _last(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        return x.view(self.batch, self.tokens, *x.shape[1:])[:, -rows:].reshape(self.batch * rows, *x.shape[1:])
