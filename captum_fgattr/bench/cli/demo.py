"""``fgattr demo``: parses its flags and runs :func:`captum_fgattr.bench.default.demo.run_demo`."""
from __future__ import annotations

import argparse

from captum_fgattr.bench.cli.main import module_doc
from captum_fgattr.bench.default import RUN_DIRS

_DEMO = "captum_fgattr.bench.default.demo"

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``demo`` on the ``fgattr`` sub-command parser."""
    p = subparsers.add_parser("demo", description=module_doc(_DEMO),
                              help="run the study's protocol on the embedded default (brain-MRI scans) and write a report",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=None,
                   help="run folder (default: the preset's, "
                   + ", ".join(f"{folder} for {name}" for name, folder in RUN_DIRS.items()) + ")")
    p.add_argument("--preset", choices=list(RUN_DIRS), default="full",
                   help="full: the study with its SAE-seed replicates (about 25 min on a 2-core CPU); quick: a reduced "
                   "smoke run (2 layers, few images); replication: full plus the model replicates (model seeds 1 and "
                   "2, and a 196-patch ViT) with their own SAEs")
    p.add_argument("--quick", action="store_const", const="quick", dest="preset", help="the same as --preset quick")
    p.add_argument("--retrain", action="store_true",
                   help="train the models and SAEs from scratch instead of loading the packaged files (on one CPU "
                   "thread: the default ViT about 8-15 min, its SAEs of 3 seeds 10 min; the replication preset's "
                   "three models and their SAEs another 60 min), and report whether they are bit-identical to them")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--cache-dir", default=None, help="model/SAE/data cache (default: $FGATTR_CACHE or ~/.cache/captum-fgattr)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_main)
    return p


def _main(args: argparse.Namespace) -> int:
    from captum_fgattr.bench.default import demo  # imports torch: only when the command runs

    demo.run_demo(args.output, preset=args.preset, device=args.device, cache_dir=args.cache_dir,
                  progress=not args.quiet, retrain=args.retrain)
    return 0
