"""Gemma 4 in PyTorch. So far: the text configuration (``model.config``); the modules follow (issues 6, 7)."""

from .config import PRESETS, ConfigError, RopeConfig, TextConfig, preset, text_from_hf, text_to_hf

__all__ = ["PRESETS", "ConfigError", "RopeConfig", "TextConfig", "preset", "text_from_hf", "text_to_hf"]
