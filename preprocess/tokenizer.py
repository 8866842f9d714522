"""The Gemma tokenizer with its control tokens (spec §1.6, §12), loaded from a checkpoint's files.

Two formats hold the same tokenizer: ``tokenizer.json`` (Hugging Face ``tokenizers``: what every published Gemma 4
checkpoint ships, and what transformers, vLLM, llama.cpp's converter and mlx-vlm read) and ``tokenizer.model``
(SentencePiece: Google's JAX tooling, and the toy tokenizers of older test data). ``tokenizer.json`` is read with
the ``tokenizers`` library itself, so token ids and decoded text are those of the reference.

Every control token is looked up by its string at load time; none is hard-coded, and a missing one is an error
naming it. Text is encoded the way Hugging Face tokenizers treat added tokens: control strings are cut out first
and every stretch of text between them is encoded on its own.

``encode(text)`` never produces a control token from the text: a user who types ``<|image|>`` gets the
characters ``<``, ``|``, ``image`` … and no placeholder. Only ``encode(text, allow_special=True)`` (used for
what the chat template itself writes) turns the format's control strings (:data:`SPECIAL_STRINGS`) into their ids.
The control ids are those of :data:`SPECIAL_STRINGS` and, in a ``tokenizer.json``, every other added token marked
special (``<mask>``, unused slots …): user text never yields any of them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["SpecialTokens", "Tokenizer", "SPECIAL_STRINGS", "MissingSpecialTokenError", "TOKENIZER_FILES"]

# Role → string. Order matters only for documentation; lookups go by string.
SPECIAL_STRINGS: dict[str, str] = {
    "pad": "<pad>",
    "eos": "<eos>",
    "bos": "<bos>",
    "turn_start": "<|turn>",
    "turn_end": "<turn|>",
    "boi": "<|image>",
    "eoi": "<image|>",
    "image": "<|image|>",
    "boa": "<|audio>",
    "eoa": "<audio|>",
    "audio": "<|audio|>",
    "video": "<|video|>",
    "channel_start": "<|channel>",
    "channel_end": "<channel|>",
    "think": "<|think|>",
    "tool_start": "<|tool>",
    "tool_end": "<tool|>",
    "tool_call_start": "<|tool_call>",
    "tool_call_end": "<tool_call|>",
    "tool_response_start": "<|tool_response>",
    "tool_response_end": "<tool_response|>",
    "string_delimiter": '<|"|>',
}

TOKENIZER_BYTES = 256 << 20  # a tokenizer file (the published tokenizer.json is 32 MB)

# The files a checkpoint directory may hold its tokenizer in, the first found wins (see Tokenizer.from_pretrained).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class MissingSpecialTokenError(ValueError):
    """The tokenizer lacks a control token the Gemma 4 format needs."""


@dataclass(frozen=True, kw_only=True)
class SpecialTokens:
    """Ids of the control tokens, as found in one tokenizer."""

    pad: int
    eos: int
    bos: int
    turn_start: int
    turn_end: int
    boi: int
    eoi: int
    image: int
    boa: int
    eoa: int
    audio: int
    video: int
    channel_start: int
    channel_end: int
    think: int
    tool_start: int
    tool_end: int
    tool_call_start: int
    tool_call_end: int
    tool_response_start: int
    tool_response_end: int
    string_delimiter: int

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Generation stops at any of these: end of sequence, end of turn, a tool call's response opener."""
        return (self.eos, self.turn_end, self.tool_response_start)

    def ids(self) -> frozenset[int]:
        return frozenset(getattr(self, f.name) for f in fields(self))


class _SentencePiece:
    """``tokenizer.model``: a SentencePiece model."""

    kind = "SentencePiece model"

    def __init__(self, data: bytes, source: str) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(data)
        except (RuntimeError, OSError) as exc:
            raise ValueError(f"{source}: not a SentencePiece model ({exc})") from exc
        self.vocab_size = self.sp.GetPieceSize()
        self.other_controls: dict[str, int] = {}  # SentencePiece never matches its control pieces in text

    def piece_id(self, piece: str) -> int | None:
        token_id = self.sp.PieceToId(piece)
        return token_id if self.sp.IdToPiece(token_id) == piece else None  # unknown pieces map to <unk>

    def piece(self, token_id: int) -> str:
        return self.sp.IdToPiece(token_id)

    def encode(self, text: str) -> list[int]:
        return self.sp.EncodeAsIds(text)

    def encode_with_offsets(self, text: str) -> tuple[list[int], None]:
        return self.sp.EncodeAsIds(text), None

    def decode(self, ids: list[int]) -> str:
        return self.sp.DecodeIds(ids)


