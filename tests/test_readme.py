"""Every code block and every command of README.md runs, so the README cannot drift from the code.

The convention (README.md states it too):

* Every fenced block has an info string. ``python``, ``bash``, ``sh`` and ``console`` blocks are code: they all
  run, in document order, in one fresh temporary directory (the README's paths are relative to the repository
  root, where ``make demo`` writes ``out/``). ``text`` blocks (synopses, diagrams) are not code. Any other info
  string, or none, fails the test.
* The ``python`` blocks share one namespace: the README reads as one Python session.
* A shell block's commands (lines joined at a trailing backslash, ``#`` comments dropped) are ``gemma4 …``, run
  as ``python -m pipelines.cli …`` and required to succeed, or exactly ``make demo`` / ``make test``. In a
  ``console`` block a command is a line starting with ``$ ``, and the lines up to the next one are its output,
  compared exactly. ``make test`` is what CI runs (``.ci/run``). ``make demo`` installs, then runs the gemma4
  commands of the Makefile's ``demo`` recipe, which must equal the README's next shell block, run here.
* The only way to skip a block is the line ``<!-- readme-test: needs-gpu -->`` just above it: it then runs only
  where CUDA is available. The test asserts that every other code block ran.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(.*)$")
SHELL = {"bash", "sh", "console"}
CODE = {"python"} | SHELL
NOT_CODE = {"text"}
GPU_MARK = "<!-- readme-test: needs-gpu -->"


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # of the opening fence, 1-based
    needs_gpu: bool


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text; raises ``ValueError`` on a fence without a known info string or one
    that is never closed."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        lang = match.group(1).strip()
        if lang not in CODE | NOT_CODE:
            raise ValueError(f"README.md:{i + 1}: fence {lines[i]!r}: say python, bash, sh, console or text")
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == "```"), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: the block is never closed")
        above = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        blocks.append(Block(lang, "\n".join(lines[i + 1 : end]) + "\n", i + 1, above == GPU_MARK))
        i = end + 1
    return blocks


def shell_commands(block: Block) -> list[tuple[str, str | None]]:
    """(command, expected output or None) of a shell block."""
    if block.lang == "console":
        commands: list[tuple[str, list[str]]] = []
        for line in block.code.splitlines():
            if line.startswith("$ "):
                commands.append((line[2:], []))
            elif commands:
                commands[-1][1].append(line)
            else:
                raise ValueError(f"README.md:{block.line}: console output before any '$ ' command")
        return [(command, "\n".join(output)) for command, output in commands]
    joined = block.code.replace("\\\n", " ")
    return [(line, None) for line in joined.splitlines() if shlex.split(line, comments=True)]


def demo_recipe() -> list[str]:
    """The gemma4 commands of the Makefile's ``demo`` recipe, as a user would type them."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("demo:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        if "$(BIN)/gemma4 " in line:
            recipe.append(line.strip().replace("$(BIN)/gemma4", "gemma4"))
    return recipe


def run_gemma4(command: str, cwd: Path) -> str:
    argv = shlex.split(command, comments=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{command!r} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_every_block_and_command_of_the_readme_runs(tmp_path, monkeypatch):
    import torch

    blocks = readme_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    code = [b for b in blocks if b.lang in CODE]
    assert {b.lang for b in code} >= {"python", "bash", "console"}
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    ran, skipped, expect_demo_listing = [], [], False
    for block in code:
        if block.needs_gpu and not torch.cuda.is_available():
            skipped.append(block)
            continue
        if block.lang == "python":
            exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)
        else:
            commands = shell_commands(block)
            if expect_demo_listing:
                assert [c for c, _ in commands] == demo_recipe(), f"README.md:{block.line}: not the demo recipe"
                expect_demo_listing = False
            for command, expected in commands:
                words = shlex.split(command, comments=True)
                if words == ["make", "demo"]:
                    expect_demo_listing = True  # the next shell block lists (and runs) what it runs
                elif words == ["make", "test"]:
                    assert "make test" in (ROOT / ".ci" / "run").read_text()
                else:
                    assert words[0] == "gemma4", f"README.md:{block.line}: {command!r} is not a gemma4 command"
                    output = run_gemma4(command, tmp_path)
                    if expected is not None:
                        got = "\n".join(line.rstrip() for line in output.rstrip("\n").splitlines())
                        assert got == expected.rstrip("\n"), f"README.md:{block.line}: {command!r} printed\n{output}"
        ran.append(block)
    assert not expect_demo_listing, "`make demo` is not followed by a block listing its commands"
    assert len(ran) + len(skipped) == len(code)
    assert all(b.needs_gpu for b in skipped)
    assert len([b for b in ran if not b.needs_gpu]) == len([b for b in code if not b.needs_gpu])


def test_block_parser_knows_the_conventions():
    text = "\n".join(
        [
            "```python",
            "x = 1",
            "```",
            GPU_MARK,
            "",
            "```bash",
            "gemma4 budget 10 \\",
            "    20   # a comment",
            "# only a comment",
            "```",
            "```console",
            "$ gemma4 budget 1 1",
            "out 1",
            "out 2",
            "```",
            "```text",
            "gemma4 preprocess MANIFEST OUT [...]",
            "```",
        ]
    )
    python, bash, console, synopsis = readme_blocks(text)
    assert (python.lang, python.code, python.needs_gpu) == ("python", "x = 1\n", False)
    assert bash.needs_gpu and shell_commands(bash) == [("gemma4 budget 10      20   # a comment", None)]
    assert shell_commands(console) == [("gemma4 budget 1 1", "out 1\nout 2")]
    assert synopsis.lang == "text"
    with pytest.raises(ValueError, match="say python"):
        readme_blocks("```\nplain\n```\n")
    with pytest.raises(ValueError, match="say python"):
        readme_blocks("```py\nx = 1\n```\n")
    with pytest.raises(ValueError, match="never closed"):
        readme_blocks("```python\nx = 1\n")
