"""Tool calls, tool responses and tool declarations written as the Gemma 4 chat template writes them, and read back.

Implements spec ../shared/spec/GEMMA4.md §5.4.1 items 3, 5 and 7, byte for byte as the checkpoints'
``chat_template.jinja`` renders them (the revision the spec documents: ``<|think|>`` with no newline after it,
the empty thought channel in the generation prompt). Facts reproduced, quirks included:

Values (:func:`format_value`, the template's ``format_argument``):

* a ``str`` is wrapped in ``<|"|>`` on both sides, as is, with nothing escaped;
* ``True``/``False`` (exactly the two bools) are ``true``/``false``;
* a ``Mapping`` is ``{k:v,…}``: entries in Jinja ``dictsort`` order (case-insensitive: the key is lower-cased
  when it is a ``str``; ties keep insertion order), each key wrapped in ``<|"|>`` when ``escape_keys`` (inside
  declarations) and bare otherwise (inside calls and responses);
* any other sequence (something with ``len`` and item access: ``list``, ``tuple``, ``bytes``…) is ``[a,b,…]``;
* anything else is ``str(value)`` as Jinja prints it: ``5``, ``1.5``, ``1e+20``, ``None``.

Calls and responses (:func:`format_call`, :func:`format_response`): ``<|tool_call>call:NAME{…}<tool_call|>``
with the arguments as sorted bare ``key:value`` pairs (a ``str`` of arguments is written as is);
``<|tool_response>response:NAME{…}<tool_response|>`` with a mapping response as sorted bare pairs and any other
response as ``value:V``.

Declarations (:func:`format_declaration`, the template's ``format_function_declaration`` and
``format_parameters``): ``declaration:NAME{description:<|"|>DESC<|"|>`` (an empty description when missing),
then, when ``parameters`` is truthy, ``,parameters:{`` + ``properties:{…},`` (if any) + ``required:[…],``
(if any) + ``type:<|"|>TYPE<|"|>}`` (if a type is given: without one, the ``parameters`` brace is never
closed), then ``,response:{`` + ``description:<|"|>D<|"|>,`` + ``type:<|"|>OBJECT<|"|>}`` when the function
has a ``response`` (the brace closes only for an OBJECT response), then ``}``. Each property (the schema keys
``description``, ``type``, ``properties``, ``required`` and ``nullable`` are skipped as property names) is
``name:{`` + ``description:…`` + ``nullable:true`` + by type (the first one when ``type`` is a list):
STRING → ``enum:[…]`` (values written with quoted keys); OBJECT → ``,properties:{…}`` and
``,required:[…]`` (always with a leading comma, even as the first field; an object without ``properties`` has
its own non-schema keys formatted as properties); ARRAY → ``,items:{…}`` (same leading comma; item keys in
``dictsort`` order, ``None`` values skipped, types upper-cased) — then ``type:<|"|>TYPE<|"|>}``. Fields after
the first are separated by ``,``, except that the OBJECT and ARRAY parts never count as a first field, so
``{,properties:{…}type:…}`` is what the template writes for an object property with no description.

Deviations, all on input the template would render into nonsense or fail on: a missing ``type`` in a
property, a property schema that is not a mapping, a missing function name, mixed key types that cannot be
sorted, non-``str`` keys where keys are quoted, and values nested deeper than :data:`MAX_DEPTH` raise
:class:`ToolFormatError`.

Reading back (:func:`parse_value`, :func:`parse_arguments`): values in the bare-key form of calls and
responses. Strings run to the next ``<|"|>`` (so a string containing ``<|"|>`` cannot be read back, as the
template writes it unescaped); ``true``/``false``, ``None``/``null``, integers, floats (exponents, ``inf``,
``nan``), ``{…}`` with bare keys (running to the next ``:``; a key wrapped in ``<|"|>`` is accepted too) and
``[…]``. Whitespace around keys, values and separators is skipped; duplicate keys keep the last value. Text
that ends before a construct closes raises :class:`IncompleteError`, other bad text :class:`ToolParseError`;
both carry the position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .tokenizer import SPECIAL_STRINGS

__all__ = [
    "MAX_DEPTH",
    "IncompleteError",
    "ToolFormatError",
    "ToolParseError",
    "format_call",
    "format_declaration",
    "format_response",
    "format_value",
    "parse_arguments",
    "parse_value",
]

QUOTE = SPECIAL_STRINGS["string_delimiter"]  # <|"|>
MAX_DEPTH = 100  # mappings and lists nested in one another, in both directions (a guard, not a template fact)
_STANDARD_KEYS = ("description", "type", "properties", "required", "nullable")
_MISSING = object()  # Jinja's Undefined: prints as "", is falsy


class ToolFormatError(ValueError):
    """A value, call, response or declaration that cannot be written in, or read from, the template's format."""


