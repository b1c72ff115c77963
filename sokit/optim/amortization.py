"""When to refresh a layer's curvature statistics: fixed or adaptive amortization.

Algorithm 4 (ACP, line 3) re-estimates the statistics and their inverse every ``N``
updates (:class:`FixedAmortization`; the thesis uses ``N = 100``), arguing that they
change slowly between iterations (section 6.3.2). :class:`AdaptiveAmortization`
follows that argument to its end: it refreshes a layer only when its input
statistics have drifted past a tolerance since that layer's last refresh.

A schedule is asked, once per update and per layer, ``due(step, layer, h)`` with the
layer's current input ``h`` of shape ``(B, n_in)``; after a refresh the optimizer
calls ``refreshed(step, layer, h)``. ``refreshes[layer]`` counts the refreshes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["FixedAmortization", "AdaptiveAmortization", "as_schedule"]


class FixedAmortization:
    """Refresh every layer every ``every`` updates, starting at update 0 (Algorithm 4)."""

    def __init__(self, every: int = 100) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"amortization must be a positive number of updates, got {every!r}")
        self.every = every
        self.refreshes: dict[int, int] = {}

    def due(self, step: int, layer: int, h: Tensor) -> bool:
        return step % self.every == 0 or layer not in self.refreshes

    def refreshed(self, step: int, layer: int, h: Tensor) -> None:
        self.refreshes[layer] = self.refreshes.get(layer, 0) + 1

    def state_dict(self) -> dict[str, Any]:
        return {"every": self.every, "refreshes": dict(self.refreshes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.every = state["every"]
        self.refreshes = {int(k): v for k, v in state["refreshes"].items()}


class AdaptiveAmortization:
    """Refresh a layer when its input statistics drifted by more than ``tol``.

    Every ``check_every`` updates the layer's input is summarized by a cheap sketch,
    ``s = [mean(h), mean(h^2), mean((h R)^2)]`` with ``R`` a fixed ``(n_in, probes)``
    random Gaussian matrix (so changes of the off-diagonal covariance show too); this
    costs ``O(B n_in probes)``, against ``O(B n_in^2 + n_in^3)`` for a refresh. An
    exponential moving average (``decay``) of the sketches smooths the minibatch noise;
    the layer is due when

        ||ema - ema_ref|| / ||ema_ref|| > tol,

    ``ema_ref`` being the average at the layer's last refresh (the first minibatch's
    sketch at the first refresh), so minibatch noise alone rarely triggers a refresh
    while a drift of the population statistics does. ``max_interval`` (optional)
    forces a refresh after that many updates whatever the drift.
    """

    def __init__(self, tol: float = 0.05, check_every: int = 10, decay: float = 0.9,
                 probes: int = 8, max_interval: int | None = None, seed: int = 0) -> None:
        if not tol > 0:
            raise ValueError(f"tol must be positive, got {tol!r}")
        if not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if max_interval is not None and max_interval < 1:
            raise ValueError(f"max_interval must be None or positive, got {max_interval!r}")
        self.tol, self.check_every, self.decay = tol, check_every, decay
        self.probes, self.max_interval, self.seed = probes, max_interval, seed
        self.refreshes: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.ref: dict[int, Tensor] = {}
        self.ema: dict[int, Tensor] = {}
        self.proj: dict[int, Tensor] = {}
        self.drift: dict[int, float] = {}

    def _sketch(self, layer: int, h: Tensor) -> Tensor:
        R = self.proj.get(layer)
        if R is None or R.shape[0] != h.shape[1]:
            gen = torch.Generator().manual_seed(self.seed + layer)
            R = torch.randn(h.shape[1], self.probes, generator=gen, dtype=torch.float64)
            R = (R / h.shape[1] ** 0.5).to(dtype=h.dtype, device=h.device)
            self.proj[layer] = R
        return torch.cat([h.mean(0), (h * h).mean(0), (h @ R).pow(2).mean(0)])

    def due(self, step: int, layer: int, h: Tensor) -> bool:
        if layer not in self.ref:
            return True
        if self.max_interval is not None and step - self.last[layer] >= self.max_interval:
            return True
        if (step - self.last[layer]) % self.check_every != 0:
            return False
        s = self._sketch(layer, h)
        self.ema[layer] = self.decay * self.ema[layer] + (1 - self.decay) * s
        ref = self.ref[layer]
        drift = (self.ema[layer] - ref).norm() / ref.norm().clamp_min(1e-12)
        self.drift[layer] = float(drift)
        return self.drift[layer] > self.tol

    def refreshed(self, step: int, layer: int, h: Tensor) -> None:
        if layer not in self.ema:
            self.ema[layer] = self._sketch(layer, h)
        self.ref[layer] = self.ema[layer].clone()
        self.last[layer] = step
        self.refreshes[layer] = self.refreshes.get(layer, 0) + 1

    def state_dict(self) -> dict[str, Any]:
        keys = ("tol", "check_every", "decay", "probes", "max_interval", "seed",
                "refreshes", "last", "ref", "ema", "proj", "drift")
        return {k: (dict(v) if isinstance(v, dict) else v)
                for k, v in ((k, getattr(self, k)) for k in keys)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, {int(i): x for i, x in v.items()} if isinstance(v, dict) else v)


def as_schedule(amortization: int | FixedAmortization | AdaptiveAmortization):
    """An ``int`` N means :class:`FixedAmortization` (N); a schedule object is used as is."""
    if isinstance(amortization, (FixedAmortization, AdaptiveAmortization)):
        return amortization
    if isinstance(amortization, bool) or not isinstance(amortization, int):
        raise TypeError(
            "amortization must be an int N (refresh every N updates) or a "
            f"FixedAmortization/AdaptiveAmortization, got {type(amortization).__name__}"
        )
    return FixedAmortization(amortization)
