#!/usr/bin/env bash
# The main job: build the HTML book (executing every notebook; warnings are errors).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_mathjax.sh
jupyter-book build . -W --keep-going "$@"
echo "Book: $(pwd)/_build/html/index.html"
