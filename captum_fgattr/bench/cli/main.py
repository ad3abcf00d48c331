"""``fgattr`` console script: parsing only; each subcommand lives with its concept.

Each command's module adds its parser with ``add_parser(subparsers)``, setting ``func`` as a
default; :data:`COMMANDS` maps command names to modules. Every command takes ``--threads``.
A command's module imports torch (and what is built on it) only inside ``func``: its parser and
``fgattr <command> --help`` read light modules only (registries, choices, plugin declarations), so
they answer in a fraction of a second (``benchmarks/startup.py`` measures it).
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, NoReturn

# command -> (module exposing ``add_parser(subparsers)``, its one-line help). Only the module of the
# command being run is imported, so ``fgattr --help`` starts without torch (tests check that these
# lines equal the modules' own).
COMMANDS: dict[str, tuple[str, str]] = {
    "train-sae": ("captum_fgattr.bench.cli.train_sae",
                  "train sparse autoencoders on a ViT's residual stream (patch tokens) over an image folder"),
    "sweep": ("captum_fgattr.bench.cli.run", "validation sweeps: single layer, multi-layer, κ × c_max; selections"),
    "evaluate": ("captum_fgattr.bench.cli.run", "test evaluation of the selected configurations and the baselines"),
    "report": ("captum_fgattr.bench.cli.run", "Markdown/CSV tables and PNG figures from a run's store"),
    "run": ("captum_fgattr.bench.cli.run", "the whole protocol: sweep, evaluate, report"),
    "demo": ("captum_fgattr.bench.cli.demo",
             "run the study's protocol on the embedded default (brain-MRI scans) and write a report"),
    "features": ("captum_fgattr.bench.cli.features",
                 "SAE feature case studies: which features boost or suppress which patches, with prototypes"),
}
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))
#: the model-sized default of the layers the sweeps gate and the SAEs are trained for, as the help texts state it
#: (:func:`captum_fgattr.bench.resolve.thesis_layers`)
SIZED_LAYERS = "the thesis's blocks 2..10 of 12 scaled to the model's depth: round(depth/6) .. depth-2 (1..4 of 6)"
_SPHINX_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj):`~?([^`]+)`")


def default_threads() -> int:
    """torch CPU threads when ``--threads`` is not given: ``$OMP_NUM_THREADS`` if set, else 1.

    One thread is the safe default on a CPU shared with other jobs, where more threads than free
    cores can be many times slower; give ``--threads N`` on a machine of your own.
    """
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def plain(text: str | None) -> str | None:
    """Help text without Sphinx markup: ``:func:`x``` -> x, ````x```` -> x."""
    if text is None:
        return None
    return _SPHINX_ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1),
                            text).replace("``", "")


def module_doc(module: str) -> str | None:
    """The docstring of ``module``, read from its source without running it (a help text from a module that imports
    torch)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no module {module!r}")
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8")), clean=False)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}; expected a positive int")
    return int(value)


def json_argument(text: str) -> Any:
    """A JSON flag's value (``--model-kwargs``); its type is checked where the configuration is built."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({err})") from None


def layer_list(text: str) -> list[int]:
    """``"2,3,4"`` -> ``[2, 3, 4]`` (one multi-layer configuration)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}; expected comma-separated block indices, e.g. 2,3,4") from None


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``fgattr <command>: error: ...`` line, as every other error of
    ``fgattr`` (no usage block; ``--help`` shows it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _finish(parser: argparse.ArgumentParser) -> None:
    """Plain help texts and the common ``--threads`` option on one registered command parser."""
    parser.description = plain(parser.description)
    for action in parser._actions:
        action.help = plain(action.help)
    if "--threads" not in parser._option_string_actions:
        parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                            help="torch CPU threads (default: $OMP_NUM_THREADS if set, else 1 — safe on a shared "
                            "CPU; raise it on a machine of your own)")


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``fgattr`` parser with the full parsers of ``commands`` (None: all). Only their modules are
    imported; every other command is listed by name and help line only."""
    parser = OneLineParser(
        prog="fgattr",
        description="Faithful attention attribution for Vision Transformers: TransMM, "
        "Feature-Gradient TransMM, SAEs and patch-level faithfulness benchmarks.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = COMMANDS if commands is None else [c for c in commands if c in COMMANDS]
    for module in dict.fromkeys(COMMANDS[c][0] for c in wanted):
        importlib.import_module(module).add_parser(subparsers)
    for sub in subparsers.choices.values():
        _finish(sub)
    for name, (_, help_line) in COMMANDS.items():
        if name not in subparsers.choices:
            subparsers.add_parser(name, help=help_line)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser([command] if command else []).parse_args(argv)
    import torch

    torch.set_num_threads(args.threads if args.threads is not None else default_threads())
    try:
        return int(args.func(args) or 0)
    except Exception as err:  # one error path: environment failures as one line, bugs keep their traceback
        from captum_fgattr.bench.cli.errors import user_error  # imports torch: only once a command has run

        message = user_error(err)
        if message is None:
            raise
        print(f"fgattr {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
