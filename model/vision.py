"""The Gemma 4 vision encoder: patches → pooled soft tokens per image (spec §3.1–§3.7, names §7.2).

Patch embedding (``2·(p − ½)·W_inᵀ`` plus a learned x row and y row), encoder layers (pre- and post-norm
attention and gated GELU-tanh MLP, clipped linears on the small tower), 3×3 mean pooling in raster order,
``× sqrt(D)`` in float32 and, on the large tower, standardisation. The output per image is what the reference
``Gemma4VisionModel`` returns for it, before the multimodal embedder (§3.8, ``model.embedder``).

Deviation in layout, not in results: padding patches are stripped before any work. The real patches of all
images are packed into one (T, D) tensor for every linear, norm and MLP, and attention runs image by image
without a mask (an image's patches see each other and nothing else), so padding costs neither matmuls nor
attention, and an image's output does not depend on what it is batched with. The reference instead computes
every padded row and masks padding keys; the two agree to float rounding (the tests bound it).

Shapes: N images, M padded patches per image, T real patches of all images together, n patches of one image,
D model dim, N_h query heads, K KV heads, H head dim, F patch values (16·16·3 = 768), R×C patch grid (rows,
columns), k pooling kernel (3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import gelu, scaled_dot_product_attention

from .clipped import ClippedLinear
from .config import VisionConfig
from .norm import RMSNorm, rms_norm

__all__ = ["VisionEncoder", "VisionInputError", "axial_frequencies", "axial_cos_sin", "apply_axial_rope"]


class VisionInputError(ValueError):
    """Pixel values or patch positions the vision encoder cannot take; the message names the image."""


# --- 2-D RoPE (spec §3.5) --------------------------------------------------------------------------------------


def axial_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """(H/4,) float32: ``θ^(−2i/(H/2))``, the frequencies each axis uses on its half of the head."""
    half = head_dim // 2
    return 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.float) / half))


def axial_cos_sin(
    positions: torch.Tensor, frequencies: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (T, 2) int (x, y) → cos, sin (T, H) in ``dtype``, laid out by quarters of the head as
    [x, x, y, y] (cos) and [−x, x, −y, y] (sin: the rotate-half sign folded in, see :func:`apply_axial_rope`)."""
    angles = positions[..., None].float() * frequencies.to(positions.device)  # (T, 2, H/4)
    cos, sin = angles.cos(), angles.sin()  # (T, 2, H/4) each
    cos = torch.stack((cos, cos), dim=2).flatten(1)  # (T, H): [x, x, y, y]
    sin = torch.stack((-sin, sin), dim=2).flatten(1)  # (T, H): [−x, x, −y, y]
    return cos.to(dtype), sin.to(dtype)


def apply_axial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (T, N_h, H), cos/sin (T, H) from :func:`axial_cos_sin` → rotated x, same shape and dtype.

    Rotate-half inside each half of the head (x half, then y half): quarters [a, b, c, d] become
    [a, b, c, d]·cos + [−b, a, −d, c]·sin. Swapping the quarters and multiplying by the sign-folded sin gives
    the same products bit for bit ((−b)·s = b·(−s)) with two temporaries instead of five.
    """
    swapped = x.unflatten(-1, (2, 2, -1)).flip(-2).flatten(-3)  # (T, N_h, H): [b, a, d, c], a copy
    return swapped.mul_(sin[:, None]).add_(x * cos[:, None])


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Full bidirectional attention inside each image, scale 1: q (T, N_h, H), k/v (T, K, H), T = Σ lengths
    → (T, N_h, H). Images of one size go through one batched call; otherwise one call per image."""
    gqa = q.shape[1] != k.shape[1]
    if len(set(lengths)) == 1:
        b, n = len(lengths), lengths[0]
        q, k, v = (t.view(b, n, t.shape[1], t.shape[2]).transpose(1, 2) for t in (q, k, v))  # (B, N_h|K, n, H)
        out = scaled_dot_product_attention(q, k, v, scale=1.0, enable_gqa=gqa)  # (B, N_h, n, H)
        return out.transpose(1, 2).reshape(b * n, out.shape[1], out.shape[3])  # (T, N_h, H)
    outs = []
    for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True):
        qi, ki, vi = (t.transpose(0, 1)[None] for t in (qi, ki, vi))  # (1, N_h|K, n, H)
        outs.append(scaled_dot_product_attention(qi, ki, vi, scale=1.0, enable_gqa=gqa)[0].transpose(0, 1))
    return torch.cat(outs)  # (T, N_h, H)


# --- modules ---------------------------------------------------------------------------------------------------


