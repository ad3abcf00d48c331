"""The README's small own-model blocks, run as written on a temporary folder of generated images: the Python that
fine-tunes and saves the checkpoint, then the ``.venv/bin/fgattr`` commands (in this process, as ``fgattr``)."""
from __future__ import annotations

import json
import re
import shlex
from itertools import takewhile
from pathlib import Path

import pytest
import torch
from PIL import Image

from captum_fgattr.bench.cli.main import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SECTION = re.search(r"\*\*A small own model, end to end\*\*(.*?)\*\*A downloaded checkpoint folder\*\*", README,
                    re.S).group(1)
PYTHON, FGATTR = ".venv/bin/python - <<'EOF'", ".venv/bin/fgattr "


def _steps() -> list[tuple[str, str | list[str]]]:
    """The section's bash blocks as ``("python", source)`` (a heredoc to the virtual environment's python) and
    ``("fgattr", argv)`` steps, in order; any other line fails the test (it would not be run)."""
    steps: list[tuple[str, str | list[str]]] = []
    for block in re.findall(r"```bash\n(.*?)```", SECTION, re.S):
        lines = iter(block.splitlines())
        for line in lines:
            if line == PYTHON:
                steps.append(("python", "\n".join(takewhile(lambda code: code != "EOF", lines))))
                continue
            while line.endswith("\\"):
                line = line[:-1] + next(lines)
            if line.startswith(FGATTR):
                steps.append(("fgattr", shlex.split(line)[1:]))
            elif line.strip() and not line.startswith("#"):
                raise AssertionError(f"a README line this test does not run: {line!r}")
    return steps


def _write_images(root: Path) -> None:
    """``root/images/{train,val,test}/{benign,malignant}/*.png``: the classes differ in brightness."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 4), ("test", 4)):
        for c, name in enumerate(("benign", "malignant")):
            (root / "images" / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(36, 40, 3, generator=g) * 255 * (0.5 + 0.5 * c)).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / "images" / split / name / f"{i}.png")


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.mark.usefixtures("one_torch_thread")
def test_readme_own_data_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    steps = _steps()
    assert [kind for kind, _ in steps] == ["python", "fgattr", "fgattr", "fgattr"]
    source = steps[0][1]
    commands = [argv for kind, argv in steps[1:]]
    assert [c[0] for c in commands] == ["train-sae", "run", "features"]
    built = [c for c in commands if "--model-kwargs" in c]
    assert len(built) == 2 and all(_flag(c, "--model-kwargs") == _flag(built[0], "--model-kwargs") for c in built)
    for key, value in json.loads(_flag(built[0], "--model-kwargs")).items():  # the checkpoint's architecture
        assert f"{key}={value}" in source, key
    assert all(f"mean={_flag(c, '--mean')}, std={_flag(c, '--std')}" in source for c in built)  # its statistics

    _write_images(tmp_path)
    monkeypatch.chdir(tmp_path)
    exec(compile(source, "README.md own-model checkpoint block", "exec"), {})
    assert (tmp_path / "own_vit.safetensors").is_file()
    for command in commands:
        capsys.readouterr()
        assert main([*command, "--quiet"] if command[0] != "run" else command) == 0, command
        if command[0] == "run":
            err = capsys.readouterr().err
            assert "model: 2 classes, from the checkpoint's head" in err
            assert "normalisation:" not in err  # --mean / --std given: no note about the model's statistics
    assert sorted(p.name for p in (tmp_path / "saes" / "own").glob("layer_*")) == ["layer_1", "layer_2"]
    assert (tmp_path / "runs" / "own" / "report" / "report.md").is_file()
    assert any((tmp_path / "runs" / "own" / "features").iterdir())
