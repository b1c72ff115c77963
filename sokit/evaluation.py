"""When and how a run is evaluated: the log-spaced schedule and the full-set loss."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sokit import losses

#: chunk size for full-dataset evaluation
EVAL_CHUNK = 10000


def eval_schedule(updates: int, n_evals: int = 20, eval_every: str | int = "log") -> list[int]:
    """Update counts after which train and test loss are measured.

    ``"log"``: about ``n_evals`` counts spaced evenly in log scale from 1 to ``updates``
    (rounded, duplicates removed); an int ``k``: every ``k`` updates. ``updates`` is
    always included.
    """
    if updates < 1:
        raise ValueError(f"updates must be at least 1, got {updates}")
    if eval_every == "log":
        if n_evals < 1:
            raise ValueError(f"n_evals must be at least 1, got {n_evals}")
        points = np.unique(np.round(np.geomspace(1, updates, n_evals)).astype(int))
        sched = [int(p) for p in points]
    elif isinstance(eval_every, int) and eval_every >= 1:
        sched = list(range(eval_every, updates + 1, eval_every))
    else:
        raise ValueError(f"eval_every must be 'log' or a positive int, got {eval_every!r}")
    if not sched or sched[-1] != updates:
        sched.append(updates)
    return sched


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> dict[str, float]:
    """The loss over the whole of (x, y), in eval mode (running statistics for batch norm):
    ``{"loss"}``, plus ``"error"`` (the fraction of misclassified examples) for a classifier."""
    loss_fn = losses.get(loss)
    classifier = losses.target_kind(loss) == "label"
    target = y if classifier else x
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    wrong = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, len(x), EVAL_CHUNK):
        xc, tc = x[i:i + EVAL_CHUNK], target[i:i + EVAL_CHUNK]
        out = model(xc)
        total += loss_fn(out, tc).double() * len(xc)
        if classifier:
            wrong += (out.argmax(1) != tc).sum()
    model.train(was_training)
    result = {"loss": float(total / len(x))}
    if classifier:
        result["error"] = float(wrong / len(x))
    return result
