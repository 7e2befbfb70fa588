"""Every ```python block of README.md runs as written (each in a fresh namespace and directory)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced ```python block."""
    blocks = []
    for match in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.DOTALL | re.MULTILINE):
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4  # solving, stepping, PRDP in your own loop, the flow solver


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # whatever a block writes lands here
    monkeypatch.setenv("PDEACCEL_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    start = time.perf_counter()
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
    seconds = time.perf_counter() - start
    # README examples are meant to be typed in and seen to work: keep each one quick
    assert seconds < 60, f"README block at line {line} took {seconds:.0f} s; make it smaller"


def test_the_block_extractor_finds_blocks_and_skips_other_languages():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\nz = 3\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (8, "y = 2\nz = 3\n")]


def test_the_readme_says_which_commands_take_out_and_size():
    import argparse

    from pdeaccel.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    takes = {name: {o for a in p._actions for o in a.option_strings} & {"--out", "--size"}
             for name, p in sub.choices.items()}
    assert takes == {"demo": {"--out", "--size"}, "train": {"--out", "--size"}, "compare": {"--out", "--size"},
                     "sweep": {"--out", "--size"}, "simulate": {"--out"}, "experiments": {"--size"}, "report": set(),
                     "export": {"--out"}, **({"control": takes["control"]} if "control" in takes else {})}
    text = " ".join(README.read_text().split())
    assert "`demo`, `train`, `compare` and `sweep` take `--out DIR`" in text
    assert "`simulate` takes `--out` but no `--size`" in text
    assert "`export` takes `--out` (required)" in text
    assert "`experiments` takes `--size`, and `report` takes neither" in text
    assert "Every command takes" not in text
