"""CUDA-graph capture of a training step, shared by :func:`sokit.train.train` and
:func:`sokit.population.train_population`.

A step that reads and writes only fixed buffers and makes no host synchronisation can
be captured once and replayed. :class:`CapturedStep` runs the first ``warmup`` calls
eagerly on a side stream (real steps: lazy state and cuBLAS workspaces get allocated),
captures the next call and replays it from then on. Capture itself executes nothing,
so the captured call is replayed at once and every call is exactly one step.

An optimizer whose refresh updates cannot be replayed (ACP, KFAC, centered GD and NNN built
with ``capturable=True``, :class:`sokit.optim.base.LayerPreconditioner`) passes
``eager``, asked on the host before each call: a call for which it is True runs eagerly,
outside the graph, and is never the one captured. ``replayed`` is called after each
replay but the capture's own: the host bookkeeping (the optimizer's update counter)
that the replayed Python does not do. This path is untested on CUDA hardware; the CPU
tests replay the recorded operations of a plain update instead
(``tests/test_capturable.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

#: eager steps run before the graph is captured
WARMUP = 3


def capture_enabled() -> bool:
    """False when ``$SOKIT_CAPTURE`` is "0": every step then runs eagerly, and the
    experiments build no optimizer with ``capturable=True`` (the way out if capture
    fails on some GPU)."""
    return os.environ.get("SOKIT_CAPTURE", "1") != "0"


class CapturedStep:
    """``step()`` eagerly for ``warmup`` calls, then as a replayed CUDA graph.

    ``prepare`` runs once right before capture (e.g. ``optimizer.zero_grad`` so that the
    gradients are allocated inside the graph's memory pool). ``eager() -> bool`` marks the
    calls that run eagerly (refresh updates); ``replayed()`` follows every replay but the
    capture's own (see the module docstring). Returns what ``step`` returns; once
    captured, that is the same static tensor on every replay (clone it to keep it).
    """

    def __init__(self, step: Callable[[], Any], device: torch.device, warmup: int = WARMUP,
                 prepare: Callable[[], Any] | None = None,
                 eager: Callable[[], bool] | None = None,
                 replayed: Callable[[], Any] | None = None) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}; call the step eagerly instead")
        self.step, self.device, self.warmup, self.prepare = step, device, warmup, prepare
        self.eager, self.replayed = eager, replayed
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: Any = None
        self.eager_calls = 0
        self.side = torch.cuda.Stream(device)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self) -> Any:
        if self.eager is not None and self.eager():
            return self.step()
        if self.graph is not None:
            self.graph.replay()
            if self.replayed is not None:
                self.replayed()
            return self.output
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            if self.eager_calls < self.warmup:
                self.eager_calls += 1
                out = self.step()
            else:
                if self.prepare is not None:
                    self.prepare()
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.output = self.step()
        current.wait_stream(self.side)
        if self.graph is None:
            return out
        self.graph.replay()  # the captured call's step (its Python ran during capture)
        return self.output
