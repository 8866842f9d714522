"""A test helper: run code under a ``TorchDispatchMode`` that records every dispatched (non-view) operation and
every data-dependent read of a tensor's values by the host.

On a GPU such a read is a blocking device→host copy (a sync) and makes a step impossible to capture in a CUDA
graph; on the CPU it costs nothing, which is why it must be caught here by what the code asks for, not by time:
``_local_scalar_dense`` (``.item()``, ``bool(t)``, ``int(t)``), operations whose output shape depends on values
(``nonzero``, ``masked_select``, ``unique``, ``bincount``, indexing with a boolean mask), and the Python-level
``Tensor.tolist`` / ``Tensor.numpy`` / ``Tensor.item`` (which read CPU tensors without dispatching).
"""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostReadCounter"]

_READS = {
    "aten._local_scalar_dense.default",
    "aten.nonzero.default",
    "aten.masked_select.default",
    "aten.bincount.default",
    "aten._unique2.default",
    "aten.unique_consecutive.default",
    "aten.unique_dim.default",
    "aten.repeat_interleave.Tensor",
}


class HostReadCounter(TorchDispatchMode):
    """``with HostReadCounter() as counter: …`` then ``counter.reads`` (the host reads, in order),
    ``counter.ops`` (a Counter of the non-view operations) and ``counter.total`` (their number)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.ops: collections.Counter[str] = collections.Counter()
        self._patched: dict[str, object] = {}

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not func.is_view:
            self.ops[name] += 1
        if name in _READS:
            self.reads.append(name)
        elif name.startswith("aten.index.Tensor") or name.startswith("aten.index_put"):
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices if i is not None):
                self.reads.append(name + " (boolean mask)")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for attribute in ("tolist", "numpy", "item"):
            original = getattr(torch.Tensor, attribute)
            self._patched[attribute] = original

            def reading(tensor, *a, _name=attribute, _original=original, **k):
                self.reads.append(f"Tensor.{_name}")
                return _original(tensor, *a, **k)

            setattr(torch.Tensor, attribute, reading)
        return super().__enter__()

    def __exit__(self, *exc):
        for attribute, original in self._patched.items():
            setattr(torch.Tensor, attribute, original)
        self._patched.clear()
        return super().__exit__(*exc)
