"""The Gemma SentencePiece tokenizer with its control tokens (spec §1.6), loaded from a checkpoint's files.

Every control token is looked up by its string in the loaded model at load time; none is hard-coded, and a
missing one is an error naming it. Text is encoded the way Hugging Face tokenizers treat added tokens:
control strings are cut out first and every stretch of text between them is encoded on its own.

``encode(text)`` never produces a control token from the text: a user who types ``<|image|>`` gets the
characters ``<``, ``|``, ``image`` … and no placeholder. Only ``encode(text, allow_special=True)`` (used for
what the chat template itself writes) turns control strings into their ids.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

import sentencepiece as spm

__all__ = ["SpecialTokens", "Tokenizer", "SPECIAL_STRINGS", "MissingSpecialTokenError"]

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


class MissingSpecialTokenError(ValueError):
    """The tokenizer model lacks a control token the Gemma 4 format needs."""


@dataclass(frozen=True, kw_only=True)
class SpecialTokens:
    """Ids of the control tokens, as found in one tokenizer model."""

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


class Tokenizer:
    """A SentencePiece model plus the Gemma 4 control tokens it must contain."""

    def __init__(self, model: str | os.PathLike | bytes) -> None:
        """``model``: the path of a ``tokenizer.model`` file, or its bytes."""
        if isinstance(model, bytes):
            data, self.source = model, f"tokenizer model ({len(model)} bytes)"
        else:
            data, self.source = Path(model).read_bytes(), f"tokenizer model {os.fspath(model)!r}"
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(data)
        except (RuntimeError, OSError) as exc:
            raise ValueError(f"{self.source}: not a SentencePiece model ({exc})") from exc
        self.fingerprint = hashlib.sha256(data).hexdigest()[:16]
        self.chat_template: str | None = None  # a checkpoint's chat_template.jinja (see from_pretrained)
        ids = {}
        for role, string in SPECIAL_STRINGS.items():
            token_id = self._sp.PieceToId(string)
            if self._sp.IdToPiece(token_id) != string:  # unknown pieces map to <unk>
                raise MissingSpecialTokenError(f"{self.source}: has no control token {string!r} ({role})")
            ids[role] = token_id
        self.special = SpecialTokens(**ids)
        self._special_ids = self.special.ids()
        strings = sorted(SPECIAL_STRINGS.values(), key=len, reverse=True)  # longest first: no prefix shadowing
        self._special_re = re.compile("|".join(re.escape(s) for s in strings))
        self._string_to_id = {s: ids[role] for role, s in SPECIAL_STRINGS.items()}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a checkpoint's tokenizer: ``path`` is its directory (holding ``tokenizer.model``) or the
        ``tokenizer.model`` file itself (any name). The ``chat_template.jinja`` beside the model, if present, is
        loaded either way (``chat_template``; prompts are then rendered with it instead of the built-in layout):
        a file path means that checkpoint's tokenizer, template included. ``FileNotFoundError`` for a missing path
        or a directory without ``tokenizer.model``, ``ValueError`` for anything else that is not a
        SentencePiece model (a FIFO or device is refused without being opened)."""
        given = Path(path)
        if given.is_dir():
            model = given / "tokenizer.model"
            if not model.is_file():
                extra = " (tokenizer.json alone is not read: the SentencePiece model is needed)"
                raise FileNotFoundError(
                    f"{os.fspath(path)!r} has no tokenizer.model{extra if (given / 'tokenizer.json').exists() else ''}"
                )
        elif given.is_file():
            model = given
        elif given.exists():
            raise ValueError(f"tokenizer {os.fspath(path)!r} is neither a directory nor a regular file")
        else:
            raise FileNotFoundError(f"tokenizer {os.fspath(path)!r} does not exist")
        tokenizer = cls(model)
        template = model.parent / "chat_template.jinja"
        tokenizer.chat_template = template.read_text(encoding="utf-8") if template.is_file() else None
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of ``text`` (no ``<bos>``). Control strings become control ids only if ``allow_special``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        position = 0
        for match in self._special_re.finditer(text):
            if allow_special:
                ids += self._encode_plain(text[position : match.start()])
                ids.append(self._string_to_id[match.group()])
                position = match.end()
        if allow_special:
            return ids + self._encode_plain(text[position:])
        return self._encode_plain(text)

    def _encode_plain(self, text: str) -> list[int]:
        """Encode text that must yield no control id, even where the model would match a control string
        inside it: each control string found is split after its first character, and the pieces are encoded
        one by one (the same segment-wise encoding tokenizers apply around added tokens)."""
        if not text:
            return []
        cuts = sorted({start + 1 for string in SPECIAL_STRINGS.values() for start in _find_all(string, text)})
        ids: list[int] = []
        start = 0
        for cut in [*cuts, len(text)]:
            if cut > start:
                ids += self._sp.EncodeAsIds(text[start:cut])
                start = cut
        assert not any(i in self._special_ids for i in ids), text
        return ids

    def decode(self, ids: list[int], *, skip_special: bool = False) -> str:
        """Text of ``ids``; control tokens appear as their strings unless ``skip_special``."""
        out: list[str] = []
        run: list[int] = []
        for token_id in ids:
            if token_id in self._special_ids:
                out.append(self._sp.DecodeIds(run))
                run = []
                if not skip_special:
                    out.append(self._sp.IdToPiece(token_id))
            else:
                run.append(int(token_id))
        out.append(self._sp.DecodeIds(run))
        return "".join(out)

    def token_to_id(self, piece: str) -> int:
        token_id = self._sp.PieceToId(piece)
        if self._sp.IdToPiece(token_id) != piece:
            raise KeyError(f"{self.source}: no token {piece!r}")
        return token_id


def _find_all(needle: str, text: str):
    """Start indices of every occurrence of ``needle`` in ``text``, overlapping ones included."""
    start = text.find(needle)
    while start != -1:
        yield start
        start = text.find(needle, start + 1)
