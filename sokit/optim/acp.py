"""Amortized covariance preconditioner, ACP (thesis section 6.3.2, Algorithm 4).

Each ``nn.Linear`` layer ``a = W h + b`` is preconditioned with the inverse of
``G_in = A kron alpha I`` (eq 6.2.3), ``A = E[(h; 1)(h; 1)^T]``, damped by Tikhonov
``eps`` on the weight block. Its block inverse gives (eqs 6.2.4, 6.2.5)

    Delta W = -(lr / alpha) (1/n) sum_j nabla_{a_j} l (h_j - mean h)^T (C + eps/alpha I)^-1
    Delta b = -(lr / alpha) (1/n) sum_j nabla_{a_j} l  -  Delta W mean h

with ``C`` the (biased, 1/n) covariance of ``h``. The same update is the closed-form
solution of the local criterion of section 6.1 with learning rate ``lr / alpha`` and
penalty ``eps / alpha`` on ``||Delta W||^2`` (the bias is not penalized, which is why
the Schur complement of the damped ``A`` is exactly ``C + eps/alpha I``).

Choices, all options:

* ``bias_correction=True`` (default): the bias step of eq 6.2.5, with the
  ``- Delta W mean(h)`` term; ``False``: Algorithm 4 line 13, the plain mean gradient.
* ``alpha``: a positive float (fixed, a tuned hyperparameter), or ``"heuristic"``:
  per layer and per minibatch ``alpha = max_{i, j} (nabla_{a_i} l)_j^2`` over the
  per-example gradients (section 6.3.2), floored at ``alpha_floor`` so that a layer
  whose gradient vanishes (dead units) gets a zero step, not a NaN.
* ``amortization``: ``C^-1`` is recomputed every N updates from the current
  minibatch (Algorithm 4 line 3), or by an :class:`AdaptiveAmortization`. With the
  heuristic alpha, the damping ``eps / alpha`` uses alpha of the refresh minibatch
  (the inverse is computed then, lines 6-7), the ``1 / alpha`` scale that of the
  current one (lines 13-14). The centering always uses the current minibatch mean.
* The weight product is associated by cost: ``(W.grad - b.grad mean(h)^T) C^-1``
  (``n_out n_in^2``) or ``g^T ((h - mean h) C^-1)`` (``B n_in (n_in + n_out)``),
  whichever is cheaper for the layer's shape and batch.
* ``fused=True``: each ``nn.Linear``'s backward computes the ACP direction in place
  of its weight gradient (``g^T ((h - mean h) C^-1)`` replaces ``g^T h``), so the only
  extra work per step is ``(h - mean h) C^-1``, ``B n_in^2``. After ``loss.backward()``
  the layers' ``.grad`` then already hold the direction; :meth:`precondition` only
  checks and counts. Same result as the default mode up to rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .amortization import AdaptiveAmortization, FixedAmortization
from .base import LayerPreconditioner, PreconditionedSGD, clone_tensors
from .hooks import LayerRecord
from .linalg import damped_inverses

__all__ = ["ACPPreconditioner", "ACP", "acp_direction", "covariance"]


def covariance(h: Tensor) -> Tensor:
    """``C = (1/n) sum_i (h_i - mean h)(h_i - mean h)^T`` (section 6.1.1)."""
    hc = h - h.mean(0)
    return hc.T @ hc / h.shape[0]


def acp_direction(gW: Tensor | None, gb: Tensor, h: Tensor, g: Tensor | None, inv_c: Tensor,
                  alpha: Tensor | float, bias_correction: bool = True) -> tuple[Tensor, Tensor]:
    """The ACP direction ``(dW, db)``, the step being ``-lr (dW, db)`` (eqs 6.2.4-6.2.5).

    ``gW = g^T h`` and ``gb = sum_i g_i`` are the minibatch gradients (mean loss),
    ``h`` ``(B, n_in)`` the layer input, ``g`` ``(B, n_out)`` autograd's ``dl/da`` (only
    read when the activation-first association is cheaper, or when ``gW`` is None),
    ``inv_c`` the damped inverse covariance.
    """
    B, n_in = h.shape
    n_out = gb.shape[0]
    mean_h = h.mean(0)
    if g is None or n_out * n_in <= B * (n_in + n_out):
        gW = g.T @ h if gW is None else gW
        dW = (gW - torch.outer(gb, mean_h)) @ inv_c
    else:
        dW = g.T @ ((h - mean_h) @ inv_c)
    dW = dW / alpha
    db = gb / alpha
    if bias_correction:
        db = db - dW @ mean_h
    return dW, db


class ACPPreconditioner(LayerPreconditioner):
    """ACP as a preconditioner: :meth:`precondition` rewrites ``.grad`` in place.

    ``ACPPreconditioner(model, eps=1e-3, alpha=1.0, amortization=100,
    bias_correction=True)``; see the module docstring for each option.
    """

    def __init__(self, model: nn.Module, eps: float = 1e-3, alpha: float | str = 1.0,
                 amortization: int | FixedAmortization | AdaptiveAmortization = 100,
                 bias_correction: bool = True, alpha_floor: float = 1e-12,
                 skip_unsupported: bool = False, reduction: str = "mean",
                 fused: bool = False) -> None:
        if not eps > 0:
            raise ValueError(f"eps must be positive (Tikhonov damping keeps C + eps/alpha I "
                             f"invertible, section 6.3.2), got {eps!r}")
        if alpha != "heuristic" and not (isinstance(alpha, (int, float)) and alpha > 0):
            raise ValueError(f"alpha must be a positive number or 'heuristic', got {alpha!r}")
        if not alpha_floor > 0:
            raise ValueError(f"alpha_floor must be positive, got {alpha_floor!r}")
        super().__init__(model, amortization, skip_unsupported, reduction, fused)
        self.eps, self.alpha, self.alpha_floor = eps, alpha, alpha_floor
        self.bias_correction = bias_correction
        self.inv_c: dict[int, Tensor] = {}

    def _alpha(self, per_example: Tensor) -> Tensor | float:
        if self.alpha == "heuristic":
            return per_example.pow(2).max().clamp_min(self.alpha_floor)
        return float(self.alpha)

    def fused_direction(self, i: int, h: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """The direction of layer ``i`` from inside its backward (``fused=True``)."""
        alpha = self._alpha(g * h.shape[0] if self.hooks.reduction == "mean" else g)
        if self.schedule.due(self.n_updates, i, h):
            (self.inv_c[i],) = damped_inverses([covariance(h)], [self.eps / alpha])
            self.schedule.refreshed(self.n_updates, i, h)
        self._fused_done.add(i)
        return acp_direction(None, g.sum(0), h, g, self.inv_c[i], alpha, self.bias_correction)

    def layer_alpha(self, rec: LayerRecord) -> Tensor | float:
        """Fixed alpha, or the max squared per-example preactivation gradient."""
        return self._alpha(self.hooks.per_example(rec)) if self.alpha == "heuristic" \
            else float(self.alpha)

    @torch.no_grad()
    def refresh(self, items: list[tuple[int, LayerRecord, Tensor | float]]) -> None:
        """Recompute ``(C + eps/alpha I)^-1`` for the given layers (Algorithm 4 lines 5-7)."""
        if not items:
            return
        covs = [covariance(rec.h) for _, rec, _ in items]
        damps = [self.eps / a for _, _, a in items]
        for (i, rec, _), inv in zip(items, damped_inverses(covs, damps)):
            self.inv_c[i] = inv
            self.schedule.refreshed(self.n_updates, i, rec.h)

    @torch.no_grad()
    def precondition(self) -> None:
        active = self.active()
        if self.fused:
            self.fused_finish(active)
            return
        alphas = {i: self.layer_alpha(rec) for i, rec in active}
        self.refresh([(i, rec, alphas[i]) for i, rec in active
                      if self.schedule.due(self.n_updates, i, rec.h)])
        for i, rec in active:
            gW, gb = self.grads(rec)
            dW, db = acp_direction(gW, gb, rec.h, rec.g, self.inv_c[i], alphas[i],
                                   self.bias_correction)
            self.write(rec, dW, db)
        self.finish()

    def _state(self) -> dict[str, Any]:
        return {"eps": self.eps, "alpha": self.alpha, "alpha_floor": self.alpha_floor,
                "bias_correction": self.bias_correction, "inv_c": clone_tensors(self.inv_c)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.eps, self.alpha = state["eps"], state["alpha"]
        self.alpha_floor, self.bias_correction = state["alpha_floor"], state["bias_correction"]
        self.inv_c = clone_tensors(state["inv_c"])


class ACP(PreconditionedSGD):
    """ACP, Algorithm 4: ``ACP(model, lr, eps=1e-3, alpha=1.0, amortization=100, ...)``.

    Takes the step ``theta <- theta - lr * direction`` with the direction of
    :class:`ACPPreconditioner` (whose arguments it accepts).
    """

    def __init__(self, model: nn.Module, lr: float, eps: float = 1e-3,
                 alpha: float | str = 1.0,
                 amortization: int | FixedAmortization | AdaptiveAmortization = 100,
                 bias_correction: bool = True, alpha_floor: float = 1e-12,
                 skip_unsupported: bool = False, reduction: str = "mean",
                 fused: bool = False) -> None:
        super().__init__(ACPPreconditioner(model, eps, alpha, amortization, bias_correction,
                                           alpha_floor, skip_unsupported, reduction, fused), lr)