class PatchEmbedder(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.input_proj = nn.Linear(config.patch_dim, config.d_model, bias=False)
        self.position_embedding_table = nn.Parameter(torch.empty(2, config.position_table_size, config.d_model))
        nn.init.normal_(self.position_embedding_table, std=0.02)

    def forward(self, pixels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """pixels (T, F) float in [0, 1], positions (T, 2) int (x, y) → (T, D) in the weight dtype."""
        h = self.input_proj((2 * (pixels - 0.5)).to(self.input_proj.weight.dtype))  # (T, D)
        table = self.position_embedding_table
        return h + (table[0][positions[:, 0]] + table[1][positions[:, 1]])


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        d, clipped = config.d_model, config.clipped_linears
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.eps = config.rms_eps
        self.q_proj = ClippedLinear(d, config.n_heads * config.head_dim, clipped=clipped)
        self.k_proj = ClippedLinear(d, config.n_kv_heads * config.head_dim, clipped=clipped)
        self.v_proj = ClippedLinear(d, config.n_kv_heads * config.head_dim, clipped=clipped)
        self.o_proj = ClippedLinear(config.n_heads * config.head_dim, d, clipped=clipped)
        self.q_norm = RMSNorm(config.head_dim, config.rms_eps)
        self.k_norm = RMSNorm(config.head_dim, config.rms_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """x (T, D), cos/sin (T, H), per-image patch counts summing to T → (T, D)."""
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.n_heads, self.head_dim)  # (T, N_h, H)
        k = self.k_proj(x).view(t, self.n_kv_heads, self.head_dim)  # (T, K, H)
        v = self.v_proj(x).view(t, self.n_kv_heads, self.head_dim)  # (T, K, H)
        q = apply_axial_rope(self.q_norm(q), cos, sin)
        k = apply_axial_rope(self.k_norm(k), cos, sin)
        v = rms_norm(v, None, self.eps)  # the value norm has no scale
        out = block_attention(q, k, v, lengths)  # (T, N_h, H)
        return self.o_proj(out.reshape(t, self.n_heads * self.head_dim))  # (T, D)


class VisionMLP(nn.Module):
    """``(GELU_tanh(x·W_gateᵀ) ⊙ x·W_upᵀ)·W_downᵀ``, each projection possibly clipped."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        d, f, clipped = config.d_model, config.d_ff, config.clipped_linears
        self.gate_proj = ClippedLinear(d, f, clipped=clipped)
        self.up_proj = ClippedLinear(d, f, clipped=clipped)
        self.down_proj = ClippedLinear(f, d, clipped=clipped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = gelu(self.gate_proj(x), approximate="tanh").mul_(self.up_proj(x))  # in place: a fresh tensor
        return self.down_proj(gated)


class VisionLayer(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        d, eps = config.d_model, config.rms_eps
        self.self_attn = VisionAttention(config)
        self.mlp = VisionMLP(config)
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.pre_feedforward_layernorm = RMSNorm(d, eps)
        self.post_feedforward_layernorm = RMSNorm(d, eps)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """h (T, D) → (T, D)."""
        # Residual adds in place on the fresh norm outputs (n + h = h + n exactly), one (T, D) buffer fewer each.
        h = self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), cos, sin, lengths)).add_(h)
        return self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h))).add_(h)


class VisionLayers(nn.Module):
    """The layer stack (its own module only so that checkpoint names read ``encoder.layers.{i}``)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(config) for _ in range(config.n_layers))

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h, cos, sin, lengths)
        return h


@dataclass(frozen=True)
class _Grid:
    """One image's real patch grid; ``order`` puts its patches in raster order (None: already are)."""

    rows: int
    cols: int
    order: torch.Tensor | None


