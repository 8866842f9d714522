"""The vision encoder against the reference ``Gemma4VisionModel`` (transformers 5.23.0), its padding and input
contracts, full-size builds on the meta device, and its error paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.checkpoint import model_to_hf
from model.config import PRESETS
from model.vision import (
    VisionEncoder,
    VisionInputError,
    apply_axial_rope,
    axial_cos_sin,
    axial_frequencies,
    plan_grids,
)
from preprocess.image import collate_images, preprocess_image

TINY = ["tiny-e2b", "tiny-31b"]  # small-style tower with clipped linears; large-style with standardisation
# float32. Outputs reach ~30 (× sqrt(D), standardised), where one ulp is 2e-6: 2e-5 is ~8 ulps. The reference
# itself is 2e-5 from a float64 run of the same weights; we differ from it by 7e-6–1.2e-5 over seeds, all from
# the attention kernel summing an image's keys without the padding blocks (projections agree bit for bit).
TOLERANCE = 2e-5
# (height, width, budget): landscape, tall portrait, square; three budgets, so the reference pads each differently.
IMAGES = [(300, 500, 70), (620, 200, 140), (256, 256, 280)]


def hf_vision_config(name: str) -> dict:
    return model_to_hf(PRESETS[name])["vision_config"]


@pytest.fixture(scope="module")
def reference_tower(reference):
    """A factory: a tiny random reference tower whose every feature matters: norms away from 1, a non-constant
    position table, finite clip bounds that bite, random standardisation."""

    def build(name: str, seed: int = 0):
        torch.manual_seed(seed)
        tower = reference.Gemma4VisionModel(reference.Gemma4VisionConfig(**hf_vision_config(name))).eval()
        with torch.no_grad():
            for key, tensor in list(tower.named_parameters()) + list(tower.named_buffers()):
                if "norm" in key:
                    tensor.add_(torch.randn_like(tensor) * 0.1)  # random init leaves every norm weight at 1
                elif key.endswith("position_embedding_table"):
                    tensor.normal_(0.0, 0.1)  # random init leaves it all ones
                elif key.endswith(("input_min", "output_min")):
                    tensor.fill_(-0.6 - torch.rand(()).item())
                elif key.endswith(("input_max", "output_max")):
                    tensor.fill_(0.6 + torch.rand(()).item())
                elif key.endswith("std_bias"):
                    tensor.normal_()
                elif key.endswith("std_scale"):
                    tensor.uniform_(0.5, 1.5)
        return tower

    return build


@pytest.fixture(scope="module", params=TINY)
def towers(request, reference_tower):
    reference = reference_tower(request.param)
    ours = VisionEncoder(PRESETS[request.param].vision).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return request.param, reference, ours


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    return np.clip(smooth * 0.5 + rng.integers(0, 128, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def patches():
    return [preprocess_image(random_image(h, w, seed), budget) for seed, (h, w, budget) in enumerate(IMAGES)]


def as_tensors(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's padded form."""
    return torch.from_numpy(batch["pixel_values"]), torch.from_numpy(batch["image_position_ids"])


