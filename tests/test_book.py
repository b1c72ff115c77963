"""The book's wiring: table of contents, Colab install cells, pins."""

from __future__ import annotations

import os
import re
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())


def toc_files() -> list[str]:
    files = [TOC["root"]]
    for part in TOC["parts"]:
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def notebooks() -> list[Path]:
    return [ROOT / f"{name}.ipynb" for name in toc_files() if (ROOT / f"{name}.ipynb").exists()]


def sources() -> list[Path]:
    """The hand-edited pages: MyST Markdown notebooks, each with an .ipynb twin (scripts/sync_notebooks.py)."""
    return [p.with_suffix(".md") for p in notebooks()]


@pytest.mark.parametrize("name", toc_files())
def test_toc_entry_exists(name: str) -> None:
    assert any((ROOT / f"{name}{ext}").exists() for ext in (".md", ".ipynb")), (
        f"_toc.yml lists {name} but neither {name}.md nor {name}.ipynb exists"
    )


def test_every_notebook_is_in_the_toc() -> None:
    listed = {ROOT / f"{name}.ipynb" for name in toc_files()}
    stray = [p.name for p in (ROOT / "chapters").glob("*.ipynb") if p not in listed]
    assert not stray, f"notebooks missing from _toc.yml (the book would not show them): {stray}"


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.name)
def test_colab_cell_installs_this_repository(path: Path) -> None:
    """The first code cell clones, on Colab, the repository and branch _config.yml names."""
    nb = jupytext.read(path, fmt="md:myst")
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    repo = CONFIG["repository"]
    expected = f"git clone -q --depth 1 -b {repo['branch']} {repo['url']} /content/sokit"
    assert "google.colab" in first.source, f"{path.name}: first code cell is not the Colab install cell"
    assert expected in first.source, f"{path.name}: Colab cell should run {expected}"
    assert "setup()" in first.source, f"{path.name}: Colab cell should call sokit.colab.setup()"


def test_colab_setup_runs_the_full_profile_only_on_a_gpu(monkeypatch, capsys) -> None:
    from sokit import colab

    monkeypatch.setenv("SOKIT_PROFILE", "")  # recorded, so that teardown removes what setup() sets
    monkeypatch.delenv("SOKIT_PROFILE")
    monkeypatch.setattr(colab.torch.cuda, "is_available", lambda: False)
    assert colab.setup() == "" and "Change runtime type" in capsys.readouterr().out
    assert "SOKIT_PROFILE" not in os.environ
    monkeypatch.setattr(colab.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(colab.torch.cuda, "get_device_name", lambda i: "Tesla T4")
    assert colab.setup() == "full" and os.environ["SOKIT_PROFILE"] == "full"
    assert "Tesla T4" in capsys.readouterr().out


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.outputs]
    assert not with_outputs, f"{path.name}: clear outputs (jupyter nbconvert --clear-output --inplace)"


def test_jupyter_book_pinned_below_2() -> None:
    reqs = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^jupyter-book>=1[^\n]*,<2$", reqs, re.M), "pin jupyter-book below 2"


def test_execution_raises_on_error() -> None:
    execute = CONFIG["execute"]
    assert execute["allow_errors"] is False and execute["execute_notebooks"] in ("cache", "force")

