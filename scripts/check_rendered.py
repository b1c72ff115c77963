"""Check the rendered book the way a reader's browser sees it.

Every page of the table of contents is loaded in headless Chromium (Debian package
``chromium``, window 1280 px wide) and its DOM read after scripts ran. A page passes when:

* it loads and has a title;
* every piece of math the page holds was typeset by MathJax (no raw ``\\(`` left
  in a math node, no MathJax error node);
* every image it shows exists on disk, and every image of the text has alt text;
* **it shows every figure its notebook draws.** A figure cell is a code cell with myst-nb
  figure metadata (``mystnb: figure: {name, caption}`` in the .md; the book's convention,
  which ``tests/test_book.py`` enforces for every cell that draws). Each such cell must
  render as a ``<figure id=NAME>`` holding an image: a cell that produced no image (a
  non-inline matplotlib backend, ``MPLBACKEND=Agg``, is the classic cause) fails. An image
  in a cell's output outside a captioned ``<figure>`` fails too;
* **nothing runs past the text column without a scroll bar.** A script injected into a
  copy of the page measures, once MathJax has typeset, every table, ``pre``, cell output,
  figure, image and display formula of the article: its content (``scrollWidth``) must
  fit in the article's column, or sit in an element (itself or an ancestor) that scrolls
  sideways (``overflow-x: auto|scroll``) and is no taller than the window (else its scroll
  bar is out of sight: a tall table whose last columns the reader never finds); content
  cut off by ``overflow: hidden`` (a formula clipped in a table cell) fails;
* every internal link points to a file that exists (and an anchor that exists);
* no executed cell shows an error traceback or a warning on stderr.

Usage: ``python scripts/check_rendered.py [_build/html]``; exits 1 listing each failure.
The parsing and the rules are plain functions (:func:`page_problems`,
:func:`figure_cells`) so that ``tests/test_rendered_checks.py`` runs them on small pages.
"""

from __future__ import annotations

import html.parser
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-file-access-from-files",
    "--virtual-time-budget=20000",
    "--window-size=1280,2000",
    "--dump-dom",
]

#: elements without an end tag (Chromium's serialized DOM closes every other one)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

