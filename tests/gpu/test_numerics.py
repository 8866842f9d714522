"""bfloat16 on the GPU against float32 on the CPU, the same weights: logits within bf16 rounding, greedy tokens in
agreement.

Tolerances. Logits of these random tiny models reach the soft-cap (|logit| ≈ 29 of 30, std ≈ 8), where one bf16
step is 0.125, so errors are scaled by the float32 logits' largest magnitude: the largest error at most 6 % of it,
the mean error at most 0.6 %. Measured with the CPU in bf16 against float32 (the same rounding, the CPU's
kernels), tiny-e2b, 3–4 seeds: largest 1.2–1.9 % and mean 0.22–0.28 % at 40 tokens, 1.4–2.7 % and 0.24–0.29 %
over the last 32 of 4 000; with the RoPE frequencies in bf16 (what ``Module.to(torch.bfloat16)`` makes of a float32
buffer unless the model keeps it: GPU.md §2) the 4 000-token case reaches 7.7–11.5 % and 0.85–1.34 %, so the long
test tells the two apart. Tokens: GPU kernels differ from the CPU's in the last bits (GPU.md §2), and a random
model has near-ties, so greedy tokens are compared as an agreement share (≥ 0.9; 1.0 measured for bf16 on the
CPU), never bit for bit.

Shapes: B batch rows, T tokens, V vocabulary.
"""

from __future__ import annotations

import pytest
import torch

from runtime.generate import generate
from tests.model.helpers import left_padded

CUDA = torch.device("cuda")
MAX_ERROR, MEAN_ERROR = 0.06, 0.006  # × the largest |logit| of the float32 reference
AGREEMENT = 0.9
PROMPTS = [[5, 17, 99, 3, 41, 7, 8], [12, 13, 200, 201], [300, 2, 77, 91, 4, 6, 9, 10, 11], [450]]


def on_gpu(cpu_model: torch.nn.Module) -> torch.nn.Module:
    """A model of ``cpu_model``'s class and config holding its state dict, moved with ``.to(CUDA, bfloat16)``
    as a user would move it (what the RoPE buffers become is part of what is tested)."""
    model = type(cpu_model)(cpu_model.config)
    model.load_state_dict(cpu_model.state_dict())
    return model.eval().to(CUDA, torch.bfloat16)


def check_logits(got: torch.Tensor, expected: torch.Tensor) -> None:
    """got (…, V) bf16 on the GPU against expected (…, V) float32 on the CPU, within the module's tolerances."""
    got = got.float().cpu()
    scale = float(expected.abs().max())
    error = (got - expected).abs()
    torch.testing.assert_close(got, expected, rtol=0, atol=MAX_ERROR * scale)
    assert float(error.mean()) <= MEAN_ERROR * scale, f"mean error {float(error.mean()):.3f}, logit scale {scale:.1f}"


def random_ids(rows: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


def test_bf16_logits_on_the_gpu_match_float32_on_the_cpu(tiny_decoder):
    cpu = tiny_decoder("tiny-e2b", device="cpu", dtype=torch.float32)
    gpu = on_gpu(cpu)
    ids = random_ids(3, 40, cpu.config.vocab_size)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :7] = False  # left padding
    with torch.no_grad():
        expected = cpu(ids, mask)  # (B, T, V)
        got = gpu(ids.to(CUDA), mask.to(CUDA))
    check_logits(got[mask.to(CUDA)], expected[mask])


def test_bf16_logits_at_long_positions_match_float32(tiny_decoder):
    # Positions up to 4 000: RoPE angles there need float32 frequencies (a bf16 one is off by up to 2⁻⁹ of itself,
    # which at position 4 000 turns cos by up to ≈ 0.5).
    cpu = tiny_decoder("tiny-e2b", device="cpu", dtype=torch.float32)
    gpu = on_gpu(cpu)
    ids = random_ids(2, 4000, cpu.config.vocab_size, seed=1)
    with torch.no_grad():
        expected = cpu(ids, logits_to_keep=32)  # (B, 32, V)
        got = gpu(ids.to(CUDA), logits_to_keep=32)
    check_logits(got, expected)


@pytest.mark.parametrize("name", ["tiny-e2b", "tiny-31b", "tiny-moe"])
def test_greedy_tokens_on_the_gpu_agree_with_the_cpu(name, tiny_text_model):
    cpu = tiny_text_model(name, device="cpu", dtype=torch.float32)
    gpu = on_gpu(cpu)
    steps = 2 * cpu.config.text.sliding_window + 4  # past the window
    batch = left_padded(PROMPTS)  # one padded batch on both devices: generate moves it
    expected = [g.token_ids for g in generate(cpu, batch, max_new_tokens=steps, stop_ids=())]
    got = [g.token_ids for g in generate(gpu, batch, max_new_tokens=steps, stop_ids=())]
    assert all(len(row) == steps for row in got)
    same = sum(a == b for want, have in zip(expected, got, strict=True) for a, b in zip(want, have, strict=True))
    share = same / (steps * len(PROMPTS))
    assert share >= AGREEMENT, f"{name}: greedy agreement {share:.3f} < {AGREEMENT}\ncpu {expected}\ngpu {got}"
