"""The multimodal Gemma 4 model: the text decoder with the optional vision and audio towers (spec §5.3).

Images (and video frames) go through the vision tower and ``embed_vision``; audio segments through the audio
tower and ``embed_audio``. The soft tokens replace the placeholder positions (``<|image|>``, ``<|video|>``,
``<|audio|>``) in order: media in batch order, each one's tokens in their own order. The per-layer embeddings
look up the pad id at placeholder positions and take their context part from the merged embeddings (spec
§2.3). A count mismatch between placeholders and soft tokens raises :class:`MediaCountError`.

Deviation: on the "vision" presets (31B, 26B-A4B) the reference makes image tokens attend to each other only
when ``mm_token_type_ids`` is passed; we derive the types from the placeholder ids when it is not, so a call
without them still gets the attention the model was trained with.

Shapes: B batch, T tokens, D text width, I images, M patches per image, S audio segments, F feature frames.
"""

from __future__ import annotations

import torch
from torch import nn

from .audio import AudioEncoder
from .config import ModelConfig
from .decoder import TextDecoder
from .embedder import MultimodalEmbedder
from .vision import VisionEncoder

__all__ = ["Gemma4", "MediaCountError"]

IMAGE, VIDEO, AUDIO = 1, 2, 3  # mm_token_type_ids values (spec §5.2)


class MediaCountError(ValueError):
    """The number of placeholder tokens differs from the number of soft tokens the encoders produced."""


class Gemma4(nn.Module):
    """Token ids and media tensors → logits. Submodule names follow the checkpoint layout below ``model.``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.text.d_model
        self.language_model = TextDecoder(config.text)
        self.vision_tower = self.embed_vision = self.audio_tower = self.embed_audio = None
        if config.vision is not None:
            self.vision_tower = VisionEncoder(config.vision)
            self.embed_vision = MultimodalEmbedder(config.vision.d_model, d, config.vision.rms_eps)
        if config.audio is not None:
            self.audio_tower = AudioEncoder(config.audio)
            self.embed_audio = MultimodalEmbedder(config.audio.output_dim, d, config.audio.rms_eps)

    def reset_buffers(self, device: str | torch.device | None = None) -> None:
        """Rebuild non-persistent buffers (RoPE frequencies, sinusoids), e.g. after building on the meta device."""
        for module in (self.language_model, self.vision_tower, self.audio_tower):
            if module is not None and hasattr(module, "reset_buffers"):
                module.reset_buffers(device)

    # --- encoders --------------------------------------------------------------------------------------------

    def image_features(self, pixel_values: torch.Tensor, positions: torch.Tensor) -> list[torch.Tensor]:
        """pixel_values (I, M, 768) float in [0, 1], positions (I, M, 2) → per image (n_i, D) soft tokens."""
        if self.vision_tower is None:
            raise MediaCountError("images were given, but this model has no vision tower")
        dtype = self.embed_vision.embedding_projection.weight.dtype  # inputs follow the weights (bf16 …)
        pooled = self.vision_tower(pixel_values.to(dtype), positions)
        return [self.embed_vision(p) for p in pooled]

    def audio_features(self, features: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """features (S, F, 128), mask (S, F) bool → per segment (n_s, D) soft tokens (valid frames only)."""
        if self.audio_tower is None:
            raise MediaCountError("audio was given, but this model has no audio tower")
        dtype = self.embed_audio.embedding_projection.weight.dtype
        out, out_mask = self.audio_tower(features.to(dtype), mask.bool())  # (S, F', A), (S, F')
        return [self.embed_audio(o[m]) for o, m in zip(out, out_mask, strict=True)]

    # --- forward ---------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_position_ids: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_position_ids: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        **unused: object,
    ) -> torch.Tensor:
        """input_ids (B, T) → logits (B, T, V) in the weights' dtype (the last ``logits_to_keep`` positions
        only, when positive).

        Takes the reference processor's tensors and the project's collated batches (:func:`preprocess.collate`
        after :func:`preprocess.collate.to_device`); other keys of such a batch are ignored.
        """
        tokens = self.config.tokens
        slots = {IMAGE: input_ids == tokens.image, VIDEO: input_ids == tokens.video, AUDIO: input_ids == tokens.audio}
        placeholders = slots[IMAGE] | slots[VIDEO] | slots[AUDIO]  # (B, T)
        text_ids = torch.where(placeholders, torch.full_like(input_ids, tokens.pad), input_ids)  # (B, T)
        x = self.language_model.embed(text_ids)  # (B, T, D)
        media = {
            IMAGE: (pixel_values, image_position_ids, "image", self.image_features),
            VIDEO: (pixel_values_videos, video_position_ids, "video frame", self.image_features),
            AUDIO: (input_features, input_features_mask, "audio", self.audio_features),
        }
        for kind, (values, extra, label, encode) in media.items():
            if values is None or values.shape[0] == 0:
                soft = x.new_zeros((0, x.shape[-1]))
            else:
                if extra is None:
                    raise ValueError(f"{label} inputs need their {'mask' if kind == AUDIO else 'position ids'}")
                soft = torch.cat(encode(values, extra))  # (N, D)
            x = _scatter(x, slots[kind], soft, label)
        if mm_token_type_ids is None and self.config.text.bidirectional == "vision":
            mm_token_type_ids = slots[IMAGE].long() * IMAGE + slots[VIDEO].long() * VIDEO
        return self.language_model(
            text_ids,
            attention_mask=attention_mask,
            mm_token_type_ids=mm_token_type_ids,
            inputs_embeds=x,
            logits_to_keep=logits_to_keep,
        )


def _scatter(x: torch.Tensor, slots: torch.Tensor, soft: torch.Tensor, label: str) -> torch.Tensor:
    """Write ``soft`` (N, D) into the N positions where ``slots`` (B, T) is true, in row-major order, in place
    (``x`` is the fresh embedding tensor of this forward pass)."""
    wanted = int(slots.sum())
    if wanted != soft.shape[0]:
        raise MediaCountError(
            f"the prompt has {wanted} {label} placeholder tokens, but the encoder produced {soft.shape[0]} "
            f"{label} soft tokens"
        )
    if wanted:
        x[slots] = soft.to(x.dtype)
    return x
