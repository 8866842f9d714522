"""Tests of ``preprocess.image``: bit parity with the reference PIL-backend processor
(``transformers.Gemma4ImageProcessorPil``, test-only oracle) at every budget, the patch/position kernels
against independent loop implementations, collation, errors, and fast mode's fidelity.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from preprocess import budget as budget_math
from preprocess.image import (
    PATCH_VALUES,
    ImagePatches,
    collate_images,
    patch_positions,
    patchify,
    preprocess_image,
    preprocess_images,
)

# ------------------------------------------------------------------------------------------------ helpers

BUDGETS = (70, 140, 280, 560, 1120)
# Hypothesis examples per budget: the reference pads every image to 9*budget x 768 float32 rows, so the
# largest budgets are the slowest to compare.
EXAMPLES = {70: 50, 140: 40, 280: 30, 560: 20, 1120: 12}
OUTPUT_KEYS = {"pixel_values", "image_position_ids", "num_soft_tokens_per_image"}

TINY = st.tuples(st.integers(1, 8), st.integers(1, 8))
MODERATE = st.tuples(st.integers(1, 640), st.integers(1, 640))
EXTREME = st.sampled_from([(1, 2000), (2000, 1), (2000, 3), (3, 2000), (3, 5000), (5000, 3), (1, 1), (7, 3001)])
THIN = st.tuples(st.integers(1, 12), st.integers(200, 2500))
SIZES = st.one_of(TINY, MODERATE, EXTREME, THIN, THIN.map(lambda hw: (hw[1], hw[0])))
SEEDS = st.integers(0, 2**32 - 1)


def run_property(budget: int, test, **strategies) -> None:
    """Run ``test(**drawn)`` under Hypothesis with a per-budget example count (no example database, so
    nothing is written outside pytest's tmp_path)."""
    configured = settings(
        max_examples=EXAMPLES[budget],
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    configured(given(**strategies)(test))()


@pytest.fixture(scope="module")
def reference_images(reference):
    """``Gemma4ImageProcessorPil(max_soft_tokens=budget)`` on a list of images, one processor per budget."""
    processors = {}

    def run(images: list, budget: int, **kwargs) -> dict:
        if budget not in processors:
            processors[budget] = reference.Gemma4ImageProcessorPil(max_soft_tokens=budget)
        out = processors[budget](images, return_tensors="np", **kwargs)
        return {key: out[key] for key in out.keys()}

    return run


def assert_parity(ours: dict, ref: dict) -> None:
    """Same keys, shapes and dtypes; identical pixel values, positions and soft-token counts."""
    assert set(ours) == OUTPUT_KEYS
    assert set(ref) == OUTPUT_KEYS
    for key in ("pixel_values", "image_position_ids"):
        assert ours[key].shape == ref[key].shape, key
        assert ours[key].dtype == ref[key].dtype, key
    np.testing.assert_array_equal(ours["pixel_values"], ref["pixel_values"])
    np.testing.assert_array_equal(ours["image_position_ids"], ref["image_position_ids"])
    assert [int(n) for n in ours["num_soft_tokens_per_image"]] == [int(n) for n in ref["num_soft_tokens_per_image"]]


def random_array(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def make_pil(mode: str, height: int, width: int, seed: int) -> Image.Image:
    """A random PIL image of ``mode``."""
    rng = np.random.default_rng(seed)
    if mode == "RGB":
        return Image.fromarray(random_array((height, width, 3), seed))
    if mode == "L":
        return Image.fromarray(random_array((height, width), seed), "L")
    if mode in ("LA", "RGBA", "CMYK"):
        channels = {"LA": 2, "RGBA": 4, "CMYK": 4}[mode]
        return Image.fromarray(random_array((height, width, channels), seed), mode)
    if mode == "1":
        return Image.fromarray(random_array((height, width), seed) > 127)
    if mode in ("P", "P+transparency"):
        image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "P")
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        if mode == "P+transparency":
            image.info["transparency"] = int(rng.integers(0, 4))  # small index: likely present in tiny images
        return image
    raise AssertionError(mode)


def patchify_loop(pixels: np.ndarray) -> np.ndarray:
    """Independent patchify: value (py, px, ch) of patch (r, c) at [r*cols + c, (py*16 + px)*C + ch]."""
    height, width, channels = pixels.shape
    rows, cols = height // 16, width // 16
    out = np.empty((rows * cols, 16 * 16 * channels), dtype=pixels.dtype)
    for r in range(rows):
        for c in range(cols):
            for py in range(16):
                for px in range(16):
                    for ch in range(channels):
                        out[r * cols + c, (py * 16 + px) * channels + ch] = pixels[r * 16 + py, c * 16 + px, ch]
    return out


def positions_loop(rows: int, cols: int) -> np.ndarray:
    out = np.empty((rows * cols, 2), dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            out[r * cols + c] = (c, r)  # (x, y)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@functools.cache
def smooth_image(height: int = 1800, width: int = 2400) -> np.ndarray:
    """(height, width, 3) uint8 made of gradients and low-frequency sinusoids (a photo-like smooth scene)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y /= height
    x /= width
    r = 127.5 + 60 * np.sin(2 * np.pi * 3 * x) + 60 * (y - 0.5)
    g = 127.5 + 50 * np.cos(2 * np.pi * 2.3 * (x + y)) + 40 * (x - 0.5)
    b = 127.5 + 70 * np.sin(2 * np.pi * 2.5 * y) * np.cos(2 * np.pi * 1.5 * x)
    out = np.clip(np.rint(np.stack([r, g, b], axis=2)), 0, 255).astype(np.uint8)
    out.flags.writeable = False
    return out


def encoded(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("budget", BUDGETS)
def test_parity_pil_rgb(budget, reference_images):
    def check(size, seed):
        image = Image.fromarray(random_array((*size, 3), seed))
        assert_parity(preprocess_images([image], budget), reference_images([image], budget))

    run_property(budget, check, size=SIZES, seed=SEEDS)


@pytest.mark.parametrize("budget", BUDGETS)
def test_parity_uint8_array(budget, reference_images):
    def check(size, channels, seed):
        array = random_array((*size, channels), seed)
        copy = array.copy()
        ref = reference_images([array], budget, input_data_format="channels_last")  # tiny sides are ambiguous
        assert_parity(preprocess_images([array], budget), ref)
        np.testing.assert_array_equal(array, copy)

    run_property(budget, check, size=SIZES, channels=st.sampled_from([3, 3, 1, 4]), seed=SEEDS)


@pytest.mark.parametrize("budget", BUDGETS)
def test_parity_pil_modes(budget, reference_images):
    modes = st.sampled_from(["L", "RGBA", "P", "P+transparency", "LA", "CMYK", "1"])

    def check(mode, size, seed):
        image = make_pil(mode, *size, seed)
        assert_parity(preprocess_images([image], budget), reference_images([image], budget))

    run_property(budget, check, mode=modes, size=SIZES, seed=SEEDS)


@pytest.mark.parametrize("budget", [70, 280])
@pytest.mark.slow
def test_parity_batch_of_mixed_sizes(budget, reference_images):
    def check(sizes, seed):
        images = [Image.fromarray(random_array((*size, 3), seed + i)) for i, size in enumerate(sizes)]
        assert_parity(preprocess_images(images, budget), reference_images(images, budget))

    run_property(budget, check, sizes=st.lists(SIZES, min_size=2, max_size=4), seed=st.integers(0, 2**31))


@pytest.mark.parametrize("budget", BUDGETS)
def test_parity_square_and_common_sizes(budget, reference_images):
    # Fixed, documented sizes (spec §6.6), including one at exactly the target size (no resample).
    side = 48 * int(np.sqrt(budget))
    for i, size in enumerate([(side, side), (1080, 1920), (480, 640), (100, 3000)]):
        image = Image.fromarray(random_array((*size, 3), i))
        assert_parity(preprocess_images([image], budget), reference_images([image], budget))


def test_rescale_float32_divide_equals_reference_for_all_levels(reference):
    reference_rescale = pytest.importorskip("transformers.image_transforms").rescale
    levels = np.arange(256, dtype=np.uint8)
    ours = np.divide(levels, np.float32(255), dtype=np.float32)
    ref = (levels.astype(np.float64) * (1 / 255)).astype(np.float32)
    assert np.array_equal(ours, ref)
    # The same through the production path (one 16x16 patch holding every level in every channel) and the
    # reference's own rescale function.
    patch = np.repeat(levels, 3)[None, :]  # (1, 768)
    item = ImagePatches(patches=patch, size=(16, 16), original_size=(16, 16), budget=70)
    ref_patch = reference_rescale(patch.reshape(1, 16, 48), 1 / 255, input_data_format="channels_first")
    assert ref_patch.dtype == np.float32
    assert np.array_equal(item.pixel_values(), ref_patch.reshape(1, PATCH_VALUES))
    collated = collate_images([item])["pixel_values"]
    assert collated.dtype == np.float32
    assert np.array_equal(collated[0, :1], ref_patch.reshape(1, PATCH_VALUES))
    assert not collated[0, 1:].any()


# ------------------------------------------------------------------------------------------------ kernels


@settings(max_examples=30, deadline=None, database=None)
@given(rows=st.integers(1, 4), cols=st.integers(1, 4), channels=st.sampled_from([3, 3, 1, 2]))
def test_patchify_layout_matches_loop(reference, rows, cols, channels):
    # ``reference`` is session-scoped (a pure import), so Hypothesis does not object to it.
    pil_gemma4 = pytest.importorskip("transformers.models.gemma4.image_processing_pil_gemma4")
    shape = (rows * 16, cols * 16, channels)
    pixels = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)  # every value distinct
    copy = pixels.copy()
    patches = patchify(pixels)
    assert patches.dtype == np.float32
    assert patches.shape == (rows * cols, 16 * 16 * channels)
    np.testing.assert_array_equal(patches, patchify_loop(pixels))
    np.testing.assert_array_equal(pixels, copy)
    # The reference's channels-first patchify agrees.
    np.testing.assert_array_equal(patches, pil_gemma4.convert_image_to_patches(np.moveaxis(pixels, -1, 0), 16))
    # Spot check the documented index formula once by hand: last patch, pixel (py, px) = (15, 2), channel 0.
    r, c, py, px = rows - 1, cols - 1, 15, 2
    assert patches[r * cols + c, (py * 16 + px) * channels] == pixels[r * 16 + py, c * 16 + px, 0]


def test_patchify_uint8_and_readonly_input():
    pixels = random_array((48, 80, 3), seed=3)
    pixels.flags.writeable = False  # like np.asarray(PIL image)
    patches = patchify(pixels)
    assert patches.dtype == np.uint8
    assert patches.shape == (3 * 5, PATCH_VALUES)
    np.testing.assert_array_equal(patches, patchify_loop(pixels))
    np.testing.assert_array_equal(pixels, random_array((48, 80, 3), seed=3))


def test_patchify_non_contiguous_input():
    base = random_array((64, 96, 3), seed=4)
    view = base[::2, ::-2][:32, :48]  # 32 x 48, strided and reversed
    np.testing.assert_array_equal(patchify(view), patchify_loop(np.ascontiguousarray(view)))


@pytest.mark.parametrize("shape", [(15, 16, 3), (16, 40, 3), (48, 47, 3)])
def test_patchify_rejects_sides_not_multiple_of_16(shape):
    with pytest.raises(ValueError, match="multiples of 16"):
        patchify(np.zeros(shape, np.uint8))


@settings(max_examples=40, deadline=None, database=None)
@given(rows=st.integers(1, 60), cols=st.integers(1, 60))
def test_patch_positions_match_loop(rows, cols):
    positions = patch_positions(rows, cols)
    assert positions.dtype == np.int64
    np.testing.assert_array_equal(positions, positions_loop(rows, cols))
    assert not positions.flags.writeable  # cached and shared: must be read-only
    with pytest.raises(ValueError):
        positions[0, 0] = 5


@pytest.mark.parametrize("budget", BUDGETS)
def test_preprocess_image_fields_agree_with_budget_math(budget):
    def check(size, seed):
        height, width = size
        array = random_array((height, width, 3), seed)
        item = preprocess_image(array, budget)
        th, tw = budget_math.image_target_size(height, width, budget)
        rows, cols = budget_math.image_grid(height, width, budget)
        assert item.size == (th, tw)
        assert item.grid == (rows, cols) == (th // 16, tw // 16)
        assert item.original_size == (height, width)
        assert item.budget == budget
        assert item.num_soft_tokens == budget_math.image_soft_tokens(height, width, budget) <= budget
        assert item.num_patches == rows * cols
        assert item.patches.shape == (rows * cols, PATCH_VALUES) and item.patches.dtype == np.uint8
        np.testing.assert_array_equal(item.positions, positions_loop(rows, cols))
        values = item.pixel_values()
        assert values.dtype == np.float32 and values.shape == item.patches.shape
        assert 0.0 <= values.min() and values.max() <= 1.0
        collated = collate_images([item])
        pad = budget_math.image_padding_patches(height, width, budget)
        total = budget_math.max_patches(budget)
        assert collated["pixel_values"].shape == (1, total, PATCH_VALUES)
        assert collated["image_position_ids"].shape == (1, total, 2)
        assert total - rows * cols == pad
        assert not collated["pixel_values"][0, rows * cols :].any()
        assert (collated["image_position_ids"][0, rows * cols :] == -1).all()
        assert collated["num_soft_tokens_per_image"] == [budget_math.image_soft_tokens(height, width, budget)]

    run_property(budget, check, size=SIZES, seed=SEEDS)


@pytest.mark.parametrize("budget, side", [(70, 384), (140, 528), (280, 768), (560, 1104), (1120, 1584)])
def test_no_resample_at_target_size(budget, side):
    assert budget_math.image_target_size(side, side, budget) == (side, side)
    array = random_array((side, side, 3), seed=budget)
    for source in (array, Image.fromarray(array)):
        item = preprocess_image(source, budget)
        assert item.size == (side, side)
        np.testing.assert_array_equal(item.patches, patchify_loop(array) if side == 384 else patchify(array))


def test_collate_batch_equals_one_at_a_time():
    rng = np.random.default_rng(21)
    sizes = [(5, 7), (300, 200), (40, 1000), (768, 768)]
    for budget in (70, 280):
        items = [preprocess_image(rng.integers(0, 256, (*s, 3), dtype=np.uint8), budget) for s in sizes]
        batch = collate_images(items)
        assert batch["pixel_values"].shape == (len(items), 9 * budget, PATCH_VALUES)
        assert batch["image_position_ids"].shape == (len(items), 9 * budget, 2)
        for index, item in enumerate(items):
            alone = collate_images([item])
            np.testing.assert_array_equal(batch["pixel_values"][index], alone["pixel_values"][0])
            np.testing.assert_array_equal(batch["image_position_ids"][index], alone["image_position_ids"][0])
            assert batch["num_soft_tokens_per_image"][index] == alone["num_soft_tokens_per_image"][0]
        # Reordering the batch reorders the rows and nothing else.
        reordered = collate_images(items[::-1])
        np.testing.assert_array_equal(reordered["pixel_values"], batch["pixel_values"][::-1])
        assert reordered["num_soft_tokens_per_image"] == batch["num_soft_tokens_per_image"][::-1]


def test_preprocess_images_equals_collate_of_preprocess_image():
    arrays = [random_array(s, seed=i) for i, s in enumerate([(30, 50, 3), (500, 90, 3), (3, 3, 3)])]
    copies = [a.copy() for a in arrays]
    together = preprocess_images(arrays, 140)
    separate = collate_images([preprocess_image(a, 140) for a in arrays])
    for key in ("pixel_values", "image_position_ids"):
        np.testing.assert_array_equal(together[key], separate[key])
    assert together["num_soft_tokens_per_image"] == separate["num_soft_tokens_per_image"]
    for array, copy in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(array, copy)


def test_collate_empty():
    for out, width in ((collate_images([]), 0), (preprocess_images([]), 0)):
        assert out["pixel_values"].shape == (0, width, PATCH_VALUES)
        assert out["pixel_values"].dtype == np.float32
        assert out["image_position_ids"].shape == (0, width, 2)
        assert out["image_position_ids"].dtype == np.int64
        assert out["num_soft_tokens_per_image"] == []
    out = collate_images([], max_patches_per_image=630)
    assert out["pixel_values"].shape == (0, 630, PATCH_VALUES)
    assert out["image_position_ids"].shape == (0, 630, 2)


def test_collate_mixed_budgets_pads_to_largest():
    small = preprocess_image(random_array((200, 300, 3), seed=1), 70)
    large = preprocess_image(random_array((200, 300, 3), seed=2), 560)
    out = collate_images([small, large])
    assert out["pixel_values"].shape == (2, 9 * 560, PATCH_VALUES)
    assert out["image_position_ids"].shape == (2, 9 * 560, 2)
    n = small.num_patches
    alone = collate_images([small])
    np.testing.assert_array_equal(out["pixel_values"][0, : 9 * 70], alone["pixel_values"][0])
    np.testing.assert_array_equal(out["image_position_ids"][0, : 9 * 70], alone["image_position_ids"][0])
    assert not out["pixel_values"][0, n:].any()
    assert (out["image_position_ids"][0, n:] == -1).all()
    np.testing.assert_array_equal(out["pixel_values"][1], collate_images([large])["pixel_values"][0])
    assert out["num_soft_tokens_per_image"] == [small.num_soft_tokens, large.num_soft_tokens]


def test_collate_explicit_max_patches():
    small = preprocess_image(random_array((200, 300, 3), seed=1), 70)
    large = preprocess_image(random_array((200, 300, 3), seed=2), 280)
    assert small.num_patches < large.num_patches
    with pytest.raises(ValueError, match="image 1") as info:
        collate_images([small, large], max_patches_per_image=small.num_patches)
    assert str(large.num_patches) in str(info.value)
    with pytest.raises(ValueError, match="image 0"):
        collate_images([large, small], max_patches_per_image=large.num_patches - 1)
    exact = collate_images([small, large], max_patches_per_image=large.num_patches)
    assert exact["pixel_values"].shape == (2, large.num_patches, PATCH_VALUES)
    wide = collate_images([small], max_patches_per_image=3000)
    assert wide["pixel_values"].shape == (1, 3000, PATCH_VALUES)
    assert (wide["image_position_ids"][0, small.num_patches :] == -1).all()


@pytest.mark.parametrize("bad", [100, 0, 281, -70, 70.0, "280", True, None])
def test_invalid_budget(bad):
    array = random_array((32, 32, 3), seed=0)
    for call in (lambda: preprocess_image(array, bad), lambda: preprocess_images([array], bad)):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert repr(bad) in message
        for supported in BUDGETS:
            assert str(supported) in message


def test_bad_image_error_names_input():
    with pytest.raises(ValueError, match="upload 2"):
        preprocess_image(b"not an image", 280, name="upload 2")
    with pytest.raises(ValueError, match="image array"):
        preprocess_image(np.zeros((4, 4, 3), np.float64), 280)


# ------------------------------------------------------------------------------------------------ fast mode


@pytest.mark.parametrize("budget", BUDGETS)
def test_fast_mode_jpeg_psnr_and_sizes(budget):
    data = encoded(smooth_image(), "JPEG", quality=95)
    exact = preprocess_image(data, budget)
    fast = preprocess_image(data, budget, exact=False)
    assert fast.size == exact.size == budget_math.image_target_size(1800, 2400, budget)
    assert fast.grid == exact.grid
    assert fast.num_soft_tokens == exact.num_soft_tokens
    assert fast.original_size == exact.original_size == (1800, 2400)
    assert fast.patches.shape == exact.patches.shape
    assert psnr(fast.patches, exact.patches) >= 35.0


@pytest.mark.parametrize("orientation", [6, 8])
def test_fast_mode_rotated_jpeg(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(smooth_image(), "JPEG", quality=95, exif=exif.tobytes())
    for budget in (70, 280):
        exact = preprocess_image(data, budget)
        fast = preprocess_image(data, budget, exact=False)
        assert exact.original_size == fast.original_size == (2400, 1800)
        assert fast.size == exact.size == budget_math.image_target_size(2400, 1800, budget)
        assert psnr(fast.patches, exact.patches) >= 35.0


def test_fast_mode_png_same_size():
    array = smooth_image()[:900, :1200]
    data = encoded(array, "PNG")
    for budget in (70, 280):
        exact = preprocess_image(data, budget)
        fast = preprocess_image(data, budget, exact=False)
        assert fast.size == exact.size == budget_math.image_target_size(900, 1200, budget)
        assert fast.original_size == exact.original_size == (900, 1200)
        assert fast.num_soft_tokens == exact.num_soft_tokens
        assert psnr(fast.patches, exact.patches) >= 35.0
        # Exact mode from the PNG equals exact mode from the decoded array (lossless source).
        np.testing.assert_array_equal(exact.patches, preprocess_image(array, budget).patches)


@pytest.mark.parametrize("budget", [70, 1120])
def test_fast_mode_any_size_same_geometry(budget):
    def check(size, seed):
        array = random_array((*size, 3), seed)
        copy = array.copy()
        exact = preprocess_image(array, budget)
        fast = preprocess_image(array, budget, exact=False)
        assert fast.size == exact.size and fast.original_size == exact.original_size == size
        assert fast.patches.shape == exact.patches.shape and fast.patches.dtype == np.uint8
        np.testing.assert_array_equal(fast.positions, exact.positions)
        np.testing.assert_array_equal(array, copy)

    run_property(budget, check, size=SIZES, seed=SEEDS)
