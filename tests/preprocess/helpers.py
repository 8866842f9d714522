"""Helpers the front-end tests share: numbered test videos, an example comparison, a FIFO that cannot hang a
test, and a small chat template."""

from __future__ import annotations

import contextlib
import io
import os
import threading
from fractions import Fraction

import av
import numpy as np

# ------------------------------------------------------------------------------------------------ videos
# Encoded here with PyAV (64×48 px, yuv420p, libx264 when available, else mpeg4); each frame carries its number.

HEIGHT, WIDTH = 48, 64
BLOCK = 16  # 3 × 4 blocks of 16 px: a 12-bit frame number, one bit per black or white block
CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


def numbered_frame(number: int) -> np.ndarray:
    """(48, 64, 3) uint8: bit k of ``number`` is block (k // 4, k % 4), white when set (survives any codec)."""
    pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    for bit in range(12):
        if number >> bit & 1:
            row, col = divmod(bit, WIDTH // BLOCK)
            pixels[row * BLOCK : (row + 1) * BLOCK, col * BLOCK : (col + 1) * BLOCK] = 255
    return pixels


def frame_number(pixels: np.ndarray) -> int:
    """The number :func:`numbered_frame` drew, read from the centres of the blocks of a decoded frame."""
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    number = 0
    for bit in range(12):
        row, col = divmod(bit, WIDTH // BLOCK)
        centre = pixels[row * BLOCK + 4 : row * BLOCK + 12, col * BLOCK + 4 : col * BLOCK + 12]
        number |= int(centre.mean() > 128) << bit
    return number


def encode_video(
    count: int,
    *,
    rate: int = 25,
    codec: str = CODEC,
    fmt: str = "mp4",
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    rotation: tuple[int, bool, bool] | None = None,
    frame=numbered_frame,
) -> bytes:
    """Encode ``count`` frames ``frame(i)``; explicit ``pts`` (in ``time_base`` units) make a variable rate."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if rotation is not None:
            degrees, hflip, vflip = rotation
            stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for i in range(count):
            picture = av.VideoFrame.from_ndarray(frame(i), format="rgb24")
            if pts is not None:
                picture.pts, picture.time_base = pts[i], time_base
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ the rest


def assert_same(a, b):
    """Two examples (what ``build_example`` returns) hold the same ids, media and summary."""
    assert np.array_equal(a.input_ids, b.input_ids) and a.input_ids.dtype == b.input_ids.dtype
    assert np.array_equal(a.mm_token_type_ids, b.mm_token_type_ids)
    assert len(a.images) == len(b.images) and len(a.audio) == len(b.audio) and len(a.videos) == len(b.videos)
    for x, y in zip(a.images, b.images, strict=True):
        assert np.array_equal(x.patches, y.patches) and (x.size, x.original_size, x.budget) == (
            y.size,
            y.original_size,
            y.budget,
        )
    for x, y in zip(a.videos, b.videos, strict=True):
        assert (x.timestamps, x.budget) == (y.timestamps, y.budget)
        for f, g in zip(x.frames, y.frames, strict=True):
            assert np.array_equal(f.patches, g.patches) and (f.size, f.original_size) == (g.size, g.original_size)
    for x, y in zip(a.audio, b.audio, strict=True):
        assert np.array_equal(x.features, y.features) and np.array_equal(x.mask, y.mask)
        assert (x.num_tokens, x.start_s, x.end_s, x.part) == (y.num_tokens, y.start_s, y.end_s, y.part)
    assert a.summary == b.summary


@contextlib.contextmanager
def unblocking_fifo(path):
    """A FIFO at ``path``. Should the code under test open it for reading anyway, a writer opens and closes it
    after a few seconds, so the reader sees end-of-file and the test fails instead of hanging forever."""
    os.mkfifo(path)
    done = threading.Event()

    def unblock() -> None:
        while not done.wait(3.0):
            with contextlib.suppress(OSError):  # ENXIO: no reader yet
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        done.set()
        thread.join()


# A template in the style of a checkpoint's chat_template.jinja (our own, for the tests).
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
    "{% if m.content is string %}{{ m.content | trim }}{% else %}{% for p in m.content %}"
    "{% if p.type == 'text' %}{{ p.text | trim }}{% elif p.type == 'image' %}\n\n<|image|>\n\n"
    "{% elif p.type == 'audio' %}<|audio|>{% elif p.type == 'video' %}<|video|>{% endif %}{% endfor %}{% endif %}"
    "<turn|>\n{% endfor %}{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)
