"""OpenAI chat content parts, and transformers' ``url``/``path`` media parts → the part form of
:mod:`preprocess.chat` (the content side of spec §5.4's messages).

Most datasets and batch files hold OpenAI-style parts. :func:`normalize_part` turns each into ours:

* ``{"type": "image_url", "image_url": {"url": URL, "detail"?: …}}`` (or ``"image_url": URL``) →
  ``{"type": "image", "image": bytes | path}``; ``audio_url`` and ``video_url`` (the vLLM extension, same shape)
  → ``audio`` and ``video`` parts;
* ``{"type": "input_audio", "input_audio": {"data": BASE64, "format": "wav" | "mp3" | …}}`` →
  ``{"type": "audio", "audio": bytes}``;
* transformers' chat form of our own media parts, ``{"type": "image" | "audio" | "video", "url": URL}`` or
  ``{…, "path": PATH}`` → ``{"type": KIND, KIND: bytes | path}`` (a ``path`` is taken as written, never as a
  URL). A part that gives its data twice (two of ``KIND``, ``url``, ``path`` not None) is refused.

URLs: ``data:<type>/<subtype>;base64,…`` gives the decoded bytes (the MIME type must be of the part's medium);
``file:///abs/path``, ``file://localhost/abs/path`` and ``file:rel/path`` give the path, percent-decoded; a
string without a scheme is a path as written (a one-letter "scheme" is a Windows drive). Relative paths stay
relative: the caller resolves them (``data_specs.manifest.resolve_media`` against the manifest's folder, under
``--media-root``). Any other scheme (http, https, ftp, s3, gs, …) is refused, never fetched: preprocessing reads
no network, and a row must mean the same bytes every time it is run.

Other keys of the part (our per-part options, e.g. ``"budget"``) are kept. ``detail`` is dropped: the image
budget is this model's resolution knob, and OpenAI's detail levels do not map onto it. Parts of our own types
with their data under their own key, and anything this module does not convert, come back unchanged, for the
renderer to validate.

Every error is a :class:`preprocess.errors.ChatFormatError` naming the part (``where``); it never quotes the
data (a data URL may be megabytes): at most the URL's scheme or a data URL's header, cut to 40 characters.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from .errors import ChatFormatError

__all__ = ["OPENAI_PART_TYPES", "normalize_part"]

# OpenAI part type → (our part type, the MIME major type its data URLs must carry).
_URL_PARTS = {"image_url": "image", "audio_url": "audio", "video_url": "video"}
OPENAI_PART_TYPES = (*_URL_PARTS, "input_audio")
_MEDIA_KINDS = tuple(_URL_PARTS.values())
_LOCATORS = ("url", "path")  # transformers' keys for where a media part's data is
# Containers the audio decoder reads (``preprocess.audio_io``). Raw PCM (OpenAI's "pcm16") has no header to
# give its rate and sample format, so it is refused rather than guessed.
_AUDIO_FORMATS = frozenset({"wav", "mp3", "flac", "ogg", "oga", "opus", "webm", "m4a", "mp4", "aac", "aiff", "aif"})
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")  # two characters at least: "C:" is a drive
_QUOTE = 40  # characters of a URL's head an error message may show


def _head(text: str) -> str:
    return repr(text[:_QUOTE] + ("…" if len(text) > _QUOTE else ""))


def _decode_base64(data: str, where: str, what: str) -> bytes:
    """Strict base64 (standard alphabet, padding required; line breaks and spaces allowed, as in MIME)."""
    try:
        return binascii.a2b_base64("".join(data.split()), strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: characters outside ASCII
        raise ChatFormatError(f"{where}: {what} is not valid base64") from None


def _from_data_url(url: str, kind: str, where: str) -> bytes:
    header, comma, data = url.partition(",")
    if not comma:
        raise ChatFormatError(f"{where}: the data URL {_head(header)} has no ',' before its data")
    mime, *params = header[len("data:") :].split(";")
    mime = mime.strip().lower()
    if not mime.startswith(f"{kind}/"):
        raise ChatFormatError(
            f"{where}: the data URL {_head(header)} is of type {_head(mime or 'text/plain')}; this {kind} part "
            f"needs one of type {kind}/*"
        )
    if [p.strip().lower() for p in params][-1:] != ["base64"]:
        raise ChatFormatError(f"{where}: the data URL {_head(header)} is not base64 (';base64,' before the data)")
    return _decode_base64(data, where, "the data URL's data")


def _from_url(url: str, kind: str, where: str) -> bytes | str:
    """A data URL's bytes, or a path (``file:`` URL or plain path); a ChatFormatError for any other scheme."""
    scheme = _SCHEME_RE.match(url)
    if scheme is None:
        if not url:
            raise ChatFormatError(f"{where}: the {kind} URL is empty")
        return url  # a plain path
    name = scheme.group(1).lower()
    if name == "data":
        return _from_data_url(url, kind, where)
    if name == "file":
        rest = url[scheme.end() :]
        if rest.startswith("//"):  # file://host/path: only the local host
            host, slash, path = rest[2:].partition("/")
            if host.lower() not in ("", "localhost"):
                raise ChatFormatError(
                    f"{where}: the file URL names the host {_head(host)}; only local files (file:///path) are read"
                )
            rest = slash + path
        if not rest:
            raise ChatFormatError(f"{where}: the file URL {_head(url)} names no file")
        return unquote(rest)
    raise ChatFormatError(
        f"{where}: a {name!r} URL ({_head(name + ':')}…) is remote media, which is never fetched; download it and "
        "give a path, a file: URL or a base64 data URL"
    )


