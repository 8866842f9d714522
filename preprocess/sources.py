"""What the image, audio and video decoders share: naming an input in messages, reading a file object in place."""

from __future__ import annotations

import os

import numpy as np

from .errors import InvalidInputError

__all__ = ["describe", "read_stream"]


def describe(source: object, kind: str, name: str | None = None) -> str:
    """A short description of ``source`` (an ``kind`` input) for error messages: ``name`` if given, else the path,
    the size of the bytes, the shape of the array … (e.g. ``"image file '/a.png'"``, ``"audio bytes (12 bytes)"``)."""
    if name is not None:
        return str(name)
    if isinstance(source, str | os.PathLike):
        return f"{kind} file {os.fspath(source)!r}"
    if isinstance(source, bytes | bytearray | memoryview):
        return f"{kind} bytes ({memoryview(source).nbytes} bytes)"
    if isinstance(source, np.ndarray):
        return f"{kind} array (shape {source.shape}, dtype {source.dtype})"
    module = type(source).__module__
    if module.startswith("torch") and hasattr(source, "shape"):
        return f"{kind} tensor (shape {tuple(source.shape)}, dtype {source.dtype}, device {source.device})"
    if module.startswith("PIL.") and hasattr(source, "mode"):
        return f"PIL image (mode {source.mode}, {source.width}x{source.height})"
    file_name = getattr(source, "name", None)
    if isinstance(file_name, str | bytes):
        return f"{kind} file object {file_name!r}"
    if hasattr(source, "read"):
        return f"{kind} file object ({type(source).__name__})"
    return f"{kind} input of type {type(source).__name__}"


def _seekable(fp: object) -> bool:
    try:
        return bool(fp.seekable())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def read_stream(fp: object, what: str, error: type[InvalidInputError]) -> bytes:
    """The rest of a binary file object from its current position; the position is put back afterwards (decoders
    seek to absolute offsets, so they get a copy instead). Text-mode objects raise ``error``."""
    start = fp.tell() if _seekable(fp) else None  # type: ignore[attr-defined]
    try:
        data = fp.read()  # type: ignore[attr-defined]
    finally:
        if start is not None:
            fp.seek(start)  # type: ignore[attr-defined]
    if not isinstance(data, bytes | bytearray):
        raise error(what, f"read() returned {type(data).__name__}, not bytes: open it in 'rb' mode")
    return bytes(data)
