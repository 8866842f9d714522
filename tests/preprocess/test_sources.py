"""Shared input handling: only regular files are opened, a FIFO never; decoder messages lose quoted bytes."""

from __future__ import annotations

import os

import pytest

from preprocess import errors
from preprocess.sources import open_regular, scrub
from tests.preprocess.helpers import unblocking_fifo

fifo_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


@fifo_only
def test_fifo_is_refused_without_being_opened(tmp_path):
    with unblocking_fifo(tmp_path / "pipe") as path:
        with pytest.raises(errors.NotAFileError) as info:
            open_regular(path, f"image file {str(path)!r}", errors.ImageNotAFileError)
    assert isinstance(info.value, errors.InvalidImageError)
    assert str(path) in str(info.value) and "FIFO" in str(info.value)


def test_symlink_loop_is_an_input_error(tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(errors.AudioNotAFileError, match="symbolic-link loop") as info:
        open_regular(loop, f"audio file {str(loop)!r}", errors.AudioNotAFileError)
    assert str(loop) in str(info.value) and isinstance(info.value, ValueError)


def test_file_used_as_a_folder_is_an_input_error(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    with pytest.raises(errors.VideoNotAFileError) as info:
        open_regular(plain / "child", "video file 'plain/child'", errors.VideoNotAFileError)
    assert "plain/child" in str(info.value)


def test_device_is_refused(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(errors.ImageNotAFileError, match="character device"):
        open_regular("/dev/zero", "image file '/dev/zero'", errors.ImageNotAFileError)


def test_directory_and_missing_file_keep_their_os_errors(tmp_path):
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        open_regular(tmp_path, f"image file {str(tmp_path)!r}", errors.ImageNotAFileError)
    with pytest.raises(FileNotFoundError, match="missing"):
        open_regular(tmp_path / "missing", "image file", errors.ImageNotAFileError)


def test_regular_file_and_symlink_to_one_open(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"data")
    link = tmp_path / "link"
    os.symlink(plain, link)
    for path in (plain, link, str(link)):
        with open_regular(path, "x", errors.ImageNotAFileError) as fp:
            assert fp.read() == b"data"


def test_scrub_removes_quoted_bytes():
    assert scrub("broken PNG file (chunk b'root')") == "broken PNG file (chunk <bytes>)"
    assert scrub("header b\"\\\"x\\\\\" and b'\\'' end") == "header <bytes> and <bytes> end"
    assert scrub(ValueError("no bytes here")) == "no bytes here"


def test_scrub_removes_file_object_reprs():
    """libsndfile names the file object it was given: a memory address or a descriptor number, which would make
    the errors table differ from run to run."""
    message = "Error opening <_io.BytesIO object at 0x7f04784dfa60>: bad; <_io.BufferedReader name=5>: worse"
    assert scrub(message) == "Error opening <file>: bad; <file>: worse"
