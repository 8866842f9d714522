"""Stop strings: a reply ends at the first occurrence of any of them (OpenAI's and vLLM's ``stop``).

The engine works on token ids; stop strings are text. A :class:`StopStrings` watches one request's new tokens as
the engine reads them (with the step's finished flags: the same one transfer, no extra host read), decodes them
incrementally and says when the text holds a stop string; the engine then finishes the request with ``stop``. The
reply's text is cut before the stop string (:meth:`StopStrings.cut`), which is not part of the reply, as in OpenAI
and vLLM; the request's token ids keep every token generated (the last one completed the stop string).

Incremental decoding: a token's text can depend on its neighbours (SentencePiece's word-initial ``▁``, byte
fallback pieces that only form a character together), so each step decodes the tokens from a few tokens back
(``prefix``) and keeps what the new ones added; text that ends inside a character (U+FFFD) waits for the next
token. Only the tail of the text that could hold a new match is searched, so watching costs O(new text) a step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from data_specs.manifest import check_stop

__all__ = ["StopStrings", "check_stop", "cut_at_stop"]

_LOOKBACK = 4  # tokens decoded before the new ones, for the context a token's text depends on


class StopStrings:
    """Watches one request's new tokens for ``strings``; ``decode`` maps token ids to text (control tokens
    skipped, as the reply's text is decoded). One instance per request (it keeps the request's text)."""

    def __init__(self, strings: Iterable[str], decode: Callable[[Sequence[int]], str]) -> None:
        self.strings = check_stop(list(strings), "stop strings")
        if not self.strings:
            raise ValueError("StopStrings needs at least one stop string")
        self.decode = decode
        self.longest = max(len(s) for s in self.strings)
        self.tokens: list[int] = []
        self.text = ""
        self._read = 0  # tokens whose text is in self.text
        self._prefix = 0  # where the decoded context starts
        self.matched: str | None = None

    def feed(self, token: int) -> bool:
        """Add one new token; True once the text holds a stop string (then :attr:`matched` names it)."""
        if self.matched is not None:
            return True
        self.tokens.append(int(token))
        before = self.decode(self.tokens[self._prefix : self._read])
        now = self.decode(self.tokens[self._prefix :])
        if now.endswith("\ufffd") or len(now) < len(before) or not now.startswith(before):
            return False  # inside a character (or the context changed its text): wait for the next token
        added = now[len(before) :]
        if not added:
            return False
        start = max(0, len(self.text) - self.longest + 1)  # a match may begin in earlier text and end in the new
        self.text += added
        self._read = len(self.tokens)
        self._prefix = max(0, self._read - _LOOKBACK)
        tail = self.text[start:]
        found = [(tail.find(s), i) for i, s in enumerate(self.strings) if s in tail]
        if found:
            self.matched = self.strings[min(found)[1]]
        return self.matched is not None

    def cut(self, text: str) -> str:
        """``text`` up to the first occurrence of any stop string (all of it when none occurs)."""
        return cut_at_stop(text, self.strings)


def cut_at_stop(text: str, strings: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any of ``strings`` (all of it when none occurs)."""
    positions = [p for p in (text.find(s) for s in strings) if p >= 0]
    return text[: min(positions)] if positions else text