def packed(items) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Our form, as ``collate`` packs images: real patches back to back (float in [0, 1]) and their grids."""
    return torch.from_numpy(np.concatenate([p.pixel_values() for p in items])), [p.grid for p in items]


def run_reference(reference, pixel_values, positions) -> torch.Tensor:
    with torch.no_grad():
        return reference(pixel_values=pixel_values, pixel_position_ids=positions).last_hidden_state


# --- parity ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["reference", "longest"])
def test_outputs_equal_reference(towers, patches, padding):
    name, reference, ours = towers
    longest = max(p.num_patches for p in patches)
    # "reference": 9 × the largest budget, as the reference processor pads; "longest": the project's collate.
    batch = collate_images(patches, max_patches_per_image=None if padding == "reference" else longest)
    pixel_values, positions = as_tensors(batch)
    expected = run_reference(reference, pixel_values, positions)  # (Σ n_i, D)
    with torch.no_grad():
        got = ours(*packed(patches))  # (Σ n_i, D)
    assert got.shape == (sum(batch["num_soft_tokens_per_image"]), PRESETS[name].vision.d_model)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=TOLERANCE)
    assert expected.abs().max() > 10  # outputs are scaled by sqrt(D): the tolerance is relative to ~30


def test_clip_bounds_and_standardisation_matter(towers, patches):
    """The parity test would not notice a skipped clamp or standardisation if they changed nothing."""
    name, _, ours = towers
    one = packed(patches[:1])
    plain = VisionEncoder(PRESETS[name].vision).eval()
    state = ours.state_dict()
    for key in state:
        if key.endswith(("_min", "std_bias")):
            state[key] = torch.full_like(state[key], -math.inf if key.endswith("_min") else 0.0)
        elif key.endswith(("_max", "std_scale")):
            state[key] = torch.full_like(state[key], math.inf if key.endswith("_max") else 1.0)
    plain.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert (ours(*one) - plain(*one)).abs().max() > 0.1


def test_bfloat16_stays_close(towers, patches, reference_tower):
    name, reference, ours = towers
    pixel_values, positions = as_tensors(collate_images(patches))
    with torch.no_grad():
        exact = ours(*packed(patches))
        ours16 = VisionEncoder(PRESETS[name].vision).eval()
        ours16.load_state_dict(ours.state_dict())
        got = ours16.to(torch.bfloat16)(*packed(patches))
        theirs = run_reference(reference_tower(name).to(torch.bfloat16), pixel_values, positions).float()
    assert got.dtype == torch.bfloat16
    got = got.float()
    assert torch.isfinite(got).all()
    # bfloat16 keeps 8 significant bits: at outputs of ~20–30 one step is 0.125. Ours keeps its RoPE frequencies
    # float32 (model.rope.Float32Frequencies); the reference's are cast to bf16 with the model, so the two bf16
    # runs differ by a few steps on a few outputs. Ours must stay as close to float32 as the reference's bf16 run.
    # Measured: mean |bf16 − float32| 0.092 (ours) vs 0.092 (reference) on tiny-e2b, 0.104 vs 0.106 on tiny-31b;
    # the two bf16 runs at most 0.53 apart (4 steps) where the reference's rounded frequencies turn an angle.
    ours_error, their_error = (got - exact).abs().mean(), (theirs - exact).abs().mean()
    assert ours_error <= 1.02 * their_error, (ours_error, their_error)
    torch.testing.assert_close(got, theirs, rtol=0, atol=0.75)
    torch.testing.assert_close(got, exact, rtol=0, atol=0.04 * exact.abs().max().item())


# --- names and sizes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_state_dict_keys_equal_reference(name, reference):
    tower = reference.Gemma4VisionModel(reference.Gemma4VisionConfig(**hf_vision_config(name)))
    theirs = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in VisionEncoder(PRESETS[name].vision).state_dict().items()}
    assert ours == theirs


@pytest.mark.parametrize("name", ["gemma4-e2b", "gemma4-31b"])
def test_full_size_on_meta_matches_config_and_reference_counts(name, reference):
    config = PRESETS[name].vision
    with torch.device("meta"):
        ours = VisionEncoder(config)
        theirs = reference.Gemma4VisionModel(reference.Gemma4VisionConfig(**hf_vision_config(name)))
    count = sum(p.numel() for p in ours.parameters())
    assert count == config.num_parameters() == sum(p.numel() for p in theirs.parameters())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.rope_freq.is_meta and "rope_freq" not in ours.state_dict()


def test_meta_build_with_loaded_weights_and_reset_buffers_equals_a_plain_build(towers, patches):
    name, _, ours = towers
    with torch.device("meta"):
        late = VisionEncoder(PRESETS[name].vision)
    late.load_state_dict(ours.state_dict(), assign=True)
    late.reset_buffers("cpu")
    with torch.no_grad():
        assert torch.equal(late(*packed(patches[:2])), ours(*packed(patches[:2])))


# --- the input contract ----------------------------------------------------------------------------------------


def test_neighbours_never_change_an_image(towers, patches):
    """An image's soft tokens do not depend on what it is packed with (other grids, before or after it)."""
    _, _, ours = towers
    small = patches[0]
    with torch.no_grad():
        expected = ours(*packed([small]))
        for before, after in (([], [patches[2]]), (patches[:0:-1], []), ([patches[1]], [small])):
            start = sum(p.num_soft_tokens for p in before)
            got = ours(*packed([*before, small, *after]))[start : start + expected.shape[0]]
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)  # other images change only blocking


