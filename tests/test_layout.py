"""The layout of the tests themselves: shared helpers live in ``conftest.py`` fixtures or a ``helpers.py`` module
(tests/helpers.py, tests/<package>/helpers.py), so no module under tests/ imports a test module (``test_*.py``),
and none imports a ``conftest.py`` (pytest loads those itself; imported, one would run twice)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def imported_modules(tree: ast.Module, package: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every module an import statement may name: ``from a.b import c`` gives ``a.b`` and
    ``a.b.c`` (``c`` may be a module), relative imports resolved against ``package``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def module_file(dotted: str) -> Path | None:
    """The file under tests/ that ``dotted`` names, if any."""
    parts = dotted.split(".")
    if parts[0] != "tests":
        return None
    path = ROOT.joinpath(*parts)
    return next((p for p in (path.with_suffix(".py"), path / "__init__.py") if p.is_file()), None)


def forbidden(path: Path) -> bool:
    return path.name == "conftest.py" or (path.name.startswith("test_") and path.suffix == ".py")


def test_no_test_module_imports_another_test_module_or_a_conftest():
    assert (TESTS / "conftest.py").is_file() and any(TESTS.rglob("helpers.py"))  # the layout this test guards
    found = []
    for source in sorted(TESTS.rglob("*.py")):
        relative = source.relative_to(ROOT)
        package = ".".join(relative.with_suffix("").parts[:-1])
        tree = ast.parse(source.read_text(), filename=str(relative))
        for line, dotted in imported_modules(tree, package):
            target = module_file(dotted)
            if target is not None and forbidden(target):
                found.append(f"{relative}:{line} imports {target.relative_to(ROOT)} ({dotted})")
    assert not found, (
        "test modules import test modules or conftest.py; move the shared helper to a helpers.py module or a "
        "conftest.py fixture:\n" + "\n".join(sorted(set(found)))
    )


def test_the_check_sees_every_spelling_of_an_import():
    """The checker itself: absolute, from-package, relative and conftest imports are all resolved to their files."""
    source = (
        "import tests.model.test_cache\n"
        "from tests.model import test_gemma4 as gemma4_tests\n"
        "from tests.model.test_gemma4 import tiny_config\n"
        "from .test_cache import TINY\n"
        "from . import test_cache\n"
        "from ..conftest import reference\n"
        "from tests.model.helpers import tiny_config\n"
        "import torch\n"
    )
    names = imported_modules(ast.parse(source), "tests.model")
    hits = sorted({line for line, dotted in names if (target := module_file(dotted)) and forbidden(target)})
    assert hits == [1, 2, 3, 4, 5, 6]
