"""The default ViT and the demo SAEs shipped as package data, and the command that produces them.

``fgattr demo`` loads these files (no training on the first run). They were written by::

    python -m captum_fgattr.bench.default.assets --output captum_fgattr/bench/default/shipped

which trains the default ViT (:func:`captum_fgattr.bench.default.vit.train_default_model` with
:data:`~captum_fgattr.bench.default.vit.DEFAULT_TRAIN`, through ``default_model(retrain=True)``) and one
TopK SAE per block of :data:`SAE_LAYERS` (:func:`train_demo_saes`), each on one CPU thread with
deterministic algorithms. ``fgattr demo --retrain`` runs the same training code and reports whether
its weights are bit-identical to the shipped ones. Layout (``<folder>`` = :data:`~captum_fgattr.bench.default.vit.SHIPPED_DIR`)::

    <folder>/model.safetensors                    ViT state dict (float32)
    <folder>/saes/layer_{L}/sae.safetensors, config.json   SAE of block L (0-based); config.json holds
                                                  its metrics, held-out ones included (:func:`sae_quality`)
    <folder>/sae_seeds/seed_{s}/layer_{L}/        the replicate SAEs: the same recipe from SAE seed s of
                                                  :data:`SHIPPED_SAE_SEEDS` (the study's SAE-seed replicates)
    <folder>/info.json                            the command, recipe, platform, model info (accuracies),
                                                  sha256 of every weights file, SAE metrics per layer (and seed)
    <folder>/models/<name>/                       a replicate model of :data:`~captum_fgattr.bench.default.vit.RECIPES`
                                                  (other model seed, 196 patches): the same layout, its own
                                                  model, SAEs and info.json (no replicate SAE seeds); written by
                                                  ``python -m captum_fgattr.bench.default.assets --model <name>``

Example::

    >>> SAE_K <= SAE_LAYERS_WIDTH // 4
    True
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captum_fgattr.bench.default import MODEL_NAME, SHIPPED_SAE_SEEDS
from captum_fgattr.bench.default.br35h import Br35HSplit, default_splits
from captum_fgattr.bench.default.vit import (
    DEFAULT_TRAIN, DEFAULT_VIT, RECIPES, SHIPPED_DIR, ViTConfig, ViTTrainConfig, default_model, save_model,
    sha256_file, shipped_folder, shipped_model,
)
from captum_fgattr.determinism import deterministic
from captum_fgattr.sae.layers import layer_folder, sae_quality, seed_folder, train_layer_saes
from captum_fgattr.sae.model import SparseAutoencoder
from captum_fgattr.sae.train import TrainConfig as SAETrainConfig
from captum_fgattr.sae.train import sae_config_for

__all__ = [
    "SAE_LAYERS", "SAE_EXPANSION", "SAE_K", "SAE_TRAINING", "SAE_THREADS", "SAE_SEEDS_DIR", "ASSETS_FORMAT",
    "train_demo_saes", "build_assets", "add_sae_seeds", "shipped_info", "shipped_sae_digests", "load_shipped_saes",
    "sae_quality", "sae_recipe",
]

ASSETS_FORMAT = "captum_fgattr.default_assets.v1"
COMMAND = "python -m captum_fgattr.bench.default.assets --output captum_fgattr/bench/default/shipped"
SAE_LAYERS: tuple[int, ...] = (1, 2, 3, 4)  # 0-based blocks of the 6-block default ViT
SAE_LAYERS_WIDTH = DEFAULT_VIT.embed_dim  # d_in of the SAEs (96)
SAE_EXPANSION = 16  # n_features = 16 × 96 = 1,536
SAE_K = 16  # TopK active features: sparse, k ≤ d_in / 4
SAE_TRAINING = SAETrainConfig(lr=2e-3, epochs=8, batch_tokens=512, warmup_steps=100, progress=False)
SAE_THREADS = 1  # torch threads while collecting tokens and training (fixed: reproducible weights)
SAE_SEEDS_DIR = "sae_seeds"  # <folder>/sae_seeds/seed_{s}/layer_{L}/


def sae_recipe(expansion: int = SAE_EXPANSION, k: int = SAE_K, training: SAETrainConfig = SAE_TRAINING) -> dict[str, Any]:
    """The SAE settings that determine the weights, as recorded in ``info.json`` (progress excluded)."""
    return {"expansion": expansion, "k": k, "threads": SAE_THREADS,
            "training": {**dataclasses.asdict(dataclasses.replace(training, progress=False)), "betas": list(training.betas)}}


def train_demo_saes(
    model: nn.Module,
    train_split: Br35HSplit,
    layers: Sequence[int],
    output: str | Path,
    expansion: int = SAE_EXPANSION,
    k: int = SAE_K,
    training: SAETrainConfig = SAE_TRAINING,
    heldout_split: Br35HSplit | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    seeds: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Train one TopK SAE per block of ``layers`` on ``train_split``'s patch tokens into ``output``
    (``seeds``: one per block and SAE seed, in ``output/seed_{s}/layer_{L}/``; None: ``training.seed`` only).

    Tokens of ``heldout_split`` (images the SAE never sees; the demo uses the validation split) give
    the held-out metrics. Runs on :data:`SAE_THREADS` threads with deterministic algorithms; each
    layer's SAE depends only on its own tokens and the seed. Resumable (layers already in ``output``
    are kept). Returns the ``metrics.csv`` rows.
    """
    width = model.embed_dim
    configs = {layer: sae_config_for(width, expansion=expansion, k=k, hook_layer=layer, model_name="br35h_vit")
               for layer in layers}
    heldout = None
    if heldout_split is not None:
        heldout = torch.utils.data.DataLoader(heldout_split.tensors()[0], batch_size=256)
    with deterministic(SAE_THREADS):
        return train_layer_saes(
            model, torch.utils.data.DataLoader(train_split.tensors()[0], batch_size=256), configs,
            dataclasses.replace(training, progress=progress), output, device=device, heldout_loader=heldout,
            seeds=seeds)


