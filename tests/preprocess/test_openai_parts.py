"""OpenAI content parts → ours: data URLs, file URLs and paths converted; remote URLs and bad data refused by name."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile
from PIL import Image

from pipelines.sample_data import synthetic_image, synthetic_speech
from preprocess.errors import ChatFormatError
from preprocess.openai_parts import normalize_part

WHERE = "messages[1].content[2]"


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.fromarray(synthetic_image(24, 32)).save(out, format="PNG")
    return out.getvalue()


def wav_bytes() -> bytes:
    out = io.BytesIO()
    soundfile.write(out, synthetic_speech(0.5), 16_000, format="WAV")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.mark.parametrize(
    "part",
    [
        {"type": "text", "text": "hi"},
        {"type": "image", "image": "a.png", "budget": 70},
        {"type": "audio", "audio": b"RIFF"},
        {"type": "video", "video": "v.mp4", "num_frames": 4},
        {"type": "something else"},  # not ours to judge: the renderer names it
        "not a mapping",
    ],
)
def test_our_parts_and_unknown_ones_come_back_unchanged(part):
    assert normalize_part(part, WHERE) is part


def test_image_data_url_becomes_bytes_and_options_are_kept():
    data = png_bytes()
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(data)}", "detail": "high"}}
    assert normalize_part(dict(part, budget=560), WHERE) == {"type": "image", "image": data, "budget": 560}
    assert normalize_part({"type": "image_url", "image_url": f"data:IMAGE/PNG;BASE64,{b64(data)}"}, WHERE) == {
        "type": "image",
        "image": data,
    }
    wrapped = "\n".join(b64(data)[i : i + 76] for i in range(0, len(b64(data)), 76))  # MIME line breaks
    assert (
        normalize_part({"type": "image_url", "image_url": f"data:image/png;base64,{wrapped}"}, WHERE)["image"] == data
    )


@pytest.mark.parametrize(
    "url, path",
    [
        ("file:///abs/dir/cat%20one.png", "/abs/dir/cat one.png"),
        ("file://localhost/abs/cat.png", "/abs/cat.png"),
        ("FILE:/abs/cat.png", "/abs/cat.png"),
        ("file:images/cat.png", "images/cat.png"),
        ("images/cat%20one.png", "images/cat%20one.png"),  # a plain path is taken as written
        ("/abs/cat.png", "/abs/cat.png"),
        ("C:\\pictures\\cat.png", "C:\\pictures\\cat.png"),  # a drive letter, not a scheme
    ],
)
def test_file_urls_and_plain_paths_become_paths(url, path):
    assert normalize_part({"type": "image_url", "image_url": {"url": url}}, WHERE) == {"type": "image", "image": path}


def test_input_audio_becomes_bytes():
    data = wav_bytes()
    part = {"type": "input_audio", "input_audio": {"data": b64(data), "format": "wav"}, "max_duration_s": 60}
    assert normalize_part(part, WHERE) == {"type": "audio", "audio": data, "max_duration_s": 60}
    as_url = {"type": "input_audio", "input_audio": {"data": f"data:audio/wav;base64,{b64(data)}"}}
    assert normalize_part(as_url, WHERE) == {"type": "audio", "audio": data}


def test_audio_and_video_urls_become_audio_and_video_parts():
    data = wav_bytes()
    assert normalize_part(
        {"type": "audio_url", "audio_url": {"url": f"data:audio/x-wav;base64,{b64(data)}"}}, WHERE
    ) == {
        "type": "audio",
        "audio": data,
    }
    video = {"type": "video_url", "video_url": {"url": "file:///v/clip.mp4"}, "num_frames": 8}
    assert normalize_part(video, WHERE) == {"type": "video", "video": "/v/clip.mp4", "num_frames": 8}


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/cat.png",
        "https://user:secret@example.com/cat.png?token=abc",
        "ftp://example.com/cat.png",
        "s3://bucket/cat.png",
        "gs://bucket/cat.png",
        "hf://datasets/x/cat.png",
        "file://otherhost/cat.png",
    ],
)
def test_remote_urls_are_refused_naming_the_part_and_never_fetched(url, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ChatFormatError, match=r"messages\[1\]\.content\[2\]") as info:
        normalize_part({"type": "image_url", "image_url": {"url": url}}, WHERE)
    message = str(info.value)
    assert "remote" in message or "only local files" in message
    assert "secret" not in message and "token" not in message  # credentials in a URL are not repeated


BIG = "A" * 3_000_000  # 2.25 MB of valid base64 characters


@pytest.mark.parametrize(
    "part, problem",
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,abc$" + BIG}}, "not valid base64"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64," + BIG + "A"}}, "not valid base64"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,Zü=="}}, "not valid base64"),
        ({"type": "image_url", "image_url": {"url": "data:image/png," + BIG}}, "not base64"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64" + BIG}}, "has no ','"),
        ({"type": "image_url", "image_url": {"url": "data:text/html;base64," + BIG}}, "'text/html'"),
        ({"type": "image_url", "image_url": {"url": "data:;base64," + BIG}}, "'text/plain'"),
        ({"type": "image_url", "image_url": {"url": "data:audio/wav;base64," + BIG}}, "needs one of type image/*"),
        ({"type": "audio_url", "audio_url": {"url": "data:image/png;base64," + BIG}}, "needs one of type audio/*"),
        ({"type": "image_url", "image_url": {"url": ""}}, "URL is empty"),
        ({"type": "image_url", "image_url": {"url": "file://"}}, "names no file"),
        ({"type": "image_url", "image_url": {"detail": "low"}}, "needs {'image_url'"),
        ({"type": "image_url", "image_url": b"\x89PNG" + BIG.encode()}, "got bytes"),
        ({"type": "input_audio", "input_audio": {"data": "abc$" + BIG, "format": "wav"}}, "not valid base64"),
        ({"type": "input_audio", "input_audio": {"data": BIG, "format": "pcm16"}}, "'pcm16'"),
        ({"type": "input_audio", "input_audio": {"data": BIG, "format": 3}}, "int is not one of"),
        ({"type": "input_audio", "input_audio": "RIFF" + BIG}, "needs {'input_audio'"),
        ({"type": "input_audio", "input_audio": {"data": "data:image/png;base64," + BIG}}, "needs one of type audio/*"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 30 else None,
)
def test_bad_parts_are_named_without_quoting_their_data(part, problem):
    with pytest.raises(ChatFormatError, match=r"^messages\[1\]\.content\[2\]: ") as info:
        normalize_part(part, WHERE)
    message = str(info.value)
    assert problem in message
    assert len(message) < 400 and "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" not in message


def test_the_part_given_is_not_modified():
    part = {"type": "image_url", "image_url": {"url": "file:///a.png", "detail": "low"}, "budget": 70}
    before = {"type": "image_url", "image_url": {"url": "file:///a.png", "detail": "low"}, "budget": 70}
    normalize_part(part, WHERE)
    assert part == before


def test_decoded_image_and_audio_are_what_was_encoded():
    from preprocess.audio_io import load_audio
    from preprocess.image_io import load_image

    image = normalize_part({"type": "image_url", "image_url": f"data:image/png;base64,{b64(png_bytes())}"}, WHERE)
    assert np.array_equal(np.asarray(load_image(image["image"])), synthetic_image(24, 32))
    audio = normalize_part({"type": "input_audio", "input_audio": {"data": b64(wav_bytes()), "format": "wav"}}, WHERE)
    assert load_audio(audio["audio"]).shape == (8000,)


# --- transformers' media parts located by url or path ----------------------------------------------------------


@pytest.mark.parametrize(
    "part, expected",
    [
        ({"type": "image", "url": "file:///abs/cat%20one.png"}, {"type": "image", "image": "/abs/cat one.png"}),
        (
            {"type": "image", "url": "pictures/cat.png", "budget": 70},
            {"type": "image", "image": "pictures/cat.png", "budget": 70},
        ),
        ({"type": "image", "path": "x.png"}, {"type": "image", "image": "x.png"}),
        ({"type": "image", "path": "cat%20one.png"}, {"type": "image", "image": "cat%20one.png"}),  # a path, as written
        ({"type": "audio", "url": f"data:audio/wav;base64,{b64(b'RIFF')}"}, {"type": "audio", "audio": b"RIFF"}),
        ({"type": "audio", "path": "/a/q.flac"}, {"type": "audio", "audio": "/a/q.flac"}),
        (
            {"type": "video", "url": "file:clips/v.mp4", "num_frames": 8},
            {"type": "video", "video": "clips/v.mp4", "num_frames": 8},
        ),
        ({"type": "video", "path": "v.mp4"}, {"type": "video", "video": "v.mp4"}),
        # Arrow struct columns fill the keys a row lacks with None: those give no data
        ({"type": "image", "image": None, "url": None, "path": "y.png"}, {"type": "image", "image": "y.png"}),
    ],
    ids=lambda value: value["type"] + " " + ",".join(k for k in value if k != "type") if "type" in value else None,
)
def test_media_parts_located_by_url_or_path_become_ours(part, expected):
    before = dict(part)
    assert normalize_part(part, WHERE) == expected
    assert part == before


def test_media_parts_with_their_data_and_no_locator_come_back_unchanged():
    part = {"type": "image", "image": "a.png", "url": None, "path": None}
    assert normalize_part(part, WHERE) is part


@pytest.mark.parametrize(
    "url", ["http://example.com/cat.png", "https://user:secret@example.com/a.png?token=abc", "s3://bucket/cat.png"]
)
@pytest.mark.parametrize("kind", ["image", "audio", "video"])
def test_remote_urls_of_media_parts_are_refused_and_never_fetched(kind, url, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(
        ChatFormatError, match=r"^messages\[1\]\.content\[2\]: a '(http|https|s3)' URL .* never fetched"
    ) as info:
        normalize_part({"type": kind, "url": url}, WHERE)
    assert "secret" not in str(info.value) and "token" not in str(info.value)


@pytest.mark.parametrize(
    "part, problem",
    [
        (
            {"type": "image", "image": "a.png", "path": "b.png"},
            "this image part gives its data twice ('image' and 'path')",
        ),
        (
            {"type": "audio", "audio": b"RIFF", "url": "a.wav"},
            "this audio part gives its data twice ('audio' and 'url')",
        ),
        ({"type": "video", "url": "v.mp4", "path": "v.mp4"}, "this video part gives its data twice ('url' and 'path')"),
        ({"type": "image", "url": b"\x89PNG" + BIG.encode()}, "the image part's 'url' must be a string, got bytes"),
        ({"type": "image", "path": ""}, "the image part's 'path' must be a non-empty string, got an empty string"),
        ({"type": "image", "path": b"x.png"}, "the image part's 'path' must be a non-empty string, got bytes"),
        ({"type": "image", "url": "file://otherhost/cat.png"}, "only local files"),
        ({"type": "image", "url": ""}, "the image URL is empty"),
        ({"type": "audio", "url": "data:image/png;base64," + BIG}, "needs one of type audio/*"),
        ({"type": "image", "url": "data:image/png;base64,abc$" + BIG}, "not valid base64"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 30 else None,
)
def test_bad_located_media_parts_are_named_without_quoting_their_data(part, problem):
    with pytest.raises(ChatFormatError, match=r"^messages\[1\]\.content\[2\]: ") as info:
        normalize_part(part, WHERE)
    assert problem in str(info.value)
    assert len(str(info.value)) < 400 and "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" not in str(info.value)
