"""Gemma 4 in PyTorch: configs and presets (``model.config``), the text decoder, the vision and audio towers, the
multimodal model (``model.gemma4``) and Hugging Face checkpoint I/O with the
reference's ``config.json`` keys and tensor names (``model.checkpoint``)."""

from .checkpoint import (
    CheckpointError,
    TokenizerMismatchError,
    check_tokenizer,
    default_dtype,
    load_config,
    load_pretrained,
    load_text_decoder,
    model_from_hf,
    model_to_hf,
    save_pretrained,
    save_text_decoder,
    text_from_hf,
    text_to_hf,
)
from .config import (
    PRESETS,
    AudioConfig,
    ConfigError,
    ModelConfig,
    RopeConfig,
    TextConfig,
    TokenIds,
    VisionConfig,
    preset,
)
from .gemma4 import Gemma4, MediaCountError, TokenIdError

__all__ = [
    "PRESETS",
    "AudioConfig",
    "CheckpointError",
    "ConfigError",
    "Gemma4",
    "MediaCountError",
    "ModelConfig",
    "RopeConfig",
    "TokenIdError",
    "TextConfig",
    "TokenIds",
    "TokenizerMismatchError",
    "VisionConfig",
    "check_tokenizer",
    "default_dtype",
    "load_config",
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