#: injected before </body> of a copy of the page: once the page (and MathJax) are done,
#: marks every element of the article whose content runs past the text column without a
#: scroll bar, or is cut off by an ``overflow: hidden`` box, with <div class="sokit-overflow">
MEASURE_SCRIPT = r"""
<script>
(function () {
  var SELECTOR = "table, pre, div.cell_output, div.output, figure, img, span.math, div.math, .highlight";
  function scrolls(style) { return style.overflowX === "auto" || style.overflowX === "scroll"; }
  function clips(style) { return style.overflowX === "hidden" || style.overflowX === "clip"; }
  function name(el) {
    var id = el.id ? "#" + el.id : "";
    var cls = typeof el.className === "string" ? el.className.trim().split(/\s+/).slice(0, 2).join(".") : "";
    cls = cls ? "." + cls : "";
    var text = (el.textContent || el.getAttribute("alt") || "").replace(/\s+/g, " ").trim().slice(0, 40);
    return el.tagName.toLowerCase() + id + cls + (text ? " '" + text + "'" : "");
  }
  function contentWidth(el) {
    // a formula's visible width is its mjx-container's box (MathJax's hidden assistive
    // MathML inflates scrollWidth)
    if (el.matches("span.math, div.math")) {
      var m = el.querySelector("mjx-container");
      return m ? m.getBoundingClientRect().width : 0;
    }
    return el.scrollWidth || 0;
  }
  function measure() {
    var article = document.querySelector(".bd-article") || document.querySelector("main") || document.body;
    var column = article.getBoundingClientRect();
    var found = [], reported = [];
    article.querySelectorAll(SELECTOR).forEach(function (el) {
      var box = el.getBoundingClientRect();
      if (!box.width && !box.height) return;                      // not displayed
      var style = getComputedStyle(el);
      var wide = contentWidth(el);
      var right = box.left + Math.max(wide, box.width);
      function hidden_bar(scroller) {                            // a scroll bar below the window
        var high = scroller.getBoundingClientRect().height;
        if (high <= window.innerHeight) return false;
        if (reported.indexOf(scroller) < 0) {                    // once per scroll container
          reported.push(scroller);
          found.push(name(el) + ": scrolls sideways, but its scroll bar is " + Math.round(high) +
                     " px below its top, out of sight");
        }
        return true;
      }
      if (scrolls(style) && wide > el.clientWidth + 2 && hidden_bar(el)) return;
      if (scrolls(style)) right = box.right;                     // it has its own scroll bar
      else if (clips(style) && wide > el.clientWidth + 2) {
        found.push(name(el) + ": content " + Math.round(wide) + " px cut to " + el.clientWidth +
                   " px (overflow hidden)");
        return;
      }
      for (var a = el.parentElement; a && a !== article.parentElement; a = a.parentElement) {
        var edge = a.getBoundingClientRect().right, s = getComputedStyle(a);
        if (right <= edge + 2) continue;
        if (scrolls(s)) {                                        // reachable by scrolling a
          if (hidden_bar(a)) return;
          right = edge;
          continue;
        }
        if (clips(s)) {
          found.push(name(el) + ": " + Math.round(right - edge) + " px cut off by " + name(a).split(" ")[0]);
          return;
        }
      }
      if (right > column.right + 2) {
        found.push(name(el) + ": runs " + Math.round(right - column.right) + " px past the text column, no scroll bar");
      }
    });
    found.forEach(function (what) {
      var mark = document.createElement("div");
      mark.className = "sokit-overflow";
      mark.setAttribute("data-what", what);
      document.body.appendChild(mark);
    });
    var done = document.createElement("div");
    done.id = "sokit-layout-checked";
    document.body.appendChild(done);
  }
  window.addEventListener("load", function () {
    var typeset = window.MathJax && MathJax.startup && MathJax.startup.promise;
    (typeset || Promise.resolve()).then(function () { setTimeout(measure, 500); });
  });
})();
</script>
"""


