"""Counting what a step dispatches: a ``TorchDispatchMode`` that records every dispatched (non-view) operation and
every data-dependent read of a tensor's values by the host (used by ``gemma4 bench generate`` and the tests).

On a GPU such a read is a blocking device→host copy (a sync) and makes a step impossible to capture in a CUDA
graph; on the CPU it costs nothing, which is why it must be caught here by what the code asks for, not by time:
``_local_scalar_dense`` (``.item()``, ``bool(t)``, ``int(t)``), operations whose output shape depends on values
(``nonzero``, ``masked_select``, ``unique``, ``bincount``, indexing with a boolean mask), and the Python-level
``Tensor.tolist`` / ``Tensor.numpy`` / ``Tensor.item`` (which read CPU tensors without dispatching).
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostReadCounter", "cuda_like_rms_norm", "decode_step_ops", "depth_model_config"]

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


@contextlib.contextmanager
def cuda_like_rms_norm():
    """Inside: the CPU has a kernel for ``aten::_fused_rms_norm``, as CUDA does (``model.norm``'s one operation per
    norm). Without it the CPU decomposes the op into its seven float32 operations, which no GPU dispatches; the
    stand-in computes the same values, so a count inside measures what CUDA would dispatch."""
    library = torch.library.Library("aten", "IMPL")

    def kernel(x, normalized_shape, weight, eps):
        x32 = x.float()
        inverse = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + (1e-6 if eps is None else eps))
        y = x32 * inverse
        if weight is not None:
            y = y * weight.float()
        return y.to(x.dtype), inverse

    library.impl("_fused_rms_norm", kernel, "CPU")
    try:
        yield
    finally:
        library._destroy()


def depth_model_config(text):
    """``text`` (a TextConfig) with its layer structure (depth, layer kinds, KV sharing, PLE, MoE, K=V) and tiny
    widths: the operations of a step do not depend on the widths."""
    small = dict(vocab_size=512, ple_vocab_size=512, d_model=64, head_dim=16, global_head_dim=32, d_ff=64)
    small.update(sliding_window=16, ple_dim=8 if text.ple_dim else 0)
    if text.n_experts:
        small.update(n_experts=8, top_k_experts=2, moe_d_ff=32)
    heads = text.n_heads // text.n_kv_heads  # keep the query groups' shape
    small.update(n_heads=heads * min(text.n_kv_heads, 2), n_kv_heads=min(text.n_kv_heads, 2))
    if text.n_global_kv_heads:
        small.update(n_global_kv_heads=1)
    return replace(text, **small)


def decode_step_ops(text, *, rows: int = 8, dtype=torch.bfloat16, reference=None) -> tuple[int, int | None]:
    """Non-view operations one decode step of ``rows`` rows dispatches on CUDA, at the depth of ``text`` (a
    TextConfig), ours and (given ``reference``, the ``oracles.hf_decoder`` adapter) the reference's
    ``Gemma4ForCausalLM`` with its dynamic cache; counted on the CPU with CUDA's one-kernel RMSNorm."""
    from model.checkpoint import text_to_hf
    from model.decoder import TextDecoder

    config = depth_model_config(text)
    torch.manual_seed(0)
    ours = TextDecoder(config).to(dtype).eval()
    prompt = torch.randint(0, config.vocab_size, (rows, 24))
    with torch.no_grad(), cuda_like_rms_norm():
        cache = ours.new_cache(rows, 64)
        logits = ours(prompt, logits_to_keep=1, cache=cache)
        step = logits.argmax(-1)
        ours.decode(step, cache, span=cache.span(25))  # warm-up
        with HostReadCounter() as counter:
            ours.decode(step, cache, span=cache.span(26))
        if reference is None:
            return counter.total, None
        theirs = reference.build(text_to_hf(config, dtype=dtype), dtype=dtype, device="cpu")
        out = theirs(input_ids=prompt, use_cache=True)
        past = out.past_key_values
        out = theirs(input_ids=step, past_key_values=past, use_cache=True)  # warm-up
        with HostReadCounter() as reference_counter:
            theirs(input_ids=step, past_key_values=out.past_key_values, use_cache=True)
    return counter.total, reference_counter.total
