"""A learning-rate sweep whose pick lies at the edge of its grid: extended beyond it, or warned about."""
from __future__ import annotations

import csv
import warnings

import pytest

from captum_fgattr.bench.cli.main import main
from captum_fgattr.sae import SAEConfig, SAEMetrics, TrainConfig, select_best, sweep_lr
from captum_fgattr.sae.train import beyond_edge
from tests.test_sae_cli import make_image_folder
from tests.test_sae_train import D, S, planted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = TrainConfig(epochs=1, batch_tokens=256, warmup_steps=2, progress=False)


def _sweep(lrs: list[float], lr_extensions: int):
    return sweep_lr(planted(4096)[0], lrs, SAEConfig(d_in=D, n_features=64, k=S), CFG, lr_extensions=lr_extensions)


def test_beyond_edge_steps_by_the_grids_own_factor():
    assert beyond_edge([5e-4, 1e-3], 1e-3) == 2e-3
    assert beyond_edge([5e-4, 1e-3], 5e-4) == 2.5e-4
    assert beyond_edge([1e-2, 1e-4, 1e-3], 1e-4) == pytest.approx(1e-5, rel=1e-12)  # unsorted grid, bottom edge
    assert beyond_edge([1e-4, 1e-3, 3e-3], 3e-3) == pytest.approx(9e-3, rel=1e-12)  # factor of the edge: 3
    assert beyond_edge([1e-4, 1e-3, 1e-2], 1e-3) is None  # interior
    assert beyond_edge([1e-3], 1e-3) is None and beyond_edge([1e-3, 1e-3], 1e-3) is None  # no grid to step on


def test_tiny_learning_rates_extend_the_grid_upwards_then_warn():
    """With one short epoch, larger rates are clearly better up to 1e-2: the pick is always the top, so [1e-5, 1e-4]
    is extended by its factor 10 twice, and the pick (1e-2) is still at the edge: warned."""
    with pytest.warns(UserWarning, match=r"learning rate 0\.01 lies at the edge of the swept grid after 2 extension"):
        sweep = _sweep([1e-5, 1e-4], lr_extensions=2)
    lrs = [r.config.lr for r in sweep.results]
    assert lrs == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2], rel=1e-12)
    ev = [r.metrics.explained_variance for r in sweep.results]
    assert all(b > a + 1e-3 for a, b in zip(ev, ev[1:]))  # larger is better all the way
    assert sweep.best_index == 3 and sweep.at_edge


def test_without_extensions_the_edge_is_only_warned_about():
    with pytest.warns(UserWarning, match=r"after 0 extension\(s\) \(lr_extensions=0\)"):
        sweep = _sweep([1e-5, 1e-4], lr_extensions=0)
    assert [r.config.lr for r in sweep.results] == [1e-5, 1e-4] and sweep.best_index == 1


@pytest.mark.parametrize("grid", [[3e-3, 1e-2], [1e-1, 3e-1]])
def test_extension_stops_once_the_pick_is_interior(grid):
    """The explained variance peaks near 3e-2 (1e-1 is already worse): from below ([3e-3, 1e-2], extended up) and
    from above ([1e-1, 3e-1], extended down) the sweep stops as soon as the pick has a neighbour on both sides,
    with extensions to spare and no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sweep = _sweep(grid, lr_extensions=5)
    lrs = [r.config.lr for r in sweep.results]
    metrics = [r.metrics for r in sweep.results]
    for n in range(len(grid), len(lrs)):  # each extension is one step beyond the edge the pick then lay at
        assert lrs[n] == beyond_edge(lrs[:n], lrs[select_best(metrics[:n])])
    assert len(lrs) == 4 and not sweep.at_edge
    assert sweep.best.config.lr == pytest.approx(1 / 30, rel=1e-12)
    assert min(lrs) < sweep.best.config.lr < max(lrs)


def test_train_sae_cli_extends_and_prints_the_sweep(tmp_path, capsys):
    make_image_folder(tmp_path / "images")
    out = tmp_path / "out"
    assert main([
        "train-sae", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--num-classes", "2",
        "--data", str(tmp_path / "images"), "--layers", "2", "--expansion", "2", "--k", "8",
        "--lr", "1e-6", "2e-6", "--lr-extensions", "1", "--epochs", "1", "--batch-tokens", "16",
        "--warmup-steps", "1", "--output", str(out), "--device", "cpu", "--quiet",
    ]) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    lrs = [float(r["lr"]) for r in rows]
    selected = [float(r["lr"]) for r in rows if r["selected"] == "True"]
    assert lrs[:2] == [1e-6, 2e-6] and len(lrs) == 3
    assert lrs[2] == beyond_edge(lrs[:2], lrs[select_best([_metrics(r) for r in rows[:2]])])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("block 2:"))
    assert line.startswith(f"block 2: lr {selected[0]:g} selected of {', '.join(f'{lr:g}' for lr in sorted(lrs))} "
                           f"(beyond the given grid: {lrs[2]:g})")
    assert ("still at the edge" in line) == (beyond_edge(lrs, selected[0]) is not None)


def _metrics(row: dict[str, str]) -> SAEMetrics:
    """The training-token metrics of one ``metrics.csv`` row."""
    return SAEMetrics(**{f: float(row[f]) for f in ("explained_variance", "dead_fraction", "mean_l0", "mse")},
                      num_tokens=int(row["num_tokens"]))
