"""The ``fgattr`` entry point: lazy command modules, plain help texts, ``--threads`` everywhere."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from captum_fgattr.bench.cli import main as cli
from captum_fgattr.bench.models.project import PROJECT_MODELS


def _subparsers(parser):
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")


def test_top_level_help_imports_no_command_module_and_no_torch():
    code = ("import sys; from captum_fgattr.bench.cli.main import COMMAND_MODULES, build_parser; "
            "build_parser([]).format_help(); "
            "print(sorted(m for m in ('torch', 'timm', 'captum', *COMMAND_MODULES) if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    help_text = subprocess.run([sys.executable, "-m", "captum_fgattr.bench.cli.main", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert all(name in help_text for name in cli.COMMANDS)


#: what a command's help must not import: torch and the libraries built on it, and numpy
HEAVY = ("torch", "numpy", "timm", "open_clip", "captum", "quantus", "torchvision")


def test_every_command_help_imports_no_torch():
    """Each command's full parser and help text are built in a fresh process that imports none of :data:`HEAVY`
    (modules counted, no timing; ``benchmarks/startup.py`` measures the times)."""
    code = ("import sys; from captum_fgattr.bench.cli.main import COMMANDS, build_parser; "
            "texts = [build_parser([name])._subparsers._group_actions[0].choices[name].format_help() for name in COMMANDS]; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), len(texts))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", str(len(cli.COMMANDS))]


def test_the_help_lists_what_plugins_declare_as_the_registered_entries_describe_themselves():
    """``--help`` reads the plugins' declarations (summaries) without loading the entries: they agree."""
    from captum_fgattr.bench.data.kinds import LAYOUTS
    from captum_fgattr.bench.sae_sources import SAE_SOURCES

    assert LAYOUTS.summaries() and SAE_SOURCES.summaries()
    assert all(LAYOUTS[kind].name == summary for kind, summary in LAYOUTS.summaries().items())
    assert all(SAE_SOURCES[name].what == summary for name, summary in SAE_SOURCES.summaries().items())
    text = _subparsers(cli.build_parser(["run"])).choices["run"].format_help()
    assert all(f"fgattr:{name}" in text for name in PROJECT_MODELS) and all(kind in text for kind in LAYOUTS)


def test_the_experiment_names_offered_are_those_the_protocol_files_rows_under():
    from captum_fgattr.bench import choices, experiments

    assert choices.SELECTIONS == (experiments.SINGLE, experiments.MULTI, experiments.GRID)
    assert choices.TEST == experiments.TEST


def test_sized_defaults_are_stated_in_the_help():
    """``--layers``, ``--multi-layers`` and ``--fc-subset-size`` say that the model sizes them (not the protocol's
    12-block values, which a smaller model never gets)."""
    run = _subparsers(cli.build_parser(["run"])).choices["run"]
    helps = {a.option_strings[0]: a.help for a in run._actions if a.option_strings}
    for flag in ("--layers", "--multi-layers", "--fc-subset-size"):
        assert "sized to the model" in helps[flag] and "default 2..10" not in helps[flag], flag
    assert "(default 20)" not in helps["--fc-subset-size"]


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_lists_its_own_help_line_takes_threads_and_has_plain_help(command):
    parser = cli.build_parser([command])
    sub = _subparsers(parser)
    listed = {a.dest: a.help for a in sub._choices_actions}
    assert listed[command] == cli.COMMANDS[command][1]  # the lazy list says what the module says
    text = sub.choices[command].format_help()
    assert "--threads" in text
    for markup in ("``", ":func:", ":class:", ":mod:", ":meth:", "%%"):
        assert markup not in text, (command, markup)


def test_threads_default_honours_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cli.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cli.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert cli.default_threads() == 1


def test_main_applies_threads_before_the_command(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert cli.main(["report", "--run-dir", str(tmp_path / "none"), "--threads", "2"]) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        cli.main(["report", "--run-dir", str(tmp_path), "--threads", "0"])
    assert "positive int" in capsys.readouterr().err


def test_plain_strips_sphinx_markup():
    assert cli.plain("see :func:`captum_fgattr.x.run_study` and ``a b`` or :class:`~pkg.Cls`") == \
        "see captum_fgattr.x.run_study and a b or Cls"