class VisionEncoder(nn.Module):
    """Patches → soft tokens per image. ``forward(pixel_values, positions)`` for padded batches,
    ``encode([(pixel_values, positions), …])`` for unpadded images; both return a list of (n_i, D)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embedder = PatchEmbedder(config)
        self.encoder = VisionLayers(config)
        if config.standardize:
            self.register_buffer("std_bias", torch.zeros(config.d_model))
            self.register_buffer("std_scale", torch.ones(config.d_model))
        self.register_buffer("rope_freq", torch.empty(config.head_dim // 4), persistent=False)
        self.reset_buffers()

    def reset_buffers(self, device: str | torch.device | None = None) -> None:
        """(Re)compute the non-persistent RoPE frequencies, e.g. after building on the meta device."""
        device = torch.device(device) if device is not None else self.rope_freq.device
        if device.type == "meta":
            return
        self.rope_freq = axial_frequencies(self.config.head_dim, self.config.rope_theta).to(device)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedder.input_proj.weight.dtype

    def forward(self, pixel_values: torch.Tensor, positions: torch.Tensor) -> list[torch.Tensor]:
        """pixel_values (N, M, F) float in [0, 1], zero rows for padding; positions (N, M, 2) int (x, y),
        (−1, −1) for padding → one (n_i, D) tensor per image in the model dtype (n_i = R_i·C_i / k²)."""
        if pixel_values.ndim != 3 or pixel_values.shape[-1] != self.config.patch_dim:
            raise VisionInputError(
                f"pixel_values must be (images, patches, {self.config.patch_dim}), got {tuple(pixel_values.shape)}"
            )
        if positions.shape != (*pixel_values.shape[:2], 2):
            raise VisionInputError(
                f"positions must be {(*pixel_values.shape[:2], 2)} to match pixel_values, got {tuple(positions.shape)}"
            )
        on_cpu = positions.cpu()
        images = []
        for i in range(pixel_values.shape[0]):
            real = (on_cpu[i] != -1).any(dim=-1).nonzero().squeeze(1)  # (n,) rows that are not (−1, −1)
            n = real.numel()
            if n and int(real[-1]) == n - 1:  # the usual layout: real rows first, then padding
                images.append((pixel_values[i, :n], on_cpu[i, :n]))
            else:
                images.append((pixel_values[i, real.to(pixel_values.device)], on_cpu[i, real]))
        return self.encode(images)

    def encode(self, images: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Unpadded images: pixel values (n_i, F) float in [0, 1] and positions (n_i, 2) int (x, y) each,
        covering an R×C grid (R, C multiples of k) once, any order → one (n_i / k², D) tensor per image."""
        if not images:
            return []
        grids = [self._grid(i, pixels, pos) for i, (pixels, pos) in enumerate(images)]
        device = images[0][0].device
        lengths = [pos.shape[0] for _, pos in images]
        pixels = torch.cat([p for p, _ in images])  # (T, F)
        positions = torch.cat([pos.to(device=device, dtype=torch.long) for _, pos in images])  # (T, 2)
        h = self.patch_embedder(pixels, positions)  # (T, D)
        cos, sin = axial_cos_sin(positions, self.rope_freq, h.dtype)  # (T, H) each
        h = self.encoder(h, cos, sin, lengths)  # (T, D)
        return [self._pool(hi, grid) for hi, grid in zip(h.split(lengths), grids, strict=True)]

    def _pool(self, h: torch.Tensor, grid: _Grid) -> torch.Tensor:
        """One image's h (n, D) → its soft tokens (n / k², D): k×k means in raster order over the pooled grid,
        summed in float32 and cast to the model dtype, then × sqrt(D) (and standardised) in float32 (§3.7)."""
        k, d = self.config.pool_kernel, h.shape[-1]
        if grid.order is not None:
            h = h[grid.order.to(h.device)]
        blocks = h.float().view(grid.rows // k, k, grid.cols // k, k, d)  # (R/k, k, C/k, k, D)
        pooled = (blocks * (1.0 / k**2)).sum(dim=(1, 3)).reshape(-1, d)  # (n/k², D)
        pooled = pooled.to(h.dtype).float() * d**0.5  # the scale can leave the float16 range: float32
        if self.config.standardize:
            pooled = (pooled - self.std_bias.float()) * self.std_scale.float()
        return pooled.to(h.dtype)

    def _grid(self, index: int, pixels: torch.Tensor, positions: torch.Tensor) -> _Grid:
        """Validate image ``index`` (its real patches only) and read off its grid."""
        c, k = self.config, self.config.pool_kernel

        def fail(problem: str) -> VisionInputError:
            return VisionInputError(f"image {index}: {problem}")

        if pixels.ndim != 2 or pixels.shape[-1] != c.patch_dim or not pixels.is_floating_point():
            raise fail(f"pixel values must be float (patches, {c.patch_dim}), got {pixels.dtype} {tuple(pixels.shape)}")
        if positions.shape != (pixels.shape[0], 2) or positions.is_floating_point():
            raise fail(f"positions must be int ({pixels.shape[0]}, 2), got {positions.dtype} {tuple(positions.shape)}")
        if positions.shape[0] == 0:
            raise fail("no real patches (every position is padding)")
        positions = positions.cpu().long()
        low, high = int(positions.min()), int(positions.max())
        if low < 0 or high >= c.position_table_size:
            raise fail(f"patch positions must lie in 0…{c.position_table_size - 1}, got {low}…{high}")
        cols, rows = (int(v) + 1 for v in positions.max(dim=0).values)
        if rows % k or cols % k:
            raise fail(f"the patch grid {rows}×{cols} (rows×columns) is not a multiple of the {k}×{k} pooling kernel")
        raster = positions[:, 1] * cols + positions[:, 0]  # (n,)
        if positions.shape[0] != rows * cols or torch.bincount(raster, minlength=rows * cols).max() > 1:
            raise fail(f"{positions.shape[0]} patches do not cover the {rows}×{cols} grid once each")
        in_order = bool((raster == torch.arange(rows * cols)).all())
        return _Grid(rows, cols, None if in_order else torch.argsort(raster))
