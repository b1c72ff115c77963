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
* ``(C + eps/alpha I)^-1`` is kept dense or, when the refresh minibatch has fewer than
  ``n_in / 2`` examples, through the Woodbury identity from that minibatch's centered
  inputs (:mod:`.factors`): ``C`` then has rank below ``B``, and applying it costs
  ``2 B n_in`` per vector instead of ``n_in^2``. Both give the same step up to rounding.
* The weight product is associated by cost, ``c`` being the inverse's cost per vector:
  ``g^T ((h - mean h) C^-1)`` applies it to the ``B`` inputs, ``(g^T (h - mean h)) C^-1``
  to the ``n_out`` rows of the centered gradient; with the gradient given (``fused=False``)
  the first costs ``B c + B n_in n_out``, the second ``n_out c``; in fused mode both form
  one ``B n_in n_out`` product and the first is used when ``B < n_out``.
* ``fused=True`` (the default of :class:`ACP`; :class:`ACPPreconditioner`, whose
  contract is to rewrite ``.grad``, defaults to ``False``): each ``nn.Linear``'s backward
  computes the ACP direction in place of its weight gradient, so that gradient
  (``g^T h``, ``B n_in n_out``) is never formed and thrown away; after ``loss.backward()``
  the layers' ``.grad`` already hold the direction and :meth:`precondition` only checks
  and counts. ``fused=False`` rewrites autograd's ``.grad`` afterwards; same result up to
  rounding.
* ``capturable=True``: the plain updates read and write fixed buffers with no host
  synchronisation, so that a CUDA graph can replay them (see
  :class:`~sokit.optim.base.LayerPreconditioner`; needs a fixed amortization).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .amortization import AdaptiveAmortization, FixedAmortization
from .base import LayerPreconditioner, PreconditionedSGD
from .factors import DenseInverse, FactorInverse, SampleFactor, factor_inverses, inverse_from_state
from .hooks import LayerRecord

__all__ = ["ACPPreconditioner", "ACP", "acp_direction", "covariance"]


def covariance(h: Tensor) -> Tensor:
    """``C = (1/n) sum_i (h_i - mean h)(h_i - mean h)^T`` (section 6.1.1)."""
    hc = h - h.mean(0)
    return hc.T @ hc / h.shape[0]


def acp_direction(gW: Tensor | None, gb: Tensor | None, h: Tensor, g: Tensor | None,
                  inv_c: FactorInverse, alpha: Tensor | float,
                  bias_correction: bool = True) -> tuple[Tensor, Tensor]:
    """The ACP direction ``(dW, db)``, the step being ``-lr (dW, db)`` (eqs 6.2.4-6.2.5).

    ``gW = g^T h`` and ``gb = sum_i g_i`` are the minibatch gradients (mean loss);
    ``gW=None`` (fused mode) means the gradient is not formed, ``gb=None`` that it is
    formed from ``g`` where needed. ``h`` ``(B, n_in)`` is the layer input, ``g``
    ``(B, n_out)`` autograd's ``dl/da`` (needed when ``gW`` is None; with ``gW`` given,
    ``None`` keeps the gradient-side association), ``inv_c`` the damped inverse
    covariance. Associated by cost (see the module docstring).
    """
    B, n_in = h.shape
    n_out = g.shape[1] if g is not None else gW.shape[0]
    mean_h = h.mean(0)
    c, form = inv_c.cost_per_row, B * n_in * n_out
    inv_alpha = alpha.reciprocal() if isinstance(alpha, Tensor) else 1 / alpha
    if g is not None and B * c + form < n_out * c + (form if gW is None else 0):
        X = inv_c.right_centered(h, mean_h, inv_alpha)  # X = (h - mean h) C^-1 / alpha
        dW = g.T @ X
        # db = g^T 1 / alpha - dW mean_h = g^T (1 / alpha - X mean_h): B (n_in + n_out)
        db = g.T @ torch.rsub(X @ mean_h, inv_alpha) if bias_correction \
            else (g.sum(0) if gb is None else gb) * inv_alpha
        return dW, db
    gb = g.sum(0) if gb is None else gb
    gWc = g.T @ (h - mean_h) if gW is None else torch.addr(gW, gb, mean_h, alpha=-1)
    dW = inv_c.right(gWc, scratch=True, scale=inv_alpha)
    db = gb * inv_alpha
    return dW, (db - dW @ mean_h if bias_correction else db)


