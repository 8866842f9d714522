"""What the image, audio and video decoders share: naming an input in messages, opening a path only when it is
a regular file, reading a file object in place, and keeping file contents out of error messages."""

from __future__ import annotations

import errno
import io
import os
import re
import stat
from typing import BinaryIO

import numpy as np

from .errors import InvalidInputError, NotAFileError

__all__ = ["describe", "read_stream", "open_regular", "scrub"]

# A bytes literal as repr() writes it: decoders quote the bytes they could not parse (Pillow's "broken PNG file
# (chunk b'...')", TIFF's header); those are file contents and never enter our messages.
_FILE_REPR = re.compile(r"<_io\.\w+(?: name=[^<>]*| object at 0x[0-9a-fA-F]+)>")
_BYTES_REPR = re.compile(r"b'(?:[^'\\]|\\.)*'" + "|" + r'b"(?:[^"\\]|\\.)*"')


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


def scrub(message: object) -> str:
    """``str(message)`` (a decoder's error) with every bytes literal replaced by ``<bytes>`` and every file
    object's repr by ``<file>`` (it holds a memory address or a descriptor number, which differ from run to run,
    and the message names the input already)."""
    return _FILE_REPR.sub("<file>", _BYTES_REPR.sub("<bytes>", str(message)))


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def open_regular(path: str | os.PathLike, what: str, error: type[NotAFileError]) -> BinaryIO:
    """Open ``path`` for binary reading if it names a regular file (symbolic links followed).

    Checked with ``os.stat`` before opening, so a FIFO, socket or device is never opened (reading a FIFO blocks
    until a writer comes); the open itself is non-blocking and re-checked with ``fstat``, in case the path was
    replaced in between. A missing path raises ``FileNotFoundError``, a directory ``IsADirectoryError`` and an
    unreadable file ``PermissionError``, as ``open`` does; any other path that names no regular file (a FIFO, a
    device, a symbolic-link loop, a file used as a folder) raises ``error`` naming it.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:  # ELOOP, ENOTDIR, ENAMETOOLONG, …
        reason = "a symbolic-link loop" if exc.errno == errno.ELOOP else exc.strerror or type(exc).__name__
        raise error(what, f"the path cannot be opened: {reason}") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, f"{what}: is a directory, not a file", os.fspath(path))
    if not stat.S_ISREG(mode):
        raise error(what, f"is {_file_kind(mode)}, not a regular file; only regular files are read")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between stat and open
            raise error(what, f"is {_file_kind(mode)}, not a regular file; only regular files are read")
        raw = io.FileIO(fd, "rb", closefd=True)
        raw.name = os.fspath(path)  # as open() names it (decoders quote the name; a descriptor number varies)
        return io.BufferedReader(raw)
    except BaseException:
        os.close(fd)
        raise
