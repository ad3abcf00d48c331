"""The README's small own-model block, run as written on a temporary folder (own ViT, own images)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image

from captum_fgattr.bench.cli.main import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _own_data_commands() -> list[list[str]]:
    block = re.search(r"\*\*A small own model, end to end\*\*.*?```bash\n(.*?)```", README, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in lines if line.startswith("fgattr ")]


def _write_inputs(root: Path, model_kwargs: dict) -> None:
    from safetensors.torch import save_file

    from captum_fgattr.bench.models.loading import load_timm_model

    torch.manual_seed(0)
    vit = load_timm_model("vit_tiny_patch16_224", num_classes=2, img_size=32, **model_kwargs)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(root / "own_vit.safetensors"))
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 4), ("test", 4)):
        for c, name in enumerate(("benign", "malignant")):
            (root / "images" / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(36, 40, 3, generator=g) * 255 * (0.5 + 0.5 * c)).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / "images" / split / name / f"{i}.png")


@pytest.mark.usefixtures("one_torch_thread")
def test_readme_own_data_block_runs_as_written(tmp_path, monkeypatch):
    import json

    commands = _own_data_commands()
    assert [c[0] for c in commands] == ["train-sae", "run", "features"]
    specs = [c[c.index("--model-kwargs") + 1] for c in commands if "--model-kwargs" in c]
    assert len(specs) == 2 and specs[0] == specs[1]  # one model spec in every command that builds the model
    _write_inputs(tmp_path, json.loads(specs[0]))
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert main([*command, "--quiet"] if command[0] != "run" else command) == 0, command
    assert sorted(p.name for p in (tmp_path / "saes" / "own").glob("layer_*")) == ["layer_1", "layer_2"]
    assert (tmp_path / "runs" / "own" / "report" / "report.md").is_file()
    assert any((tmp_path / "runs" / "own" / "features").iterdir())
