"""What the host plans or holds, and how it reaches the device without a needless synchronisation.

The towers plan their work (patch positions, pooling groups, packing of audio chunks) from host-side integers
the batch carries: grids and frame counts. The plans are small numpy arrays; :func:`to_device` sends them through
page-locked memory with ``non_blocking=True`` on an accelerator, so the host never waits for queued kernels (a
plain ``torch.tensor(…, device="cuda")`` copies from pageable memory and does wait).

:class:`HostEmbedding` is an embedding table kept in host memory while the rest of the model is on the device
(the per-layer-embedding table of E2B/E4B, spec §2.3: 2.3 B of E2B's 5.1 B parameters, of which a step reads
one row per token). It gathers the rows on the host and sends only those, through :func:`to_device`.

Shapes: N ids (any leading shape), E embedding width.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["HostEmbedding", "offsets", "ranks", "to_device"]


def to_device(data: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``data`` (a numpy array or a CPU tensor) as a tensor on ``device``: itself on the CPU (shared with numpy),
    an async copy through page-locked memory on CUDA, a plain non-blocking copy elsewhere."""
    tensor = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(data))
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        tensor = tensor.pin_memory()  # a page-locked copy: the transfer below does not wait for the device
    return tensor.to(device, non_blocking=True)


def offsets(lengths) -> np.ndarray:
    """(n + 1,) int64 starts of items of ``lengths`` laid back to back, then the total: (0, l0, l0 + l1, …)."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def ranks(lengths) -> np.ndarray:
    """(Σ lengths,) int64 index of each element inside its item, items of ``lengths`` back to back."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.arange(lengths.sum()) - np.repeat(offsets(lengths)[:-1], lengths)


class HostEmbedding(nn.Embedding):
    """An ``nn.Embedding`` whose table stays in host memory: ``forward`` gathers the rows of the given ids there
    and sends only those rows to the ids' device.

    The table is a parameter like any other (``state_dict``, ``parameters()``, saving and loading see it under
    the usual ``weight`` name), but :meth:`_apply` leaves it alone: ``model.to(device)``, ``.cuda()``,
    ``.half()`` … move and convert every other weight and keep this one where it is, in its dtype (callers cast
    the gathered rows). Built under ``torch.device("meta")`` it is a meta tensor, for a loader to replace by a
    CPU tensor (a memory-mapped file); built anywhere else, it is allocated on the CPU.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, **kwargs) -> None:
        kwargs.setdefault("device", "meta" if torch.get_default_device().type == "meta" else "cpu")
        super().__init__(num_embeddings, embedding_dim, **kwargs)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N…) int64 ids on any device → (N…, E) rows in the table's dtype, on the ids' device.

        The ids are read on the host: on an accelerator that is a device→host copy which waits for the work
        queued before it (the price of keeping the table off the device). The rows then go back without waiting."""
        rows = super().forward(input_ids.cpu())  # (N…, E), gathered in host memory
        return to_device(rows, input_ids.device)

    def _apply(self, fn, recurse: bool = True):
        return self  # the table stays in host memory, in its dtype: nothing moves or converts it
