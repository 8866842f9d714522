"""Gemma 4 configurations: frozen dataclasses and one ``PRESETS`` table (spec §1, §8, §10).

``TextConfig`` holds the decoder's hyper-parameters in the project's vocabulary (``d_model``, ``n_heads``,
``n_kv_heads``, ``head_dim`` …); the Hugging Face ``config.json`` names appear only in :mod:`model.checkpoint`.
Derived values (layer kinds, the KV-sharing map, per-layer MLP width, parameter counts, KV-cache bytes per
token) are properties or methods, never stored fields. ``VisionConfig`` and ``AudioConfig`` describe the towers;
``ModelConfig`` joins the three parts with the multimodal token ids.

Every field has a :class:`Limit` (its type and sane bounds: ``TEXT_LIMITS`` …), which ``__post_init__`` checks
before anything else and :mod:`model.checkpoint` checks on each ``config.json`` value before it builds anything,
naming the key. The bounds are far above every published checkpoint (spec §12) and far below what would make
building a model on the meta device slow or its size overflow: 1024 layers or heads, a width of 65536, a
vocabulary or an MLP width of 2**20.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "AUDIO_LIMITS",
    "CONV_CHANNELS",
    "AudioConfig",
    "ConfigError",
    "Limit",
    "ModelConfig",
    "PRESETS",
    "ROPE_LIMITS",
    "RopeConfig",
    "TEXT_LIMITS",
    "TOKEN_ID",
    "TextConfig",
    "TokenIds",
    "VISION_LIMITS",
    "VisionConfig",
    "interleaved_layer_types",
    "preset",
]

SLIDING, FULL = "sliding_attention", "full_attention"


class ConfigError(ValueError):
    """A configuration that is inconsistent or describes an architecture this code does not implement."""


@dataclass(frozen=True)
class Limit:
    """What one config field may hold: ``kind`` int, float, bool or str (a float field takes an int too; no
    number field takes a bool), between ``low`` and ``high`` inclusive, above ``above`` (exclusive: for the positive
    floats); floats finite; None only if ``optional``."""

    kind: type
    low: int | None = None
    high: int | None = None
    above: float | None = None
    optional: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, as the end of a sentence ("at most 1024"); None if it is."""
        if value is None:
            return None if self.optional else "expected a value"
        if self.kind is bool:
            return None if isinstance(value, bool) else "expected true or false"
        if self.kind is str:
            return None if isinstance(value, str) else "expected a string"
        number = int if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, number):
            return "expected an integer" if self.kind is int else "expected a number"
        if self.kind is float and not (
            abs(value) < math.inf if isinstance(value, float) else value.bit_length() < 1024
        ):
            return "expected a finite number"  # an int of 1024 bits or more does not fit a float
        if self.above is not None and value <= self.above:
            return f"must be more than {self.above:g}"
        if self.low is not None and value < self.low:
            return f"at least {self.low}"
        if self.high is not None and value > self.high:
            return f"at most {self.high}"
        return None


_WIDTH, _LAYERS, _HEADS, _HEAD_DIM, _VOCAB = 65_536, 1024, 1024, 8192, 2**20


def _size(low: int, high: int, *, optional: bool = False) -> Limit:
    return Limit(int, low, high, optional=optional)


_POSITIVE = Limit(float, above=0)
_EPS = Limit(float, above=0, high=1)
TOKEN_ID = _size(0, _VOCAB - 1)  # every token id (below the largest vocabulary)

