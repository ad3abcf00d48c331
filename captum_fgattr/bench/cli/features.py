"""``fgattr features --run-dir D``: feature case studies of an evaluated run (see
:mod:`captum_fgattr.bench.analysis.features`).

The model, the data and the SAEs are rebuilt from the configuration stored in the run's database: the
last ``sweep`` / ``evaluate`` / ``run`` configuration (:mod:`captum_fgattr.bench.resolve`; ``fgattr demo``
stores its run description as ``run`` too).
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from captum_fgattr.bench.experiments import GRID, MULTI, SINGLE, TEST
from captum_fgattr.bench.analysis.features import analyze_features, select_fg_method
from captum_fgattr.bench.models.loading import check_device
from captum_fgattr.bench.resolve import load_inputs, load_saes, load_split, preprocessing
from captum_fgattr.bench.store import STORE_NAME, ResultStore
from captum_fgattr.bench.study import stored_run_config
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


def load_run_components(store: ResultStore, layers: Sequence[int], splits: Sequence[str],
                        progress: bool = True) -> RunComponents:
    """Rebuild the model, ``splits`` and the SAEs of ``layers`` from the run's last stored configuration
    (``fgattr sweep / evaluate / run / demo``); ``progress``: progress bars if the model has to be retrained.

    Raises:
        ValueError: the run stores no configuration it can be rebuilt from, or one of an older ``fgattr demo``.
    """
    for command, _, config in reversed(store.invocations()):
        if "demo" in config:  # the form fgattr demo stored before it ran a run description
            raise ValueError(f"run {store.run_dir} was made by an older `fgattr demo`, with a demo plan that differs "
                             "from this version's run description; re-run `fgattr demo` into a new folder")
        if command in _RUN_COMMANDS:
            run = stored_run_config(config).merged({"evaluation.progress": progress})
            model, first = load_inputs(run, splits[0])
            pre = preprocessing(run.data, model)
            data = {splits[0]: first, **{name: load_split(run.data, name, pre, run.cache_dir) for name in splits[1:]}}
            return RunComponents(model.eval(), data, load_saes(run.saes, list(layers), model),
                                 getattr(first, "class_names", None))
    raise ValueError(f"run {store.run_dir} stores no `fgattr sweep/evaluate/run/demo` configuration to rebuild "
                     "the model, data and SAEs from; use captum_fgattr.bench.analysis.features.analyze_features directly")


def run_features(args: argparse.Namespace) -> Path:
    """The command's body; returns the path of ``features.md``."""
    check_device(args.device, "--device")
    run_dir = Path(args.run_dir)
    if not (run_dir / STORE_NAME).is_file():
        raise FileNotFoundError(f"no {STORE_NAME} in {run_dir}; run `fgattr demo` or `fgattr run` first")
    out = Path(args.out) if args.out else run_dir / "features"
    with ResultStore(run_dir) as store:
        method = select_fg_method(store, args.split, args.experiment, args.selection)
        reference = args.reference
        parts = load_run_components(store, list(method.fg.layers), sorted({args.split, reference}), not args.quiet)
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
    run_features(args)
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
