"""``fgattr features --run-dir D``: feature case studies of an evaluated run (see
:mod:`captum_fgattr.bench.features.study`).

The model, the data and the SAEs are rebuilt from the configuration stored in the run's database: the
last ``sweep`` / ``evaluate`` / ``run`` configuration (:mod:`captum_fgattr.bench.features.inputs`; ``fgattr demo``
stores its run description as ``run`` too).
"""
from __future__ import annotations

import argparse

from captum_fgattr.bench.choices import SELECTIONS, TEST

__all__ = ["add_parser"]


def _main(args: argparse.Namespace) -> int:
    from captum_fgattr.bench.features.study import analyze_run  # imports torch: only when the command runs
    from captum_fgattr.bench.models.loading import check_device

    check_device(args.device, "--device")
    result = analyze_run(
        args.run_dir, args.out, split=args.split, experiment=args.experiment, selection=args.selection,
        reference_split=args.reference, n_images=args.images, n_patches=args.patches, top_features=args.top_features,
        prototypes=args.prototypes, batch_size=args.batch_size, device=args.device, progress=not args.quiet)
    for role in ("suppressor", "booster"):
        for s in result.top(role, 3):
            print(f"{role}: layer {s.layer} feature {s.feature}: {s.suppressions if role == 'suppressor' else s.boosts}"
                  f" of {s.cases} cases ({100 * s.share:.0f}%), {s.headlines} headline patches, {s.images} images")
    print(f"wrote {result.files['features_md']}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``features`` on the ``fgattr`` sub-command parser."""
    p = subparsers.add_parser(
        "features", help="SAE feature case studies: which features boost or suppress which patches, with prototypes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="an evaluated run folder (fgattr run / evaluate / demo)")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/features)")
    p.add_argument("--selection", choices=SELECTIONS, default=None,
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
