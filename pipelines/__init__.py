"""Jobs and the ``gemma4`` command line. Model and preprocess code never import from here."""

__all__: list[str] = []
