"""Index tensors planned on the host and sent to the device without a synchronisation.

The towers plan their work (patch positions, pooling groups, packing of audio chunks) from host-side integers
the batch carries: grids and frame counts. The plans are small numpy arrays; :func:`to_device` sends them through
page-locked memory with ``non_blocking=True`` on an accelerator, so the host never waits for queued kernels (a
plain ``torch.tensor(…, device="cuda")`` copies from pageable memory and does wait).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["offsets", "ranks", "to_device"]


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor on ``device`` (shared with numpy on the CPU; an async pinned copy elsewhere)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
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
