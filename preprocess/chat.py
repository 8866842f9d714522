"""Chat messages → the prompt string of the Gemma 4 turn layout (spec §5.4), with user text protected.

Messages take the widely used form ``[{"role": "system"|"user"|"assistant"|"model", "content": str | [parts]}]``
with parts ``{"type": "text", "text": …}``, ``{"type": "image", "image": …, "budget": 280?}``,
``{"type": "audio", "audio": path | bytes | (array, sample_rate)}`` and
``{"type": "video", "video": …, "num_frames": 32?, "budget": 70?}``.

Rendering: with no template, the built-in layout — one ``<bos>``, then ``<|turn>ROLE\\n`` + content +
``<turn|>\\n`` per message (``assistant`` is written ``model``), then ``<|turn>model\\n`` when a generation
prompt is asked for; ``enable_thinking`` puts ``<|think|>`` at the start of the system turn (adding one if
needed). Media parts become ``<|image|>``, ``<|audio|>`` and ``<|video|>`` in place. With a checkpoint's
``chat_template.jinja``, the template is rendered instead in a sandboxed Jinja environment (``trim_blocks``,
``lstrip_blocks``, as transformers renders chat templates), so the checkpoint's exact whitespace is used.

Protection: before rendering, every control string inside user text (and any private-use sentinel character)
is replaced by a sentinel ``\\ue000<k>\\ue001``; :class:`RenderedPrompt` keeps the originals so the tokenizer
encodes them as plain text. Every control string left in the rendered prompt was therefore written by the
template, and every media placeholder in it belongs to a media part, in order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .tokenizer import SPECIAL_STRINGS

__all__ = ["ChatFormatError", "MediaPart", "RenderedPrompt", "parse_messages", "render_chat"]

ROLES = {"system": "system", "user": "user", "assistant": "model", "model": "model"}
MEDIA_KINDS = ("image", "audio", "video")
PLACEHOLDERS = {kind: SPECIAL_STRINGS[kind] for kind in MEDIA_KINDS}  # image → "<|image|>", …
SENTINEL_OPEN, SENTINEL_CLOSE = "\ue000", "\ue001"
_SENTINEL_RE = re.compile(f"{SENTINEL_OPEN}(\\d+){SENTINEL_CLOSE}")
_PROTECT_RE = re.compile(
    "|".join(re.escape(s) for s in sorted(SPECIAL_STRINGS.values(), key=len, reverse=True))
    + f"|[{SENTINEL_OPEN}{SENTINEL_CLOSE}]"
)


class ChatFormatError(ValueError):
    """Messages that do not follow the chat form, or a template whose placeholders disagree with them."""


@dataclass(frozen=True)
class MediaPart:
    """One media item of the conversation, in order of appearance."""

    kind: str  # "image" | "audio" | "video"
    source: Any
    options: Mapping[str, Any]  # e.g. {"budget": 280} or {"num_frames": 32}
    where: str  # "messages[1].content[2]", for error messages


@dataclass(frozen=True)
class RenderedPrompt:
    """The rendered prompt; ``protected[k]`` is the user text hidden behind sentinel ``k``."""

    text: str
    protected: tuple[str, ...]
    media: tuple[MediaPart, ...]


def _parts(message: Mapping[str, Any], index: int) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, Sequence) or isinstance(content, bytes | bytearray):
        raise ChatFormatError(
            f"messages[{index}].content must be a string or a list of parts, got {type(content).__name__}"
        )
    parts = []
    for j, part in enumerate(content):
        where = f"messages[{index}].content[{j}]"
        if not isinstance(part, Mapping) or "type" not in part:
            raise ChatFormatError(f"{where} must be a dict with a 'type', got {part!r:.80}")
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ChatFormatError(f"{where}: a text part needs a string 'text'")
        elif kind in MEDIA_KINDS:
            if part.get(kind) is None:
                raise ChatFormatError(f"{where}: an {kind} part needs its data under {kind!r}")
        else:
            raise ChatFormatError(f"{where}: unknown content type {kind!r}; expected text, image, audio or video")
        parts.append(dict(part, _where=where))
    return parts


def parse_messages(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Validate ``messages``: [(role as written in the prompt, parts)]."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
        raise ChatFormatError("messages must be a non-empty list of {'role': …, 'content': …} dicts")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatFormatError(f"messages[{i}] must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ChatFormatError(f"messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
        parsed.append((role, _parts(message, i)))
    return parsed


class _Protector:
    def __init__(self) -> None:
        self.protected: list[str] = []

    def __call__(self, text: str) -> str:
        def hide(match: re.Match) -> str:
            self.protected.append(match.group())
            return f"{SENTINEL_OPEN}{len(self.protected) - 1}{SENTINEL_CLOSE}"

        return _PROTECT_RE.sub(hide, text)


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    enable_thinking: bool = False,
    chat_template: str | None = None,
) -> RenderedPrompt:
    """Render ``messages`` (see the module docstring) into a prompt string with protected user text."""
    parsed = parse_messages(messages)
    protect = _Protector()
    media: list[MediaPart] = []
    safe_messages = []
    for role, parts in parsed:
        safe_parts = []
        for part in parts:
            if part["type"] == "text":
                safe_parts.append({"type": "text", "text": protect(part["text"])})
            else:
                kind = part["type"]
                options = {k: v for k, v in part.items() if k not in ("type", kind, "_where")}
                media.append(MediaPart(kind, part[kind], options, part["_where"]))
                safe_parts.append({"type": kind})
        safe_messages.append((role, safe_parts))
    if chat_template is None:
        text = _render_builtin(safe_messages, add_generation_prompt, enable_thinking)
    else:
        text = _render_template(chat_template, safe_messages, add_generation_prompt, enable_thinking)
    for kind in MEDIA_KINDS:
        wanted = sum(m.kind == kind for m in media)
        found = text.count(PLACEHOLDERS[kind])
        if found != wanted:
            raise ChatFormatError(
                f"the chat template wrote {found} {PLACEHOLDERS[kind]} placeholder(s) for {wanted} {kind} part(s)"
            )
    return RenderedPrompt(text=text, protected=tuple(protect.protected), media=tuple(media))


def _content_string(parts: list[dict[str, Any]]) -> str:
    return "".join(p["text"] if p["type"] == "text" else PLACEHOLDERS[p["type"]] for p in parts)


def _render_builtin(
    messages: list[tuple[str, list[dict[str, Any]]]], add_generation_prompt: bool, thinking: bool
) -> str:
    s = SPECIAL_STRINGS
    turns = [(ROLES[role], _content_string(parts)) for role, parts in messages]
    if thinking:
        if turns[0][0] == "system":
            turns[0] = ("system", s["think"] + turns[0][1])
        else:
            turns.insert(0, ("system", s["think"]))
    out = [s["bos"]]
    for role, content in turns:
        out.append(f"{s['turn_start']}{role}\n{content}{s['turn_end']}\n")
    if add_generation_prompt:
        out.append(f"{s['turn_start']}model\n")
    return "".join(out)


def _render_template(
    template: str, messages: list[tuple[str, list[dict[str, Any]]]], add_generation_prompt: bool, thinking: bool
) -> str:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ChatFormatError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=[{"role": role, "content": parts} for role, parts in messages],
            add_generation_prompt=add_generation_prompt,
            enable_thinking=thinking,
            bos_token=SPECIAL_STRINGS["bos"],
            eos_token=SPECIAL_STRINGS["eos"],
            tools=None,
        )
    except TemplateError as exc:
        raise ChatFormatError(f"chat template failed: {exc}") from exc


def unprotect_segments(text: str, protected: Sequence[str]) -> list[tuple[bool, str]]:
    """Split rendered text into (is_user_literal, text) runs: sentinels become their original strings."""
    out: list[tuple[bool, str]] = []
    position = 0
    for match in _SENTINEL_RE.finditer(text):
        if match.start() > position:
            out.append((False, text[position : match.start()]))
        out.append((True, protected[int(match.group(1))]))
        position = match.end()
    if position < len(text):
        out.append((False, text[position:]))
    return out
