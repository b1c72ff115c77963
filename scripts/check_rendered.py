"""Check the rendered book the way a reader's browser sees it.

Every page of the table of contents is loaded in headless Chromium (Debian package
``chromium``) and its DOM read after scripts ran. A page passes when:

* it loads and has a title;
* every piece of math the page holds was typeset by MathJax (no raw ``\\(`` left
  in a math node, no MathJax error node);
* every image it shows exists on disk;
* every internal link points to a file that exists (and an anchor that exists);
* no executed cell shows an error traceback or a warning on stderr.

Usage: ``python scripts/check_rendered.py [_build/html]``; exits 1 listing each failure.
"""

from __future__ import annotations

import html.parser
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
    "--dump-dom",
]


class PageParser(html.parser.HTMLParser):
    """Collects what the checks need from one rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self._in_title = False
        self.math_nodes = 0  # elements MathJax should process (class "math")
        self.typeset = 0  # mjx-container elements MathJax produced
        self.mathjax_errors = 0
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.tracebacks = 0
        self.stderr_warnings = 0
        self._stderr_depth = 0  # > 0 inside a cell's stderr output

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "title":
            self._in_title = True
        if "math" in classes and tag in ("span", "div"):
            self.math_nodes += 1
        if tag == "mjx-container":
            self.typeset += 1
        if tag == "mjx-merror" or "MathJax_Error" in classes:
            self.mathjax_errors += 1
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if "traceback" in classes or "output_error" in classes:
            self.tracebacks += 1
        if self._stderr_depth:
            self._stderr_depth += 1
        elif "stderr" in classes and "output" in classes:
            self._stderr_depth = 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if self._stderr_depth:
            self._stderr_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._stderr_depth and "Warning" in data:
            self.stderr_warnings += 1


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("check_rendered: no Chromium found; install Debian's `chromium` package")


def dump_dom(browser: str, page: Path) -> str:
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", page.as_uri()],
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


def check_page(browser: str, page: Path, anchors: dict[Path, set[str]]) -> tuple[list[str], list[str]]:
    """The page's problems, and its links (checked once every page's anchors are known)."""
    parser = PageParser()
    parser.feed(dump_dom(browser, page))
    anchors[page.resolve()] = parser.ids
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
        failures[page.name], links[page] = check_page(browser, page, anchors)
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
