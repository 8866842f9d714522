"""The Gemma 4 vision encoder: patches → pooled soft tokens per image (spec §3.1–§3.7, names §7.2).

Patch embedding (``2·(p − ½)·W_inᵀ`` plus a learned x row and y row), encoder layers (pre- and post-norm
attention and gated GELU-tanh MLP, clipped linears on the small tower), 3×3 mean pooling in raster order,
``× sqrt(D)`` in float32 and, on the large tower, standardisation. The output per image is what the reference
``Gemma4VisionModel`` returns for it, before the multimodal embedder (§3.8, ``model.embedder``).

Deviation in layout, not in results: the tower takes packed patches (every image's real patches in raster
order, images back to back, as ``data_specs.batch.PackedPatches`` holds them) with each image's grid as host
ints. Positions and pooling groups are planned from the grids on the host and sent without a synchronisation;
every linear, norm and MLP runs on the one packed (T, D) tensor, and attention runs per image without a mask
(an image's patches see each other and nothing else), so padding costs nothing and an image's output does not
depend on what it is batched with. The reference computes every padded row and masks padding keys; the two
agree to float rounding (the tests bound it).

Shapes: N soft tokens, I images, T real patches of all images together, n patches of one image,
D model dim, N_h query heads, K KV heads, H head dim, F patch values (16·16·3 = 768), R×C patch grid (rows,
columns), k pooling kernel (3).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.functional import gelu, scaled_dot_product_attention

from .clipped import ClippedLinear
from .config import VisionConfig
from .host import offsets, ranks, to_device
from .norm import RMSNorm, rms_norm
from .rope import Float32Frequencies

try:  # variable-length flash attention (CUDA only)
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None

__all__ = [
    "VisionEncoder",
    "VisionInputError",
    "axial_frequencies",
    "axial_cos_sin",
    "apply_axial_rope",
    "plan_grids",
]


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
    → (T, N_h, H).

    On CUDA in half precision, one variable-length flash-attention call covers every image. Elsewhere each run
    of consecutive images of one length (the frames of a video, images of one shape) is one batched SDPA call
    on views of the packed rows: no padding, no mask, no copy.
    """
    if _varlen_applies(q, k):
        starts = to_device(offsets(lengths).astype(np.int32), q.device)  # (I + 1,)
        longest = max(lengths)
        return varlen_attn(q, k, v, starts, starts, longest, longest, scale=1.0)
    gqa = q.shape[1] != k.shape[1]
    outs, start = [], 0
    for n, run in itertools.groupby(lengths):
        b = len(list(run))
        span = slice(start, start + b * n)
        qi, ki, vi = (t[span].view(b, n, t.shape[1], t.shape[2]).transpose(1, 2) for t in (q, k, v))  # (b, ·, n, H)
        out = scaled_dot_product_attention(qi, ki, vi, scale=1.0, enable_gqa=gqa)  # (b, N_h, n, H)
        outs.append(out.transpose(1, 2).reshape(b * n, out.shape[1], out.shape[3]))  # (b·n, N_h, H)
        start += b * n
    return outs[0] if len(outs) == 1 else torch.cat(outs)  # (T, N_h, H)


def _varlen_applies(q: torch.Tensor, k: torch.Tensor) -> bool:
    return (
        varlen_attn is not None
        and q.is_cuda
        and torch.cuda.get_device_capability(q.device)[0] >= 8  # flash attention: Ampere or newer
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[1] == k.shape[1]
        and not torch.is_grad_enabled()
    )


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


