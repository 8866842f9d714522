"""No module of the project uses another module's private names (``_name``): what modules share is public, so a
reader can follow it and a change to a module's insides cannot break another module unseen."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("preprocess", "model", "runtime", "pipelines", "data_specs", "bench")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _base(module: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` in ``module`` (a path under ROOT) names."""
    if not node.level:
        return node.module or ""
    package = list(module.relative_to(ROOT).with_suffix("").parts[:-1])
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def private_uses(module: Path, source: str) -> list[str]:
    """``file:line: what`` for each private name of another project module that ``source`` imports or reads
    (``from x import _y``, ``x._y`` where ``x`` is an imported project module or name)."""
    tree = ast.parse(source)
    imported: set[str] = set()
    found = []
    where = module.relative_to(ROOT)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            if base.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{where}:{node.lineno}: from {base} import {alias.name}")
                imported.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    imported.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            value = node.value
            if isinstance(value, ast.Name) and value.id in imported:
                found.append(f"{where}:{node.lineno}: {value.id}.{node.attr}")
    return sorted(found, key=lambda line: int(line.split(":")[1]))


def test_no_module_uses_another_modules_private_names():
    found = []
    for package in PACKAGES:
        for module in sorted((ROOT / package).rglob("*.py")):
            found += private_uses(module, module.read_text(encoding="utf-8"))
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_check_sees_each_kind_of_use():
    module = ROOT / "pipelines" / "example.py"
    source = (
        "from .preprocess_job import _load_state, Job\n"
        "from pipelines import infer_job\n"
        "import model.checkpoint as checkpoint\n"
        "from os import _exit\n"
        "infer_job._Input\n"
        "checkpoint._header(1)\n"
        "Job._started\n"
        "self._own\n"
    )
    assert private_uses(module, source) == [
        "pipelines/example.py:1: from pipelines.preprocess_job import _load_state",
        "pipelines/example.py:5: infer_job._Input",
        "pipelines/example.py:6: checkpoint._header",
        "pipelines/example.py:7: Job._started",
    ]
