"""Adapters around the reference implementation (Hugging Face ``transformers`` 5.23.0, the ``test`` extra).

The one place outside tests that touches the reference: ``gemma4 bench`` measures against it when it is
installed. Production packages (``preprocess``, ``model``, ``pipelines``, ``data_specs``) never import this
package's dependency; ``pipelines`` reaches these adapters only through :func:`load`, which returns ``None``
when the reference is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["load"]


def load(name: str) -> ModuleType | None:
    """Import ``oracles.<name>``; ``None`` if the reference library it wraps is not installed."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:
        return None
