"""``gemma4 bench WHAT``: the benchmarks, registered by ``bench.cli`` (each benchmark's name, help, options and
handler live with the benchmarks). The handlers are ``bench.cli``'s: this module only attaches them, when
``gemma4 bench`` is parsed, so no other command imports ``bench`` at all."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(subparsers) -> None:
    subparsers.add_parser("bench", help="benchmarks", arguments=_arguments)


def _arguments(p: argparse.ArgumentParser) -> None:
    from bench.cli import register

    register(p.add_subparsers(dest="bench", required=True, metavar="WHAT"))
