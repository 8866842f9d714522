"""Tests that need a CUDA device (../shared/spec/GPU.md): every test under tests/gpu is skipped without one, so
they are collected but never run on the CPU machines (development, CI); ``bash scripts/gpu_smoke.sh`` runs them on
a GPU machine.

The models are tiny random ones made on the spot (``model.config`` presets, no checkpoint files), built in float32
on the CPU from a seed and then moved, so a test can hold the same weights on both devices.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from model.config import preset
from model.decoder import TextDecoder
from model.gemma4 import Gemma4
from tests.gpu.helpers import CUDA

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # A conftest hook sees every collected item of the session: mark only this folder's.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Norm weights and layer scalars drawn in [0.5, 1.5) (a fresh model holds them at 1), so every parameter
    matters, as the CPU tests do (tests/model/helpers.py)."""
    with torch.no_grad():
        for module in model.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if name == "weight" and parameter.ndim == 1:
                    parameter.uniform_(0.5, 1.5)
            for name, buffer in module.named_buffers(recurse=False):
                if name == "layer_scalar":
                    buffer.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def tiny_decoder():
    """A factory: ``make(name, device=CUDA, dtype=torch.bfloat16, seed=0, **text_overrides)`` → an eval
    :class:`TextDecoder` of preset ``name``'s text config (``dataclasses.replace``-d with the overrides)."""

    def make(name: str, *, device=CUDA, dtype=torch.bfloat16, seed: int = 0, **overrides) -> TextDecoder:
        torch.manual_seed(seed)
        config = dataclasses.replace(preset(name).text, **overrides)
        return randomize(TextDecoder(config)).eval().to(device=device, dtype=dtype)

    return make


@pytest.fixture
def tiny_text_model():
    """A factory: ``make(name, device=CUDA, dtype=torch.bfloat16, seed=0)`` → an eval text-only :class:`Gemma4`
    (no towers) of preset ``name``, what ``runtime.generate.generate`` and ``runtime.engine.Engine`` take."""

    def make(name: str, *, device=CUDA, dtype=torch.bfloat16, seed: int = 0) -> Gemma4:
        torch.manual_seed(seed)
        config = dataclasses.replace(preset(name), vision=None, audio=None)
        return randomize(Gemma4(config)).eval().to(device=device, dtype=dtype)

    return make
