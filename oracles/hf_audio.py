"""The reference audio front end: ``Gemma4AudioFeatureExtractor`` with its defaults."""

from __future__ import annotations

from transformers import Gemma4AudioFeatureExtractor

__all__ = ["feature_extractor"]


def feature_extractor(**kwargs) -> Gemma4AudioFeatureExtractor:
    return Gemma4AudioFeatureExtractor(**kwargs)
