"""Gemma 4 in PyTorch: configs and presets (``model.config``), the text decoder, the vision and audio towers, the
multimodal model (``model.gemma4``) and Hugging Face checkpoint I/O (``model.checkpoint``)."""

from .checkpoint import CheckpointError, load_pretrained, load_text_decoder, save_pretrained, save_text_decoder
from .config import (
    PRESETS,
    AudioConfig,
    ConfigError,
    ModelConfig,
    RopeConfig,
    TextConfig,
    TokenIds,
    VisionConfig,
    model_from_hf,
    model_to_hf,
    preset,
    text_from_hf,
    text_to_hf,
)
from .gemma4 import Gemma4, MediaCountError

__all__ = [
    "PRESETS",
    "AudioConfig",
    "CheckpointError",
    "ConfigError",
    "Gemma4",
    "MediaCountError",
    "ModelConfig",
    "RopeConfig",
    "TextConfig",
    "TokenIds",
    "VisionConfig",
    "load_pretrained",
    "load_text_decoder",
    "model_from_hf",
    "model_to_hf",
    "preset",
    "save_pretrained",
    "save_text_decoder",
    "text_from_hf",
    "text_to_hf",
]
