"""The size of ACP's heuristic alpha per layer, and what it does to the step (section 6.3.2).

The heuristic takes, per layer and minibatch, ``alpha = max_{i, j} (nabla_{a_i} l)_j^2``,
and damps the covariance with ``eps / alpha``: the step is
``(lr / alpha) g_c (C + eps/alpha I)^-1`` with ``g_c`` the centered gradient. Where
``eps / alpha`` is much larger than the largest eigenvalue of ``C``, the inverse is about
``(alpha / eps) I`` and the step is about ``(lr / eps) g_c``: plain centered gradient
descent with learning rate ``lr / eps``, whatever alpha is. Which layers are in that
regime depends on what "the gradient" means: the gradient of example ``i``'s own loss
(``l_i``, sokit's reading) or of the minibatch's mean loss (``l_i / n``: alpha ``n^2``
times smaller). :func:`layer_alphas` measures both on one minibatch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def layer_alphas(model: nn.Module, x: Tensor, target: Tensor, eps: float) -> list[dict[str, Any]]:
    """Per ``nn.Linear`` layer, on the minibatch ``(x, target)`` with the summed squared
    error per example (mean over examples): alpha from the per-example loss and from the
    mean loss, the largest eigenvalue of the input covariance ``C``, and ``eps / alpha``
    over it for each reading (above 1: the step is about ``lr / eps`` times the centered
    gradient)."""
    inputs: list[Tensor] = []
    outputs: list[Tensor] = []

    def keep(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        inputs.append(args[0].detach())
        out.retain_grad()
        outputs.append(out)

    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    handles = [m.register_forward_hook(keep) for m in layers]
    try:
        loss = (model(x) - target).pow(2).sum(1).mean()
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    n = x.shape[0]
    rows = []
    for k, (h, a) in enumerate(zip(inputs, outputs)):
        per_example = float((a.grad * n).pow(2).max())  # gradient of l_i itself
        mean_loss = per_example / n**2  # gradient of the minibatch mean, l_i / n
        hc = h - h.mean(0)
        c_max = float(torch.linalg.eigvalsh(hc.T @ hc / n)[-1])
        rows.append({"layer": k, "n_in": h.shape[1], "alpha": per_example, "alpha (mean loss)": mean_loss,
                     "C largest eigenvalue": c_max, "eps/alpha / C_max": eps / per_example / c_max,
                     "eps/alpha / C_max (mean loss)": eps / mean_loss / c_max})
    model.zero_grad(set_to_none=True)
    return rows