def plan_grids(grids: Sequence[tuple[int, int]], kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """Host-side plan for packed items with patch ``grids`` (rows, cols), patches in raster order, items back to
    back → positions (P, 2) int64 (x, y) of every patch, and pooling groups (N, k²) int64: the packed rows of
    each soft token's k×k patches, soft tokens in raster order over each item's pooled grid, items in order."""
    rows = np.array([r for r, _ in grids], dtype=np.int64)  # (I,)
    cols = np.array([c for _, c in grids], dtype=np.int64)  # (I,)
    counts = rows * cols  # (I,)
    starts = offsets(counts)[:-1]  # (I,)
    y, x = np.divmod(ranks(counts), np.repeat(cols, counts))  # (P,) each: row and column inside its item
    positions = np.stack([x, y], axis=1)  # (P, 2)
    tokens = (rows // kernel) * (cols // kernel)  # (I,)
    token_cols = np.repeat(cols // kernel, tokens)  # (N,)
    a, b = np.divmod(ranks(tokens), token_cols)  # (N,) pooled row and column inside its item
    top_left = np.repeat(starts, tokens) + a * kernel * np.repeat(cols, tokens) + b * kernel  # (N,)
    di, dj = np.divmod(np.arange(kernel * kernel), kernel)  # (k²,) row and column offsets in the window
    groups = top_left[:, None] + di[None, :] * np.repeat(cols, tokens)[:, None] + dj[None, :]  # (N, k²)
    return positions, groups


class VisionEncoder(Float32Frequencies, nn.Module):
    """Packed patches with their grids → packed soft tokens (before the multimodal embedder). The RoPE
    frequencies stay float32 whatever the model is cast to (:class:`~model.rope.Float32Frequencies`)."""

    FREQUENCY_BUFFERS = ("rope_freq",)

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

    def forward(self, patches: torch.Tensor, grids: Sequence[tuple[int, int]]) -> torch.Tensor:
        """patches (P, F) float in [0, 1]: every item's patches in raster order, items back to back; grids: each
        item's (rows, cols) → (N, D) soft tokens of all items in order, in the model dtype (N = Σ R·C / k²).

        Everything is planned from the host-side grids: no value is read back from the device."""
        self._check(patches, grids)
        if not grids:
            return patches.new_zeros((0, self.config.d_model), dtype=self.dtype)
        plan_positions, plan_groups = plan_grids(grids, self.config.pool_kernel)
        positions = to_device(plan_positions, patches.device)  # (P, 2)
        groups = to_device(plan_groups, patches.device)  # (N, k²)
        h = self.patch_embedder(patches, positions)  # (P, D)
        cos, sin = axial_cos_sin(positions, self.rope_freq, h.dtype)  # (P, H) each
        h = self.encoder(h, cos, sin, [r * c for r, c in grids])  # (P, D)
        return self._pool(h, groups)

    def _pool(self, h: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """h (P, D), groups (N, k²) → soft tokens (N, D): means of each k×k window, summed in float32 and cast to
        the model dtype, then × sqrt(D) (and standardised) in float32 (§3.7)."""
        d = h.shape[-1]
        windows = h.float()[groups]  # (N, k², D), a fresh tensor
        pooled = windows.mul_(1.0 / groups.shape[1]).sum(dim=1)  # (N, D)
        pooled = pooled.to(h.dtype).float() * d**0.5  # the scale can leave the float16 range: float32
        if self.config.standardize:
            pooled = (pooled - self.std_bias.float()) * self.std_scale.float()
        return pooled.to(h.dtype)

    def _check(self, patches: torch.Tensor, grids: Sequence[tuple[int, int]]) -> None:
        """Shapes against the host-side grids; raises :class:`VisionInputError` naming the item."""
        c, k = self.config, self.config.pool_kernel
        if patches.ndim != 2 or patches.shape[-1] != c.patch_dim or not patches.is_floating_point():
            raise VisionInputError(
                f"patches must be float (patches, {c.patch_dim}), got {patches.dtype} {tuple(patches.shape)}"
            )
        for index, (rows, cols) in enumerate(grids):
            if rows < k or cols < k or rows % k or cols % k:
                raise VisionInputError(
                    f"image {index}: the patch grid {rows}×{cols} (rows×columns) is not a positive multiple of the "
                    f"{k}×{k} pooling kernel"
                )
            if max(rows, cols) > c.position_table_size:
                raise VisionInputError(
                    f"image {index}: the patch grid {rows}×{cols} exceeds the {c.position_table_size}-entry "
                    "position table"
                )
        total = sum(r * c for r, c in grids)
        if patches.shape[0] != total:
            raise VisionInputError(f"the grids hold {total} patches, but patches has {patches.shape[0]} rows")
