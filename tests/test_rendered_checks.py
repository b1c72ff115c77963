"""scripts/check_rendered.py: its rules on small pages, without building the book."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_rendered", ROOT / "scripts" / "check_rendered.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def page(body: str, extra: str = '<div id="sokit-layout-checked"></div>') -> str:
    return (f"<html><head><title>A page</title></head><body><main><article class='bd-article'>{body}"
            f"</article></main>{extra}</body></html>")


def figure(name: str, img: bool = True, caption: bool = True) -> str:
    return (f"<div class='cell_output docutils container'><figure id='{name}'>"
            + ("<img src='data:image/png;base64,AA' alt='a plot'>" if img else "")
            + ("<figcaption><p><span class='caption-number'>Figure 1 </span>what is drawn</p></figcaption>"
               if caption else "") + "</figure></div>")


def problems(dom: str, figures=(), measured=True) -> list[str]:
    return check.page_problems(dom, ROOT / "_build" / "html" / "x.html", list(figures), measured)[0]


def test_a_page_with_every_figure_drawn_passes():
    assert problems(page(figure("fig-a") + figure("fig-b")), ["fig-a", "fig-b"]) == []


def test_a_page_with_fewer_images_than_figure_cells_fails():
    # what MPLBACKEND=Agg does: the cells run, no image comes out, myst-nb writes no figure
    found = problems(page(figure("fig-a") + "<div class='cell_output'><pre>text</pre></div>"), ["fig-a", "fig-b"])
    assert any("1 of 2 figures drawn" in p and "fig-b" in p for p in found), found
    found = problems(page(figure("fig-a", img=False)), ["fig-a"])
    assert any("0 of 1 figures drawn" in p for p in found), found


def test_output_images_need_a_caption_and_every_image_alt_text():
    loose = "<div class='cell_output'><div class='output'><img src='data:image/png;base64,AA' alt='x'></div></div>"
    assert any("outside a numbered, captioned figure" in p for p in problems(page(loose)))
    assert any("without a caption: fig-a" in p for p in problems(page(figure("fig-a", caption=False)), ["fig-a"]))
    no_alt = "<figure id='f'><img src='data:image/png;base64,AA'><figcaption>c</figcaption></figure>"
    assert any("without alt text" in p for p in problems(page(no_alt)))


def test_overflow_markers_fail_and_a_missing_layout_check_fails():
    marked = page("<table><tr><td>wide</td></tr></table>",
                  extra='<div class="sokit-overflow" data-what="table: runs 300 px past the text column"></div>'
                        '<div id="sokit-layout-checked"></div>')
    assert any(p.startswith("overflow: table: runs 300 px") for p in problems(marked))
    assert any("layout check did not run" in p for p in problems(page("", extra="")))
    assert problems(page("", extra=""), measured=False) == []


def test_the_script_is_injected_with_a_base_for_relative_urls(tmp_path):
    text = check.with_measure_script("<html><head><title>t</title></head><body><p>x</p></body></html>",
                                     tmp_path / "chapters" / "p.html")
    assert f'<base href="{(tmp_path / "chapters").resolve().as_uri()}/">' in text
    assert text.index("sokit-layout-checked") < text.index("</body>")


def test_figure_cells_reads_the_notebooks_figure_metadata(tmp_path):
    def cell(meta, source="x = 1"):
        return {"cell_type": "code", "metadata": meta, "source": source, "outputs": [], "execution_count": None}

    nb = {"cells": [cell({}),
                    cell({"mystnb": {"figure": {"name": "fig-one", "caption": "c"}}}),
                    cell({"mystnb": {"figure": {"name": "fig-gone"}}, "tags": ["remove-output"]}),
                    {"cell_type": "markdown", "metadata": {"mystnb": {"figure": {"name": "no"}}}, "source": ""},
                    cell({"mystnb": {"figure": {"caption": "unnamed"}}})],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "p.ipynb").write_text(json.dumps(nb))
    names = check.figure_cells(tmp_path / "p.ipynb")
    assert names[0] == "fig-one" and len(names) == 2 and "without a name" in names[1]
    assert check.figure_cells(tmp_path / "absent.ipynb") == []


def test_the_books_chapters_declare_their_figures():
    assert "fig-6-2-ours" in check.figure_cells(ROOT / "chapters" / "06_factorized_second_order.ipynb")
    assert "fig-5-1-ours" in check.figure_cells(ROOT / "chapters" / "05_updated_backprop.md")


browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(browser is None, reason="needs Debian's chromium")
def test_chromium_measures_overflow(tmp_path):
    """The injected script in a real browser: a table wider than the column fails unless
    something scrolls it; content cut off by overflow hidden fails."""
    style = ("<style>.bd-article{width:600px} .scroll{overflow-x:auto} .cut{overflow:hidden}"
             " pre{margin:0}</style>")

    def measure(body):
        html = (f"<html><head><title>t</title>{style}</head>"
                f"<body><article class='bd-article'>{body}</article></body></html>")
        path = tmp_path / "p.html"
        path.write_text(html)
        return check.page_problems(check.dump_dom(browser, path), path)[0]

    wide = "<table><tr><td style='min-width:900px'>wide</td></tr></table>"
    found = measure(wide)
    assert any(p.startswith("overflow: table") and "past the text column" in p for p in found), found
    assert measure(f"<div class='scroll'>{wide}</div>") == []
    tall = "<table>" + "<tr><td style='min-width:900px'>wide</td></tr>" * 150 + "</table>"
    found = measure(f"<div class='scroll'>{tall}</div>")
    assert any("scroll bar is" in p and "out of sight" in p for p in found), found
    found = measure(f"<div class='cut'>{wide}</div>")
    assert any("cut off" in p for p in found), found
    found = measure("<div class='cell_output'><pre>" + "x" * 400 + "</pre></div>")
    assert any(p.startswith("overflow: pre") for p in found), found
    assert measure("<div class='cell_output'><pre style='white-space:pre-wrap;overflow-wrap:anywhere'>"
                   + "x" * 400 + "</pre></div>") == []
