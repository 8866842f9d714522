"""Gemma 4 in PyTorch (text decoder, vision encoder, audio conformer). Built by later issues; empty for now."""

__all__: list[str] = []
