"""The README's examples, run as written: they cannot drift from what zoo does.

    .venv/bin/pytest tests/test_readme.py

Every fenced block in README.md is preceded by a marker comment saying what the test does with it:

    <!-- readme-test: run -->            run it: ```sh line by line (``\\`` continues a line), ```console
                                        as ``$ command`` lines each followed by its expected output
                                        (``...`` matches anything; output starting ``error:`` means the
                                        command must fail), ```python as a script
    <!-- readme-test: file NAME -->     write the block to NAME (a registry file a later block uses)
    <!-- readme-test: skip (why) -->    not runnable here (installs, diagrams, placeholders for your data)

The blocks run in README order in one folder that holds what the README says it assumes:
``all-MiniLM-L6-v2/`` (the real MiniLM package's folder) and ``digit-8.png``. ``zoo`` and
``python`` on the PATH are this checkout's. A block without a marker fails the test, so a new
example is either run or says why not. Extracted rather than kept in included files because
Markdown has no include: the README text itself is what runs.
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

from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*(run|file|skip)\b\s*([^>]*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    action: str | None  # run | file | skip, None when unmarked
    argument: str


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block with the marker comment on the line before it (if any)."""
    lines = text.splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        marker = MARKER.search(lines[index - 1]) if index else None
        blocks.append(Block(index + 1, opening.group(1), "\n".join(lines[index + 1:end]) + "\n",
                            marker.group(1) if marker else None, marker.group(2) if marker else ""))
        index = end + 1
    return blocks


def shell_commands(block: Block) -> list[str]:
    """Command lines of an sh block: continuations joined, comments and install lines left out."""
    joined = block.text.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and not line.startswith("pip install"):
            commands.append(line)
    return commands


def console_steps(block: Block) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and line.strip():
            steps[-1][1].append(line)
    return steps


def matches(expected: list[str], output: str) -> bool:
    """``expected`` lines (``...`` = anything, across lines too) found in order in ``output``."""
    if not expected:
        return True
    pattern = ".*".join(re.escape(part) for part in "\n".join(expected).split("..."))
    return re.search(pattern.replace("\\\n", ".*"), output, re.DOTALL) is not None


# ---------------------------------------------------------------- the parser itself, on a tiny README


def test_parser_reads_markers_commands_and_expectations() -> None:
    text = ("<!-- readme-test: run -->\n```console\n$ zoo info x\nerror: unknown ...\n$ zoo list\n```\n"
            "```sh\nzoo a \\\n  --b\n```\n<!-- readme-test: skip (why) -->\n```\npip install x\n```\n")
    blocks = readme_blocks(text)
    assert [(b.action, b.language) for b in blocks] == [("run", "console"), (None, "sh"), ("skip", "")]
    assert console_steps(blocks[0]) == [("zoo info x", ["error: unknown ..."]), ("zoo list", [])]
    assert shell_commands(blocks[1]) == ["zoo a    --b"]
    assert matches(["error: unknown ..."], "error: unknown model 'x'\n")
    assert not matches(["error: unknown ...", "did you mean"], "error: unknown model 'x'\n")


def test_every_readme_block_is_run_or_says_why_not() -> None:
    unmarked = [b.line for b in readme_blocks(README.read_text()) if b.action is None]
    assert not unmarked, f"README.md blocks at lines {unmarked} have no <!-- readme-test: ... --> marker"
    runnable = [b for b in readme_blocks(README.read_text()) if b.action == "run"]
    assert {b.language for b in runnable} == {"sh", "console", "python"}


# ---------------------------------------------------------------- the README, run


@pytest.fixture(scope="module")
def readme_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A folder with what the README assumes, and an environment whose zoo/python are this checkout's."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    world = tmp_path_factory.mktemp("readme")
    (world / "all-MiniLM-L6-v2").symlink_to(tiny.minilm_dir(), target_is_directory=True)
    digits = load_digits()
    eight = int(np.flatnonzero(digits.target == 8)[0])
    Image.fromarray((digits.images[eight] / 16 * 255).astype(np.uint8)).save(world / "digit-8.png")
    bin_dir = tmp_path_factory.mktemp("bin")
    # scripts, not symlinks: a symlinked venv python would not find the venv's site-packages
    for name, command in (("zoo", "-m zoo "), ("python", "")):
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {command}\"$@\"\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "200"}
    return world, env


def _run(command: str, world: Path, env: dict[str, str], where: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=world, env=env, capture_output=True,
                          text=True, timeout=1200)


def _run_block(block: Block, world: Path, env: dict[str, str]) -> None:
    where = f"README.md:{block.line}"
    if block.action == "file":
        (world / block.argument).write_text(block.text)
    elif block.language == "python":
        (world / "readme_block.py").write_text(block.text)
        done = _run("python readme_block.py", world, env, where)
        assert done.returncode == 0, f"{where}: the python block failed:\n{done.stderr[-3000:]}"
    elif block.language == "console":
        for command, expected in console_steps(block):
            done = _run(command, world, env, where)
            output = done.stdout + done.stderr
            failing = bool(expected) and expected[0].startswith("error:")
            assert (done.returncode != 0) == failing, f"{where}: '{command}' exit {done.returncode}:\n{output[-3000:]}"
            assert matches(expected, output), f"{where}: '{command}' printed:\n{output[-3000:]}\nexpected: {expected}"
    else:
        for command in shell_commands(block):
            done = _run(command, world, env, where)
            assert done.returncode == 0, f"{where}: '{command}' exit {done.returncode}:\n{done.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.distributed  # the fine-tune example starts two processes
def test_readme_examples_run_as_written(readme_world: tuple[Path, dict[str, str]]) -> None:
    world, env = readme_world
    ran = 0
    for block in readme_blocks(README.read_text()):
        if block.action in ("run", "file"):
            _run_block(block, world, env)
            ran += 1
    assert ran >= 8
    assert (world / "artifacts" / "minilm" / "manifest.json").is_file(), "the export line writes where the rest reads"
    assert (world / "predictions.csv").read_text().startswith("input,label,score")
