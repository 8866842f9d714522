"""The multimodal Gemma 4 model: the text decoder with the optional vision and audio towers (spec §5.3).

``forward(batch)`` takes one packed :class:`data_specs.batch.Batch`. Images and video frames go through the
vision tower and ``embed_vision``, audio segments through the audio tower and ``embed_audio``, each as one packed
tensor planned from the batch's host-side grids and frame counts. The soft tokens of all three are written into
the placeholder positions in one pass: the positions of each modality (``mm_token_type_ids``) take its soft
tokens in order, media in batch order, each one's tokens in their own order. The per-layer embeddings look up the
pad id at placeholder positions and take their context part from the merged embeddings (spec §2.3).

Placeholder counts are checked against the media when the batch is built (on the host), which also records
whether any row has padding; with that and the grids, neither the media path nor the attention masks read
anything back from the device, nor do the MoE layers of the 26B-A4B (``model.moe``).

Shapes: B batch, T tokens, D text width, N soft tokens of all media together.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from data_specs.batch import Batch, MediaCountError, PackedAudio, PackedPatches
from data_specs.media import Modality

from .audio import AudioEncoder
from .cache import KVCache
from .config import ModelConfig
from .decoder import TextDecoder
from .embedder import MultimodalEmbedder
from .vision import VisionEncoder


class TokenIdError(ValueError):
    """A batch holds token ids beyond the checkpoint's vocabulary (it was made with another tokenizer)."""


__all__ = ["Gemma4", "MediaCountError", "TokenIdError", "chunk_bounds"]


