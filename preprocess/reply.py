"""A generated Gemma 4 reply (decoded with its control strings kept) split into thinking, answer and tool calls.

Implements "Decoding a reply" of spec ../shared/spec/GEMMA4.md §5.4.1 (the call format of items 3 and 5 is read
by :mod:`preprocess.tool_format`). A reply is ``<|channel>thought\\n{thinking}<channel|>`` (optional), then the
answer text with zero or more ``<|tool_call>call:NAME{ARGS}<tool_call|>`` in it, and ends at the first
``<turn|>``, ``<|tool_response>`` or ``<eos>`` (the generation stop strings): the terminator and everything
after it are dropped. A reply with no terminator is complete unless it stops inside one of these constructs.

Choices where the spec is silent:

* ``thinking`` is ``None`` when the reply has no thought channel and ``""`` for an empty one
  (``<|channel>thought\\n<channel|>``, what the template writes when thinking is off); it is stripped. A channel
  may stand anywhere before the terminator and there may be several (interleaved thinking between tool calls):
  their texts are joined by a blank line. A channel not named ``thought`` is read as thinking, with a problem.
* ``content`` is the answer text with the channels and the tool calls cut out, concatenated and stripped.
* A reply cut inside a channel, a call or one of its strings never raises: what was complete is kept (the
  content before the cut call, the calls before it) and ``truncated`` says where the cut fell, e.g.
  "cut inside tool call 2 ('get_weather') inside a string argument".
* A call that is broken rather than cut (no ``call:``, a bad value, …) never raises either: its raw text,
  up to its ``<tool_call|>`` or the next call, stays in ``content`` and ``problems`` says what was wrong.
  Stray closing strings (``<channel|>``, ``<tool_call|>`` with no opener) stay in ``content`` with a problem.
* A string argument containing a terminator cannot be read back: generation would have stopped there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from .tokenizer import SPECIAL_STRINGS
from .tool_format import IncompleteError, ToolParseError, parse_value

__all__ = ["Reply", "ReplyStream", "ToolCall", "parse_reply", "TERMINATORS", "visible_text"]

_S = SPECIAL_STRINGS
TERMINATORS = (_S["turn_end"], _S["tool_response_start"], _S["eos"])
_TERMINATOR_RE = re.compile("|".join(re.escape(s) for s in TERMINATORS))
_OPENER_RE = re.compile(f"{re.escape(_S['tool_call_start'])}|{re.escape(_S['channel_start'])}")
_SPECIAL_RE = re.compile("|".join(re.escape(s) for s in sorted(_S.values(), key=len, reverse=True)))
_STRAY = (_S["channel_end"], _S["tool_call_end"])
_CALL_PREFIX = "call:"
_THOUGHT = "thought"

# IncompleteError.inside → where inside a call the text was cut.
_CUT_INSIDE = {
    "a string": "inside a string argument",
    "a key": "inside an argument name",
    "a value": "before an argument's value was complete",
    "a mapping": "inside an object argument",
    "a list": "inside a list argument",
}


class ToolCall(NamedTuple):
    """One call: unpacks as ``(name, arguments)``."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Reply:
    """A reply's parts. ``truncated`` is None when complete, else where it was cut; ``problems`` lists broken
    constructs that were kept as text; ``terminator`` is the stop string that ended it (None if none did)."""

    thinking: str | None
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    truncated: str | None = None
    problems: tuple[str, ...] = ()
    terminator: str | None = None


class _Cut(Exception):
    """The text ends inside a tool call (internal: becomes ``Reply.truncated``)."""


def parse_reply(text: str) -> Reply:
    """Split a decoded reply into thinking, content and tool calls; never raises on the reply's contents."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    stop = _TERMINATOR_RE.search(text)
    body = text[: stop.start()] if stop else text
    content: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    problems: list[str] = []
    truncated = None
    pos, number = 0, 0
    while True:
        opener = _OPENER_RE.search(body, pos)
        plain = body[pos : opener.start() if opener else len(body)]
        problems += [f"stray {s!r} in the answer, kept as text" for s in _STRAY if s in plain]
        content.append(plain)
        if opener is None:
            break
        if opener.group() == _S["channel_start"]:
            close = body.find(_S["channel_end"], opener.end())
            thoughts.append(_thought(body[opener.end() : close if close >= 0 else len(body)], problems))
            if close < 0:
                truncated = "cut inside the thought channel"
                break
            pos = close + len(_S["channel_end"])
            continue
        number += 1
        try:
            call, pos = _read_call(body, opener.end(), number)
        except _Cut as cut:
            truncated = str(cut)
            break
        except ToolParseError as exc:
            pos = _end_of_broken_call(body, opener.end())
            content.append(body[opener.start() : pos])
            problems.append(f"tool call {number} is malformed and was kept as text: {exc}")
            continue
        calls.append(call)
    return Reply(
        thinking="\n\n".join(thoughts) if thoughts else None,
        content="".join(content).strip(),
        tool_calls=tuple(calls),
        truncated=truncated,
        problems=tuple(problems),
        terminator=stop.group() if stop else None,
    )


def _thought(channel: str, problems: list[str]) -> str:
    """The thinking in one channel's text (``thought\\n…``), stripped."""
    name, newline, rest = channel.partition("\n")
    if name == _THOUGHT or (not newline and _THOUGHT.startswith(name)):  # the latter: cut inside the header
        return rest.strip()
    problems.append(f"a channel named {name[:40]!r}, not {_THOUGHT!r}, was read as thinking")
    return channel.strip()


