#!/usr/bin/env bash
# Put MathJax 3 under _static/mathjax so the book typesets math without a CDN
# (CI and offline machines have only the package registries). Needs npm.
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.2.2
dest=_assets/mathjax
if [ -f "$dest/tex-chtml.js" ]; then exit 0; fi
command -v npm >/dev/null || { echo "fetch_mathjax: npm is needed to fetch mathjax@$version (apt-get install npm), or copy MathJax 3's es5/ folder to $dest" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack -q "mathjax@$version" >/dev/null && tar xzf "mathjax-$version.tgz")
mkdir -p "$dest/output/chtml"
cp "$tmp/package/es5/tex-chtml.js" "$dest/"
cp -r "$tmp/package/es5/output/chtml/fonts" "$dest/output/chtml/"
echo "MathJax $version -> $dest"
