"""The README's Python examples run, in order, as one program: documentation cannot rot."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(python_blocks(README.read_text())) >= 5


def test_readme_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real module: dataclasses and msgspec resolve annotations through sys.modules.
    module = types.ModuleType("readme_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(python_blocks(README.read_text()), 1):
        code = compile(block, f"README.md python block {number}", "exec")
        exec(code, module.__dict__)