TEXT_LIMITS: dict[str, Limit] = {
    "vocab_size": _size(1, _VOCAB),
    "d_model": _size(1, _WIDTH),
    "n_layers": _size(1, _LAYERS),
    "n_heads": _size(1, _HEADS),
    "n_kv_heads": _size(1, _HEADS),
    "n_global_kv_heads": _size(1, _HEADS, optional=True),
    "head_dim": _size(1, _HEAD_DIM),
    "global_head_dim": _size(1, _HEAD_DIM),
    "d_ff": _size(1, _VOCAB),
    "double_wide_mlp": Limit(bool),
    "sliding_window": _size(1, 2**20),
    "n_kv_shared_layers": _size(0, _LAYERS),
    "k_eq_v": Limit(bool),
    "ple_dim": _size(0, _WIDTH),
    "ple_vocab_size": _size(1, _VOCAB),
    "n_experts": _size(0, 1024),
    "top_k_experts": _size(0, 1024),
    "moe_d_ff": _size(0, _VOCAB),
    "final_logit_softcap": Limit(float, above=0, optional=True),
    "bidirectional": Limit(str, optional=True),
    "rms_eps": _EPS,
    "tie_embeddings": Limit(bool),
}
ROPE_LIMITS: dict[str, Limit] = {
    "sliding_theta": _POSITIVE,
    "full_theta": _POSITIVE,
    "full_partial_rotary": Limit(float, above=0, high=1),
    "sliding_factor": _POSITIVE,
    "full_factor": _POSITIVE,
}
VISION_LIMITS: dict[str, Limit] = {
    "d_model": _size(1, _WIDTH),
    "n_layers": _size(1, _LAYERS),
    "n_heads": _size(1, _HEADS),
    "n_kv_heads": _size(1, _HEADS),
    "head_dim": _size(1, _HEAD_DIM),
    "d_ff": _size(1, _VOCAB),
    "patch_size": _size(1, 256),
    "position_table_size": _size(1, _VOCAB),
    "pool_kernel": _size(1, 64),
    "rope_theta": _POSITIVE,
    "clipped_linears": Limit(bool),
    "standardize": Limit(bool),
    "rms_eps": _EPS,
}
AUDIO_LIMITS: dict[str, Limit] = {
    "d_model": _size(1, _WIDTH),
    "n_layers": _size(1, _LAYERS),
    "n_heads": _size(1, _HEADS),
    "n_mels": _size(1, 1024),
    "conv_kernel": _size(1, 1024),
    "residual_weight": Limit(float),
    "chunk_size": _size(1, 65_536),
    "context_left": _size(1, 65_536),
    "context_right": _size(0, 65_536),
    "logit_cap": _POSITIVE,
    "invalid_logit": Limit(float),
    "clip_value": _POSITIVE,
    "clipped_linears": Limit(bool),
    "output_dim": _size(1, _WIDTH),
    "rms_eps": _EPS,
}
CONV_CHANNELS = _size(1, _WIDTH)  # each of the audio tower's two subsampling convolutions


def _check_limits(config: Any, limits: dict[str, Limit], section: str) -> None:
    for name, limit in limits.items():
        value = getattr(config, name)
        if (problem := limit.problem(value)) is not None:
            raise ConfigError(f"{section}: {name} is {value!r}; {problem}")


@dataclass(frozen=True, kw_only=True)
class RopeConfig:
    """Per layer kind: θ, the fraction of the head dim that rotates, and a frequency divisor (spec §1.2)."""

    sliding_theta: float = 10_000.0
    full_theta: float = 1_000_000.0
    full_partial_rotary: float = 0.25  # proportional RoPE: 128 of 512 dims rotate on full layers
    sliding_factor: float = 1.0
    full_factor: float = 1.0

    def __post_init__(self) -> None:
        _check_limits(self, ROPE_LIMITS, "rope config")