def chunk_bounds(length: int, chunk: int, types: np.ndarray | None = None) -> list[int]:
    """Chunk edges of a prompt of ``length`` tokens for a chunked prefill: 0, …, ``length``, about ``chunk``
    apart. With ``types`` (B, T) token types on the host, no edge falls inside a run of image or video soft
    tokens of any row (such a run attends to itself both ways): an edge moves back to the run's start, or,
    for a run longer than ``chunk``, forward to its end."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"prefill chunk must be a positive number of tokens, got {chunk!r}")
    if types is None:
        return [*range(0, length, chunk), length]
    vision = (types == Modality.IMAGE) | (types == Modality.VIDEO)  # (B, T)
    inside = np.zeros(length + 1, dtype=bool)  # edge e splits a run: tokens e − 1 and e both vision, some row
    inside[1:length] = (vision[:, :-1] & vision[:, 1:]).any(axis=0)
    safe = np.flatnonzero(~inside)  # rising, holds 0 and length
    bounds = [0]
    while bounds[-1] < length:
        target = bounds[-1] + chunk
        if target >= length:
            bounds.append(length)
            continue
        before = safe[(safe > bounds[-1]) & (safe <= target)]
        bounds.append(int(before[-1]) if len(before) else int(safe[safe > target][0]))
    return bounds


class Gemma4(nn.Module):
    """A :class:`Batch` → logits. Submodule names follow the checkpoint layout below ``model.``.

    ``ple_on_host``: keep the text decoder's per-layer-embedding table in host memory (see
    :class:`~model.decoder.TextDecoder`); ignored without per-layer embeddings."""

    def __init__(self, config: ModelConfig, *, ple_on_host: bool = False) -> None:
        super().__init__()
        self.config = config
        d = config.text.d_model
        self.language_model = TextDecoder(config.text, ple_on_host=ple_on_host)  # first: holds the first parameter
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

    def image_features(self, images: PackedPatches) -> torch.Tensor:
        """Packed images (or video frames), values float in [0, 1] → (N, D) soft tokens of all of them, in order."""
        if self.vision_tower is None:
            raise MediaCountError("images were given, but this model has no vision tower")
        dtype = self.embed_vision.embedding_projection.weight.dtype  # inputs follow the weights (bf16 …)
        return self.embed_vision(self.vision_tower(images.values.to(dtype), images.grids))

    def audio_features(self, audio: PackedAudio) -> torch.Tensor:
        """Packed audio segments → (N, D) soft tokens of all of them, in order."""
        if self.audio_tower is None:
            raise MediaCountError("audio was given, but this model has no audio tower")
        dtype = self.embed_audio.embedding_projection.weight.dtype
        return self.embed_audio(self.audio_tower(audio.features.to(dtype), audio.frames))

    # --- forward ---------------------------------------------------------------------------------------------

    def forward(self, batch: Batch, *, logits_to_keep: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """A batch → logits (B, T, V) in the weights' dtype (the last ``logits_to_keep`` positions only, when
        positive). With ``cache`` (``new_cache``), the prompt's keys and values are kept for ``decode``: media are
        encoded here, once."""
        if not isinstance(batch, Batch):
            raise TypeError(
                f"Gemma4.forward takes a data_specs.batch.Batch (collate(...), Batch.from_hf(**processor_output) "
                f"or Batch.from_ids(ids)), got {type(batch).__name__}"
            )
        text_ids, types, x = self.embed_inputs(batch)
        return self.language_model(
            text_ids,
            attention_mask=batch.attention_mask,
            mm_token_type_ids=types,
            inputs_embeds=x,
            logits_to_keep=logits_to_keep,
            padded=batch.padded,
            vision_span=batch.vision_span,
            cache=cache,
        )

    def prefill(
        self, batch: Batch, cache: KVCache, *, chunk: int | None, logits_to_keep: int = 1, bounds=None
    ) -> Iterator[torch.Tensor | None]:
        """``batch``'s prompt into ``cache`` (as many rows), its media encoded once, in chunks of about ``chunk``
        tokens (None: one pass): yields None after each chunk but the last, then the logits (B, K, V) of the
        last K = ``logits_to_keep`` positions. ``bounds`` (from :func:`chunk_bounds`) may be planned beforehand
        from the batch on the host; otherwise they are planned here, which reads the token types back when the
        preset attends bidirectionally inside images and the batch has any."""
        t = batch.input_ids.shape[1]
        if chunk is None or t <= chunk:
            yield self(batch, logits_to_keep=logits_to_keep, cache=cache)
            return
        if bounds is None:
            bounds = self.chunk_bounds(batch, chunk)
        text_ids, types, x = self.embed_inputs(batch)
        yield from self.language_model.prefill(
            text_ids,
            batch.attention_mask,
            bounds,
            cache=cache,
            mm_token_type_ids=types,
            inputs_embeds=x,
            logits_to_keep=logits_to_keep,
        )

    def chunk_bounds(self, batch: Batch, chunk: int) -> list[int]:
        """:func:`chunk_bounds` of ``batch`` for this model (its image blocks matter on the "vision" presets)."""
        vision = self.config.text.bidirectional == "vision" and bool(batch.vision_span)
        types = batch.mm_token_type_ids.cpu().numpy() if vision else None
        return chunk_bounds(batch.input_ids.shape[1], chunk, types)

    def new_cache(self, batch: int, context: int, **kwargs) -> KVCache:
        """An empty KV cache for ``batch`` rows of up to ``context`` tokens (see ``TextDecoder.new_cache``)."""
        return self.language_model.new_cache(batch, context, **kwargs)

    def decode(self, input_ids: torch.Tensor, cache: KVCache, *, span: int | None = None) -> torch.Tensor:
        """One new text token per row (B, 1) after what ``cache`` holds → logits (B, 1, V) (``span``: see
        ``TextDecoder.decode``)."""
        return self.language_model.decode(input_ids, cache, span=span)

    def _check_ids(self, batch: Batch) -> None:
        """A batch made with another tokenizer (ids beyond this checkpoint's vocabulary) is refused by name, from
        the range the batch read on the host, instead of an ``IndexError`` (or a device assert) in the lookup."""
        vocab = self.config.text.vocab_size
        if batch.text_id_range is not None and batch.text_id_range[1] >= vocab:
            raise TokenIdError(
                f"the batch holds token id {batch.text_id_range[1]}, but this checkpoint's vocabulary has {vocab} "
                "tokens: the batch was made with another tokenizer (load_pretrained(path, tokenizer=...) checks "
                "a tokenizer against the checkpoint)"
            )

    def embed_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text ids with the pad id at placeholders (B, T), token types (B, T), embeddings with every soft token
        in place (B, T, D))."""
        self._check_ids(batch)
        types = batch.mm_token_type_ids
        placeholders = types != Modality.TEXT  # (B, T)
        text_ids = batch.input_ids.masked_fill(placeholders, self.config.tokens.pad)  # (B, T)
        x = self.language_model.embed(text_ids)  # (B, T, D)
        return text_ids, types, self._merge(x, types, placeholders, batch)

    def _merge(self, x: torch.Tensor, types: torch.Tensor, placeholders: torch.Tensor, batch: Batch) -> torch.Tensor:
        """x (B, T, D) with every placeholder position replaced by its soft token, in one pass and without reading
        the device: the rank of each position among its modality's positions (a running count) plus the
        modality's offset indexes the soft tokens, concatenated in the batch's media order."""
        soft, counts = [], []
        for kind, media in batch.media:
            if len(media):
                encode = self.audio_features if kind == Modality.AUDIO else self.image_features
                soft.append(encode(media))  # (N_kind, D)
                counts.append((kind, sum(media.num_soft_tokens)))
        if not soft:
            return x
        flat = types.reshape(-1)  # (B·T,)
        index = torch.zeros_like(flat)
        offset = 0
        for kind, count in counts:
            hit = flat == kind  # (B·T,)
            index += hit * (hit.cumsum(0) + (offset - 1))
            offset += count
        merged = torch.cat(soft).to(x.dtype)[index].view_as(x)  # (B, T, D): soft token of every position
        return torch.where(placeholders.unsqueeze(-1), merged, x)
