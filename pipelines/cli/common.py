"""What every ``gemma4`` command shares: the argparse types, the help formatter that shows each default, and the
parser classes that give every command ``-v`` and build a command's options only when that command is used.

Building a command's options can import its settings dataclass (``pipelines.preprocess_job`` imports pyarrow), so
the options of each command are added on first use: ``gemma4 budget`` and ``gemma4 --help`` import neither torch
nor pyarrow, and ``gemma4 infer`` never imports the benchmarks.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = [
    "Commands",
    "DefaultsFormatter",
    "Parser",
    "at_least",
    "budget",
    "count",
    "limit",
    "positive",
    "seconds",
    "side",
    "template_kwarg",
    "whole_number",
]


# --- argparse types: each raises ArgumentTypeError, so the message reads "argument --flag: <why>" ------------


def budget(text: str) -> int:
    """An image soft-token budget: one of ``preprocess.budget.SUPPORTED_BUDGETS``."""
    from preprocess.budget import check_budget

    try:
        return check_budget(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def side(text: str) -> int:
    """An image side in px, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} px: sides must be at least 1 px")
    return value


def whole_number(text: str, minimum: int | None = None) -> int:
    """An int, at least ``minimum`` where one is given."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if minimum is not None and value < minimum:
        raise argparse.ArgumentTypeError(f"{value}: must be at least {minimum}")
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    """The argparse type of a whole number ≥ ``minimum``."""

    def parse(text: str) -> int:
        return whole_number(text, minimum)

    parse.__name__ = f"whole number ≥ {minimum}"
    return parse


positive = at_least(1)  # counts of workers, frames, rows per shard, tokens …
count = at_least(0)  # an index, or a number of rows that may be zero


def seconds(text: str) -> float | None:
    """A positive number of seconds, or ``none`` for no limit."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (or 'none')") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number of seconds (or 'none')")
    return value


def limit(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` for one ``MediaLimits`` field (the value is checked when the limits are built)."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE, e.g. max_audio_seconds=3600")
    return name.strip().replace("-", "_"), value.strip()


def template_kwarg(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` for one chat-template variable; VALUE is read as JSON when it parses (``true``, ``3``,
    ``["a"]``, ``"quoted"``), else kept as the string written."""
    import json

    key, equals, value = text.partition("=")
    key = key.strip()
    if not equals or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE with KEY a name, e.g. date_string=2026-12-01")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


# --- the parsers ---------------------------------------------------------------------------------------------


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows every option's default: appended as "(default: X)" where the help text does not already
    say it, and where there is one to show (not None, not a switch's False, not a repeatable option's list)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "default" not in text
            and not any(default is nothing for nothing in (None, False, argparse.SUPPRESS))  # 0 is shown
            and not isinstance(default, list)
        ):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help shows the defaults and whose subcommands (made by :class:`Commands`, as
    are theirs) take ``-v`` too and get their options on first use."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", Commands)


# Every command's -v: SUPPRESS leaves the top-level parser's value (False, or True given before the command) alone
# unless -v comes after the command.
_VERBOSE = argparse.ArgumentParser(add_help=False)
_VERBOSE.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages")


class _Parsers(dict):
    """The ``choices`` of a :class:`Commands`: name → parser, each given its options (its ``arguments``
    callback) when it is first looked up: by argparse when the command is parsed, or by a walk over every parser."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def __getitem__(self, name: str) -> argparse.ArgumentParser:
        parser = super().__getitem__(name)
        if (add_arguments := self.pending.pop(name, None)) is not None:
            add_arguments(parser)
        return parser

    def get(self, name, default=None):
        return self[name] if name in self else default

    def values(self):
        return [self[name] for name in self]

    def items(self):
        return [(name, self[name]) for name in self]


class Commands(argparse._SubParsersAction):
    """``add_subparsers()`` of a :class:`Parser`: ``add_parser(name, arguments=f, ...)`` registers a command whose
    options ``f(parser)`` adds on first use, with ``-v`` and the defaults formatter."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._name_parser_map = self.choices = _Parsers()

    def add_parser(self, name, *, arguments: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        kwargs["parents"] = [_VERBOSE, *kwargs.get("parents", ())]
        parser = super().add_parser(name, **kwargs)
        if arguments is not None:
            self.choices.pending[name] = arguments
        return parser
