"""Versioned schemas of the pipeline's inputs and outputs (see README.md here). Filled by the pipeline issues."""

__all__: list[str] = []