class ToolParseError(ToolFormatError):
    """Text that is not a value in the template's format; ``position`` is where reading failed."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at position {position})")
        self.position = position


class IncompleteError(ToolParseError):
    """The text ends before a construct closes; ``inside`` names the innermost one ("a string", "a key",
    "a value", "a mapping", "a list"), ``position`` is where it opened."""

    def __init__(self, inside: str, position: int) -> None:
        super().__init__(f"the text ends inside {inside} opened", position)
        self.inside = inside


# ---------------------------------------------------------------------------------------------------------------
# Writing


def format_value(value: Any, *, escape_keys: bool = True) -> str:
    """``value`` as the template's ``format_argument`` writes it (keys quoted iff ``escape_keys``)."""
    return _value(value, escape_keys, 0)


def format_call(name: str, arguments: Mapping[str, Any] | str | None) -> str:
    """``<|tool_call>call:NAME{ARGS}<tool_call|>``; ``None`` arguments write nothing between the braces."""
    _check_name(name, "tool call")
    if isinstance(arguments, Mapping):
        body = _bare_entries(arguments)
    elif isinstance(arguments, str):
        body = arguments
    elif arguments is None:
        body = ""
    else:
        raise ToolFormatError(f"tool call {name!r}: arguments must be a mapping or a str, got {type(arguments)}")
    return f"{SPECIAL_STRINGS['tool_call_start']}call:{name}{{{body}}}{SPECIAL_STRINGS['tool_call_end']}"


def format_response(name: str, response: Any) -> str:
    """``<|tool_response>response:NAME{…}<tool_response|>`` (the caller passes ``"unknown"`` for no name)."""
    _check_name(name, "tool response")
    if isinstance(response, Mapping):
        body = _bare_entries(response)
    else:
        body = "value:" + _value(response, False, 1)
    return f"{SPECIAL_STRINGS['tool_response_start']}response:{name}{{{body}}}{SPECIAL_STRINGS['tool_response_end']}"


def format_declaration(tool: Mapping[str, Any]) -> str:
    """``declaration:NAME{…}`` for an OpenAI-style tool, stripped; the caller wraps it in ``<|tool>…<tool|>``."""
    function = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(function, Mapping):
        raise ToolFormatError(f"a tool must be a mapping with a 'function' mapping, got {tool!r:.200}")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ToolFormatError(f"tool function has no name: {function!r:.200}")
    out = [f"declaration:{name}{{description:{QUOTE}{_print(function.get('description', _MISSING))}{QUOTE}"]
    params = function.get("parameters")
    if params:
        if not isinstance(params, Mapping):
            raise ToolFormatError(f"tool {name!r}: 'parameters' must be a mapping, got {type(params).__name__}")
        out.append(",parameters:{")
        if params.get("properties"):
            out.append("properties:{" + _parameters(params["properties"], f"{name}.parameters", 1) + "},")
        if params.get("required"):
            out.append("required:[" + _quoted_list(params["required"], f"{name}.parameters.required") + "],")
        if params.get("type"):
            out.append(f"type:{QUOTE}{_upper(params['type'])}{QUOTE}}}")  # no type: the brace stays open
    if "response" in function:
        response = function["response"]
        out.append(",response:{")
        if isinstance(response, Mapping):
            if response.get("description"):
                out.append(f"description:{QUOTE}{_print(response['description'])}{QUOTE},")
            if _upper(response.get("type", _MISSING)) == "OBJECT":
                out.append(f"type:{QUOTE}OBJECT{QUOTE}}}")
    out.append("}")
    return "".join(out).strip()


