"""The vision encoder against the reference ``Gemma4VisionModel`` (transformers 5.23.0), its padding and input
contracts, full-size builds on the meta device, and its error paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.config import PRESETS, model_to_hf
from model.vision import VisionEncoder, VisionInputError, apply_axial_rope, axial_cos_sin, axial_frequencies
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
    return torch.from_numpy(batch["pixel_values"]), torch.from_numpy(batch["image_position_ids"])


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
        got = ours(pixel_values, positions)
    assert [g.shape[0] for g in got] == batch["num_soft_tokens_per_image"]
    assert all(g.dtype == torch.float32 and g.shape[1] == PRESETS[name].vision.d_model for g in got)
    torch.testing.assert_close(torch.cat(got), expected, rtol=0, atol=TOLERANCE)
    assert expected.abs().max() > 10  # outputs are scaled by sqrt(D): the tolerance is relative to ~30


def test_clip_bounds_and_standardisation_matter(towers, patches):
    """The parity test would not notice a skipped clamp or standardisation if they changed nothing."""
    name, _, ours = towers
    pixel_values, positions = as_tensors(collate_images(patches[:1]))
    plain = VisionEncoder(PRESETS[name].vision).eval()
    state = ours.state_dict()
    for key in state:
        if key.endswith(("_min", "std_bias")):
            state[key] = torch.full_like(state[key], -math.inf if key.endswith("_min") else 0.0)
        elif key.endswith(("_max", "std_scale")):
            state[key] = torch.full_like(state[key], math.inf if key.endswith("_max") else 1.0)
    plain.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert (ours(pixel_values, positions)[0] - plain(pixel_values, positions)[0]).abs().max() > 0.1


def test_bfloat16_stays_close(towers, patches, reference_tower):
    name, reference, ours = towers
    pixel_values, positions = as_tensors(collate_images(patches))
    with torch.no_grad():
        exact = torch.cat(ours(pixel_values, positions))
        ours16 = VisionEncoder(PRESETS[name].vision).eval()
        ours16.load_state_dict(ours.state_dict())
        got = ours16.to(torch.bfloat16)(pixel_values, positions)
        theirs = run_reference(reference_tower(name).to(torch.bfloat16), pixel_values, positions).float()
    assert all(g.dtype == torch.bfloat16 for g in got)
    got = torch.cat(got).float()
    assert torch.isfinite(got).all()
    # bfloat16 keeps 8 significant bits: at outputs of ~20–30 one step is 0.125. Ours stays within two steps of
    # the reference run in bfloat16 (measured: one step), and within 4% of the range of float32 (measured 0.70
    # of 20.8 = 3.3% on tiny-e2b, 0.69 of 29.9 = 2.3% on tiny-31b).
    torch.testing.assert_close(got, theirs, rtol=0, atol=0.25)
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
    pixel_values, positions = as_tensors(collate_images(patches[:2]))
    with torch.no_grad():
        for a, b in zip(late(pixel_values, positions), ours(pixel_values, positions), strict=True):
            assert torch.equal(a, b)


# --- the input contract ----------------------------------------------------------------------------------------


def test_padding_never_changes_an_image(towers, patches):
    _, _, ours = towers
    small = patches[0]
    alone = (torch.from_numpy(small.pixel_values()), torch.from_numpy(np.array(small.positions)))
    with torch.no_grad():
        expected = ours.encode([alone])[0]
        for batch in (collate_images([small]), collate_images([small, patches[2]]), collate_images(patches[::-1])):
            index = 0 if batch["pixel_values"].shape[0] < 3 else 2
            got = ours(*as_tensors(batch))[index]
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)  # other images change only matmul blocking


def test_batched_equals_one_at_a_time_and_inputs_are_untouched(towers, patches):
    _, _, ours = towers
    pixel_values, positions = as_tensors(collate_images(patches))
    before = pixel_values.clone(), positions.clone()
    with torch.no_grad():
        batched = ours(pixel_values, positions)
        single = [ours(*as_tensors(collate_images([p])))[0] for p in patches]
    assert torch.equal(pixel_values, before[0]) and torch.equal(positions, before[1])
    for a, b in zip(batched, single, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert ours(pixel_values[:0], positions[:0]) == [] and ours.encode([]) == []


def test_patch_order_and_interleaved_padding_do_not_matter(towers, patches):
    _, _, ours = towers
    item = patches[1]
    pixels, positions = torch.from_numpy(item.pixel_values()), torch.from_numpy(np.array(item.positions))
    with torch.no_grad():
        expected = ours.encode([(pixels, positions)])[0]
        order = torch.randperm(pixels.shape[0], generator=torch.Generator().manual_seed(0))
        shuffled = ours.encode([(pixels[order], positions[order])])[0]
        padded_pixels = torch.zeros(1, 2 * pixels.shape[0], pixels.shape[1])
        padded_positions = torch.full((1, 2 * pixels.shape[0], 2), -1)
        padded_pixels[0, 1::2], padded_positions[0, 1::2] = pixels, positions  # padding between real rows
        interleaved = ours(padded_pixels, padded_positions)[0]
    torch.testing.assert_close(shuffled, expected, rtol=0, atol=2e-5)  # keys summed in another order (1.1e-5)
    torch.testing.assert_close(interleaved, expected, rtol=0, atol=1e-6)


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


def grid_positions(rows: int, cols: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack((xs.flatten(), ys.flatten()), dim=1)  # (rows·cols, 2)


@pytest.fixture(scope="module")
def small_tower():
    return VisionEncoder(PRESETS["tiny-e2b"].vision).eval()


def test_bad_batch_shapes_are_refused(small_tower):
    pixels = torch.rand(2, 18, 768)
    positions = grid_positions(3, 6).expand(2, -1, -1).clone()
    with pytest.raises(VisionInputError, match=r"pixel_values must be \(images, patches, 768\), got \(2, 18, 700\)"):
        small_tower(torch.rand(2, 18, 700), positions)
    with pytest.raises(VisionInputError, match=r"pixel_values .* got \(18, 768\)"):
        small_tower(pixels[0], positions[0])
    with pytest.raises(VisionInputError, match=r"positions must be \(2, 18, 2\) .* got \(2, 17, 2\)"):
        small_tower(pixels, positions[:, :17])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.fill_(-1), r"image 1: no real patches"),
        (lambda p: p[:9].copy_(grid_positions(3, 3)), r"image 1: 18 patches do not cover the 3×6 grid once each"),
        (lambda p: p.copy_(grid_positions(2, 9)), r"image 1: the patch grid 2×9 .* not a multiple of the 3×3"),
        (lambda p: p[4].fill_(10_240), r"image 1: patch positions must lie in 0…10239, got 0…10240"),
        (lambda p: p[4, 0].fill_(-1), r"image 1: patch positions must lie in 0…10239, got -1…5"),
    ],
    ids=["all padding", "duplicates", "grid not a multiple of 3", "beyond the table", "half padding"],
)
def test_bad_positions_name_the_image(small_tower, edit, message):
    pixels = torch.rand(2, 18, 768)
    positions = grid_positions(3, 6).expand(2, -1, -1).clone()
    edit(positions[1])
    with pytest.raises(VisionInputError, match=message):
        small_tower(pixels, positions)


def test_bad_unpadded_images_name_the_image(small_tower):
    good = (torch.rand(9, 768), grid_positions(3, 3))
    with pytest.raises(VisionInputError, match=r"image 1: pixel values must be float \(patches, 768\)"):
        small_tower.encode([good, (torch.zeros(9, 768, dtype=torch.uint8), grid_positions(3, 3))])
    with pytest.raises(VisionInputError, match=r"image 2: positions must be int \(9, 2\), got torch.int64 \(8, 2\)"):
        small_tower.encode([good, good, (torch.rand(9, 768), grid_positions(3, 3)[:8])])
    with pytest.raises(VisionInputError, match=r"image 0: no real patches"):
        small_tower.encode([(torch.rand(0, 768), torch.zeros(0, 2, dtype=torch.long))])
    assert isinstance(VisionInputError("x"), ValueError)