class PageParser(html.parser.HTMLParser):
    """Collects what the checks need from one rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.math_nodes = 0  # elements MathJax should process (class "math")
        self.typeset = 0  # mjx-container elements MathJax produced
        self.mathjax_errors = 0
        self.images: list[str] = []
        self.images_without_alt: list[str] = []  # images of the article with no alt text
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.tracebacks = 0
        self.stderr_warnings = 0
        self.figures: dict[str, int] = {}  # id of each <figure> -> images inside it
        self.captioned: set[str] = set()  # ids of the figures with a <figcaption>
        self.loose_output_images = 0  # images in a cell output, outside any <figure>
        self.overflows: list[str] = []  # what the injected script marked
        self.layout_checked = False  # the injected script ran
        # open elements, each with the regions it is in ("title", "article", "output", "stderr", "figure=ID")
        self._stack: list[tuple[str, frozenset[str]]] = []

    def _regions(self) -> frozenset[str]:
        return self._stack[-1][1] if self._stack else frozenset()

    def _figure(self, regions: frozenset[str]) -> str | None:
        return next((r[7:] for r in regions if r.startswith("figure=")), None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        regions = set(self._regions())
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "title":
            regions.add("title")
        if "bd-article" in classes or tag == "article":
            regions.add("article")
        if "cell_output" in classes:
            regions.add("output")
        if "stderr" in classes and "output" in classes:
            regions.add("stderr")
        if tag == "figure":
            fid = a.get("id") or f"(figure without id {len(self.figures) + 1})"
            regions = {r for r in regions if not r.startswith("figure=")} | {f"figure={fid}"}
            self.figures.setdefault(fid, 0)
        if tag == "figcaption" and self._figure(frozenset(regions)):
            self.captioned.add(self._figure(frozenset(regions)))
        if "math" in classes and tag in ("span", "div"):
            self.math_nodes += 1
        if tag == "mjx-container":
            self.typeset += 1
        if tag == "mjx-merror" or "MathJax_Error" in classes:
            self.mathjax_errors += 1
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
            figure = self._figure(frozenset(regions))
            if figure:
                self.figures[figure] += 1
            elif "output" in regions:
                self.loose_output_images += 1
            if "article" in regions and not (a.get("alt") or "").strip():
                self.images_without_alt.append(a["src"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if "traceback" in classes or "output_error" in classes:
            self.tracebacks += 1
        if "sokit-overflow" in classes:
            self.overflows.append(a.get("data-what") or "?")
        if a.get("id") == "sokit-layout-checked":
            self.layout_checked = True
        if tag not in VOID:
            self._stack.append((tag, frozenset(regions)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._stack) - 1, -1, -1):  # close up to the matching open tag
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break

    def handle_data(self, data: str) -> None:
        regions = self._regions()
        if "title" in regions:
            self.title += data
        if "stderr" in regions and "Warning" in data:
            self.stderr_warnings += 1


def figure_cells(notebook: Path) -> list[str]:
    """The figures a page's notebook draws: the ``name`` of every code cell's myst-nb figure
    metadata (``mystnb: figure: name``), except cells removed from the page or their output
    (tags ``remove-cell``, ``remove-output``). ``notebook`` is the page's .ipynb twin (or its
    .md, read with jupytext); a page without either draws none."""
    if notebook.suffix != ".ipynb" and notebook.with_suffix(".ipynb").is_file():
        notebook = notebook.with_suffix(".ipynb")
    if notebook.suffix == ".ipynb" and notebook.is_file():
        cells = json.loads(notebook.read_text())["cells"]
    elif notebook.with_suffix(".md").is_file():
        import jupytext

        cells = jupytext.read(notebook.with_suffix(".md"), fmt="md:myst")["cells"]
    else:
        return []
    names = []
    for i, cell in enumerate(cells):
        meta = cell.get("metadata", {})
        figure = (meta.get("mystnb") or {}).get("figure")
        if cell.get("cell_type") != "code" or not figure:
            continue
        if {"remove-cell", "remove-output"} & set(meta.get("tags", [])):
            continue
        names.append(figure.get("name") or f"(cell {i + 1}, a figure without a name)")
    return names


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("check_rendered: no Chromium found; install Debian's `chromium` package")


def with_measure_script(html_text: str, page: Path) -> str:
    """The page with :data:`MEASURE_SCRIPT` before </body> and a <base> that resolves its
    relative URLs from the page's own folder (the copy lives in a temporary folder)."""
    base = f'<base href="{page.parent.resolve().as_uri()}/">'
    head = html_text.find("<head>")
    text = html_text[:head + 6] + base + html_text[head + 6:] if head >= 0 else base + html_text
    end = text.rfind("</body>")
    return text[:end] + MEASURE_SCRIPT + text[end:] if end >= 0 else text + MEASURE_SCRIPT


