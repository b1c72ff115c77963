"""Checkpoints of a training run: written atomically, read without unpickling code.

A checkpoint holds only tensors and plain Python values (model and optimizer state
dicts, sampler position, RNG states, the curve so far), so it loads with
``torch.load(weights_only=True)``: a crafted file cannot run code, and an unreadable one
raises :class:`CheckpointError` naming the file and the fix.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message names the file and the fix."""


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a per-process temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, device: torch.device, run: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at ``path`` of the run described by ``run`` (tensors on ``device``)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            why = ("it holds Python objects other than tensors and plain values; "
                   "they were not unpickled, nothing in it ran")
        else:
            why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        raise CheckpointError(
            f"checkpoint {path} cannot be read safely ({why}); delete it to start this run afresh "
            "(or rerun the experiment with --rerun)") from e
    if not isinstance(state, dict) or "run" not in state:
        raise CheckpointError(f"{path} is not a sokit checkpoint; delete it or pass another checkpoint path")
    if state["run"] != run:
        raise CheckpointError(f"checkpoint {path} belongs to another run ({state['run']}); "
                              "delete it or pass another checkpoint path")
    return state
