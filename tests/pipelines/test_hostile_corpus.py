"""``gemma4 preprocess`` over a corpus of hostile rows: every row ends in the examples or the errors table, the job
exits cleanly (no traceback), nothing hangs, and no process grows past a bound.

The corpus holds what an adversarial pass fed the job: FIFOs, memory bombs (a WAV at 1 Hz, a FLAC header claiming
two hours of 48 kHz stereo, a 13 000² 1-bit PNG, 300 images in a row, 100 000 video frames), a JPEG sent as a video,
a symlink loop, paths outside the manifest's folder, unparsable and over-deep lines, huge integers, lone
surrogates, a non-integer sample rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.sample_data import synthetic_image, write_sample_dataset, write_video

pytestmark = pytest.mark.slow

MEMORY_BOUND_MB = 1500  # per process; each bomb alone needs more than 1.6 GB


def user(*parts) -> list:
    return [{"role": "user", "content": list(parts)}]


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def media(kind: str, value, **options) -> dict:
    return {"type": kind, kind: value, **options}


def wav_at_one_hertz(path: Path) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(1)
        w.writeframes(bytes(40_000))


def flac_claiming_two_hours(path: Path) -> None:
    """A FLAC of 48 kHz stereo whose STREAMINFO claims two hours (the 36-bit total in bytes 18…25): what a real
    1.4 MB file of two silent hours tells the decoder, without spending a minute encoding one."""
    import io

    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros((64, 2)), 48_000, format="FLAC", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    packed = int.from_bytes(data[18:26], "big")
    data[18:26] = ((packed & ~((1 << 36) - 1)) | 7200 * 48_000).to_bytes(8, "big")
    path.write_bytes(bytes(data))


def build_corpus(directory: Path) -> tuple[Path, Path, int]:
    """(manifest, tokenizer, number of rows)."""
    manifest, tokenizer = write_sample_dataset(directory, rows=2)
    media_dir = directory / "hostile"
    media_dir.mkdir()
    for name in ("image.fifo", "audio.fifo", "video.fifo"):
        os.mkfifo(media_dir / name)
    wav_at_one_hertz(media_dir / "one-hertz.wav")
    flac_claiming_two_hours(media_dir / "two-hours.flac")
    Image.new("1", (13_000, 13_000)).save(media_dir / "huge.png", optimize=True)
    Image.fromarray(synthetic_image(64, 64)).save(media_dir / "small.png")
    Image.fromarray(synthetic_image(96, 128)).save(media_dir / "still.jpg")
    write_video(media_dir / "clip.mp4", frames=8, seed=0)
    (media_dir / "loop-a.png").symlink_to("loop-b.png")
    (media_dir / "loop-b.png").symlink_to("loop-a.png")
    deep: object = "x"
    for _ in range(600):
        deep = {"k": deep}
    rows = [
        {"id": "ok-text", "messages": user(text("Describe <|image|> and <turn|> literally."))},
        {"id": "ok-image", "messages": user(media("image", "hostile/small.png"), text("What is it?"))},
        {"id": "fifo-image", "messages": user(media("image", "hostile/image.fifo"))},
        {"id": "fifo-audio", "messages": user(media("audio", "hostile/audio.fifo"))},
        {"id": "fifo-video", "messages": user(media("video", "hostile/video.fifo"))},
        {"id": "one-hertz", "messages": user(media("audio", "hostile/one-hertz.wav"))},
        {"id": "two-hours", "messages": user(media("audio", "hostile/two-hours.flac"))},
        {"id": "huge-png", "messages": user(media("image", "hostile/huge.png"))},
        {"id": "300-images", "messages": user(*[media("image", "hostile/small.png")] * 300)},
        {"id": "100k-frames", "messages": user(media("video", "hostile/clip.mp4", num_frames=100_000))},
        {"id": "jpeg-video", "messages": user(media("video", "hostile/still.jpg"))},
        {"id": "symlink-loop", "messages": user(media("image", "hostile/loop-a.png"))},
        {"id": "passwd", "messages": user(media("image", "/etc/passwd"))},
        {"id": "dotdot", "messages": user(media("image", "../../../../etc/hostname"))},
        {"id": "missing", "messages": user(media("image", "hostile/nothing.png"))},
        {"id": "rate", "messages": user(media("audio", {"array": [0.0] * 1600, "sampling_rate": 16000.7}))},
        {"id": "deep-key", "messages": [{"role": "user", "content": "hi", "x": deep}]},
        {"id": "no-messages", "messages": []},
        '{"id": "deep-json", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"id": ' + "9" * 5000 + ', "messages": []}',
        '{"id": "budget", "messages": [{"role": "user", "content": [{"type": "image", "image": "hostile/small.png", '
        '"budget": ' + "7" * 5000 + "}]}]}",
        '{"id": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}',
        "{not json",
    ]
    with open(manifest, "a") as fp:
        for row in rows:
            fp.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    count = sum(1 for line in manifest.read_text().splitlines() if line.strip())
    return manifest, tokenizer, count


MEASURE = """
import resource, subprocess, sys
result = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=300)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print(result.returncode, peak)
print(result.stdout)
print(result.stderr, file=sys.stderr)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_every_hostile_row_is_accounted_for_with_bounded_memory(tmp_path):
    manifest, tokenizer, count = build_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipelines.cli", "preprocess", str(manifest), str(out)]
    command += ["--tokenizer", str(tokenizer), "--workers", "2", "--rows-per-shard", "4"]
    measured = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, timeout=400)
    first, *stdout = measured.stdout.splitlines()
    returncode, peak_mb = map(int, first.split())
    assert returncode == 0, measured.stderr
    assert "Traceback" not in measured.stderr, measured.stderr
    assert peak_mb < MEMORY_BOUND_MB, f"a process of the job reached {peak_mb} MB"

    examples = pq.read_table(out / "examples", columns=["id"])["id"].to_pylist()
    errors = pq.read_table(out / "errors").to_pylist()
    assert len(examples) + len(errors) == count
    assert sorted(e["row"] for e in errors) == sorted(set(e["row"] for e in errors))
    assert {"ok-text", "ok-image"} <= set(examples)
    stages = {e["id"]: e["stage"] for e in errors}
    assert "internal" not in stages.values() and "worker" not in stages.values(), stages
    for row_id in ("fifo-image", "fifo-audio", "fifo-video", "one-hertz", "two-hours", "huge-png", "300-images",
                   "100k-frames", "jpeg-video", "symlink-loop", "passwd", "missing", "rate", "deep-key"):  # fmt: skip
        assert row_id in stages, (row_id, stages)
    for error in errors:
        assert "root:" not in error["message"] and "b'" not in error["message"], error  # no file contents
    assert np.all([len(e["message"]) < 2100 for e in errors])
