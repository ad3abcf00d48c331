"""One error path for the ``fgattr`` CLI: environment failures exit 2 with one ``fgattr <command>: error:`` line
(the prefix of every command's own errors) naming the file and the way out, no traceback (issue 15 items 12, 13)."""
from __future__ import annotations

import errno
import sqlite3
import subprocess
import sys

import pytest
import torch

from captum_fgattr.bench import store as store_module
from captum_fgattr.bench.cli.main import main
from captum_fgattr.bench.cli.errors import user_error
from captum_fgattr.bench.methods_json import parse_methods
from captum_fgattr.bench.resolve import load_saes
from captum_fgattr.bench.store import ResultStore
from tests.conftest import write_split_folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_split_folders(tmp_path_factory.mktemp("cli-errors"))


def evaluate_args(folders, run_dir, methods='[{"name": "random"}]', *extra):
    return ["evaluate", "--model", "test_vit", "--num-classes", "2", "--img-size", "32", "--val-data",
            str(folders / "val"), "--test-data", str(folders / "test"), "--quiet", "--saco-groups", "2",
            "--fc-subset-size", "2", "--fc-runs", "2", "--methods", methods, "--run-dir", str(run_dir), *extra]


#: the informational lines printed before any error: the model-sized defaults, the model's classes, the statistics
INFORMATION = ("sized by the model: ", "model: ", "normalisation: ")


def error_lines(err: str) -> list[str]:
    """stderr without the informational lines (:data:`INFORMATION`)."""
    return [line for line in err.strip().splitlines() if not line.startswith(INFORMATION)]


def one_error_line(capsys, command: str = "evaluate") -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fgattr {command}: error: ")
    return lines[0]


