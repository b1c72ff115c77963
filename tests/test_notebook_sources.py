"""One hand-edited source per page: the MyST Markdown notebooks and their .ipynb twins.

Every page of the book except the bibliography is a MyST Markdown notebook (jupytext
``md:myst``); its committed .ipynb twin (for Colab and nbval) must be exactly what
``python scripts/sync_notebooks.py`` writes from it.
"""

from __future__ import annotations

import fnmatch
import importlib.util
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
NOT_NOTEBOOKS = {"bibliography"}  # plain MyST Markdown pages without code

_spec = importlib.util.spec_from_file_location("sync_notebooks", ROOT / "scripts" / "sync_notebooks.py")
sync = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync)


def toc_names() -> list[str]:
    return [TOC["root"]] + [ch["file"] for part in TOC["parts"] for ch in part["chapters"]]


SOURCES = sync.pages()


def colab_cell(source: Path) -> nbformat.NotebookNode:
    nb = jupytext.read(source, fmt="md:myst")
    return next(cell for cell in nb.cells if cell.cell_type == "code")


def test_every_notebook_page_has_a_myst_source() -> None:
    expected = [ROOT / f"{name}.md" for name in toc_names() if name not in NOT_NOTEBOOKS]
    assert SOURCES == expected, (
        "every page but the bibliography should be a MyST Markdown notebook (jupytext md:myst): "
        f"missing {sorted(str(p.relative_to(ROOT)) for p in set(expected) - set(SOURCES))}"
    )


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_ipynb_twin_matches_its_source(source: Path) -> None:
    twin = sync.twin_path(source)
    assert twin.exists(), f"{twin.relative_to(ROOT)} is missing: run {sync.COMMAND}"
    assert twin.read_text() == sync.render(source), (
        f"{twin.relative_to(ROOT)} has drifted from {source.relative_to(ROOT)} "
        f"(edit the .md, never the .ipynb): run {sync.COMMAND}"
    )


def test_no_stray_ipynb_without_source() -> None:
    twins = {sync.twin_path(s) for s in SOURCES}
    stray = [
        str(p.relative_to(ROOT))
        for p in [*ROOT.glob("*.ipynb"), *(ROOT / "chapters").glob("*.ipynb")]
        if p not in twins
    ]
    assert not stray, f"notebooks without a MyST source (convert with jupytext --to md:myst): {stray}"


def test_sync_is_deterministic() -> None:
    source = SOURCES[0]
    first, second = sync.render(source), sync.render(source)
    assert first == second
    nb = nbformat.reads(first, as_version=4)
    assert [c.id for c in nb.cells] == [f"cell-{i}" for i in range(len(nb.cells))]


def test_sphinx_sees_only_the_markdown_pages() -> None:
    """Both files of a pair would be 'multiple files found for the document' (an error with -W)."""
    patterns = CONFIG["exclude_patterns"]
    for source in SOURCES:
        rel = str(sync.twin_path(source).relative_to(ROOT))
        assert any(fnmatch.fnmatch(rel, p.replace("**", "*")) for p in patterns), (
            f"_config.yml's exclude_patterns should exclude {rel} (the page is its .md)"
        )
        assert not any(fnmatch.fnmatch(str(source.relative_to(ROOT)), p.replace("**", "*")) for p in patterns)


def test_colab_cell_is_the_same_on_every_page() -> None:
    cells = {str(s.relative_to(ROOT)): colab_cell(s).source for s in SOURCES}
    reference = cells[str(SOURCES[0].relative_to(ROOT))]
    differ = [name for name, text in cells.items() if text != reference]
    assert not differ, f"the Colab set-up cell differs from {SOURCES[0].name}'s in {differ}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_colab_cell_is_removed_from_the_html(source: Path) -> None:
    cell = colab_cell(source)
    assert "google.colab" in cell.source, f"{source.name}: first code cell is not the Colab set-up cell"
    assert "remove-cell" in cell.metadata.get("tags", []), (
        f"{source.name}: tag the Colab cell remove-cell (:tags: [remove-cell]) so the book hides it"
    )
    assert len(cell.source.splitlines()) <= 12, f"{source.name}: keep the Colab cell short"


def test_generators_are_gone() -> None:
    scripts = ROOT / "scripts"
    left = sorted(p.name for p in [*scripts.glob("make_*_notebook*.py"), scripts / "notebook_cells.py"] if p.exists())
    assert not left, f"the pages are edited by hand now; remove the generators {left}"
