"""Natural Neural Networks: the PRONG reparametrization (thesis section 6.4.2).

Desjardins et al. (2015) replace every linear layer ``a = W h + b`` by

    a = V U (h - mu) + d,        U = (C + eps I)^(-1/2),   C = Cov[h],  mu = E[h],

so that the effective input ``h_e = U (h - mu)`` of the trained weights ``V`` is
centered with identity covariance; the Kronecker factor ``E[(h_e, 1)(h_e, 1)^T]`` of
the Fisher / Gauss-Newton block (eq 6.2.2) is then the identity and plain SGD on
``(V, d)`` approximates a natural-gradient step on ``(W, b)``.

``U`` and ``mu`` are not trained: every ``amortization`` updates they are re-estimated
from a minibatch, and ``V`` and ``d`` are recomputed so that the layer computes the
same ``a`` for every input (the function is preserved):

    V' = V U U'^(-1),    d' = d + V U (mu' - mu).

The inverse square root is taken with one symmetric eigendecomposition, damped by
``eps`` so that singular covariances (constant pixels, dead units, a batch smaller
than the layer's width) never produce infinities.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class WhitenedLinear(nn.Module):
    """A linear layer in PRONG form, ``a = V U (h - mu) + d``.

    ``V`` (weight) and ``d`` (bias) are parameters; ``U`` and ``mu`` are buffers
    set by :meth:`refresh`. Built from an ``nn.Linear`` with ``U = I`` and
    ``mu = 0`` it computes exactly the same function as that layer.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        n_out, n_in = linear.weight.shape
        self.in_features, self.out_features = n_in, n_out
        self.V = nn.Parameter(linear.weight.detach().clone())
        bias = linear.bias
        self.d = nn.Parameter(bias.detach().clone() if bias is not None
                              else linear.weight.new_zeros(n_out))
        like = linear.weight.detach()
        self.register_buffer("U", torch.eye(n_in, dtype=like.dtype, device=like.device))
        self.register_buffer("mu", like.new_zeros(n_in))
        self.last_input: Tensor | None = None

    def forward(self, h: Tensor) -> Tensor:
        self.last_input = h.detach()
        return torch.addmm(self.d, (h - self.mu) @ self.U, self.V.t())

    @torch.no_grad()
    def refresh(self, h: Tensor, eps: float) -> None:
        """Re-estimate ``mu``, ``U`` from inputs ``h`` (B, n_in), preserving the function."""
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"refresh expects inputs of shape (batch, {self.in_features}), "
                             f"got {tuple(h.shape)}")
        dtype = self.U.dtype
        h = h.to(dtype)
        mu_new = h.mean(0)
        centered = h - mu_new
        cov = centered.t() @ centered / h.shape[0]
        cov.diagonal().add_(eps)  # damp first: eigh of a singular float32 matrix can fail
        try:
            evals, evecs = torch.linalg.eigh(cov)
        except torch.linalg.LinAlgError:  # many (near-)repeated eigenvalues: redo in float64
            evals, evecs = torch.linalg.eigh(cov.double())
        evals = evals.clamp_min(eps)
        U_new = ((evecs * evals.rsqrt()) @ evecs.t()).to(dtype)
        U_new_inv = ((evecs * evals.sqrt()) @ evecs.t()).to(dtype)
        W = self.V @ self.U
        self.d.add_(W @ (mu_new - self.mu))
        self.V.copy_(W @ U_new_inv)
        self.U.copy_(U_new)
        self.mu.copy_(mu_new)


_PARAMETER_FREE_OK = "activations, Dropout, Flatten, Identity and containers"


def prong(model: nn.Module) -> list[WhitenedLinear]:
    """Replace every ``nn.Linear`` of ``model`` in place by a :class:`WhitenedLinear`.

    The model computes the same function afterwards. Any other module that holds
    parameters (Conv2d, BatchNorm, ...) raises ``ValueError``: PRONG is defined here
    for multilayer perceptrons only.
    """
    if isinstance(model, nn.Linear):
        raise ValueError("NNN (PRONG) replaces the model's nn.Linear layers in place, so the "
                         "model cannot itself be an nn.Linear: wrap it, nn.Sequential(layer).")
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, WhitenedLinear)):
            continue
        own = list(module.parameters(recurse=False))
        if own:
            raise ValueError(
                f"NNN (PRONG) supports nn.Linear layers only, but module '{name}' is "
                f"{type(module).__name__} with its own parameters. Use a model made of "
                f"nn.Linear layers plus {_PARAMETER_FREE_OK} (e.g. sokit.models.autoencoder "
                f"with norm=None).")
    layers: list[WhitenedLinear] = []
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                whitened = WhitenedLinear(child)
                setattr(parent, child_name, whitened)
                layers.append(whitened)
            elif isinstance(child, WhitenedLinear):
                layers.append(child)
    if not layers:
        raise ValueError("NNN (PRONG) found no nn.Linear layer in the model.")
    return layers


class NNN:
    """Natural Neural Networks (PRONG) as an optimizer-shaped object.

    ``NNN(model, lr, amortization=100, eps=...)`` rewrites ``model``'s linear layers
    into PRONG form (see :func:`prong`; the function is unchanged), then every
    :meth:`step` does one SGD step on ``(V, d)`` and, every ``amortization`` updates
    (after updates 0, N, 2N, ...), re-estimates each layer's ``mu`` and ``U`` from the
    inputs of the last forward pass, preserving the function.
    """

    def __init__(self, model: nn.Module, lr: float, amortization: int = 100,
                 eps: float = 1e-3) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if amortization < 1:
            raise ValueError(f"amortization must be a positive number of updates, got {amortization}")
        if eps <= 0:
            raise ValueError(f"eps must be positive (it damps the covariance so that "
                             f"U = (C + eps I)^-1/2 exists), got {eps}")
        self.model = model
        self.layers = prong(model)
        self.lr, self.amortization, self.eps = lr, amortization, eps
        self.n_updates = 0
        self.params = [p for layer in self.layers for p in (layer.V, layer.d)]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        params = [p for p in self.params if p.grad is not None]
        torch._foreach_add_(params, [p.grad for p in params], alpha=-self.lr)
        if self.n_updates % self.amortization == 0:
            self.refresh()
        self.n_updates += 1

    def refresh(self) -> None:
        """Re-estimate every layer's ``mu`` and ``U`` from its last forward input."""
        for layer in self.layers:
            if layer.last_input is None:
                raise RuntimeError("NNN.refresh needs a forward pass through the model first.")
            layer.refresh(layer.last_input, self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "amortization": self.amortization, "eps": self.eps,
                "n_updates": self.n_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.amortization = state["lr"], state["amortization"]
        self.eps, self.n_updates = state["eps"], state["n_updates"]