def test_corrupt_store_in_a_subprocess_is_one_line(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"this is not an SQLite file" * 100)
    done = subprocess.run([sys.executable, "-m", "captum_fgattr.bench.cli.main", "report", "--run-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"fgattr report: error: {tmp_path / 'results.sqlite'} is not a readable SQLite results file (file is not a database): "
        "it is corrupt or another kind of file; move it away to start a new store, or use another --run-dir"]


def test_folder_in_place_of_the_store(folders, tmp_path, capsys):
    (tmp_path / "results.sqlite").mkdir()
    assert main(evaluate_args(folders, tmp_path)) == 2
    assert f"{tmp_path / 'results.sqlite'} is a folder, not the SQLite results file; move it away" in one_error_line(capsys)


@pytest.mark.parametrize("below", [False, True])
def test_run_folder_at_or_below_a_regular_file(folders, tmp_path, capsys, below):
    (tmp_path / "file").write_text("x")
    run_dir = tmp_path / "file" / "run" if below else tmp_path / "file"
    assert main(evaluate_args(folders, run_dir)) == 2
    line = one_error_line(capsys)
    assert f"cannot create run folder {run_dir}: {tmp_path / 'file'} is a regular file" in line
    assert "choose another --run-dir" in line


def test_unwritable_run_folder(folders, capsys):
    assert main(evaluate_args(folders, "/proc")) == 2  # no one may create files in /proc, not even root
    assert "cannot open /proc/results.sqlite for writing" in one_error_line(capsys)


def test_locked_store(folders, tmp_path, capsys, monkeypatch):
    ResultStore(tmp_path).close()
    holder = sqlite3.connect(tmp_path / "results.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(store_module, "LOCK_TIMEOUT_S", 0.2)
    try:
        assert main(evaluate_args(folders, tmp_path)) == 2
    finally:
        holder.close()
    line = one_error_line(capsys)
    assert f"{tmp_path / 'results.sqlite'} is locked by another process" in line and "wait for it to finish" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_device_without_a_gpu(folders, tmp_path, capsys):
    assert main(evaluate_args(folders, tmp_path, '[{"name": "random"}]', "--device", "cuda")) == 2
    line = one_error_line(capsys)
    assert "no CUDA GPU is usable here" in line and line.endswith("use --device cpu")


@pytest.mark.parametrize("err, expected", [
    (PermissionError(errno.EACCES, "Permission denied", "/cache/model/weights.safetensors"),
     "Permission denied: /cache/model/weights.safetensors; check its permissions"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/cache/images.safetensors"),
     "Is a directory: /cache/images.safetensors; a folder is where a file is expected"),
    (OSError(errno.EROFS, "Read-only file system", "/runs/x"), "Read-only file system: /runs/x; the file system is read-only"),
])
def test_unreadable_cache_files_are_described_not_called_corrupt(err, expected):
    message = user_error(err)
    assert message.startswith(expected) and "corrupt" not in message and "delete" not in message


def test_bugs_keep_their_traceback():
    assert user_error(KeyError("layers")) is None and user_error(RuntimeError("shape mismatch")) is None


# -- 13. --methods JSON and missing SAE layers ----------------------------------------------------------------
def test_methods_json_missing_field_through_the_cli(folders, tmp_path, capsys):
    assert main(evaluate_args(folders, tmp_path, '[{"name": "fg"}]')) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(error_lines(err)) == 1
    assert "--methods[0] (fg): missing required parameter 'layers' (list[int])" in err


@pytest.mark.parametrize("text, message", [
    ('[{"name": "fg", "params": {"layers": [1.5]}}]', r"--methods\[0\] \(fg\): layers=\[1.5\] is not list\[int\]"),
    ('[{"name": "fg", "params": {"layers": [1], "kapa": 1}}]', r"unknown parameter\(s\) \['kapa'\]; accepted: layers"),
    ('[{"name": "random"}, {"name": "gradcam", "params": {"seed": 1}}]', r"--methods\[1\] \(gradcam\): unknown .*accepted: none"),
    ('[{"name": "nope"}]', r"--methods\[0\]: name='nope'; expected one of \["),
    ('[{"name": "random", "lable": "x"}]', r"unknown field\(s\) \['lable'\]"),
    ('[{"name": "random", "params": [1]}]', "params must be an object"),
    ('{"name": "random"}', "expected a non-empty JSON list"),
    ('[{"name": "fg", ', "not valid JSON"),
])
def test_methods_json_is_checked_field_by_field(text, message):
    with pytest.raises(ValueError, match=message):
        parse_methods(text)


def test_methods_json_valid_entries_become_specs():
    specs = parse_methods('[{"name": "fg", "params": {"layers": [2, 3], "kappa": 1, "shuffle_seed": null}, '
                          '"label": "FG"}, {"name": "random", "params": {"seed": 4}}]')
    assert [(s.name, dict(s.params), s.label) for s in specs] == [
        ("fg", {"kappa": 1, "layers": [2, 3], "shuffle_seed": None}, "FG"), ("random", {"seed": 4}, "random(seed=4)")]


def test_missing_sae_layers_list_the_present_ones(tmp_path):
    for layer in (1, 2, 10):
        (tmp_path / f"layer_{layer}").mkdir()
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match=r"no SAE for layers \[9\] in .*; found layers \[1, 2, 10\]"):
        load_saes(str(tmp_path), [1, 9])
    with pytest.raises(ValueError, match="SAE folder .*missing does not exist"):
        load_saes(str(tmp_path / "missing"), [1])


def test_library_files_follow_the_umask_and_are_written_atomically(tmp_path):
    import os
    import stat

    from captum_fgattr.files import atomic_write, new_file_mode

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "sub" / "x.bin", lambda tmp: tmp.write_bytes(b"abc"))
        assert path.read_bytes() == b"abc" and stat.S_IMODE(path.stat().st_mode) == 0o644 == new_file_mode()
        with pytest.raises(RuntimeError):
            atomic_write(path, lambda tmp: (tmp.write_bytes(b"partial"), (_ for _ in ()).throw(RuntimeError("x"))))
        assert path.read_bytes() == b"abc" and sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]
    finally:
        os.umask(old)