class ACPPreconditioner(LayerPreconditioner):
    """ACP as a preconditioner: :meth:`precondition` rewrites ``.grad`` in place.

    ``ACPPreconditioner(model, eps=1e-3, alpha=1.0, amortization=100,
    bias_correction=True, fused=False, capturable=False)``; see the module docstring for
    each option. :attr:`inverse_c` holds each layer's ``(C + eps/alpha I)^-1``
    (:mod:`.factors`), :attr:`inv_c` the same as matrices.
    """

    def __init__(self, model: nn.Module, eps: float = 1e-3, alpha: float | str = 1.0,
                 amortization: int | FixedAmortization | AdaptiveAmortization = 100,
                 bias_correction: bool = True, alpha_floor: float = 1e-12,
                 skip_unsupported: bool = False, reduction: str = "mean",
                 fused: bool = False, capturable: bool = False) -> None:
        if not eps > 0:
            raise ValueError(f"eps must be positive (Tikhonov damping keeps C + eps/alpha I "
                             f"invertible, section 6.3.2), got {eps!r}")
        if alpha != "heuristic" and not (isinstance(alpha, (int, float)) and alpha > 0):
            raise ValueError(f"alpha must be a positive number or 'heuristic', got {alpha!r}")
        if not alpha_floor > 0:
            raise ValueError(f"alpha_floor must be positive, got {alpha_floor!r}")
        # fused, the backward is handed dl/da: no tensor hook needed to record it
        super().__init__(model, amortization, skip_unsupported, reduction, fused, capturable,
                         record_grad=not fused)
        self.eps, self.alpha, self.alpha_floor = eps, alpha, alpha_floor
        self.bias_correction = bias_correction
        self.inverse_c: dict[int, FactorInverse] = {}

    @property
    def inv_c(self) -> dict[int, Tensor]:
        """Each layer's ``(C + eps/alpha I)^-1`` as a matrix (formed for Woodbury layers)."""
        return {i: inv.matrix() for i, inv in self.inverse_c.items()}

    def _heuristic_alpha(self, g: Tensor, per_example_scale: float) -> Tensor:
        """``max_{i, j} (nabla_{a_i} l)_j^2``, floored at ``alpha_floor`` (section 6.3.2),
        from autograd's ``g = dl/da`` and ``nabla_{a_i} l = per_example_scale * g_i``: one
        reduction, ``(scale * max |g|)^2``, with no per-example tensor formed."""
        low, high = torch.aminmax(g)
        return torch.maximum(high, low.neg()).mul_(per_example_scale).square_() \
            .clamp_min_(self.alpha_floor)

    def fused_direction(self, i: int, h: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """The direction of layer ``i`` from inside its backward (``fused=True``)."""
        self.layers[i].g = g  # what the tensor hook, not registered when fused, would record
        alpha = (self._heuristic_alpha(g, self.hooks.per_example_scale(h.shape[0]))
                 if self.alpha == "heuristic" else float(self.alpha))
        if self.schedule.due(self.n_updates, i, h):
            self.refresh([(i, h, alpha)])
        self._fused_done.add(i)
        return acp_direction(None, None, h, g, self.inverse_c[i], alpha, self.bias_correction)

    def layer_alpha(self, rec: LayerRecord) -> Tensor | float:
        """Fixed alpha, or the max squared per-example preactivation gradient."""
        if self.alpha != "heuristic":
            return float(self.alpha)
        return self._heuristic_alpha(self.hooks.grad(rec), self.hooks.per_example_scale(rec.batch_size))

    @torch.no_grad()
    def refresh(self, items: list[tuple[int, Tensor, Tensor | float]]) -> None:
        """Recompute ``(C + eps/alpha I)^-1`` of the given ``(layer, h, alpha)``
        (Algorithm 4 lines 5-7), from the centered inputs ``h - mean h``."""
        if not items:
            return
        factors = [SampleFactor(h - h.mean(0)) for _, h, _ in items]
        damps = [self.eps / a for _, _, a in items]
        for (i, h, _), inv in zip(items, factor_inverses(factors, damps)):
            self.keep(self.inverse_c, i, inv)
            self.schedule.refreshed(self.n_updates, i, h)

    @torch.no_grad()
    def precondition(self) -> None:
        active = self.active()
        if self.fused:
            self.fused_finish(active)
            return
        alphas = {i: self.layer_alpha(rec) for i, rec in active}
        self.refresh([(i, rec.h, alphas[i]) for i, rec in active
                      if self.schedule.due(self.n_updates, i, rec.h)])
        for i, rec in active:
            gW, gb = self.grads(rec)
            dW, db = acp_direction(gW, gb, rec.h, rec.g, self.inverse_c[i], alphas[i],
                                   self.bias_correction)
            self.write(rec, dW, db)
        self.finish()

    def _state(self) -> dict[str, Any]:
        return {"eps": self.eps, "alpha": self.alpha, "alpha_floor": self.alpha_floor,
                "bias_correction": self.bias_correction,
                "inverse_c": {i: inv.state_dict() for i, inv in self.inverse_c.items()}}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.eps, self.alpha = state["eps"], state["alpha"]
        self.alpha_floor, self.bias_correction = state["alpha_floor"], state["bias_correction"]
        if "inverse_c" in state:
            self.inverse_c = {i: inverse_from_state(s) for i, s in state["inverse_c"].items()}
        else:  # saved before the inverses had a form: dense matrices "inv_c"
            self.inverse_c = {i: DenseInverse(inv.clone()) for i, inv in state["inv_c"].items()}


class ACP(PreconditionedSGD):
    """ACP, Algorithm 4: ``ACP(model, lr, eps=1e-3, alpha=1.0, amortization=100, ...)``.

    Takes the step ``theta <- theta - lr * direction`` with the direction of
    :class:`ACPPreconditioner` (whose arguments it accepts), fused by default.
    """

    def __init__(self, model: nn.Module, lr: float, eps: float = 1e-3,
                 alpha: float | str = 1.0,
                 amortization: int | FixedAmortization | AdaptiveAmortization = 100,
                 bias_correction: bool = True, alpha_floor: float = 1e-12,
                 skip_unsupported: bool = False, reduction: str = "mean",
                 fused: bool = True, capturable: bool = False) -> None:
        super().__init__(ACPPreconditioner(model, eps, alpha, amortization, bias_correction,
                                           alpha_floor, skip_unsupported, reduction, fused,
                                           capturable), lr)
