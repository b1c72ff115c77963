#!/usr/bin/env bash
# One prepared GPU session (issue 13 item 5): the CUDA tests (captured == eager), the step-overhead
# benchmark captured as CUDA graphs, and the full-profile runs of fig6_2, fig6_1, fig6_3_fashion,
# sgd_autoencoder, fig5_1 and table4_1 as concurrent processes (one per method, no run trained
# twice), all stopped cleanly (SIGINT, checkpoints kept) at a time box; everything under $OUT,
# packed into the <= 8 files the GPU machine sends back (summary.md first). See scripts/gpu_session.py.
#
# Here, once, before the call (gzipped MNIST and Fashion-MNIST into data/gpu/, about 40 MiB, and the
# wheels the GPU machine lacks, optuna and its needs plus ASDL, into .whl/; both are git-ignored):
#   bash scripts/gpu_session.sh --prepare
# Then the run tool, exactly:
#   run(command="bash scripts/gpu_session.sh", carry=["data/gpu", ".whl"], timeout_s=600)
# (default time box 540 s: the runs stop at 495 s, packing ends by 540 s, inside the 600 s limit.)
# A dry run, here on the CPU (smoke profile, one process per experiment, time box 100 s; tests/test_gpu_session.py):
#   OUT=/tmp/gpu_dry bash scripts/gpu_session.sh --dry-run
#
# Usage: gpu_session.sh [--dry-run] [--time-box SECONDS] [--keep-tree] | --prepare
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ "${1:-}" = "--prepare" ]; then
  exec "$PYTHON" scripts/gpu_session.py prepare
fi
if compgen -G ".whl/*.whl" >/dev/null && ! "$PYTHON" -c "import optuna, asdl" 2>/dev/null; then
  # the GPU machine: the carried wheels, beside its own torch
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_session_site .whl/*.whl
  export PYTHONPATH="/tmp/gpu_session_site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PYTHON" scripts/gpu_session.py session "$@"