def _value(value: Any, escape_keys: bool, depth: int) -> str:
    if isinstance(value, str):
        return QUOTE + value + QUOTE
    if value is True or value is False:  # Jinja's `is boolean`: the two bools only
        return "true" if value else "false"
    if isinstance(value, Mapping) or _is_sequence(value):
        if depth >= MAX_DEPTH:
            raise ToolFormatError(f"values nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, Mapping):
            entries = (
                _key(key, escape_keys) + ":" + _value(item, escape_keys, depth + 1) for key, item in _dictsort(value)
            )
            return "{" + ",".join(entries) + "}"
        return "[" + ",".join(_value(item, escape_keys, depth + 1) for item in value) + "]"
    return str(value)


def _bare_entries(mapping: Mapping[Any, Any]) -> str:
    return ",".join(f"{key}:{_value(item, False, 1)}" for key, item in _dictsort(mapping))


def _key(key: Any, escape_keys: bool) -> str:
    if not escape_keys:
        return str(key)
    if not isinstance(key, str):
        raise ToolFormatError(f"a quoted key must be a str, got {key!r}")
    return QUOTE + key + QUOTE


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str):  # the template concatenates it to a str
        raise ToolFormatError(f"{what} name must be a str, got {type(name).__name__}")


def _dictsort(mapping: Mapping[Any, Any], where: str = "a mapping") -> list[tuple[Any, Any]]:
    """Jinja's ``dictsort`` (case-insensitive by key; Python's sort is stable, so ties keep insertion order)."""
    try:
        return sorted(mapping.items(), key=lambda item: item[0].lower() if isinstance(item[0], str) else item[0])
    except TypeError as exc:
        raise ToolFormatError(f"the keys of {where} cannot be sorted: {exc}") from None


def _is_sequence(value: Any) -> bool:
    """Jinja's ``is sequence``: has a length and item access."""
    try:
        len(value)
        value.__getitem__  # noqa: B018 - the test is the attribute look-up
    except (TypeError, AttributeError):
        return False
    return True


def _print(value: Any) -> str:
    return "" if value is _MISSING else str(value)


def _upper(value: Any) -> str:
    return "" if value is _MISSING else str(value).upper()


def _iterate(value: Any, where: str) -> Iterable[Any]:
    try:
        return iter(value)
    except TypeError:
        raise ToolFormatError(f"{where} must be a list, got {type(value).__name__}") from None


def _quoted_list(items: Any, where: str) -> str:
    return ",".join(QUOTE + str(item) + QUOTE for item in _iterate(items, where))


def _parameters(properties: Any, where: str, depth: int) -> str:
    """The template's ``format_parameters``: each non-schema key of ``properties`` as a property."""
    if not isinstance(properties, Mapping):
        raise ToolFormatError(f"{where}: properties must be a mapping, got {type(properties).__name__}")
    if depth >= MAX_DEPTH:
        raise ToolFormatError(f"{where}: schemas nested deeper than {MAX_DEPTH} levels")
    written = (
        _property(key, value, f"{where}.{key}", depth)
        for key, value in _dictsort(properties, where)
        if key not in _STANDARD_KEYS
    )
    return ",".join(written)