class _TokenizersJson:
    """``tokenizer.json``: a Hugging Face ``tokenizers`` file, read by that library."""

    kind = "tokenizer.json"

    def __init__(self, data: bytes, source: str) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        try:
            self.tk = HfTokenizer.from_str(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, Exception) as exc:  # tokenizers raises a bare Exception
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ValueError(f"{source}: not a tokenizers file ({first})") from None
        self.vocab_size = self.tk.get_vocab_size(with_added_tokens=True)
        self.other_controls = {t.content: i for i, t in self.tk.get_added_tokens_decoder().items() if t.special}

    def piece_id(self, piece: str) -> int | None:
        return self.tk.token_to_id(piece)

    def piece(self, token_id: int) -> str:
        return self.tk.id_to_token(token_id)

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = self.tk.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def decode(self, ids: list[int]) -> str:
        return self.tk.decode(ids, skip_special_tokens=False)


class Tokenizer:
    """A Gemma tokenizer (``tokenizer.json`` or ``tokenizer.model``) plus the Gemma 4 control tokens it must
    contain. Build it with :meth:`from_pretrained` (a checkpoint directory, a file, or a Hugging Face repo id),
    :meth:`from_json` or :meth:`from_sentencepiece`; ``Tokenizer(data)`` reads a SentencePiece model (a path or its
    bytes), as it always has."""

    def __init__(self, model: str | os.PathLike | bytes, *, kind: str = "sentencepiece") -> None:
        """``model``: the path of a tokenizer file, or its bytes; ``kind``: ``"sentencepiece"`` (a
        ``tokenizer.model``) or ``"json"`` (a ``tokenizer.json``)."""
        backend = {"sentencepiece": _SentencePiece, "json": _TokenizersJson}.get(kind)
        if backend is None:
            raise ValueError(f"kind must be 'sentencepiece' or 'json', got {kind!r}")
        label = backend.kind if kind == "json" else "tokenizer model"
        if isinstance(model, bytes):
            data, self.source = model, f"{label} ({len(model)} bytes)"
        else:
            from data_specs.checkpoint_dir import read_checkpoint_file

            # a regular file only (a FIFO or device refused without opening it), its size bounded
            data, self.source = (
                read_checkpoint_file(Path(model), limit=TOKENIZER_BYTES),
                f"{label} {os.fspath(model)!r}",
            )
        self._backend = backend(data, self.source)
        self.format = kind
        self.fingerprint = hashlib.sha256(data).hexdigest()[:16]  # of the very file that was read
        self.chat_template: str | None = None  # the checkpoint's template (see from_pretrained)
        ids = {}
        for role, string in SPECIAL_STRINGS.items():
            token_id = self._backend.piece_id(string)
            if token_id is None:
                raise MissingSpecialTokenError(f"{self.source}: has no control token {string!r} ({role})")
            ids[role] = token_id
        self.special = SpecialTokens(**ids)
        self._string_to_id = {s: ids[role] for role, s in SPECIAL_STRINGS.items()}
        self._control_strings = {**self._backend.other_controls, **self._string_to_id}  # string → id
        self._special_ids = frozenset(self._control_strings.values())
        strings = sorted(SPECIAL_STRINGS.values(), key=len, reverse=True)  # longest first: no prefix shadowing
        self._special_re = re.compile("|".join(re.escape(s) for s in strings))

    @classmethod
    def from_json(cls, path: str | os.PathLike | bytes) -> Tokenizer:
        """A ``tokenizer.json`` file (a path or its bytes)."""
        return cls(path, kind="json")

    @classmethod
    def from_sentencepiece(cls, path: str | os.PathLike | bytes) -> Tokenizer:
        """A SentencePiece ``tokenizer.model`` (a path or its bytes)."""
        return cls(path, kind="sentencepiece")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """A checkpoint's tokenizer: ``path`` is its directory, a tokenizer file (``*.json`` is read as
        ``tokenizer.json``, anything else as a SentencePiece model), or a Hugging Face repo id found in the local
        hub cache (``data_specs.checkpoint_dir.resolve_checkpoint``).

        A directory holding both files is read through ``tokenizer.json``: it is the file every published
        checkpoint ships and the one transformers and vLLM read, so ids are theirs by construction;
        ``tokenizer.model`` is read only where there is no ``tokenizer.json`` (whether Google's SentencePiece
        model encodes exactly as the published ``tokenizer.json`` is unverified, spec §12).

        The chat template is the checkpoint's ``chat_template.jinja`` beside the file, else the ``chat_template``
        of its ``tokenizer_config.json`` (``data_specs.checkpoint_dir.chat_template``); None means the built-in
        layout. ``FileNotFoundError`` for a missing path or a directory with neither file, ``ValueError`` for a
        file that is not a tokenizer (a FIFO or device is refused without being opened)."""
        from data_specs.checkpoint_dir import chat_template, resolve_checkpoint

        given = Path(path)
        if given.is_file():
            file = given
        elif given.exists() and not given.is_dir():
            raise ValueError(f"tokenizer {os.fspath(path)!r} is neither a directory nor a regular file")
        else:
            directory = resolve_checkpoint(path)
            file = next((directory / name for name in TOKENIZER_FILES if (directory / name).is_file()), None)
            if file is None:
                raise FileNotFoundError(
                    f"{os.fspath(path)!r} has no tokenizer: neither {' nor '.join(TOKENIZER_FILES)} is there"
                )
        tokenizer = cls(file, kind="json" if file.suffix == ".json" else "sentencepiece")
        tokenizer.chat_template = chat_template(file.parent)
        return tokenizer

    @functools.cached_property
    def byte_ids(self) -> frozenset[int]:
        """Ids of the byte-fallback tokens ``<0x00>`` … ``<0xFF>`` (a run of them decodes as one UTF-8 sequence)."""
        found = (self._backend.piece_id(f"<0x{value:02X}>") for value in range(256))
        return frozenset(i for i in found if i is not None)

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can produce or decode (added tokens included)."""
        return self._backend.vocab_size

    def is_special(self, token_id: int) -> bool:
        """Whether ``token_id`` is a control token (one user text never yields)."""
        return token_id in self._special_ids

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of ``text`` (no ``<bos>``). Control strings become control ids only if ``allow_special``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not allow_special:
            return self._encode_plain(text)
        ids: list[int] = []
        position = 0
        for match in self._special_re.finditer(text):
            ids += self._encode_plain(text[position : match.start()])
            ids.append(self._string_to_id[match.group()])
            position = match.end()
        return ids + self._encode_plain(text[position:])

    def _encode_plain(self, text: str) -> list[int]:
        """Encode text that must yield no control id, even where the tokenizer would match a control string
        inside it: each control string found is split after its first character, and the pieces are encoded
        one by one (the same segment-wise encoding tokenizers apply around added tokens)."""
        if not text:
            return []
        ids, offsets = self._backend.encode_with_offsets(text)
        if offsets is None:  # SentencePiece: cut at every occurrence of every control string, then encode
            cuts = sorted({start + 1 for string in self._control_strings for start in _find_all(string, text)})
        elif not any(i in self._special_ids for i in ids):
            return ids  # the common case: one call, the reference's ids
        else:  # cut where the tokenizer matched a control string, and encode the pieces again
            cuts = sorted({start + 1 for i, (start, _) in zip(ids, offsets, strict=True) if i in self._special_ids})
        ids = []
        start = 0
        for cut in [*cuts, len(text)]:
            if cut > start:
                piece = text[start:cut]
                ids += self._backend.encode(piece) if offsets is None else self._encode_plain(piece)
                start = cut
        assert not any(i in self._special_ids for i in ids), text
        return ids

    def decode(self, ids: list[int], *, skip_special: bool = False) -> str:
        """Text of ``ids``; control tokens appear as their strings unless ``skip_special``."""
        out: list[str] = []
        run: list[int] = []
        for token_id in ids:
            if token_id in self._special_ids:
                out.append(self._backend.decode(run))
                run = []
                if not skip_special:
                    out.append(self._backend.piece(token_id))
            else:
                run.append(int(token_id))
        out.append(self._backend.decode(run))
        return "".join(out)

    def token_to_id(self, piece: str) -> int:
        token_id = self._backend.piece_id(piece)
        if token_id is None:
            raise KeyError(f"{self.source}: no token {piece!r}")
        return token_id


def _find_all(needle: str, text: str):
    """Start indices of every occurrence of ``needle`` in ``text``, overlapping ones included."""
    start = text.find(needle)
    while start != -1:
        yield start
        start = text.find(needle, start + 1)
