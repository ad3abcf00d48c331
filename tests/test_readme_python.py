"""The README's Python blocks run as written (offline, random weights)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs_as_written(index, capsys):
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([2, " in printed  # each block prints the shape it promises


def test_there_are_python_blocks():
    assert len(BLOCKS) >= 2
