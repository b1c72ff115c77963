"""Centered gradient descent (thesis section 6.3.1, Algorithm 3).

The weight update of eq 6.2.4 without the covariance: the input of each layer is
centered on its minibatch mean before forming the weight gradient,

    Delta W = -lr (1/n) sum_i nabla_{a_i} l (h_i - mean_j h_j)^T,
    Delta b = -lr (1/n) sum_i nabla_{a_i} l          (the plain SGD bias step).

With a mean loss, autograd's ``W.grad = sum_i g_i h_i^T`` and ``b.grad = sum_i g_i``,
so the centered direction is ``W.grad - b.grad mean(h)^T``, written into ``W.grad`` in
place: ``O(n_out n_in)`` on top of SGD, no per-example products.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import LayerPreconditioner, PreconditionedSGD

__all__ = ["CenteredPreconditioner", "CenteredGD"]


class CenteredPreconditioner(LayerPreconditioner):
    """Rewrites each ``nn.Linear``'s ``weight.grad`` as the centered gradient (Algorithm 3).

    It has no statistics to refresh, so every update is plain: ``capturable=True`` only
    adds the device-side update count that a CUDA graph replay needs (see
    :class:`~sokit.optim.base.LayerPreconditioner`)."""

    def __init__(self, model: nn.Module, skip_unsupported: bool = False,
                 reduction: str = "mean", capturable: bool = False) -> None:
        super().__init__(model, 1, skip_unsupported, reduction, fused=False,
                         capturable=capturable)

    def refresh_due(self) -> bool:
        """Never: centered GD keeps no statistics."""
        return False

    @torch.no_grad()
    def precondition(self) -> None:
        for _, rec in self.active():
            gW, gb = self.grads(rec)
            gW.addr_(gb, rec.h.mean(0), alpha=-1)  # in place: no weight-sized temporary
        self.finish()


class CenteredGD(PreconditionedSGD):
    """Centered gradient descent, Algorithm 3: ``CenteredGD(model, lr)``."""

    def __init__(self, model: nn.Module, lr: float, skip_unsupported: bool = False,
                 reduction: str = "mean", capturable: bool = False) -> None:
        super().__init__(CenteredPreconditioner(model, skip_unsupported, reduction, capturable), lr)
