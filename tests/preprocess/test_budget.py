"""Budget math: properties against independent reference functions, and the reference's own function."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preprocess import budget as B

sides = st.integers(min_value=1, max_value=20_000)
budgets = st.sampled_from(B.SUPPORTED_BUDGETS)


@pytest.fixture(scope="module")
def reference_size(reference):
    """The reference's target size for a budget (module-scoped: a pure function, shared by Hypothesis examples)."""
    pil = pytest.importorskip("transformers.models.gemma4.image_processing_pil_gemma4")

    def size(height: int, width: int, budget: int) -> tuple[int, int]:
        return pil.get_aspect_ratio_preserving_size(
            height=height, width=width, patch_size=16, max_patches=9 * budget, pooling_kernel_size=3
        )

    return size


# --- target size -----------------------------------------------------------------------------------------


@settings(max_examples=3000, deadline=None)
@given(sides, sides, budgets)
@pytest.mark.slow
def test_target_size_equals_reference(reference_size, height, width, budget):
    assert B.image_target_size(height, width, budget) == reference_size(height, width, budget)


@pytest.mark.parametrize("other", [1, 3, 97, 2000, 20_000])
def test_target_size_equals_reference_sweep(reference_size, other):
    """Every height 1…20 000 against a few widths, both orientations, every budget."""
    for budget in B.SUPPORTED_BUDGETS:
        for side in range(1, 20_001):
            assert B.image_target_size(side, other, budget) == reference_size(side, other, budget), (side, other)
            assert B.image_target_size(other, side, budget) == reference_size(other, side, budget), (other, side)


