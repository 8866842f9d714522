"""The Gemma 4 audio conformer (spec §1.5, §4.2–4.5, soft-token count §4.7; checkpoint names §7.3).

Log-mel features of every clip, packed (only valid frames, clips back to back, as
``data_specs.batch.PackedAudio`` holds them) with each clip's frame count as host ints → the tower output after
``output_proj`` (before the multimodal embedder of §4.6), packed the same way. Numerics follow transformers
5.23.0, including its 12-key attention window (§4.4 item 7: each query sees itself and the 11 frames before it,
not the 13 the 13-row relative table suggests), the −1e9 invalid logit, the 50·tanh(x/50) soft-cap, float32
attention and the clamps at ``clip_value``.

How it differs from the reference in layout, not in values on valid frames:

* Padding is never computed, and nothing is padded and unpadded again. Every index the pass needs is planned on
  the host from the frame counts and sent without a synchronisation. The two subsampling convs run on all clips
  at once, each clip in a slot followed by zero rows (the reference zeroes padded frames before each conv; a
  clip's slot gives the convs the same zeros). The conformer then runs on the clips *packed* one after another,
  each rounded up to whole attention chunks (at most ``chunk_size − 1`` idle rows per clip), so a batch of mixed
  lengths costs what its valid frames cost.
* The chunked attention is blocked on the packed rows: block ``g`` attends to block ``g − 1`` and itself, with
  one (G, C, 2C) visibility mask built per forward; a block that opens a clip sees no earlier block. The causal
  depthwise conv takes its 4 frames of left context from the previous block the same way (zeros at a clip's
  start), so clips never see each other.
* Only the Gemma 4 geometry is implemented: ``context_left = chunk_size + 1``, ``context_right = 0``, a conv
  kernel no longer than ``chunk_size + 1``.
* Every RMSNorm uses ``rms_eps``; the reference hard-codes 1e-6 in the feed-forward and layer norms (the same
  value in every checkpoint).

Shapes: B clips, F valid input frames of all clips, L_b slot rows of clip b, M mel bins, T subsampled frames
(T_b for clip b), R packed rows (Σ_b T_b, each rounded up to a multiple of C), G = R / C blocks, C chunk size
(12), W = 2C key slots per block, Q = C + 1 relative distances, N heads, H head dim, D model dim, E output dim,
K depthwise kernel (5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .clipped import ClippedLinear
from .config import AudioConfig, ConfigError
from .host import offsets, ranks, to_device
from .norm import RMSNorm

__all__ = ["AudioEncoder", "AudioInputError"]


class AudioInputError(ValueError):
    """Features or a frame mask the audio tower cannot take (wrong shape, non-prefix mask, empty clip)."""


def _clip_bound(config: AudioConfig, dtype: torch.dtype) -> float:
    """The conformer's clamp value, kept finite in low-precision dtypes."""
    return min(config.clip_value, torch.finfo(dtype).max)


def _inverse_timescales(d_model: int, device: torch.device) -> torch.Tensor:
    """(D/2,) float32 frequencies ω_i = exp(−i·ln(10⁴)/(D/2 − 1)) of the relative-position sinusoids."""
    half = d_model // 2
    step = math.log(10_000.0) / max(half - 1, 1)
    return torch.exp(torch.arange(half, device=device, dtype=torch.float32) * -step)


def _relative_sinusoids(inv_timescales: torch.Tensor, distances: int) -> torch.Tensor:
    """(Q, D) float32: row p embeds distance Q − 1 − p as [sin(δ·ω), cos(δ·ω)] (spec §4.4 item 4)."""
    delta = torch.arange(distances - 1, -1, -1, device=inv_timescales.device, dtype=torch.float32)  # (Q,)
    angles = delta[:, None] * inv_timescales[None, :]  # (Q, D/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


# --- packing: clips one after another, in whole chunks -------------------------------------------------