def _url_part(part: Mapping[str, Any], key: str, where: str) -> dict:
    kind = _URL_PARTS[key]
    value = part.get(key)
    if isinstance(value, Mapping):
        value = value.get("url")
    if not isinstance(value, str):
        raise ChatFormatError(
            f"{where}: a {key} part needs {{{key!r}: {{'url': str}}}} or {{{key!r}: str}}, got {type(value).__name__}"
        )
    options = {k: v for k, v in part.items() if k not in ("type", key)}
    return {"type": kind, kind: _from_url(value, kind, where), **options}


def _input_audio(part: Mapping[str, Any], where: str) -> dict:
    value = part.get("input_audio")
    data = value.get("data") if isinstance(value, Mapping) else None
    if not isinstance(data, str):
        raise ChatFormatError(
            f"{where}: an input_audio part needs {{'input_audio': {{'data': base64 str, 'format': 'wav' | …}}}}"
        )
    fmt = value.get("format")
    if fmt is not None and (not isinstance(fmt, str) or fmt.strip().lower() not in _AUDIO_FORMATS):
        shown = _head(fmt) if isinstance(fmt, str) else type(fmt).__name__
        raise ChatFormatError(
            f"{where}: input_audio format {shown} is not one of {', '.join(sorted(_AUDIO_FORMATS))} (raw PCM has no "
            "header to give its rate: wrap it in WAV)"
        )
    if data[:5].lower() == "data:":
        audio = _from_data_url(data, "audio", where)
    else:
        audio = _decode_base64(data, where, "input_audio.data")
    options = {k: v for k, v in part.items() if k not in ("type", "input_audio")}
    return {"type": "audio", "audio": audio, **options}


def _located_part(part: Mapping[str, Any], kind: str, where: str) -> dict:
    """``{"type": KIND, "url" | "path": …}`` → ``{"type": KIND, KIND: …}``."""
    given = [key for key in (kind, *_LOCATORS) if part.get(key) is not None]
    if len(given) > 1:
        raise ChatFormatError(
            f"{where}: this {kind} part gives its data twice ({' and '.join(map(repr, given))}); give one of "
            f"{kind!r}, 'url' or 'path'"
        )
    options = {k: v for k, v in part.items() if k not in ("type", kind, *_LOCATORS)}
    if given == ["url"]:
        url = part["url"]
        if not isinstance(url, str):
            raise ChatFormatError(f"{where}: the {kind} part's 'url' must be a string, got {type(url).__name__}")
        return {"type": kind, kind: _from_url(url, kind, where), **options}
    path = part["path"]
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path:
        shown = "an empty string" if path == "" else type(path).__name__
        raise ChatFormatError(f"{where}: the {kind} part's 'path' must be a non-empty string, got {shown}")
    return {"type": kind, kind: path, **options}


def normalize_part(part: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """One content part in our form: an OpenAI part (``image_url``, ``input_audio``, ``audio_url``,
    ``video_url``) or a media part located by ``url`` or ``path`` becomes a new dict; any other part is returned
    as it is (the same object), valid or not. ``where`` names the part in errors, e.g.
    ``"messages[1].content[2]"``. Raises :class:`ChatFormatError` for a remote URL, a malformed one, invalid
    base64, a data URL of another medium, or a part that gives its data twice."""
    if not isinstance(part, Mapping):
        return part
    kind = part.get("type")
    if kind in _URL_PARTS:
        return _url_part(part, kind, where)
    if kind == "input_audio":
        return _input_audio(part, where)
    if kind in _MEDIA_KINDS and any(part.get(key) is not None for key in _LOCATORS):
        return _located_part(part, kind, where)
    return part
