"""The ``fgattr`` entry point: lazy command modules, plain help texts, ``--threads`` everywhere."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from captum_fgattr.bench.cli import main as cli


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
