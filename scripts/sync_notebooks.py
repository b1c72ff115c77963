"""Regenerate every page's .ipynb twin from its hand-edited MyST Markdown source.

Each page of the book (intro, the chapters and appendices, errata) is a MyST Markdown
notebook (jupytext format ``md:myst``), e.g. ``chapters/05_updated_backprop.md``: that is
the file to edit, and the page jupyter-book renders. Its twin ``chapters/05_updated_backprop.ipynb``
exists for Colab's launch button and for nbval; it is written from the .md by this script,
without outputs and with cell ids that depend only on the cell's position
(``cell-0``, ``cell-1``, ...), so the same .md always gives the same bytes.

    python scripts/sync_notebooks.py            # rewrite every twin that differs from its .md
    python scripts/sync_notebooks.py --check    # only report drifted twins (exit status 1)
    python scripts/sync_notebooks.py chapters/05_updated_backprop.md   # only these pages
    python scripts/sync_notebooks.py --ruff-fix # also apply ruff's fixes to the code, in the .md

ruff lints the twins (it cannot read MyST code cells); ``--ruff-fix`` runs ``ruff check --fix``
on them and carries each changed code cell back into its .md, then writes the twins again.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python scripts/sync_notebooks.py"


def pages() -> list[Path]:
    """The MyST notebook sources of the book: _toc.yml entries whose .md has a jupytext header."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    names = [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    return [ROOT / f"{name}.md" for name in names if is_notebook_source(ROOT / f"{name}.md")]


def is_notebook_source(path: Path) -> bool:
    if not path.exists():
        return False
    text = path.read_text()
    if not text.startswith("---\n"):
        return False
    header = yaml.safe_load(text.split("\n---\n", 1)[0][4:]) or {}
    return header.get("jupytext", {}).get("text_representation", {}).get("format_name") == "myst"


def twin_path(source: Path) -> Path:
    return source.with_suffix(".ipynb")


def render(source: Path) -> str:
    """The .ipynb text that ``source`` (a MyST Markdown notebook) produces."""
    nb = jupytext.read(source, fmt="md:myst")
    nb.nbformat, nb.nbformat_minor = 4, 5
    nb.metadata = {
        "kernelspec": nb.metadata.get(
            "kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"}
        ),
        "language_info": {"name": "python"},
    }
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def drifted(sources: list[Path]) -> list[Path]:
    """The sources whose committed twin is missing or differs from what they produce."""
    out = []
    for source in sources:
        twin = twin_path(source)
        if not twin.exists() or twin.read_text() != render(source):
            out.append(source)
    return out


def port_code_cells(source: Path) -> int:
    """Copy the code cells that differ in the twin (e.g. after ruff --fix) into the .md source."""
    text = source.read_text()
    ours = jupytext.read(source, fmt="md:myst").cells
    theirs = nbformat.read(twin_path(source), as_version=4).cells
    assert len(ours) == len(theirs), f"{twin_path(source)} has other cells than {source}"
    changed = 0
    for mine, fixed in zip(ours, theirs):
        fixed_source = fixed.source.lstrip("\n")  # ruff can leave a blank first line where it removed an import
        if mine.source == fixed_source:
            continue
        old, new = f"\n{mine.source}\n```\n", f"\n{fixed_source}\n```\n"
        if mine.cell_type != "code" or text.count(old) != 1:
            raise SystemExit(f"{source}: cannot carry back the change to the cell starting {mine.source[:60]!r}")
        text = text.replace(old, new)
        changed += 1
    if changed:
        source.write_text(text)
    return changed


def ruff_fix(sources: list[Path]) -> None:
    twins = [str(twin_path(s)) for s in sources]
    subprocess.run([sys.executable, "-m", "ruff", "check", "--fix", "--quiet", *twins], cwd=ROOT)
    for source in sources:
        if n := port_code_cells(source):
            print(f"ruff fixed {n} code cell(s) of {source.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="*", type=Path, help="MyST .md pages (default: every page in _toc.yml)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a twin has drifted")
    parser.add_argument("--ruff-fix", action="store_true", help="apply ruff check --fix to the code, in the .md")
    args = parser.parse_args(argv)
    sources = [p.resolve() for p in args.sources] or pages()
    for source in sources:
        if not is_notebook_source(source):
            parser.error(f"{source} is not a MyST Markdown notebook (jupytext md:myst header)")
    if args.ruff_fix and not args.check:
        for source in drifted(sources):
            twin_path(source).write_text(render(source))
        ruff_fix(sources)
    stale = drifted(sources)
    for source in stale:
        twin = twin_path(source)
        if args.check:
            print(f"{twin.relative_to(ROOT)} differs from {source.relative_to(ROOT)}")
        else:
            twin.write_text(render(source))
            print(f"wrote {twin.relative_to(ROOT)}")
    if args.check and stale:
        print(f"run: {COMMAND}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