@dataclass(frozen=True, kw_only=True)
class TextConfig:
    vocab_size: int = 262_144
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int  # sliding layers (and full layers unless k_eq_v)
    n_global_kv_heads: int | None = None  # full layers when k_eq_v
    head_dim: int = 256
    global_head_dim: int = 512
    d_ff: int  # dense MLP width (doubled on KV-shared layers when double_wide_mlp)
    double_wide_mlp: bool = False
    layer_types: tuple[str, ...]
    sliding_window: int
    n_kv_shared_layers: int = 0
    k_eq_v: bool = False
    ple_dim: int = 0  # per-layer-embedding width P; 0 = no PLE
    ple_vocab_size: int = 262_144
    n_experts: int = 0  # 0 = no MoE block
    top_k_experts: int = 0
    moe_d_ff: int = 0
    final_logit_softcap: float | None = 30.0
    bidirectional: str | None = None  # "vision": bidirectional attention inside each image (spec §2.7)
    rope: RopeConfig = field(default_factory=RopeConfig)
    rms_eps: float = 1e-6
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise ConfigError(f"text config: {message}")

        _check_limits(self, TEXT_LIMITS, "text config")
        if not isinstance(self.rope, RopeConfig):
            fail(f"rope is a {type(self.rope).__name__}, not a RopeConfig")
        if not isinstance(self.layer_types, tuple) or not all(isinstance(t, str) for t in self.layer_types):
            fail(f"layer_types is {str(self.layer_types)[:80]}; expected a tuple of layer type names")
        if len(self.layer_types) != self.n_layers:
            fail(f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers (n_layers)")
        if unknown := set(self.layer_types) - {SLIDING, FULL}:
            fail(f"unknown layer types {sorted(unknown)}; expected {SLIDING!r} or {FULL!r}")
        if self.layer_types[-1] != FULL:
            fail("the last layer must be a full-attention layer (as every Gemma 4 checkpoint has)")
        if self.n_heads % self.n_kv_heads:
            fail(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.k_eq_v and (self.n_global_kv_heads is None or self.n_heads % self.n_global_kv_heads):
            fail("k_eq_v needs n_global_kv_heads dividing n_heads")
        if not 0 <= self.n_kv_shared_layers < self.n_layers:
            fail(f"n_kv_shared_layers={self.n_kv_shared_layers} must lie in 0…{self.n_layers - 1}")
        producers = set(self.layer_types[: self.n_layers - self.n_kv_shared_layers])
        if self.n_kv_shared_layers and producers != {SLIDING, FULL}:
            fail("with KV sharing, the non-shared layers must include both sliding and full layers")
        if self.n_experts and not (0 < self.top_k_experts <= self.n_experts and self.moe_d_ff > 0):
            fail("an MoE block needs 0 < top_k_experts ≤ n_experts and moe_d_ff > 0")
        if self.bidirectional not in (None, "vision"):
            fail(f"bidirectional must be None or 'vision', got {self.bidirectional!r}")

    # --- per layer -------------------------------------------------------------------------------------------

    def is_full(self, layer: int) -> bool:
        return self.layer_types[layer] == FULL

    def layer_head_dim(self, layer: int) -> int:
        return self.global_head_dim if self.is_full(layer) else self.head_dim

    def layer_kv_heads(self, layer: int) -> int:
        return self.n_global_kv_heads if (self.is_full(layer) and self.k_eq_v) else self.n_kv_heads

    def layer_has_value_proj(self, layer: int) -> bool:
        """False on K=V layers, whose values are the raw keys."""
        return not (self.is_full(layer) and self.k_eq_v)

    @property
    def first_shared_layer(self) -> int:
        return self.n_layers - self.n_kv_shared_layers

    def kv_source(self, layer: int) -> int:
        """The layer whose K/V (and cache) ``layer`` uses: itself, or for a KV-shared layer the last non-shared
        layer of the same kind (spec §1.3)."""
        if layer < self.first_shared_layer:
            return layer
        kind = self.layer_types[layer]
        return max(i for i in range(self.first_shared_layer) if self.layer_types[i] == kind)

    def layer_d_ff(self, layer: int) -> int:
        doubled = self.double_wide_mlp and layer >= self.first_shared_layer
        return self.d_ff * 2 if doubled else self.d_ff

    # --- counts ----------------------------------------------------------------------------------------------

    def num_parameters(self) -> dict[str, int]:
        """Learned parameters per component (spec §8.1; tied output counted once, shared layers' unused K/V
        projections not counted, the per-layer scalars listed apart)."""
        h, p = self.d_model, self.ple_dim
        attention = mlp = moe = ple_layers = 0
        for i in range(self.n_layers):
            d, q = self.layer_head_dim(i), self.n_heads * self.layer_head_dim(i)
            if i >= self.first_shared_layer:
                attention += 2 * q * h + d  # q, o, q_norm
            else:
                kv = self.layer_kv_heads(i) * d * h
                attention += 2 * q * h + kv * (2 if self.layer_has_value_proj(i) else 1) + 2 * d
            mlp += 3 * h * self.layer_d_ff(i)
            if self.n_experts:
                moe += self.n_experts * 3 * h * self.moe_d_ff + self.n_experts * h + h + self.n_experts + 3 * h
            if p:
                ple_layers += 2 * p * h + h  # gate, projection, post-PLE norm
        counts = {
            "embedding": self.vocab_size * h,
            "ple_table": self.ple_vocab_size * self.n_layers * p,
            "ple_projection": (self.n_layers * p * h + p) if p else 0,
            "attention": attention,
            "mlp": mlp,
            "moe": moe,
            "norms": 4 * h * self.n_layers + h,
            "ple_layers": ple_layers,
        }
        counts["total"] = sum(counts.values())
        counts["layer_scalars"] = self.n_layers
        return counts

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """Cache bytes one token adds (K and V of every layer that owns a cache; K=V layers store K once)."""
        total = 0
        for i in range(self.first_shared_layer):
            per_tensor = self.layer_kv_heads(i) * self.layer_head_dim(i) * bytes_per_value
            total += per_tensor * (2 if self.layer_has_value_proj(i) else 1)
        return total


@dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """The vision encoder (spec §1.4, §3). Defaults are the small (E2B/E4B) encoder."""

    d_model: int = 768
    n_layers: int = 16
    n_heads: int = 12
    n_kv_heads: int = 12
    head_dim: int = 64
    d_ff: int = 3072
    patch_size: int = 16
    position_table_size: int = 10_240
    pool_kernel: int = 3
    rope_theta: float = 100.0
    clipped_linears: bool = True
    standardize: bool = False
    rms_eps: float = 1e-6

    def __post_init__(self) -> None:
        _check_limits(self, VISION_LIMITS, "vision config")
        if self.head_dim % 4:
            raise ConfigError(f"vision config: head_dim={self.head_dim} must be a multiple of 4 (2-D RoPE halves)")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"vision config: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch_size**2

    def num_parameters(self) -> int:
        """Learned parameters of the tower (clip bounds and standardisation vectors are buffers, not counted)."""
        d, q, kv = self.d_model, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        layer = 2 * q * d + 2 * kv * d + 2 * self.head_dim + 3 * d * self.d_ff + 4 * d
        return self.n_layers * layer + self.patch_dim * d + 2 * self.position_table_size * d


@dataclass(frozen=True, kw_only=True)
class AudioConfig:
    """The audio conformer (spec §1.5, §4.2–4.6). Defaults are the E2B/E4B tower."""

    d_model: int = 1024
    n_layers: int = 12
    n_heads: int = 8
    n_mels: int = 128
    conv_channels: tuple[int, int] = (128, 32)
    conv_kernel: int = 5  # the light-conv's causal depthwise kernel
    residual_weight: float = 0.5
    chunk_size: int = 12
    context_left: int = 13
    context_right: int = 0
    logit_cap: float = 50.0
    invalid_logit: float = -1.0e9
    clip_value: float = 1.0e10  # "gradient_clipping": the clamp inside the conformer
    clipped_linears: bool = True
    output_dim: int = 1536
    rms_eps: float = 1e-6

    def __post_init__(self) -> None:
        _check_limits(self, AUDIO_LIMITS, "audio config")
        channels = self.conv_channels
        if not isinstance(channels, tuple) or len(channels) != 2 or any(CONV_CHANNELS.problem(c) for c in channels):
            raise ConfigError(f"audio config: conv_channels must be two ints in 1…{_WIDTH}, got {channels!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"audio config: d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")
        if self.d_model % 2:
            raise ConfigError(f"audio config: d_model={self.d_model} must be even (sinusoidal positions)")
        if self.n_mels % 4:
            raise ConfigError(f"audio config: n_mels={self.n_mels} must be a multiple of 4 (two stride-2 convs)")
        if self.context_left < 1 or self.context_right < 0:
            raise ConfigError("audio config: context_left must be ≥ 1 and context_right ≥ 0")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def d_ff(self) -> int:
        return 4 * self.d_model

    @property
    def subsampled_dim(self) -> int:
        """Width after the two convs: frequency bins left (n_mels / 4) × channels of the second conv."""
        return self.n_mels // 4 * self.conv_channels[1]

    def num_parameters(self) -> int:
        """Learned parameters of the tower (clip bounds are buffers, not counted)."""
        d, c0, c1 = self.d_model, *self.conv_channels
        subsample = 9 * c0 + c0 + 9 * c0 * c1 + c1 + self.subsampled_dim * d
        ffn = 2 * d * self.d_ff + 2 * d
        attention = 5 * d * d + self.head_dim
        conv = d * 2 * d + d * d + self.conv_kernel * d + 2 * d
        layer = 2 * ffn + attention + conv + 3 * d
        return subsample + self.n_layers * layer + d * self.output_dim + self.output_dim


@dataclass(frozen=True, kw_only=True)
class TokenIds:
    """Ids of the multimodal control tokens (spec §1.6) and the pad id; always read from the checkpoint's config."""

    pad: int = 0  # text_config.pad_token_id: what placeholders become for the PLE lookup (spec §2.3)
    bos: int = 2  # text_config.bos_token_id: what every prompt starts with
    image: int = 258_880
    audio: int = 258_881
    video: int = 258_884
    boi: int = 255_999
    eoi: int = 258_882
    boa: int = 256_000
    eoa: int = 258_883
    # generation stops at any of these (spec §1.6: <eos>, <turn|>, <|tool_response>): config.json's
    # eos_token_id together with generation_config.json's
    stop_ids: tuple[int, ...] = (1, 106, 50)

    def __post_init__(self) -> None:
        for name in ("pad", "bos", "image", "audio", "video", "boi", "eoi", "boa", "eoa"):
            value = getattr(self, name)
            if (problem := TOKEN_ID.problem(value)) is not None:
                raise ConfigError(f"token ids: {name} is {value!r}; {problem}")
        if not isinstance(self.stop_ids, tuple) or any(TOKEN_ID.problem(i) for i in self.stop_ids):
            raise ConfigError(f"token ids: stop_ids is {str(self.stop_ids)[:80]}; expected a tuple of token ids")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The whole model: the text decoder and the optional vision and audio towers."""

    text: TextConfig
    vision: VisionConfig | None = None
    audio: AudioConfig | None = None
    tokens: TokenIds = field(default_factory=TokenIds)

    def __post_init__(self) -> None:
        ids = [getattr(self.tokens, f) for f in ("image", "audio", "video")]
        if self.vision is not None or self.audio is not None:
            if bad := [i for i in ids if not 0 <= i < self.text.vocab_size]:
                raise ConfigError(
                    f"model config: placeholder token ids {bad} lie outside the vocabulary ({self.text.vocab_size})"
                )

    def num_parameters(self) -> dict[str, int]:
        """Learned parameters per part; ``total`` is the sum (layer scalars apart, as in spec §8.2)."""
        text = self.text.num_parameters()
        counts = {"text": text["total"]}
        if self.vision is not None:
            counts["vision_tower"] = self.vision.num_parameters()
            counts["vision_embedder"] = self.vision.d_model * self.text.d_model
        if self.audio is not None:
            counts["audio_tower"] = self.audio.num_parameters()
            counts["audio_embedder"] = self.audio.output_dim * self.text.d_model
        counts["total"] = sum(counts.values())
        counts["layer_scalars"] = text["layer_scalars"]
        return counts


def interleaved_layer_types(n_layers: int, period: int) -> tuple[str, ...]:
    """Sliding layers with every ``period``-th layer (and the last) full: the Gemma 4 pattern (spec §1.2)."""
    return tuple(FULL if (i + 1) % period == 0 or i == n_layers - 1 else SLIDING for i in range(n_layers))


def _make(**kw: Any) -> TextConfig:
    period = kw.pop("period")
    return TextConfig(layer_types=interleaved_layer_types(kw["n_layers"], period), **kw)


# Sources: spec §1.1 (GM `_gemma4.py` presets; HF config.json values). Tiny presets are for CPU tests: they keep
# every feature of their family (PLE, KV sharing, double-wide MLP / K=V with global KV heads / MoE).
_TEXT: dict[str, TextConfig] = {
    "gemma4-e2b": _make(
        d_model=1536,
        n_layers=35,
        n_heads=8,
        n_kv_heads=1,
        d_ff=6144,
        double_wide_mlp=True,
        period=5,
        sliding_window=512,
        n_kv_shared_layers=20,
        ple_dim=256,
    ),
    "gemma4-e4b": _make(
        d_model=2560,
        n_layers=42,
        n_heads=8,
        n_kv_heads=2,
        d_ff=10240,
        period=6,
        sliding_window=512,
        n_kv_shared_layers=18,
        ple_dim=256,
    ),
    "gemma4-31b": _make(
        d_model=5376,
        n_layers=60,
        n_heads=32,
        n_kv_heads=16,
        n_global_kv_heads=4,
        d_ff=21504,
        period=6,
        sliding_window=1024,
        k_eq_v=True,
        bidirectional="vision",
    ),
    "gemma4-26b-a4b": _make(
        d_model=2816,
        n_layers=30,
        n_heads=16,
        n_kv_heads=8,
        n_global_kv_heads=2,
        d_ff=2112,
        period=6,
        sliding_window=1024,
        k_eq_v=True,
        n_experts=128,
        top_k_experts=8,
        moe_d_ff=704,
        bidirectional="vision",
    ),
    "tiny-e2b": _make(
        vocab_size=512,
        d_model=64,
        n_layers=6,
        n_heads=4,
        n_kv_heads=1,
        head_dim=16,
        global_head_dim=32,
        d_ff=128,
        double_wide_mlp=True,
        period=3,
        sliding_window=8,
        n_kv_shared_layers=2,
        ple_dim=16,
        ple_vocab_size=512,
    ),
    "tiny-31b": _make(
        vocab_size=512,
        d_model=64,
        n_layers=6,
        n_heads=4,
        n_kv_heads=2,
        n_global_kv_heads=1,
        head_dim=16,
        global_head_dim=32,
        d_ff=128,
        period=3,
        sliding_window=8,
        k_eq_v=True,
        bidirectional="vision",
    ),
    "tiny-moe": _make(
        vocab_size=512,
        d_model=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        n_global_kv_heads=1,
        head_dim=16,
        global_head_dim=32,
        d_ff=96,
        period=2,
        sliding_window=8,
        k_eq_v=True,
        n_experts=8,
        top_k_experts=2,
        moe_d_ff=32,
        bidirectional="vision",
    ),
}


_LARGE_VISION = VisionConfig(
    d_model=1152,
    n_layers=27,
    n_heads=16,
    n_kv_heads=16,
    head_dim=72,
    d_ff=4304,
    clipped_linears=False,
    standardize=True,
)
# Tiny towers keep every feature of their family: clipped linears (small) or standardisation (large); the audio
# tower's first conv keeps 128 channels (the reference sizes its projection from it, spec §11).
_TINY_SMALL_VISION = VisionConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=16, d_ff=64)
_TINY_LARGE_VISION = replace(_TINY_SMALL_VISION, clipped_linears=False, standardize=True)
_TINY_AUDIO = AudioConfig(d_model=32, n_layers=2, n_heads=2, conv_channels=(128, 8), output_dim=48)
_TINY_TOKENS = TokenIds(image=500, audio=501, video=502, boi=503, eoi=504, boa=505, eoa=506)

# Sources: spec §1.1, §1.4, §1.5 and §8.2 (the towers each preset carries).
PRESETS: dict[str, ModelConfig] = {
    "gemma4-e2b": ModelConfig(text=_TEXT["gemma4-e2b"], vision=VisionConfig(), audio=AudioConfig()),
    "gemma4-e4b": ModelConfig(text=_TEXT["gemma4-e4b"], vision=VisionConfig(), audio=AudioConfig()),
    "gemma4-31b": ModelConfig(text=_TEXT["gemma4-31b"], vision=_LARGE_VISION),
    "gemma4-26b-a4b": ModelConfig(text=_TEXT["gemma4-26b-a4b"], vision=_LARGE_VISION),
    "tiny-e2b": ModelConfig(text=_TEXT["tiny-e2b"], vision=_TINY_SMALL_VISION, audio=_TINY_AUDIO, tokens=_TINY_TOKENS),
    "tiny-31b": ModelConfig(text=_TEXT["tiny-31b"], vision=_TINY_LARGE_VISION, tokens=_TINY_TOKENS),
    "tiny-moe": ModelConfig(text=_TEXT["tiny-moe"], vision=_TINY_LARGE_VISION, tokens=_TINY_TOKENS),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset, optionally with parts replaced (``dataclasses.replace`` semantics: validated again)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)