@settings(max_examples=2000, deadline=None)
@given(sides, sides, budgets)
def test_target_size_properties(height, width, budget):
    th, tw = B.image_target_size(height, width, budget)
    assert th > 0 and tw > 0 and th % 48 == 0 and tw % 48 == 0
    rows, cols = B.image_grid(height, width, budget)
    assert (rows, cols) == (th // 16, tw // 16)
    assert rows * cols <= 9 * budget
    tokens = B.image_soft_tokens(height, width, budget)
    assert tokens == (th // 48) * (tw // 48) <= budget
    assert B.image_padding_patches(height, width, budget) == 9 * budget - rows * cols >= 0
    # Aspect ratio within one 48 px step: a single scale f puts both sides within 48 px of f·(h, w).
    # The only exception is the edge branch's cap on very thin images: short side 48, long side 48·budget.
    low = max(th / height, tw / width)
    high = min((th + 48) / height, (tw + 48) / width)
    capped = min(th, tw) == 48 and max(th, tw) == 48 * budget
    assert low <= high * (1 + 1e-12) or capped


@settings(max_examples=1000, deadline=None)
@given(sides, sides)
def test_monotone_in_budget(height, width):
    sizes = [B.image_target_size(height, width, b) for b in B.SUPPORTED_BUDGETS]
    tokens = [B.image_soft_tokens(height, width, b) for b in B.SUPPORTED_BUDGETS]
    assert tokens == sorted(tokens)
    for (h0, w0), (h1, w1) in itertools.pairwise(sizes):
        assert h0 <= h1 and w0 <= w1


def test_square_resolution_table():
    """Spec §6.6: a square image of any size maps to 48·⌊√budget⌋ px per side."""
    for budget in B.SUPPORTED_BUDGETS:
        side = 48 * math.isqrt(budget)
        for n in (1, 17, 768, 5000):
            assert B.image_target_size(n, n, budget) == (side, side)


@pytest.mark.parametrize(
    ("size", "expected"),
    [  # spec §6.6, non-square examples, budgets 70 … 1120
        ((1080, 1920), [(288, 528), (384, 720), (576, 1056), (816, 1488), (1200, 2112)]),
        ((480, 640), [(336, 432), (480, 624), (672, 912), (960, 1296), (1344, 1824)]),
        ((100, 3000), [(48, 2160), (96, 3072), (144, 4368), (192, 6192), (288, 8784)]),
        ((4, 4000), [(48, 3360), (48, 6720), (48, 13440), (48, 26880), (48, 50784)]),
    ],
)
def test_spec_examples(size, expected):
    assert [B.image_target_size(*size, b) for b in B.SUPPORTED_BUDGETS] == expected


def test_extreme_ratios_take_edge_branch():
    assert B.image_target_size(1, 20_000, 70) == (48, 48 * 70)
    assert B.image_target_size(20_000, 1, 70) == (48 * 70, 48)
    assert B.image_soft_tokens(1, 20_000, 1120) == 1120
    assert B.image_target_size(20_000, 1, 1120) == (48 * 1120, 48)


@pytest.mark.parametrize("bad", [0, 100, 279, 2240, -70, 280.0, "280", True, None])
def test_bad_budget(bad):
    with pytest.raises(ValueError, match="70, 140, 280, 560, 1120") as info:
        B.image_target_size(100, 100, bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize(
    ("height", "width", "exc", "names"),
    [
        (0, 10, ValueError, "height"),
        (10, 0, ValueError, "width"),
        (-5, 10, ValueError, "height"),
        (10.5, 10, TypeError, "height"),
        (10, "10", TypeError, "width"),
        (True, 10, TypeError, "height"),
    ],
)
def test_bad_sides(height, width, exc, names):
    with pytest.raises(exc, match=names):
        B.image_target_size(height, width)


def test_numpy_integers_accepted():
    assert B.image_target_size(np.int64(480), np.uint16(640), np.int32(280)) == (672, 912)


# --- fit_image_budgets -----------------------------------------------------------------------------------


def brute_force_fit(sizes, max_tokens, levels=B.SUPPORTED_BUDGETS, wrapper=2):
    """Independent reference: search every assignment; rank by (fits, even, min level, count at top, order)."""
    cost = [[B.image_soft_tokens(h, w, b) + wrapper for b in levels] for h, w in sizes]
    best = None
    for assign in itertools.product(range(len(levels)), repeat=len(sizes)):
        if max(assign) - min(assign) > 1 or sum(cost[i][k] for i, k in enumerate(assign)) > max_tokens:
            continue
        key = (min(assign), sum(k > min(assign) for k in assign))
        if best is None or key > best[0]:
            best = (key, assign)
    return best


size_pairs = st.tuples(st.integers(1, 4000), st.integers(1, 4000))


@settings(max_examples=400, deadline=None)
@given(st.lists(size_pairs, min_size=1, max_size=4), st.integers(0, 6000))
def test_fit_budgets_is_optimal(sizes, max_tokens):
    best = brute_force_fit(sizes, max_tokens)
    if best is None:
        with pytest.raises(ValueError, match="max_tokens"):
            B.fit_image_budgets(sizes, max_tokens)
        return
    chosen = B.fit_image_budgets(sizes, max_tokens)
    index = [B.SUPPORTED_BUDGETS.index(b) for b in chosen]
    total = sum(B.image_soft_tokens(h, w, b) + 2 for (h, w), b in zip(sizes, chosen, strict=True))
    assert total <= max_tokens
    assert max(index) - min(index) <= 1
    assert (min(index), sum(k > min(index) for k in index)) == best[0]


@settings(max_examples=300, deadline=None)
@given(st.lists(size_pairs, min_size=0, max_size=30), st.integers(0, 40_000))
def test_fit_budgets_never_exceeds(sizes, max_tokens):
    try:
        chosen = B.fit_image_budgets(sizes, max_tokens)
    except ValueError:
        assert sum(B.image_soft_tokens(h, w, 70) + 2 for h, w in sizes) > max_tokens
        return
    assert len(chosen) == len(sizes)
    assert sum(B.image_soft_tokens(h, w, b) + 2 for (h, w), b in zip(sizes, chosen, strict=True)) <= max_tokens


def test_fit_budgets_examples():
    square = (1000, 1000)
    assert B.fit_image_budgets([square], 10_000) == [1120]
    assert B.fit_image_budgets([square] * 2, 2 * (256 + 2)) == [280, 280]
    # One more token than two at 280 does not buy a 560: budgets stay even.
    assert B.fit_image_budgets([square] * 2, 2 * 258 + 1) == [280, 280]
    # Enough for one image at 560: the earlier image gets it.
    assert B.fit_image_budgets([square] * 2, 258 + 531) == [560, 280]
    assert B.fit_image_budgets([], 0) == []
    # A cap through `budgets`.
    assert B.fit_image_budgets([square] * 3, 100_000, budgets=(70, 140, 280)) == [280, 280, 280]


def test_fit_budgets_errors():
    with pytest.raises(ValueError, match=r"need at least 132 tokens at budget 70.*max_tokens=100"):
        B.fit_image_budgets([(1000, 1000)] * 2, 100)
    with pytest.raises(ValueError, match="max_tokens"):
        B.fit_image_budgets([(10, 10)], -1)
    with pytest.raises(ValueError, match="not supported"):
        B.fit_image_budgets([(10, 10)], 1000, budgets=(100,))
    with pytest.raises(TypeError, match=r"sizes\[1\]"):
        B.fit_image_budgets([(10, 10), (10,)], 1000)
    with pytest.raises(ValueError, match=r"sizes\[0\]: image width"):
        B.fit_image_budgets([(10, 0)], 1000)


def test_budget_module_is_pure():
    """budget.py imports nothing heavier than math and the pure shared facts (house style)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(B))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported <= {"__future__", "math", "collections", "numbers", "data_specs"}, imported
    from data_specs import media

    facts = ast.parse(inspect.getsource(media))
    assert {n.module for n in ast.walk(facts) if isinstance(n, ast.ImportFrom)} <= {"__future__", "enum"}
    assert not [n for n in ast.walk(facts) if isinstance(n, ast.Import)]