def dump_dom(browser: str, page: Path, measure: bool = True) -> str:
    """The page's DOM after its scripts ran (and, with ``measure``, the layout markers)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = page
        if measure:
            target = Path(tmp) / page.name
            target.write_text(with_measure_script(page.read_text(encoding="utf-8"), page), encoding="utf-8")
        out = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}", target.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    if out.returncode != 0 or "<html" not in out.stdout:
        raise RuntimeError(f"Chromium could not load {page}: {out.stderr[-500:]}")
    return out.stdout


def local_target(page: Path, ref: str) -> tuple[Path, str] | None:
    """The file and anchor an internal reference points to (None when external)."""
    url = urlparse(ref)
    if url.scheme in ("http", "https", "mailto", "data", "javascript") or url.netloc:
        return None
    target = page if not url.path else (page.parent / unquote(url.path)).resolve()
    return target, url.fragment


def page_problems(dom: str, page: Path, figures: list[str] = (), measured: bool = True) -> tuple[list[str], PageParser]:
    """The problems of one rendered page, from its DOM (``dump_dom``) and the names of the
    figures its notebook draws (``figure_cells``); the parser keeps its links and ids."""
    parser = PageParser()
    parser.feed(dom)
    problems = []
    if not parser.title.strip():
        problems.append("no title")
    if parser.math_nodes and parser.typeset < parser.math_nodes:
        problems.append(f"math not typeset: {parser.typeset} of {parser.math_nodes} math nodes")
    if parser.mathjax_errors:
        problems.append(f"{parser.mathjax_errors} MathJax errors")
    if parser.tracebacks:
        problems.append(f"{parser.tracebacks} error outputs in executed cells")
    if parser.stderr_warnings:
        problems.append(f"{parser.stderr_warnings} warnings printed by executed cells")
    for src in parser.images:
        target = local_target(page, src)
        if target and not target[0].is_file():
            problems.append(f"missing image {src}")
    drawn = [name for name in figures if parser.figures.get(name)]
    if len(drawn) < len(figures):
        missing = [name for name in figures if name not in drawn]
        problems.append(f"{len(drawn)} of {len(figures)} figures drawn; no image for {', '.join(missing)} "
                        "(a cell that drew nothing: is the matplotlib backend inline?)")
    uncaptioned = [fid for fid, n in parser.figures.items() if n and fid not in parser.captioned]
    if uncaptioned:
        problems.append(f"figures without a caption: {', '.join(uncaptioned)}")
    if parser.loose_output_images:
        problems.append(f"{parser.loose_output_images} output images outside a numbered, captioned figure "
                        "(give the cell myst-nb figure metadata)")
    if parser.images_without_alt:
        problems.append(f"images without alt text: {', '.join(parser.images_without_alt)}")
    if measured and not parser.layout_checked:
        problems.append("the layout check did not run (no marker from the injected script)")
    for what in parser.overflows:
        problems.append(f"overflow: {what}")
    return problems, parser


def check_page(browser: str, page: Path, anchors: dict[Path, set[str]],
               figures: list[str] = ()) -> tuple[list[str], list[str]]:
    """The page's problems, and its links (checked once every page's anchors are known)."""
    problems, parser = page_problems(dump_dom(browser, page), page, figures)
    anchors[page.resolve()] = parser.ids
    return problems, parser.links


def toc_pages(root: Path) -> list[Path]:
    import yaml

    toc = yaml.safe_load((root.parent.parent / "_toc.yml").read_text())
    names = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        names += [c["file"] for c in part["chapters"]]
    return [root / f"{name}.html" for name in names]


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "_build/html").resolve()
    browser = chromium()
    pages = toc_pages(root)
    failures: dict[str, list[str]] = {}
    anchors: dict[Path, set[str]] = {}
    links: dict[Path, list[str]] = {}
    for page in pages:
        if not page.is_file():
            failures[page.name] = ["page was not rendered"]
            continue
        source = root.parent.parent / page.relative_to(root).with_suffix(".ipynb")
        failures[page.name], links[page] = check_page(browser, page, anchors, figure_cells(source))
    for page, refs in links.items():
        for ref in refs:
            target = local_target(page, ref)
            if target is None:
                continue
            path, fragment = target
            if path.is_dir():
                path = path / "index.html"
            if not path.exists():
                failures[page.name].append(f"broken link {ref}")
            elif fragment and path.resolve() in anchors and fragment not in anchors[path.resolve()]:
                failures[page.name].append(f"broken anchor {ref}")
    bad = {name: probs for name, probs in failures.items() if probs}
    for name in failures:
        print(f"{'FAIL' if name in bad else 'ok  '} {name}" + (": " + "; ".join(bad[name]) if name in bad else ""))
    print(f"{len(pages) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