@dataclass(frozen=True)
class _Packing:
    """Where each clip sits at every stage of one forward pass, planned on the host from the frame counts.

    Subsampling runs on all clips at once: clip b's V_b frames sit in a slot of L_b = 4·(⌈V_b/4⌉ + 1) rows, the
    rest zeros, so each stride-2 conv sees exactly the zeros a clip alone would get past its ends (the slot
    leaves at least one zero row between clips at both convs). The conformer then runs on the clips' T_b frames
    packed one after another, each rounded up to whole attention chunks of C rows.
    """

    scatter: torch.Tensor  # (F,) slot row of each input frame
    slots: int  # Σ L_b
    idle_half: torch.Tensor  # (Σ L_b / 2 + 4,) bool: first-conv rows that hold no frame (2 more either side)
    gather: torch.Tensor  # (R,) second-conv output row of each packed row; idle rows read the zero row Σ L_b / 4
    valid: torch.Tensor  # (Σ T_b,) packed rows that hold a clip's frame, in order
    opens_clip: torch.Tensor  # (G,) bool: the block is a clip's first
    hidden: torch.Tensor  # (G, 1, C, W) bool: True where the key slot is invisible to the query

    @classmethod
    def build(cls, frames: tuple[int, ...], chunk: int, device: torch.device) -> _Packing:
        v = np.asarray(frames, dtype=np.int64)  # (B,) V_b
        slot = 4 * ((v + 3) // 4 + 1)  # (B,) L_b
        start = offsets(slot)[:-1]  # (B,) first slot row of clip b (a multiple of 4)
        half = (v + 1) // 2  # ⌈V/2⌉ first-conv frames
        tokens = (half + 1) // 2  # T_b = ⌈⌈V/2⌉/2⌉
        busy = np.zeros(slot.sum() // 2 + 4, dtype=bool)  # first-conv rows, 2 idle ones before and after
        busy[2 + np.repeat(start // 2, half) + ranks(half)] = True
        blocks = -(-tokens // chunk)  # (B,)
        first_row = chunk * offsets(blocks)[:-1]  # (B,) packed row of each clip's first frame
        rows = chunk * int(blocks.sum())
        valid = np.repeat(first_row, tokens) + ranks(tokens)  # (Σ T_b,)
        gather = np.full(rows, slot.sum() // 4, dtype=np.int64)  # (R,) idle rows → the appended zero row
        gather[valid] = np.repeat(start // 4, tokens) + ranks(tokens)
        opens = np.zeros(rows // chunk, dtype=bool)
        opens[first_row // chunk] = True
        own = np.zeros(rows, dtype=bool)
        own[valid] = True
        keys = np.concatenate([np.repeat(~opens[:, None], chunk, axis=1), own.reshape(-1, chunk)], axis=1)  # (G, W)
        # Slot j of block g holds time gC − C + j; query i (time gC + i) sees 0 ≤ i + C − j < C (HF: 12 keys).
        slot_index = np.arange(2 * chunk)
        query = np.arange(chunk)[:, None]
        window = (slot_index > query) & (slot_index <= query + chunk)  # (C, W)
        hidden = ~(window[None] & keys[:, None, :])  # (G, C, W)
        return cls(
            scatter=to_device(np.repeat(start, v) + ranks(v), device),
            slots=int(slot.sum()),
            idle_half=to_device(~busy, device),
            gather=to_device(gather, device),
            valid=to_device(valid, device),
            opens_clip=to_device(opens, device),
            hidden=to_device(hidden[:, None], device),
        )

    def with_previous(self, blocks: torch.Tensor, count: int) -> torch.Tensor:
        """(G, C, …) → (G, count + C, …): each block after the last ``count`` rows of the block before it (zeros
        where the block opens a clip)."""
        out = blocks.new_empty(blocks.shape[0], count + blocks.shape[1], *blocks.shape[2:])  # (G, count + C, …)
        out[:, count:] = blocks
        out[1:, :count] = blocks[:-1, blocks.shape[1] - count :]
        out[:, :count].masked_fill_(self.opens_clip.view(-1, *[1] * (blocks.dim() - 1)), 0.0)
        return out


# --- subsampling ------------------------------------------------------------------------------------


class ConvNormReLU(nn.Module):
    """Conv2d 3×3 stride 2 pad 1 (no bias) → LayerNorm over channels (no bias) → ReLU (spec §4.2).

    Works channels-last, (1, T, M, C), so the LayerNorm reads contiguous channels and nothing is transposed.
    """

    def __init__(self, c_in: int, c_out: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(c_out, eps=eps, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (1, T, M, C_in) → (1, ⌈T/2⌉, M/2, C_out)."""
        x = self._conv(x)  # (1, T', M', C_out)
        x = F.layer_norm(x, self.norm.normalized_shape, self.norm.weight, None, self.norm.eps)
        return F.relu_(x)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.conv.weight.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x.permute(0, 3, 1, 2), weight, stride=2, padding=1)  # (1, C_out, T', M') stored NHWC
        return y.permute(0, 2, 3, 1)  # (1, T', M', C_out), contiguous


class MonoConvNormReLU(ConvNormReLU):
    """The first conv (one input channel) as a 9-tap matmul over strided patches: it writes channels-last
    directly, and is faster than a one-channel convolution (the same products, so the same values)."""

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x[0, :, :, 0], (1, 1, 1, 1))  # (T + 2, M + 2)
        patches = padded.unfold(0, 3, 2).unfold(1, 3, 2)  # (T', M', 3, 3), a view
        t, m = patches.shape[:2]
        y = patches.reshape(t * m, 9) @ self.conv.weight.view(-1, 9).t()  # (T'·M', C_out)
        return y.view(1, t, m, -1)


_CPU_CONV_BLOCK = 1024  # slot rows (a multiple of 4): the first conv's output stays near 17 MB


class Subsampling(nn.Module):
    """Two stride-2 convs and a projection: every clip's valid frames (V_b, M) → (⌈⌈V_b/2⌉/2⌉, D) each, packed in
    whole chunks (spec §4.2)."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        c0, c1 = config.conv_channels
        self.layer0 = MonoConvNormReLU(1, c0, config.rms_eps)
        self.layer1 = ConvNormReLU(c0, c1, config.rms_eps)
        self.input_proj_linear = nn.Linear(config.subsampled_dim, config.d_model, bias=False)

    def forward(self, features: torch.Tensor, packing: _Packing) -> torch.Tensor:
        """features (F, M), the clips' valid frames back to back → (R, D) packed rows, idle rows zero."""
        dtype = self.input_proj_linear.weight.dtype
        rows, m = packing.slots, features.shape[1]
        x = features.new_zeros((rows + 8, m), dtype=dtype)  # (Σ L + 8, M): the slots, 4 zero rows either side
        x.index_copy_(0, packing.scatter + 4, features.to(dtype))
        out = x.new_empty((rows // 4 + 1, self.input_proj_linear.in_features))  # (Σ L/4 + 1, M/4·C1)
        out[-1] = 0.0  # the zero row idle packed rows read; the blocks below write every other row
        # Blocks of slot rows, each read with 4 rows of context either side (the two convs' reach): one block on an
        # accelerator; on the CPU, blocks small enough that no intermediate passes the allocator's mmap size.
        step = rows if x.device.type != "cpu" else _CPU_CONV_BLOCK
        for s in range(0, rows, step):
            e = min(s + step, rows)
            h = self.layer0(x[None, s : e + 8, :, None])  # (1, (e − s)/2 + 4, M/2, C0): first-conv rows s/2 − 2 …
            # The reference zeroes padded frames before each conv: rows past a clip's end are zero again.
            idle = packing.idle_half[None, s // 2 : e // 2 + 4, None, None]
            h = h.masked_fill_(idle, 0.0) if not torch.is_grad_enabled() else h.masked_fill(idle, 0.0)
            h = self.layer1(h)[0, 1:-1]  # ((e − s)/4, M/4, C1): second-conv rows s/4 … e/4 − 1
            out[s // 4 : e // 4] = h.reshape(h.shape[0], -1)  # frequency major, channel minor
        return self.input_proj_linear(out[packing.gather])  # (R, D): idle rows read the zero row


# --- conformer blocks -------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """Half-step FFN: ``x + w·RMSNorm(clamp(Lin₂(SiLU(Lin₁(RMSNorm(clamp(x)))))))`` (spec §4.3)."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        d, clipped = config.d_model, config.clipped_linears
        self.ffw_layer_1 = ClippedLinear(d, config.d_ff, clipped=clipped)
        self.ffw_layer_2 = ClippedLinear(config.d_ff, d, clipped=clipped)
        self.pre_layer_norm = RMSNorm(d, config.rms_eps)
        self.post_layer_norm = RMSNorm(d, config.rms_eps)
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (R, D) → (R, D)."""
        c = _clip_bound(self.config, x.dtype)
        y = self.ffw_layer_1(self.pre_layer_norm(x.clamp(-c, c)), scratch=True)  # (R, 4D)
        y = self.ffw_layer_2(F.silu(y, inplace=True), scratch=True)  # (R, D)
        y = self.post_layer_norm(y.clamp_(-c, c))
        return x + self.config.residual_weight * y


class LightConv(nn.Module):
    """GLU → causal depthwise conv → clamp → RMSNorm → SiLU → linear, plus the residual (spec §4.3)."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        d, clipped = config.d_model, config.clipped_linears
        self.linear_start = ClippedLinear(d, 2 * d, clipped=clipped)
        self.linear_end = ClippedLinear(d, d, clipped=clipped)
        self.depthwise_conv1d = nn.Conv1d(d, d, config.conv_kernel, groups=d, bias=False)  # weight (D, 1, K)
        self.pre_layer_norm = RMSNorm(d, config.rms_eps)
        self.conv_norm = RMSNorm(d, config.rms_eps)
        self.config = config

    def forward(self, x: torch.Tensor, packing: _Packing) -> torch.Tensor:
        """x (R, D) → (R, D)."""
        c, k, chunk = _clip_bound(self.config, x.dtype), self.config.conv_kernel, self.config.chunk_size
        y = F.glu(self.linear_start(self.pre_layer_norm(x), scratch=True), dim=-1)  # (R, D)
        # Causal: output t reads inputs t−K+1 … t; the K−1 rows before a block come from the block before it.
        context = packing.with_previous(y.view(-1, chunk, y.shape[-1]), k - 1)  # (G, K − 1 + C, D)
        weight = self.depthwise_conv1d.weight[:, 0].t()  # (K, D)
        y = context[:, 0:chunk] * weight[0]  # (G, C, D)
        for tap in range(1, k):
            y += context[:, tap : tap + chunk] * weight[tap]
        y = self.conv_norm(y.view(-1, y.shape[-1]).clamp_(-c, c))  # (R, D)
        return x + self.linear_end(F.silu(y, inplace=True), scratch=True)


class RelativeAttention(nn.Module):
    """Chunked local self-attention with Transformer-XL relative positions, in float32 (spec §4.4)."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        d, clipped = config.d_model, config.clipped_linears
        self.q_proj = ClippedLinear(d, d, clipped=clipped)
        self.k_proj = ClippedLinear(d, d, clipped=clipped)
        self.v_proj = ClippedLinear(d, d, clipped=clipped)
        self.post = ClippedLinear(d, d, clipped=clipped)
        self.relative_k_proj = nn.Linear(d, d, bias=False)
        self.per_dim_scale = nn.Parameter(torch.zeros(config.head_dim))
        self.config = config
        self.q_scale = config.head_dim**-0.5 / math.log(2)
        self.k_scale = math.log1p(math.e) / math.log(2)  # softplus(1) / ln 2

    def forward(self, x: torch.Tensor, sinusoids: torch.Tensor, packing: _Packing) -> torch.Tensor:
        """x (R, D), sinusoids (Q, D) in x's dtype → (R, D)."""
        cfg = self.config
        n, h, chunk = cfg.n_heads, cfg.head_dim, cfg.chunk_size
        scale = self.q_scale * F.softplus(self.per_dim_scale.float())  # (H,)
        # The projections are fresh tensors (float32, or cast to it): scaling them in place copies nothing.
        q = self.q_proj(x).float().mul_(scale.repeat(n))  # (R, N·H)
        q = q.view(-1, chunk, n, h).transpose(1, 2)  # (G, N, C, H)
        k = self.k_proj(x).float().mul_(self.k_scale).view(-1, chunk, n, h)  # (G, C, N, H)
        k = packing.with_previous(k, chunk)  # (G, W, N, H)
        v = packing.with_previous(self.v_proj(x).float().view(-1, chunk, n, h), chunk)  # (G, W, N, H)
        rel = self.relative_k_proj(sinusoids).float().view(-1, n, h).permute(1, 2, 0)  # (N, H, Q)
        logits = q @ k.permute(0, 2, 3, 1) + _rel_shift(q @ rel, 2 * chunk)  # (G, N, C, W)
        logits = torch.tanh(logits.div_(cfg.logit_cap)) * cfg.logit_cap  # soft-cap (tanh keeps its output for autograd)
        weights = logits.masked_fill_(packing.hidden, cfg.invalid_logit).softmax(dim=-1)  # (G, N, C, W)
        out = (weights @ v.transpose(1, 2)).transpose(1, 2)  # (G, C, N, H)
        return self.post(out.reshape(x.shape).to(x.dtype), scratch=True)


def _rel_shift(scores: torch.Tensor, slots: int) -> torch.Tensor:
    """(…, C, Q) scores per relative row → (…, C, W): slot j of query i gets row j − i (0 where j − i ∉ [0, Q)).

    Pad each query's Q scores to W + 1, lay the C queries end to end and re-cut them into rows of W: every row
    then starts one place further left, which is the Transformer-XL shift.
    """
    *batch, chunk, distances = scores.shape
    flat = F.pad(scores, (0, slots + 1 - distances)).reshape(*batch, chunk * (slots + 1))  # (…, C·(W + 1))
    return flat[..., : chunk * slots].view(*batch, chunk, slots)


class ConformerLayer(nn.Module):
    """FFN/2 → attention → light conv → FFN/2 → RMSNorm, with the reference's clamps (spec §4.3)."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        d = config.d_model
        self.feed_forward1 = FeedForward(config)
        self.self_attn = RelativeAttention(config)
        self.lconv1d = LightConv(config)
        self.feed_forward2 = FeedForward(config)
        self.norm_pre_attn = RMSNorm(d, config.rms_eps)
        self.norm_post_attn = RMSNorm(d, config.rms_eps)
        self.norm_out = RMSNorm(d, config.rms_eps)
        self.config = config

    def forward(self, x: torch.Tensor, sinusoids: torch.Tensor, packing: _Packing) -> torch.Tensor:
        """x (R, D) → (R, D)."""
        c = _clip_bound(self.config, self.norm_pre_attn.weight.dtype)
        x = self.feed_forward1(x)
        a = self.self_attn(self.norm_pre_attn(x.clamp(-c, c)), sinusoids, packing)
        x = x + self.norm_post_attn(a.clamp_(-c, c))
        x = self.feed_forward2(self.lconv1d(x, packing))
        return self.norm_out(x.clamp_(-c, c))


# --- the tower --------------------------------------------------------------------------------------


class AudioEncoder(nn.Module):
    """The audio tower; ``state_dict()`` keys are the checkpoint's ``model.audio_tower.`` names (spec §7.3)."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        c = config
        if c.context_right != 0 or c.context_left != c.chunk_size + 1 or c.conv_kernel - 1 > c.chunk_size:
            raise ConfigError(
                "audio tower: only context_left = chunk_size + 1, context_right = 0 and conv_kernel ≤ chunk_size + 1 "
                f"are implemented, got chunk_size={c.chunk_size}, context_left={c.context_left}, "
                f"context_right={c.context_right}, conv_kernel={c.conv_kernel}"
            )
        self.config = config
        self.subsample_conv_projection = Subsampling(config)
        self.layers = nn.ModuleList(ConformerLayer(config) for _ in range(config.n_layers))
        self.output_proj = nn.Linear(config.d_model, config.output_dim, bias=True)
        # (Q, D) relative-position sinusoids: computed in float32, then cast with the module (the reference, cast
        # to bfloat16, rounds its timescales and angles too; the difference is well inside bfloat16 noise).
        self.register_buffer("sinusoids", torch.empty(config.chunk_size + 1, config.d_model), persistent=False)
        self.reset_buffers()

    def reset_buffers(self, device: str | torch.device | None = None) -> None:
        """(Re)compute the non-persistent sinusoid table, e.g. after building on the meta device."""
        device = torch.device(device) if device is not None else self.sinusoids.device
        if device.type == "meta":
            return
        self.sinusoids = _relative_sinusoids(
            _inverse_timescales(self.config.d_model, device), self.config.chunk_size + 1
        )

    def forward(self, features: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        """features (F, M) float: every clip's valid log-mel frames, clips back to back; frames: each clip's frame
        count (host ints) → (N, E) tower outputs of all clips in order, in the weights' dtype,
        N = Σ ⌈⌈V_b/2⌉/2⌉. Everything is planned from the host-side counts: no value is read back."""
        frames = self._check(features, frames)
        if not frames:
            return features.new_zeros((0, self.config.output_dim), dtype=self.output_proj.weight.dtype)
        packing = _Packing.build(frames, self.config.chunk_size, features.device)
        x = self.subsample_conv_projection(features, packing)  # (R, D)
        sinusoids = self.sinusoids.to(x.dtype)  # (Q, D)
        for layer in self.layers:
            x = layer(x, sinusoids, packing)
        return self.output_proj(x[packing.valid])  # (N, E)

    def _check(self, features: torch.Tensor, frames: Sequence[int]) -> tuple[int, ...]:
        """Shapes against the host-side counts; raises :class:`AudioInputError` naming the clip and the problem."""
        m = self.config.n_mels
        if features.dim() != 2 or features.shape[-1] != m:
            raise AudioInputError(f"features must be (frames, {m}), got shape {tuple(features.shape)}")
        if not features.is_floating_point():
            raise AudioInputError(f"features must be floating point, got {features.dtype}")
        frames = tuple(int(f) for f in frames)
        for clip, count in enumerate(frames):
            if count < 1:
                raise AudioInputError(f"clip {clip}: {count} frames; every clip needs at least one valid frame")
        if sum(frames) != features.shape[0]:
            raise AudioInputError(
                f"the clips' frame counts sum to {sum(frames)}, but features has {features.shape[0]} rows"
            )
        return frames
