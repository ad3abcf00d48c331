"""Execute every notebook in ``notebooks/`` from a clean kernel, as CI does.

Each notebook runs in a fresh temporary working directory with ``FGATTR_CACHE`` pointing to one
temporary cache shared by the whole test session, so the quick Br35H model (and the notebooks' small
SAEs) are trained once, by the first notebook, and loaded by the others. The kernel is this
interpreter (a kernelspec written for ``sys.executable``), not whatever ``python3`` kernel is installed.
A failing cell fails the test with that cell's source and traceback.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600  # one cell (the first notebook trains the quick model: ~1 min on a quiet CPU)
NOTEBOOK_TIMEOUT_S = 600  # one whole notebook, kernel start included
MAX_NOTEBOOK_BYTES = 300_000  # committed outputs stay small (no large embedded figures)


@pytest.fixture(scope="session")
def notebook_env(tmp_path_factory) -> dict[str, str]:
    """Session-wide environment of the notebook kernels: a shared model cache and this interpreter's kernel."""
    from ipykernel.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("notebooks")
    write_kernel_spec(str(root / "jupyter" / "kernels" / "python3"))  # argv: sys.executable -m ipykernel_launcher
    return {"FGATTR_CACHE": str(root / "fgattr-cache"), "JUPYTER_PATH": str(root / "jupyter")}


def test_there_are_notebooks():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_"], [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_executed_and_small(path: Path):
    nb = nbformat.read(path, as_version=4)
    unexecuted = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and cell.execution_count is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} have no outputs; commit the executed notebook"
    errors = [i for i, cell in enumerate(nb.cells) for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors, f"{path.name}: committed with errors in cells {errors}"
    assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, f"{path.name} is {path.stat().st_size} bytes; shrink its figures"


@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, notebook_env: dict[str, str], tmp_path: Path, monkeypatch):
    for name, value in notebook_env.items():
        monkeypatch.setenv(name, value)  # inherited by the kernel process
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, startup_timeout=180, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    error = None
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        error = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # the failing cell's source and traceback, no colours
    if error is not None:
        pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
