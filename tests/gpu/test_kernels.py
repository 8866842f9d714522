"""The CUDA-only fast paths equal their portable counterparts on CUDA in bfloat16.

* The vision tower's packed attention (``model.vision.block_attention``) takes one variable-length flash call
  (``torch.nn.attention.varlen.varlen_attn``) on CUDA in half precision; with that call switched off it runs its
  fallback, one SDPA call per run of same-length images. Both against a float32 per-image reference.
* The MoE experts' grouped path (``Experts.grouped``: one ``torch._grouped_mm`` per projection, group ends on
  the device) against the looped path (``Experts.looped``: one matmul pair per expert, counts on the host), with
  experts that get no token.

The names under test are looked up once, below, so a rename is a one-line change here.

Tolerances: bf16 keeps 8 significant bits (a relative step of 2⁻⁸ ≈ 0.4 %); both sides accumulate in float32
and round once per matmul, so they differ by a few bf16 steps of outputs of order 1: rtol = atol = 2e-2 between
the two paths, 3e-2 against the float32 reference (which sees the same bf16 inputs).

Shapes: T packed patches, N_h heads, H head dim, N·k (token, expert) pairs, D model dim, E experts.
"""

from __future__ import annotations

import copy

import pytest
import torch

from model import moe, vision

CUDA = torch.device("cuda")

# --- what is under test ----------------------------------------------------------------------------------------
PACKED_ATTENTION = vision.block_attention  # (q, k, v, lengths) → (T, N_h, H)
VARLEN_SWITCH = (vision, "varlen_attn")  # the module attribute whose None selects the fallback
EXPERTS = moe.Experts  # (d_model, n_experts, d_ff)
GROUPED = moe.Experts.grouped  # (experts, xs (N·k, D) grouped by expert, group_ends(counts) on the device)
LOOPED = moe.Experts.looped  # (experts, xs, counts as a host list)


def group_ends(counts: torch.Tensor) -> torch.Tensor:
    """counts (E,) of rows per expert → what ``GROUPED`` takes: (E,) int32 cumulative ends of each expert's rows."""
    return counts.cumsum(0).to(torch.int32)


# Patch counts of packed images: mixed sizes, a run of equal ones (video frames), one long image.
LENGTHS = [36, 81, 81, 81, 9, 144, 36]


def per_image_reference(q, k, v, lengths) -> torch.Tensor:
    """Full bidirectional attention inside each image, scale 1, in float32: the definition."""
    outs, start = [], 0
    for n in lengths:
        qi, ki, vi = (t[start : start + n].float().transpose(0, 1) for t in (q, k, v))  # (N_h, n, H)
        weights = torch.softmax(qi @ ki.transpose(1, 2), dim=-1)  # (N_h, n, n)
        outs.append((weights @ vi).transpose(0, 1))  # (n, N_h, H)
        start += n
    return torch.cat(outs)  # (T, N_h, H)


@pytest.mark.parametrize(("heads", "head_dim"), [(12, 64), (16, 72)])  # the small and the large tower
def test_varlen_attention_equals_the_fallback(heads, head_dim, monkeypatch):
    module, name = VARLEN_SWITCH
    real = getattr(module, name)
    assert real is not None, "torch.nn.attention.varlen.varlen_attn is missing (torch 2.11 has it)"
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    generator = torch.Generator(device=CUDA).manual_seed(0)
    total = sum(LENGTHS)
    # q/k scaled so that scores (scale 1) are of order 1 to a few: softmax neither uniform nor one-hot
    q, k = (torch.randn(total, heads, head_dim, device=CUDA, generator=generator) / head_dim**0.25 for _ in "qk")
    v = torch.randn(total, heads, head_dim, device=CUDA, generator=generator)
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))  # (T, N_h, H)
    with torch.no_grad():
        monkeypatch.setattr(module, name, spy)
        fast = PACKED_ATTENTION(q, k, v, LENGTHS)
        assert calls, "the varlen path was not taken on CUDA in bf16"
        monkeypatch.setattr(module, name, None)
        fallback = PACKED_ATTENTION(q, k, v, LENGTHS)
    assert fast.shape == fallback.shape == q.shape and fast.dtype == fallback.dtype == torch.bfloat16
    torch.testing.assert_close(fast, fallback, rtol=2e-2, atol=2e-2)
    expected = per_image_reference(q, k, v, LENGTHS)
    torch.testing.assert_close(fast.float(), expected, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(fallback.float(), expected, rtol=3e-2, atol=3e-2)


def grouped_pairs(experts: torch.nn.Module, x: torch.Tensor, chosen: torch.Tensor):
    """x (N, D), chosen (N, k) expert ids → xs (N·k, D) grouped by expert and counts (E,) on the device."""
    flat = chosen.reshape(-1)  # (N·k,)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(experts.gate_up_proj.shape[0], dtype=torch.long, device=x.device)
    counts.index_add_(0, flat, torch.ones_like(flat))  # (E,)
    return x[order // chosen.shape[1]], counts


@pytest.mark.parametrize("tokens", [1, 8, 53])  # a one-row decode step, a decode batch, a prefill
def test_grouped_experts_equal_the_looped_experts(tokens):
    d_model, n_experts, top_k, d_ff = 256, 16, 4, 128  # 16-byte aligned rows in bf16, as grouped_mm needs
    torch.manual_seed(0)
    experts = EXPERTS(d_model, n_experts, d_ff)
    with torch.no_grad():  # weights of unit gain: outputs of order 1, so the tolerances read as relative ones
        experts.gate_up_proj.normal_(std=d_model**-0.5)
        experts.down_proj.normal_(std=d_ff**-0.5)
    experts = experts.to(CUDA, torch.bfloat16)
    reference = copy.deepcopy(experts).float()  # the same bf16 values, computed in float32
    x = torch.randn(tokens, d_model, device=CUDA, dtype=torch.bfloat16)  # (N, D)
    # experts 0 … 11 only: 12 … 15 get no token (empty groups)
    chosen = torch.stack([torch.randperm(n_experts - 4)[:top_k] for _ in range(tokens)]).to(CUDA)  # (N, k)
    xs, counts = grouped_pairs(experts, x, chosen)
    host_counts = counts.tolist()
    assert host_counts[-4:] == [0, 0, 0, 0]
    with torch.no_grad():
        grouped = GROUPED(experts, xs, group_ends(counts))  # (N·k, D)
        looped = LOOPED(experts, xs, host_counts)
        expected = LOOPED(reference, xs.float(), host_counts)
    assert grouped.shape == looped.shape == xs.shape and grouped.dtype == torch.bfloat16
    torch.testing.assert_close(grouped, looped, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grouped.float(), expected, rtol=3e-2, atol=3e-2)
