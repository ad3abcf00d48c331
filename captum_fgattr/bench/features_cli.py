"""``fgattr features --run-dir D``: feature case studies of an evaluated run (see :mod:`.features`).

The model, the data and the SAEs are rebuilt from the configuration stored in the run's database: the
last ``sweep`` / ``evaluate`` / ``run`` configuration (:mod:`.runconfig`), or, for ``fgattr demo`` runs,
the demo's plan (the same cached model, Br35H splits and SAEs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from captum_fgattr.bench.experiments import GRID, MULTI, SINGLE, TEST
from captum_fgattr.bench.features import analyze_features, select_fg_method
from captum_fgattr.bench.store import STORE_NAME, ResultStore
from captum_fgattr.sae import SparseAutoencoder

__all__ = ["RunComponents", "load_run_components", "add_parser"]

_RUN_COMMANDS = ("sweep", "evaluate", "run")


@dataclass
class RunComponents:
    """What a stored run was computed with."""

    model: nn.Module  # eval mode
    splits: Mapping[str, Dataset]  # split name -> dataset (ids = indices, as evaluated)
    saes: Mapping[int, SparseAutoencoder]  # layer -> SAE
    class_names: Sequence[str] | None


def _demo_components(config: Mapping[str, Any], layers: Sequence[int], device: str, progress: bool) -> RunComponents:
    from captum_fgattr.bench.default import CLASS_NAMES, default_model, default_splits
    from captum_fgattr.bench.demo import FULL, QUICK, default_saes

    plan = {"quick": QUICK, "full": FULL}.get(config["demo"])
    if plan is None or json.loads(json.dumps(dataclasses.asdict(plan), default=str)) != config.get("plan"):
        raise ValueError(f"this demo run ({config['demo']!r}) was made with a demo plan that differs from this "
                         "version's; rerun `fgattr demo` into a new folder")
    cache_dir = Path(config["cache_dir"])
    splits = default_splits(cache_dir, progress=progress)
    model, info = default_model(cache_dir, device=device, train=plan.model_training, progress=progress)
    if info.get("weights_sha256") != config.get("model", {}).get("weights_sha256"):
        raise ValueError(f"the cached demo model in {cache_dir} is not the one this run evaluated (checksum differs)")
    saes = default_saes(model, info, splits["train"], plan, cache_dir, device, progress)
    return RunComponents(model.eval(), splits, {layer: saes[layer] for layer in layers}, CLASS_NAMES)


def load_run_components(store: ResultStore, layers: Sequence[int], splits: Sequence[str], device: str = "cpu",
                        progress: bool = True) -> RunComponents:
    """Rebuild the model, ``splits`` and the SAEs of ``layers`` from the run's stored configuration.

    Raises:
        ValueError: the run stores no configuration it can be rebuilt from.
    """
    from captum_fgattr.bench.config import RunConfig
    from captum_fgattr.bench.runconfig import load_inputs, load_saes

    for command, _, config in reversed(store.invocations()):
        if "demo" in config:
            return _demo_components(config, layers, device, progress)
        if command in _RUN_COMMANDS:
            run = RunConfig.from_dict(config)
            model, first = load_inputs(run, splits[0])
            data = {splits[0]: first, **{name: load_inputs(run, name)[1] for name in splits[1:]}}
            return RunComponents(model.eval(), data, load_saes(run.saes, list(layers)),
                                 getattr(first, "class_names", None))
    raise ValueError(f"run {store.run_dir} stores no `fgattr sweep/evaluate/run` or demo configuration to rebuild "
                     "the model, data and SAEs from; use captum_fgattr.bench.features.analyze_features directly")


def run_features(args: argparse.Namespace) -> Path:
    """The command's body; returns the path of ``features.md``."""
    run_dir = Path(args.run_dir)
    if not (run_dir / STORE_NAME).is_file():
        raise FileNotFoundError(f"no {STORE_NAME} in {run_dir}; run `fgattr demo` or `fgattr run` first")
    out = Path(args.out) if args.out else run_dir / "features"
    with ResultStore(run_dir) as store:
        method = select_fg_method(store, args.split, args.experiment, args.selection)
        reference = args.reference
        parts = load_run_components(store, list(method.fg.layers), sorted({args.split, reference}), args.device,
                                    not args.quiet)
        result = analyze_features(
            parts.model, parts.splits[args.split], parts.saes, method, store, args.split, experiment=args.experiment,
            n_images=args.images, n_patches=args.patches, top_features=args.top_features,
            reference=parts.splits[reference], reference_split=reference, prototypes=args.prototypes,
            class_names=parts.class_names, out_dir=out, batch_size=args.batch_size, device=args.device,
            progress=not args.quiet)
    for role in ("suppressor", "booster"):
        for s in result.top(role, 3):
            print(f"{role}: layer {s.layer} feature {s.feature}: {s.suppressions if role == 'suppressor' else s.boosts}"
                  f" of {s.cases} cases ({100 * s.share:.0f}%), {s.headlines} headline patches, {s.images} images")
    print(f"wrote {out / 'features.md'}")
    return out / "features.md"


def _main(args: argparse.Namespace) -> int:
    try:
        run_features(args)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as err:
        print(f"fgattr features: error: {err}", file=sys.stderr)
        return 2
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``features`` on the ``fgattr`` sub-command parser."""
    p = subparsers.add_parser(
        "features", help="SAE feature case studies: which features boost or suppress which patches, with prototypes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="an evaluated run folder (fgattr run / evaluate / demo)")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/features)")
    p.add_argument("--selection", choices=(SINGLE, MULTI, GRID), default=None,
                   help="FG configuration to analyse (default: the experiment's last real-SAE FG method)")
    p.add_argument("--experiment", default=TEST, help="experiment whose per-image rows are ranked (default test)")
    p.add_argument("--split", default="test", choices=("val", "test"), help="split of that experiment")
    p.add_argument("--reference", default="val", choices=("val", "test"), help="prototype split (default val)")
    p.add_argument("--images", type=int, default=4, help="images per group, most improved / degraded (default 4)")
    p.add_argument("--patches", type=int, default=3, help="patches per image with the largest |Δ| (default 3)")
    p.add_argument("--top-features", type=int, default=5, help="contributors recorded per patch and layer (default 5)")
    p.add_argument("--prototypes", type=int, default=10, help="prototype images per feature (default 10)")
    p.add_argument("--batch-size", type=int, default=16, help="images per attribution batch")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_main)
    return p