def _sae_entries(folder: Path, rows: Sequence[dict[str, Any]], layers: Sequence[int],
                 seed: int | None = None) -> dict[str, Any]:
    """{layer: {"weights_sha256", "metrics"}} of the SAEs in ``folder`` (a folder of ``layer_{L}/``) for
    ``info.json``, from the training rows (of ``seed`` where the rows have seeds)."""
    out = {}
    for layer in layers:
        selected = next(row for row in rows if row["layer"] == layer and row["selected"]
                        and row.get("seed", seed) == seed)
        out[str(layer)] = {"weights_sha256": sha256_file(layer_folder(folder, layer) / "sae.safetensors"),
                           "metrics": {key: value for key, value in selected.items()
                                       if key not in ("layer", "selected", "seed")}}
    return out


def add_sae_seeds(
    folder: str | Path,
    seeds: Sequence[int] = SHIPPED_SAE_SEEDS,
    sae_training: SAETrainConfig = SAE_TRAINING,
    splits: dict[str, Br35HSplit] | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train the replicate SAEs of the assets in ``folder`` (its model, its ``sae_layers``, the recipe with SAE
    seeds ``seeds``) into ``folder/sae_seeds/seed_{s}/`` and record them in its ``info.json``
    (``"sae_seeds": {seed: {layer: {"weights_sha256", "metrics"}}}``); returns the updated info."""
    folder = Path(folder)
    info = shipped_info(folder)
    model, _ = shipped_model(device, folder=folder)
    vit = ViTConfig(**info["model"]["vit"])
    splits = splits if splits is not None else default_splits(cache_dir, img_size=vit.img_size, progress=progress)
    layers = info["sae_layers"]
    start = time.perf_counter()
    rows = train_demo_saes(model, splits["train"], layers, folder / SAE_SEEDS_DIR, training=sae_training,
                           heldout_split=splits["val"], device=device, progress=progress, seeds=seeds)
    (folder / SAE_SEEDS_DIR / "metrics.csv").unlink(missing_ok=True)  # the same numbers are in info.json
    info["sae_seeds"] = {str(seed): _sae_entries(seed_folder(folder / SAE_SEEDS_DIR, seed), rows, layers, seed)
                         for seed in seeds}
    info["sae_seeds_seconds"] = round(time.perf_counter() - start, 1)
    (folder / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def build_assets(
    output: str | Path,
    vit: ViTConfig = DEFAULT_VIT,
    train: ViTTrainConfig = DEFAULT_TRAIN,
    layers: Sequence[int] = SAE_LAYERS,
    sae_training: SAETrainConfig = SAE_TRAINING,
    splits: dict[str, Br35HSplit] | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    command: str = COMMAND,
    sae_seeds: Sequence[int] = SHIPPED_SAE_SEEDS,
) -> dict[str, Any]:
    """Train the ViT and the SAEs (and the replicate SAEs of ``sae_seeds``, :func:`add_sae_seeds`) and write
    them to ``output``; returns ``info``.

    The ViT comes from :func:`captum_fgattr.bench.default.vit.default_model` with ``retrain=True``, the
    path ``fgattr demo --retrain`` takes: trained from scratch, or taken from ``cache_dir`` (default:
    the user cache) where that path already trained this exact recipe. The SAEs are always trained.
    The defaults are the shipped recipe (default split, ViT and training; SAEs of :data:`SAE_LAYERS`
    with :func:`sae_recipe`); other values are for tests.
    """
    output = Path(output)
    start = time.perf_counter()
    model, model_info = default_model(cache_dir, vit=vit, train=train, splits=splits, progress=progress, retrain=True)
    splits = splits if splits is not None else default_splits(cache_dir, img_size=vit.img_size, progress=progress)
    model_info = save_model(model, {k: v for k, v in model_info.items() if k != "weights_sha256"}, output)
    model = model.to(device)
    rows = train_demo_saes(model, splits["train"], layers, output / "saes", training=sae_training,
                           heldout_split=splits["val"], device=device, progress=progress)
    saes = _sae_entries(output / "saes", rows, layers)
    (output / "saes" / "metrics.csv").unlink(missing_ok=True)  # the same numbers are in info.json
    info = {
        "format": ASSETS_FORMAT, "command": command, "model": model_info,
        "sae_layers": list(layers), "sae_recipe": sae_recipe(training=sae_training), "saes": saes,
        "platform": {"cpu": _cpu_name(), "machine": platform.machine(), "system": platform.system(),
                     "python": platform.python_version(), "torch": torch.__version__},
        "seconds": round(time.perf_counter() - start, 1),
    }
    (output / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    if sae_seeds:
        info = add_sae_seeds(output, sae_seeds, sae_training, splits, cache_dir, device, progress)
    return info


def _cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` on Linux, else ``platform.processor()``): bit-identical retraining
    is expected on this CPU type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def shipped_info(folder: str | Path = SHIPPED_DIR) -> dict[str, Any]:
    """``info.json`` of the shipped files (``ValueError`` naming the file if it is missing or corrupt)."""
    path = Path(folder) / "info.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the shipped default assets {path} ({err}); reinstall captum-fgattr "
                         "or run `fgattr demo --retrain`") from err
    if info.get("format") != ASSETS_FORMAT:
        raise ValueError(f"{path}: format {info.get('format')!r}; expected {ASSETS_FORMAT!r}")
    return info


def shipped_sae_digests(seed: int | None = None, folder: str | Path = SHIPPED_DIR) -> dict[int, str]:
    """{block: recorded sha256} of the shipped SAEs (``seed``: of that replicate seed; None: the main ones)."""
    info = shipped_info(folder)
    if seed is None:
        entries = info["saes"]
    elif str(seed) in info.get("sae_seeds", {}):
        entries = info["sae_seeds"][str(seed)]
    else:
        raise ValueError(f"no shipped SAEs of seed {seed}; shipped replicate seeds: {sorted(info.get('sae_seeds', {}))}")
    return {int(layer): entry["weights_sha256"] for layer, entry in entries.items()}


def load_shipped_saes(layers: Sequence[int], device: str | torch.device = "cpu",
                      folder: str | Path = SHIPPED_DIR, seed: int | None = None) -> dict[int, SparseAutoencoder]:
    """The shipped SAEs of ``layers`` (``seed``: the replicate SAEs of that seed; None: the main ones), each checked
    against its recorded sha256."""
    digests = shipped_sae_digests(seed, folder)
    missing = sorted(set(layers) - set(digests))
    if missing:
        raise ValueError(f"no shipped SAE for blocks {missing}; shipped: {sorted(digests)}")
    root = Path(folder) / "saes" if seed is None else seed_folder(Path(folder) / SAE_SEEDS_DIR, seed)
    out = {}
    for layer in layers:
        sae_dir = layer_folder(root, layer)
        if sha256_file(sae_dir / "sae.safetensors") != digests[layer]:
            raise ValueError(f"{sae_dir / 'sae.safetensors'} fails its sha256 check; reinstall captum-fgattr")
        out[layer] = SparseAutoencoder.load(str(sae_dir), device=device)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m captum_fgattr.bench.default.assets [--model NAME] [--output DIR]``: train and write the default
    assets (``--model``: those of a replicate model, without replicate SAE seeds)."""
    parser = argparse.ArgumentParser(prog="python -m captum_fgattr.bench.default.assets", description=main.__doc__)
    parser.add_argument("--model", default=MODEL_NAME, choices=list(RECIPES),
                        help=f"the shipped model to build (default {MODEL_NAME}; the others are the replicate models)")
    parser.add_argument("--output", default=None,
                        help="folder to write (default: the package's, captum_fgattr/bench/default/shipped or "
                        "its models/<name> for a replicate model)")
    parser.add_argument("--cache-dir", default=None,
                        help="model/data cache (default: $FGATTR_CACHE or ~/.cache/captum-fgattr); a model that "
                        "`fgattr demo --retrain` already trained there is reused")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--add-sae-seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="only train the replicate SAEs of these seeds for the assets already in --output")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    output = args.output if args.output is not None else shipped_folder(args.model)
    if args.add_sae_seeds is not None:
        info = add_sae_seeds(output, args.add_sae_seeds, cache_dir=args.cache_dir, progress=not args.quiet)
        print(json.dumps(info["sae_seeds"], indent=2))
        print(f"added SAE seeds {args.add_sae_seeds} to {output} in {info['sae_seeds_seconds']:.0f}s",
              file=sys.stderr)
        return 0
    vit, train = RECIPES[args.model]
    info = build_assets(output, vit, train, cache_dir=args.cache_dir, progress=not args.quiet,
                        command=shlex.join(["python", "-m", "captum_fgattr.bench.default.assets", *argv]),
                        sae_seeds=SHIPPED_SAE_SEEDS if args.model == MODEL_NAME else ())
    print(json.dumps({"test_accuracy": info["model"]["test_accuracy"],
                      "saes": {layer: s["metrics"] for layer, s in info["saes"].items()}}, indent=2))
    print(f"wrote {output} in {info['seconds']:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
