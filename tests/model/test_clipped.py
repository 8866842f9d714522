"""Clipped linears: the clamp formula, inputs left alone, no bounds when unclipped."""

from __future__ import annotations

import torch

from model.clipped import ClippedLinear
from model.embedder import MultimodalEmbedder
from model.norm import rms_norm


def test_clipped_linear_equals_the_formula_and_keeps_its_input():
    torch.manual_seed(0)
    layer = ClippedLinear(8, 5, clipped=True)
    layer.input_min.fill_(-0.3)
    layer.input_max.fill_(0.4)
    layer.output_min.fill_(-0.1)
    layer.output_max.fill_(0.2)
    x = torch.randn(3, 8)
    before = x.clone()
    expected = torch.clamp(torch.clamp(x, -0.3, 0.4) @ layer.linear.weight.T, -0.1, 0.2)
    assert torch.equal(layer(x), expected)
    assert torch.equal(x, before)  # not scratch: the input is not clamped in place
    assert torch.equal(layer(x.clone(), scratch=True), expected)
    assert 0 < (expected == 0.2).sum() < expected.numel()  # the bounds bite on some values only


def test_unclipped_and_unloaded_layers_are_plain_linears():
    torch.manual_seed(1)
    plain = ClippedLinear(4, 4, clipped=False)
    assert set(plain.state_dict()) == {"linear.weight"}
    unloaded = ClippedLinear(4, 4, clipped=True)  # ∓inf bounds
    assert set(unloaded.state_dict()) == {"linear.weight", "input_min", "input_max", "output_min", "output_max"}
    unloaded.linear.weight.data.copy_(plain.linear.weight)
    x = torch.randn(2, 4) * 100
    assert torch.equal(plain(x), x @ plain.linear.weight.T)
    assert torch.equal(unloaded(x), plain(x))


def test_embedder_norms_then_projects():
    torch.manual_seed(2)
    embedder = MultimodalEmbedder(6, 10)
    h = torch.randn(5, 6) * 3
    assert torch.allclose(embedder(h), rms_norm(h) @ embedder.embedding_projection.weight.T)
    assert embedder(h).shape == (5, 10)
