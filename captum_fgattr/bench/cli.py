"""``fgattr`` console script: parsing only; each subcommand lives with its concept.

Subcommands register through :func:`register_command`; a module adds its parser with
``add_parser(subparsers)`` returning the parser with ``func`` set as a default.
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

# module path -> exposes ``add_parser(subparsers) -> argparse.ArgumentParser``
COMMAND_MODULES: tuple[str, ...] = (
    "captum_fgattr.sae.cli",
    "captum_fgattr.bench.commands",
    "captum_fgattr.bench.demo",
    "captum_fgattr.bench.features_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fgattr",
        description="Faithful attention attribution for Vision Transformers: TransMM, "
        "Feature-Gradient TransMM, SAEs and patch-level faithfulness benchmarks.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
