"""``fgattr train-sae --seeds``: one SAE per layer and SAE seed from one activation cache, each equal to a run with
that seed alone, with a seed column in metrics.csv and the held-out EV printed per seed and over the seeds."""
from __future__ import annotations

import csv
import re

import pytest
import torch

from captum_fgattr.bench.cli.main import main
from captum_fgattr.bench.resolve import load_saes
from captum_fgattr.bench.train_saes import SAETraining
from captum_fgattr.sae import load_sae
from captum_fgattr.sae.layers import train_layer_saes
from captum_fgattr.sae.train import TrainConfig
from tests.test_sae_cli import make_image_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = (1, 3)


def _train(images, out, *extra: str) -> int:
    return main([
        "train-sae", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--num-classes", "2",
        "--data", str(images), "--layers", *map(str, LAYERS), "--expansion", "2", "--k", "8",
        "--lr", "1e-3", "3e-3", "--lr-extensions", "0", "--epochs", "2", "--batch-tokens", "16", "--warmup-steps", "2",
        "--output", str(out), "--device", "cpu", "--quiet", "--batch-size", "3", *extra,
    ])


def _same(a, b) -> bool:
    """Bit-identical weights."""
    return a.state_dict().keys() == b.state_dict().keys() and all(
        torch.equal(a.state_dict()[name], b.state_dict()[name]) for name in a.state_dict())


def test_seeds_train_one_sae_per_layer_and_seed_each_as_alone(tmp_path, capsys) -> None:
    images = tmp_path / "images"
    make_image_folder(images)
    out = tmp_path / "seeds"
    assert _train(images, out, "--seeds", "0,1,2") == 0
    printed = capsys.readouterr().out

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert list(rows[0])[0] == "seed"
    assert sorted({(int(r["seed"]), int(r["layer"])) for r in rows}) == [(s, L) for s in (0, 1, 2) for L in LAYERS]
    picks = {(int(r["seed"]), int(r["layer"])): r for r in rows if r["selected"] == "True"}
    assert len(picks) == 6  # one selected lr per seed and layer
    assert not (out / "layer_1").exists() and not (out / "activation_cache").exists()

    saes = {seed: load_saes(str(out / f"seed_{seed}"), LAYERS) for seed in (0, 1, 2)}  # as fgattr run --saes reads
    for (seed, layer), pick in picks.items():
        sae = saes[seed][layer]
        assert sae.config.hook_layer == layer and sae.config.extra["metrics"]["seed"] == seed
        assert sae.config.extra["metrics"]["heldout_explained_variance"] == pytest.approx(
            float(pick["heldout_explained_variance"]))
        line = next(line for line in printed.splitlines() if line.startswith(f"block {layer}, seed {seed}: "))
        assert f"held-out EV {float(pick['heldout_explained_variance']):.4f}" in line
        assert f"L0 {float(pick['heldout_mean_l0']):.1f}, dead {float(pick['heldout_dead_fraction']):.3f}" in line
    for layer in LAYERS:
        assert not _same(saes[0][layer], saes[1][layer]) and not _same(saes[1][layer], saes[2][layer])
        ev = [float(picks[seed, layer]["heldout_explained_variance"]) for seed in (0, 1, 2)]
        summary = re.search(rf"^block {layer} over seeds 0, 1, 2: held-out EV mean (\S+), range (\S+)\.\.(\S+)$",
                            printed, re.MULTILINE)
        assert summary is not None
        assert [float(v) for v in summary.groups()] == pytest.approx([sum(ev) / 3, min(ev), max(ev)], abs=1e-4)

    # the shared cache changes nothing: seed 2 alone (its own cache) and seed 0 as today's single-seed run (--seed 0,
    # OUTPUT/layer_{L}/) train the same SAEs, bit for bit
    assert _train(images, tmp_path / "alone", "--seeds", "2") == 0
    assert _train(images, tmp_path / "plain", "--seed", "0") == 0
    for layer in LAYERS:
        assert _same(load_sae(tmp_path / "alone" / "seed_2" / f"layer_{layer}"), saes[2][layer])
        assert _same(load_sae(tmp_path / "plain" / f"layer_{layer}"), saes[0][layer])
    plain = list(csv.DictReader(open(tmp_path / "plain" / "metrics.csv")))
    assert "seed" not in plain[0]
    assert [r["heldout_explained_variance"] for r in plain] == [
        r["heldout_explained_variance"] for r in rows if r["seed"] == "0"]

    # a folder of one layout is not resumed in the other
    capsys.readouterr()
    assert _train(images, out) == 2 and "trained with several seeds" in capsys.readouterr().err
    assert _train(images, tmp_path / "plain", "--seeds", "0,1") == 2
    assert "trained without several seeds" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0,0", "-1", "1,a", ""])
def test_bad_seeds_are_one_line_errors_naming_the_flag(tmp_path, capsys, value) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train-sae", "--data", str(tmp_path), "--output", str(tmp_path / "out"), f"--seeds={value}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"argument --seeds: {value!r}; expected distinct ints >= 0" in err


def test_bad_seeds_are_refused_in_python(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"--seeds=\[1, 1\]; expected distinct ints >= 0"):
        SAETraining(data="images", output="out", seeds=[1, 1])
    for seeds in ([], [True], [-2], [1.0]):
        with pytest.raises(ValueError, match="seeds=.*; expected distinct ints >= 0"):
            train_layer_saes(torch.nn.Identity(), [], {}, TrainConfig(), tmp_path, seeds=seeds)
