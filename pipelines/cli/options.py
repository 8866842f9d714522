"""Command-line options generated from the fields of a settings dataclass, and the fields' values read back from
the parsed arguments, so that each default is written once: in the dataclass (``--help`` shows it from there).

One field becomes one option:

* flags: ``--kebab-name`` (``max_new_tokens`` → ``--max-new-tokens``), or ``metadata["flag"]``: a string, or a
  tuple of them (the first names the option, the others are aliases). A ``bool`` field is a switch that turns its
  default over: ``--name`` for a default of False, ``--no-name`` for True (a ``flag`` names it either way:
  ``exact``, default True, is ``--fast``).
* type, from the annotation: ``int`` (at least ``metadata["min"]`` where given), ``float``, ``str``, ``X | None``
  (as X), ``tuple[X, ...]`` (a repeatable option); ``metadata["choices"]``; or the caller's ``types[name]``, a
  parser for what the annotation cannot say (a budget of the supported set, seconds or 'none').
* help: ``metadata["help"]`` (required), with ``metadata["metavar"]`` where given; the default is appended by the
  formatter (``common.DefaultsFormatter``).
* default: the field's, unless the caller's ``defaults`` gives the command's own (said once, at the call), either
  a value or :class:`Unset`: None on the command line, resolved when the command runs (the help says from where,
  then the field's default). A field without a default is a required option.

``args.<dest>`` follows argparse's rule (the first flag's name), so a switch reads True when given
(``args.no_cuda_graphs``); :meth:`FieldOptions.values` turns the parsed arguments back into field values.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .common import at_least, whole_number

__all__ = ["FieldOptions", "Option", "Unset"]


@dataclass(frozen=True)
class Unset:
    """A command's default of None for a field whose value is found when the command runs, in ``source`` (as
    ``the checkpoint's processor_config.json``), else the field's default."""

    source: str


@dataclass(frozen=True)
class Option:
    """One generated option: the ``field`` it sets, its ``flags``, ``dest`` in the parsed arguments, and the
    command's ``default`` of the field (None for an :class:`Unset` one)."""

    field: str
    flags: tuple[str, ...]
    dest: str
    default: Any
    kind: str  # "value", "switch" (a bool: the flag turns default over) or "repeat" (a tuple: one per flag given)
    unset: bool  # the default is an Unset: resolved when the command runs
    argparse_kwargs: Mapping[str, Any]

    def value(self, parsed: Any) -> Any:
        """The field's value from what argparse parsed for this option."""
        if self.kind == "switch":
            return (not self.default) if parsed else self.default
        if self.kind == "repeat":
            return self.default if parsed is None else tuple(parsed)
        return parsed


class FieldOptions:
    """The options of the fields ``names`` of the dataclass ``cls`` (see the module docstring for the rules);
    ``defaults`` and ``types`` give the command's own default or parser of some of them."""

    def __init__(
        self,
        cls: type,
        names: Sequence[str],
        *,
        defaults: Mapping[str, Any] | None = None,
        types: Mapping[str, Callable[[str], Any]] | None = None,
    ) -> None:
        defaults, types = defaults or {}, types or {}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if unknown := sorted((set(names) | set(defaults) | set(types)) - set(fields)):
            raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
        if stray := sorted((set(defaults) | set(types)) - set(names)):
            raise TypeError(f"defaults or types for {', '.join(stray)}, which are not among the options")
        hints = typing.get_type_hints(cls)
        self.cls = cls
        self.options = tuple(
            _option(cls, fields[name], hints[name], defaults.get(name, dataclasses.MISSING), types.get(name))
            for name in names
        )
        self.field_defaults = {name: _field_default(fields[name]) for name in names}

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add the options to ``parser``."""
        for option in self.options:
            parser.add_argument(*option.flags, **option.argparse_kwargs)

    def values(self, args: argparse.Namespace, resolved: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Field name → value from the parsed ``args``; an :class:`Unset` option left unsaid takes its value from
        ``resolved`` (what the command found), else the field's default."""
        resolved = resolved or {}
        out = {}
        for option in self.options:
            value = option.value(getattr(args, option.dest))
            if value is None and option.unset:
                found = resolved.get(option.field)
                value = self.field_defaults[option.field] if found is None else found
            out[option.field] = value
        return out

    def given(self, args: argparse.Namespace) -> dict[str, tuple[str, Any]]:
        """The options given on the command line (their parsed value is not the option's default): first flag →
        (field, value)."""
        out = {}
        for option in self.options:
            parsed = getattr(args, option.dest)
            if option.kind == "switch":
                given = bool(parsed)
            elif option.kind == "repeat":
                given = parsed is not None
            else:
                given = parsed != option.default
            if given:
                out[option.flags[0]] = (option.field, option.value(parsed))
        return out


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _option(cls: type, field: dataclasses.Field, hint: Any, override: Any, parse: Callable | None) -> Option:
    where = f"{cls.__name__}.{field.name}"
    meta = field.metadata
    if "help" not in meta:
        raise TypeError(f"{where}: no metadata['help'] for its option")
    default = _field_default(field) if override is dataclasses.MISSING else override
    required = default is dataclasses.MISSING
    help_text = meta["help"]
    unset = isinstance(default, Unset)
    if unset:
        help_text += f" (default: {default.source}, else {_field_default(field)})"
        default = None
    flag = meta.get("flag", ())
    flags = (flag,) if isinstance(flag, str) else tuple(flag)
    kebab = field.name.replace("_", "-")
    inner = _without_none(hint, where)

    if inner is bool:
        if required or unset or parse is not None:
            raise TypeError(f"{where}: a switch needs a default of True or False, and no type")
        flags = flags or (f"--no-{kebab}" if default else f"--{kebab}",)
        kwargs: dict[str, Any] = {"action": "store_true", "help": help_text}
        return Option(field.name, flags, _dest(flags), default, "switch", False, kwargs)

    flags = flags or (f"--{kebab}",)
    kwargs = {"help": help_text, "required": required, "default": None if required else default}
    kwargs.update({key: meta[key] for key in ("metavar", "choices") if key in meta})
    kind = "value"
    if typing.get_origin(inner) is tuple:
        item, *rest = typing.get_args(inner)
        if rest != [Ellipsis]:
            raise TypeError(f"{where}: a repeatable option is a tuple[X, ...], not {hint}")
        kind, inner = "repeat", item
        kwargs.update(action="append", default=None)  # argparse appends to a list of its own, never the default
    kwargs["type"] = parse or _parser(inner, meta, where)
    return Option(field.name, flags, _dest(flags), None if required else default, kind, unset, kwargs)


def _without_none(hint: Any, where: str) -> Any:
    """``X`` of ``X | None``; ``hint`` itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(others) != 1:
            raise TypeError(f"{where}: no option type for {hint}: give one in types=")
        return others[0]
    return hint


def _parser(kind: Any, meta: Mapping[str, Any], where: str) -> Callable[[str], Any]:
    if kind is int:
        return at_least(meta["min"]) if "min" in meta else whole_number
    if kind in (float, str):
        return kind
    raise TypeError(f"{where}: no option type for {kind}: give one in types=")


def _dest(flags: tuple[str, ...]) -> str:
    """argparse's dest: the first long flag's name."""
    long = next((f for f in flags if f.startswith("--")), flags[0])
    return long.lstrip("-").replace("-", "_")