def test_batched_equals_one_at_a_time_and_inputs_are_untouched(towers, patches):
    _, _, ours = towers
    values, grids = packed(patches)
    before = values.clone()
    with torch.no_grad():
        batched = ours(values, grids)
        single = torch.cat([ours(*packed([p])) for p in patches])
    assert torch.equal(values, before)
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)
    assert ours(values[:0], []).shape == (0, PRESETS[towers[0]].vision.d_model)


def test_plan_puts_patches_and_pooling_windows_in_raster_order():
    positions, groups = plan_grids([(3, 6), (6, 3)], kernel=3)
    assert positions.shape == (36, 2) and groups.shape == (4, 9)
    assert positions[:6].tolist() == [[x, 0] for x in range(6)] and positions[18:21].tolist() == [
        [0, 0],
        [1, 0],
        [2, 0],
    ]
    assert groups[0].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14]  # the 3×6 image's first window
    assert groups[1].tolist() == [3, 4, 5, 9, 10, 11, 15, 16, 17]
    assert groups[3].tolist() == [27, 28, 29, 30, 31, 32, 33, 34, 35]  # the 6×3 image's second window (rows 3–5)
    assert sorted(groups.ravel().tolist()) == list(range(36))  # every patch pooled once


def test_axial_rope_rotates_x_half_by_columns_and_y_half_by_rows():
    head_dim, theta = 8, 100.0
    positions = torch.tensor([[3, 5], [0, 2]])
    x = torch.randn(2, 1, head_dim)
    cos, sin = axial_cos_sin(positions, axial_frequencies(head_dim, theta), torch.float32)
    got = apply_axial_rope(x, cos, sin)
    for t, (px, py) in enumerate(positions.tolist()):
        for half, p in ((0, px), (1, py)):
            for i in range(head_dim // 4):
                angle = p * theta ** (-2 * i / (head_dim // 2))
                a, b = x[t, 0, half * 4 + i], x[t, 0, half * 4 + i + 2]
                assert torch.isclose(got[t, 0, half * 4 + i], a * math.cos(angle) - b * math.sin(angle), atol=1e-6)
                assert torch.isclose(got[t, 0, half * 4 + i + 2], b * math.cos(angle) + a * math.sin(angle), atol=1e-6)


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_tower():
    return VisionEncoder(PRESETS["tiny-e2b"].vision).eval()


@pytest.mark.parametrize(
    ("values", "grids", "message"),
    [
        (torch.rand(18, 700), [(3, 6)], r"patches must be float \(patches, 768\), got torch.float32 \(18, 700\)"),
        (torch.rand(2, 18, 768), [(3, 6)], r"got torch.float32 \(2, 18, 768\)"),
        (torch.zeros(18, 768, dtype=torch.uint8), [(3, 6)], r"patches must be float"),
        (torch.rand(27, 768), [(3, 6)], r"the grids hold 18 patches, but patches has 27 rows"),
        (torch.rand(36, 768), [(3, 6), (2, 9)], r"image 1: the patch grid 2×9 .* not a positive multiple of the 3×3"),
        (torch.rand(0, 768), [(0, 3)], r"image 0: the patch grid 0×3"),
        (torch.rand(10_242 * 3, 768), [(3, 10_242)], r"image 0: the patch grid 3×10242 exceeds the 10240-entry"),
    ],
    ids=["width", "rank", "uint8", "count", "grid not a multiple of 3", "empty grid", "beyond the table"],
)
def test_bad_input_names_the_image(small_tower, values, grids, message):
    with pytest.raises(VisionInputError, match=message):
        small_tower(values, grids)
    assert isinstance(VisionInputError("x"), ValueError)