def _read_call(body: str, start: int, number: int) -> tuple[ToolCall, int]:
    """The call whose ``<|tool_call>`` ends at ``start``; returns it and the position after ``<tool_call|>``."""
    head = body[start : start + len(_CALL_PREFIX)]
    if head != _CALL_PREFIX:
        if start + len(head) == len(body) and _CALL_PREFIX.startswith(head):
            raise _Cut(f"cut inside tool call {number}")
        raise ToolParseError(f"expected {_CALL_PREFIX!r} after {_S['tool_call_start']!r}", start)
    name_start = start + len(_CALL_PREFIX)
    special = _SPECIAL_RE.search(body, name_start)  # bounds every search below: linear time on any reply
    brace = body.find("{", name_start, special.start() if special else len(body))
    if special is not None and brace < 0:
        raise ToolParseError(f"expected '{{' after the tool name, found {special.group()!r}", special.start())
    if brace < 0:
        raise _Cut(f"cut inside tool call {number}")
    name = body[name_start:brace]
    if not name or any(ch.isspace() for ch in name):
        raise ToolParseError(f"bad tool name {name[:40]!r}", name_start)
    try:
        arguments, pos = parse_value(body, brace)
    except IncompleteError as exc:
        where = "inside its arguments" if exc.position == brace else _CUT_INSIDE.get(exc.inside, "")
        raise _Cut(f"cut inside tool call {number} ({name!r}) {where}".rstrip()) from None
    end = _S["tool_call_end"]
    if body.startswith(end, pos):
        return ToolCall(name, arguments), pos + len(end)
    if len(body) - pos < len(end) and end.startswith(body[pos:]):
        raise _Cut(f"cut inside tool call {number} ({name!r}) after its arguments")
    raise ToolParseError(f"expected {end!r} after the arguments of {name!r}", pos)


def _end_of_broken_call(body: str, start: int) -> int:
    """Where a broken call's raw text ends: after its ``<tool_call|>``, or at the next call, or at the end."""
    following = body.find(_S["tool_call_start"], start)
    following = following if following >= 0 else len(body)
    close = body.find(_S["tool_call_end"], start, following)
    return close + len(_S["tool_call_end"]) if close >= 0 else following


def visible_text(content: str) -> str:
    """An answer as a reader sees it: ``content`` without any control string (a stray ``<channel|>`` or
    placeholder that ``parse_reply`` kept as text, with a problem)."""
    return _SPECIAL_RE.sub("", content)


class ReplyStream:
    """A reply's answer text as its tokens arrive: :meth:`feed` takes each new token id and returns what can be
    shown now. The deltas, joined, are ``visible_text(parse_reply(tokenizer.decode(ids)).content)`` of all the
    ids fed: thinking and tool calls never appear, nor any control string; a character spread over several byte
    tokens comes out whole (a trailing run of byte tokens is held until a token that is not a byte ends it: the
    decoder reads such a run as one UTF-8 sequence, so its text may still change); trailing whitespace is held
    until something follows it (the answer is stripped). :meth:`finish` returns what was still held.

    Each step decodes and parses the whole reply so far (linear in its length: a few milliseconds for thousands
    of tokens), so what is shown is by construction what ``parse_reply`` reads from the whole reply."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = ""

    def _target(self, ids: list[int]) -> str:
        return visible_text(parse_reply(self.tokenizer.decode(ids)).content)

    def feed(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        settled = len(self.ids)
        while settled and self.ids[settled - 1] in self.tokenizer.byte_ids:
            settled -= 1  # a byte run still open: its characters are not known yet
        return self._show(self._target(self.ids[:settled]))

    def finish(self) -> str:
        return self._show(self._target(self.ids))

    def _show(self, target: str) -> str:
        if not target.startswith(self.shown):
            return ""  # not expected (the settled answer only grows); wait for what follows
        delta = target[len(self.shown) :]
        self.shown = target
        return delta
