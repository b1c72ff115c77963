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


def test_colab_setup_never_chooses_a_profile_that_trains(monkeypatch, capsys) -> None:
    """On a Colab GPU, "Run all" shows the stored results: setup() sets no profile."""
    from sokit import colab

    monkeypatch.delenv("SOKIT_PROFILE", raising=False)
    monkeypatch.setattr(colab.torch.cuda, "is_available", lambda: False)
    assert colab.setup() == "" and "Change runtime type" in capsys.readouterr().out
    monkeypatch.setattr(colab.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(colab.torch.cuda, "get_device_name", lambda i: "Tesla T4")
    assert colab.setup() == "Tesla T4" and "Run it yourself" in capsys.readouterr().out
    assert "SOKIT_PROFILE" not in os.environ


def test_the_opt_in_cell_trains_nothing_until_a_profile_is_named(monkeypatch, capsys) -> None:
    from sokit import colab, experiments

    calls = []
    monkeypatch.setattr(experiments, "load_or_run", lambda *a, **k: calls.append(a))
    assert colab.run_yourself(["fig6_2", "fig5_1"]) == [] and not calls
    out = capsys.readouterr().out
    assert "Nothing was trained" in out
    for profile in experiments.get("fig6_2").configs:
        assert f"  {profile}" in out
    # a stored profile shows the time it took and where; the GPU estimate counts steps
    quick = colab.cost("fig6_2", "quick")
    assert quick["budget"] == "6 x 1,000 updates" and "min on AMD EPYC (cpu)" in quick["measured"]
    assert quick["on a GPU (eager)"] == f"about {6 * 1000 * colab.EAGER_GPU_MS / 60_000:,.1f} min"
    colab.run_yourself(["fig6_2"], "smoke")
    assert calls == [("fig6_2", "smoke")]


@pytest.mark.parametrize("path", [p for p in sources() if "load_or_run" in p.read_text()], ids=lambda p: p.name)
def test_every_page_that_runs_experiments_has_the_opt_in_cell(path: Path) -> None:
    text = path.read_text()
    assert "colab.run_yourself(" in text and "PROFILE = None" in text, (
        f"{path.name}: add the opt-in 'Run it yourself' cell (PROFILE = None; colab.run_yourself([...], PROFILE))")


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



# ----------------------------------------------------------------- figures and titles
#: a top-level statement that draws: pyplot, sokit.report.plots, or an image
DRAWS = re.compile(r"^(?:\w+(?:, \w+)* = )?(?:plt\.(?:subplots|figure|show|imshow)\b|plots\.\w+\(|"
                   r"(?:overlay|plot_fig\w+)\()", re.M)


def drawing_cells(nb) -> list[int]:
    """Indices of the code cells that draw a figure: a top-level drawing statement, or a
    call of a helper defined on the page whose body draws (chapter 6's show())."""
    code = [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    helpers = set()
    for _, source in code:
        for name, body in re.findall(r"^def (\w+)\(.*?\n((?:[ \t]+.*\n?|\n)*)", source, re.M):
            if re.search(r"plt\.show\(|plots?\.\w+\(|\boverlay\(", body):
                helpers.add(name)
    calls = re.compile(r"^(?:\w+ = )?(?:" + "|".join(sorted(helpers)) + r")\(", re.M) if helpers else None
    return [i for i, source in code if DRAWS.search(source) or (calls and calls.search(source))]


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.name)
def test_every_figure_cell_is_numbered_captioned_and_described(path: Path) -> None:
    """scripts/check_rendered.py counts a page's figures from this metadata, so a cell that
    draws without it would escape the check (and show an unnumbered figure)."""
    nb = jupytext.read(path, fmt="md:myst")
    for i in drawing_cells(nb):
        meta = nb.cells[i].metadata.get("mystnb", {})
        figure, image = meta.get("figure", {}), meta.get("image", {})
        where = f"{path.name}, cell {i + 1}: {nb.cells[i].source.splitlines()[0]!r}"
        assert figure.get("name", "").startswith("fig-"), f"{where} draws without mystnb.figure.name"
        assert len(figure.get("caption", "")) > 40, f"{where}: a caption saying what is drawn"
        assert len(image.get("alt", "")) > 40, f"{where}: alt text (mystnb.image.alt)"


def test_figure_names_are_unique_and_numbered() -> None:
    names = []
    for path in sources():
        nb = jupytext.read(path, fmt="md:myst")
        names += [c.metadata["mystnb"]["figure"]["name"] for c in nb.cells
                  if c.cell_type == "code" and "figure" in c.metadata.get("mystnb", {})]
        names += re.findall(r"^:name: (fig-[\w-]+)", path.read_text(), re.M)
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert CONFIG["sphinx"]["config"]["numfig"] is True
    assert "custom.css" in CONFIG["sphinx"]["config"]["html_css_files"]
    assert (ROOT / "_assets" / "custom.css").is_file()


def test_the_thesis_figures_chapters_draw_overlays() -> None:
    for page, figures in {"05_updated_backprop": ["fig-5-1-ours"],
                          "06_factorized_second_order": ["fig-6-1-ours", "fig-6-2-ours", "fig-6-3-fashion"]}.items():
        text = (ROOT / "chapters" / f"{page}.md").read_text()
        assert "overlay(" in text and all(f"name: {f}" in text for f in figures), page


def test_chapter_titles_are_numbered_like_the_thesis() -> None:
    """Chapter k of the thesis (thesis.tex's \\chapter order) is page chapters/0k_*, titled
    "k. ..."; the book's own appendices are lettered."""
    for name in toc_files():
        path = ROOT / f"{name}.md"
        title = next(line for line in path.read_text().splitlines() if line.startswith("# "))
        stem = Path(name).name
        if re.match(r"0\d_", stem):
            assert title.startswith(f"# {int(stem[:2])}. "), (name, title)
        elif stem.startswith("appendix_"):
            assert title.startswith(f"# Appendix {stem.split('_')[1].upper()}: "), (name, title)


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.name)
def test_the_colab_cell_is_hidden(path: Path) -> None:
    nb = jupytext.read(path, fmt="md:myst")
    colab = [c for c in nb.cells if c.cell_type == "code" and "google.colab" in c.source]
    assert colab and all("remove-cell" in c.metadata.get("tags", []) for c in colab), path.name
