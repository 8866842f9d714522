"""The attention formulation rule (GPU.md §1): which SDPA call each layer kind of each preset gets on CUDA, and that
every formulation gives the same numbers (checked here on the CPU against attention written out by hand)."""

from __future__ import annotations

import pytest
import torch

from model.attention import FLASH_HEAD_DIM, attend, formulation
from model.config import PRESETS


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("gemma4")])
def test_no_call_of_any_published_size_is_left_to_the_math_kernel_on_cuda(name):
    config = PRESETS[name].text
    for layer in range(config.n_layers):
        heads, dim = config.layer_kv_heads(layer), config.layer_head_dim(layer)
        for queries in (1, 7, 1024):
            for masked in (False, True):
                how = formulation(config.n_heads, heads, dim, queries, masked, "cuda")
                # flash takes GQA, but no mask and no head dim over 256; the efficient kernel takes no GQA
                if how == "gqa":
                    assert not masked and dim <= FLASH_HEAD_DIM, (layer, queries, masked)
                assert how != "grouped" or queries == 1
                if config.is_full(layer):  # head dim 512: never the GQA call, whatever the mask
                    assert how in ("grouped", "repeat") and dim > FLASH_HEAD_DIM
    # the decode of a full layer packs the query groups; a chunk repeats K/V
    full = next(i for i in range(config.n_layers) if config.is_full(i))
    args = (config.n_heads, config.layer_kv_heads(full), config.layer_head_dim(full))
    assert formulation(*args, 1, True, "cuda") == "grouped"
    assert formulation(*args, 64, True, "cuda") == "repeat"
    assert formulation(*args, 64, True, "cpu") == "gqa"  # the CPU's flash kernel takes GQA with a mask


def by_hand(q, k, v, allowed):
    """Attention written out: q (B, N, T, H), k/v (B, K, S, H), allowed (B, 1, T, S) bool, scale 1."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q.double() @ k.double().transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v.double()).to(q.dtype)


@pytest.mark.parametrize("heads, kv_heads, dim", [(8, 1, 512), (8, 2, 64), (4, 4, 32)])
def test_every_formulation_gives_the_same_attention(heads, kv_heads, dim):
    from model.step import additive

    torch.manual_seed(0)
    b, s = 3, 11
    k, v = torch.randn(b, kv_heads, s, dim), torch.randn(b, kv_heads, s, dim)
    allowed = torch.rand(b, 1, 1, s) > 0.3
    allowed[..., 0] = True
    q1 = torch.randn(b, heads, 1, dim)  # one query row: decode
    expected = by_hand(q1, k, v, allowed)
    kinds = ["plain"] if heads == kv_heads else ["gqa", "grouped", "repeat"]
    for how in kinds:
        got = attend(q1, k, v, additive(allowed, torch.float32), how=how)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=how)
    qt = torch.randn(b, heads, s, dim)  # a chunk: causal, and with a mask
    causal = torch.ones(s, s, dtype=torch.bool).tril()[None, None].expand(b, 1, s, s)
    expected = by_hand(qt, k, v, causal)
    for how in [h for h in kinds if h != "grouped"]:
        torch.testing.assert_close(attend(qt, k, v, None, causal=True, how=how), expected, rtol=1e-5, atol=1e-5)
        masked = attend(qt, k, v, additive(causal, torch.float32), how=how)
        torch.testing.assert_close(masked, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one query row"):
        attend(qt, k, v, None, how="grouped")
