"""A broken derivation step fails nbval and the book's executor.

We copy appendix A (the smallest derivation notebook) to a temporary folder, drop the
factor 2 from the derivative of the quadratic error in one check cell, and run the copy
(1) under ``pytest --nbval-lax`` in a subprocess, (2) through nbclient with errors not
allowed, which is how jupyter-book (MyST-NB, ``execute.allow_errors: false``) executes a
notebook. The unmodified copy must pass both ways.
"""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "chapters" / "appendix_a_loss_derivatives.ipynb"
STEP = 'check_equal(gradient(l, f), 2 * (f - y), "A.1: dl/df = 2 (f - y)")'
BROKEN_STEP = 'check_equal(gradient(l, f), (f - y), "A.1: dl/df = 2 (f - y)")'


def _copy(tmp_path: Path, broken: bool) -> Path:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and STEP in c.source]
    assert len(cells) == 1, "the derivation step this test breaks is no longer in appendix A"
    if broken:
        cells[0].source = cells[0].source.replace(STEP, BROKEN_STEP)
    path = tmp_path / ("broken.ipynb" if broken else "intact.ipynb")
    nbformat.write(nb, path)
    return path


def _nbval(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", str(path)],
        cwd=path.parent, capture_output=True, text=True, timeout=600,
    )


def _execute(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()


@pytest.mark.parametrize("broken", [False, True], ids=["intact", "factor-2-dropped"])
def test_nbval(tmp_path, broken):
    result = _nbval(_copy(tmp_path, broken))
    if broken:
        assert result.returncode != 0, result.stdout[-2000:]
        assert "A.1: dl/df = 2 (f - y)" in result.stdout  # check_equal's message names the step
        assert "lhs - rhs simplifies to" in result.stdout
    else:
        assert result.returncode == 0, result.stdout[-2000:]


def test_book_executor_fails_on_broken_step(tmp_path):
    _execute(_copy(tmp_path, broken=False))
    with pytest.raises(CellExecutionError, match=r"A\.1: dl/df = 2 \(f - y\)"):
        _execute(_copy(tmp_path, broken=True))