def _property(key: Any, value: Any, where: str, depth: int) -> str:
    if not isinstance(value, Mapping):
        raise ToolFormatError(f"property {where}: its schema must be a mapping, got {value!r:.100}")
    if "type" not in value:
        raise ToolFormatError(f"property {where} has no 'type'")
    out = [f"{key}:{{"]
    add_comma = False

    def separate() -> None:  # the template's `if add_comma %},{% else %}{% set add_comma = true %}`
        nonlocal add_comma
        if add_comma:
            out.append(",")
        add_comma = True

    if value.get("description"):
        out.append(f"description:{QUOTE}{value['description']}{QUOTE}")
        add_comma = True
    if value.get("nullable"):
        separate()
        out.append("nullable:true")
    value_type = value["type"] if isinstance(value["type"], str) else _first(value["type"])
    kind = _upper(value_type)
    if kind == "STRING":
        if value.get("enum"):
            separate()
            out.append("enum:" + _value(value["enum"], True, depth + 1))
    elif kind == "OBJECT":
        nested = value["properties"] if isinstance(value.get("properties"), Mapping) else value
        out.append(",properties:{" + _parameters(nested, where, depth + 1) + "}")
        if value.get("required"):
            out.append(",required:[" + _quoted_list(value["required"], f"{where}.required") + "]")
    elif kind == "ARRAY":
        items = value.get("items")
        if isinstance(items, Mapping) and items:
            out.append(",items:{" + _items(items, f"{where}.items", depth + 1) + "}")
    separate()
    out.append(f"type:{QUOTE}{kind}{QUOTE}}}")
    return "".join(out)


def _items(items: Mapping[Any, Any], where: str, depth: int) -> str:
    parts = []
    for item_key, item_value in _dictsort(items, where):
        if item_value is None:
            continue
        if item_key == "properties":
            inner = _parameters(item_value, where, depth) if isinstance(item_value, Mapping) else ""
            parts.append("properties:{" + inner + "}")
        elif item_key == "required":
            parts.append("required:[" + _quoted_list(item_value, f"{where}.required") + "]")
        elif item_key == "type":
            if isinstance(item_value, str):
                parts.append("type:" + _value(item_value.upper(), True, depth))
            else:
                parts.append("type:" + _value([_upper(t) for t in _iterate(item_value, f"{where}.type")], True, depth))
        else:
            parts.append(f"{item_key}:" + _value(item_value, True, depth))
    return ",".join(parts)


def _first(value: Any) -> Any:
    """``value[0]`` as Jinja evaluates it: undefined (printed as "") when there is no such item."""
    try:
        return value[0]
    except (TypeError, LookupError, AttributeError):
        return _MISSING


# ---------------------------------------------------------------------------------------------------------------
# Reading

_WHITESPACE = " \t\r\n"
_BARE_END = frozenset(",:{}[]<" + _WHITESPACE)  # a bare token (number, literal) ends before one of these
_KEY_FORBIDDEN = frozenset(",{}[]<>")
_LITERALS: dict[str, Any] = {"true": True, "false": False, "None": None, "null": None}
_SPECIAL_FLOATS = ("inf", "-inf", "nan")
_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FLOAT_PREFIX = re.compile(r"-?\d*\.?\d*(?:[eE][+-]?\d*)?")


def parse_value(text: str, pos: int = 0) -> tuple[Any, int]:
    """Read one value (bare-key form) starting at ``pos`` (leading whitespace skipped); return it and the
    position just after it."""
    return _Reader(text).value(pos, 0)


def parse_arguments(text: str) -> dict[str, Any]:
    """The arguments written between the braces of ``call:NAME{…}``: bare ``key:value`` pairs joined by ``,``."""
    arguments, _ = _Reader(text).entries(0, None, 1, 0)
    return arguments


class _Reader:
    """Recursive descent over ``text``; nesting is capped at :data:`MAX_DEPTH`, well inside Python's limit."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        self.text = text
        self.end = len(text)

    def skip(self, pos: int) -> int:
        while pos < self.end and self.text[pos] in _WHITESPACE:
            pos += 1
        return pos

    def value(self, pos: int, depth: int) -> tuple[Any, int]:
        text = self.text
        pos = self.skip(pos)
        if pos >= self.end:
            raise IncompleteError("a value", pos)
        if text.startswith(QUOTE, pos):
            close = text.find(QUOTE, pos + len(QUOTE))
            if close < 0:
                raise IncompleteError("a string", pos)
            return text[pos + len(QUOTE) : close], close + len(QUOTE)
        if self.end - pos < len(QUOTE) and QUOTE.startswith(text[pos:]):  # a delimiter cut by the end of the text
            raise IncompleteError("a string", pos)
        if text[pos] in "{[":
            if depth >= MAX_DEPTH:
                raise ToolParseError(f"values nested deeper than {MAX_DEPTH} levels", pos)
            if text[pos] == "{":
                return self.entries(pos + 1, "}", depth + 1, pos)
            return self.items(pos + 1, depth + 1, pos)
        return self.bare(pos)

    def bare(self, pos: int) -> tuple[Any, int]:
        stop = pos
        while stop < self.end and self.text[stop] not in _BARE_END:
            stop += 1
        token = self.text[pos:stop]
        try:
            if token in _LITERALS:
                return _LITERALS[token], stop
            if _INT.fullmatch(token):
                return int(token), stop
            if _FLOAT.fullmatch(token) or token in _SPECIAL_FLOATS:
                return float(token), stop
        except ValueError as exc:  # e.g. an integer past Python's digit limit
            raise ToolParseError(f"cannot read the number {token[:40]!r}: {exc}", pos) from None
        could_grow = any(word.startswith(token) for word in (*_LITERALS, *_SPECIAL_FLOATS))
        if stop == self.end and (could_grow or _FLOAT_PREFIX.fullmatch(token)):
            raise IncompleteError("a value", pos)
        found = repr(token[:40]) if token else repr(self.text[pos])
        raise ToolParseError(f"expected a value, found {found}", pos)

    def key(self, pos: int, opened: int) -> tuple[str, int]:
        text = self.text
        if text.startswith(QUOTE, pos):  # the declarations' quoted form
            close = text.find(QUOTE, pos + len(QUOTE))
            if close < 0:
                raise IncompleteError("a key", pos)
            key, after = text[pos + len(QUOTE) : close], self.skip(close + len(QUOTE))
            if after >= self.end:
                raise IncompleteError("a mapping", opened)
            if text[after] != ":":
                raise ToolParseError(f"expected ':' after the key {key!r}, found {text[after]!r}", after)
            return key, after + 1
        stop = pos
        while stop < self.end and text[stop] != ":":
            if text[stop] in _KEY_FORBIDDEN:
                if self.end - stop < len(QUOTE) and QUOTE.startswith(text[stop:]):
                    raise IncompleteError("a key", pos)
                raise ToolParseError(f"expected a key and ':', found {text[stop]!r}", stop)
            stop += 1
        if stop >= self.end:
            raise IncompleteError("a key", pos)
        return text[pos:stop].rstrip(_WHITESPACE), stop + 1

    def entries(self, pos: int, closer: str | None, depth: int, opened: int) -> tuple[dict[str, Any], int]:
        """Entries up to ``closer`` (consumed), or to the end of the text when ``closer`` is None."""
        text, result = self.text, {}
        pos = self.skip(pos)
        if pos >= self.end:
            if closer is None:
                return result, pos
            raise IncompleteError("a mapping", opened)
        if text[pos] == closer:
            return result, pos + 1
        while True:
            key, pos = self.key(pos, opened)
            result[key], pos = self.value(pos, depth)
            pos = self.skip(pos)
            if pos >= self.end:
                if closer is None:
                    return result, pos
                raise IncompleteError("a mapping", opened)
            if text[pos] == closer:
                return result, pos + 1
            if text[pos] != ",":
                expected = "','" if closer is None else f"',' or {closer!r}"
                raise ToolParseError(f"expected {expected} after the value of {key!r}, found {text[pos]!r}", pos)
            pos = self.skip(pos + 1)

    def items(self, pos: int, depth: int, opened: int) -> tuple[list[Any], int]:
        text, result = self.text, []
        pos = self.skip(pos)
        if pos >= self.end:
            raise IncompleteError("a list", opened)
        if text[pos] == "]":
            return result, pos + 1
        while True:
            item, pos = self.value(pos, depth)
            result.append(item)
            pos = self.skip(pos)
            if pos >= self.end:
                raise IncompleteError("a list", opened)
            if text[pos] == "]":
                return result, pos + 1
            if text[pos] != ",":
                raise ToolParseError(f"expected ',' or ']' in a list, found {text[pos]!r}", pos)
            pos += 1
