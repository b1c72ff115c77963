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

Which statistics. The thesis says only that ``U`` and ``mu`` are "estimated using data
from the training set"; Desjardins et al. estimate them from a forward pass with the
*current* parameters. :class:`NNN` therefore records the model's input of the last
*training* forward pass (gradients enabled and ``model.training``; evaluation passes,
e.g. under ``torch.no_grad``, are ignored) and, on a refresh update, after the SGD step,
runs that input once more through the model under ``no_grad`` to collect every layer's
input under the updated parameters; right after a refresh the whitened inputs of that
minibatch have mean 0 and identity covariance (on its non-degenerate directions).
Refreshing a lower layer preserves the function, so the inputs of higher layers do not
depend on the order in which the layers are refreshed.

Degenerate directions. The inverse square root is taken from the eigendecomposition of
the covariance ``C = sum_i lambda_i v_i v_i^T``. A direction with
no variance in the minibatch beyond round-off, ``lambda_i <= n_in * u * (s + eps)``
(``u`` the unit round-off of the layer's dtype, ``s`` the largest of ``lambda_max`` and
the largest raw second moment ``E[h_j^2]``): constant pixels, dead units, a batch
smaller than the layer's width, a constant, zero or single-example batch. Such a
direction gets gain 1, i.e. it is centered but not whitened; every other direction gets
the damped gain ``(lambda_i + eps)^(-1/2)`` (a small but genuine variance, 1e-4 next to
1e2, is still whitened). Without that rule a direction
absent from one minibatch got gain ``1/sqrt(eps)`` and exploded on the next minibatch
that does vary along it.

Cost. With ``r`` non-degenerate directions, ``U = I + sum_{i <= r} (g_i - 1) v_i v_i^T``.
A minibatch of ``B < n_in`` inputs has ``r < B``: its eigenpairs come from a QR factor of
the centered inputs and an ``eigh`` of ``B x B`` (``O(n B^2)``, not ``O(n^3)``), and when
``2 r < n_in`` the layer multiplies by ``U`` through the ``v_i`` (``2 B n r``
multiply-adds per pass instead of ``B n^2``); on the autoencoder at batch 200 that is
every layer wider than 400. Same ``U`` up to rounding, hence the same trajectory. Why not
a Cholesky factor: SGD on ``(V, d)`` moves the effective weights ``V U`` by
``-lr g (h - mu)^T U U^T``, so any factor with the same ``U U^T`` would give the same
trajectory, but the rule above makes ``U U^T`` differ from ``(C + eps I)^-1`` on the
degenerate directions (1 instead of ``1 / eps``), and a Cholesky factor of ``C + eps I``
does not know them.

Non-finite statistics. If a layer's collected inputs are not finite (the parameters
already hold NaN or inf, the run has diverged), the refresh does not call ``eigh`` (which
raised "ill-conditioned" on NaN) and raises nothing: it fills that layer's ``U``, ``mu``,
``V`` and ``d`` with NaN, so the next minibatch loss is NaN and
:func:`sokit.train.train` records the run as diverged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .base import LearningRate


def _eigh(m: Tensor) -> tuple[Tensor, Tensor]:
    """``eigh`` that redoes a failed float32 decomposition in float64 (many (near-)repeated
    eigenvalues); a float64 failure propagates."""
    try:
        return torch.linalg.eigh(m)
    except torch.linalg.LinAlgError:
        return torch.linalg.eigh(m.double())


def _spectrum(centered: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Eigenpairs ``(lambda, v)`` of ``C = X^T X / B`` (``X = centered``, B x n) on the
    span of the data; the directions left out have ``lambda = 0``.

    ``B >= n``: ``eigh(C)``. ``B < n`` (C has rank below B): ``X^T = Q R`` and ``eigh`` of
    ``R R^T / B`` (B x B), whose eigenvectors ``p`` give ``v = Q p``: the same pairs at
    ``O(n B^2)`` instead of ``O(n^3)``. Both are damped by ``eps`` before ``eigh`` (that of a
    singular float32 matrix can fail), and undamped after.
    """
    b, n = centered.shape
    if b >= n:
        m, basis = centered.t() @ centered / b, None
    else:
        basis, r = torch.linalg.qr(centered.t())
        m = r @ r.t() / b
    m.diagonal().add_(eps)
    evals, evecs = _eigh(m)
    if basis is not None:
        evecs = basis.to(evecs.dtype) @ evecs
    return (evals - eps).clamp_min(0.0), evecs


def _times(x: Tensor, dense: Tensor | None, basis: Tensor, coef: Tensor) -> Tensor:
    """``x (I + E diag(c) E^T)``: with ``dense`` (that matrix) when given, else through the
    ``r`` columns of ``E = basis`` (``2 B n r`` multiply-adds instead of ``B n^2``)."""
    if dense is not None:
        return x @ dense
    return torch.addmm(x, x @ basis * coef, basis.t())


def _sync_rank(layer: WhitenedLinear, _incompatible: Any) -> None:
    """After ``load_state_dict``: the host copy of the loaded ``rank``."""
    layer._rank = int(layer.rank)


class WhitenedLinear(nn.Module):
    """A linear layer in PRONG form, ``a = V U (h - mu) + d``.

    ``V`` (weight) and ``d`` (bias) are parameters; ``U``, ``mu`` are buffers set by
    :meth:`refresh`, with ``U = I + E diag(c) E^T`` also kept as its ``rank`` non-degenerate
    eigenvectors ``E = basis[:, :rank]`` and ``c = coef[:rank] = gain - 1``: when
    ``2 rank < n_in`` the layer multiplies by ``U`` through them (cheaper; the same ``U``).
    Built from an ``nn.Linear`` with ``U = I`` and ``mu = 0`` it computes exactly the
    same function as that layer.
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
        self.register_buffer("basis", like.new_zeros(n_in, n_in))
        self.register_buffer("coef", like.new_zeros(n_in))
        self.register_buffer("rank", torch.tensor(n_in, device=like.device))
        self._rank = n_in  # int(self.rank), kept on the host (set by refresh and loading)
        #: capturable (NNN(capturable=True)): always multiply by the dense ``U``, whose
        #: buffer every refresh overwrites, so that a captured forward stays valid
        self.dense_only = False
        self.register_load_state_dict_post_hook(_sync_rank)
        #: while not None, every forward appends its (detached) input here (NNN.refresh)
        self.collect: list[Tensor] | None = None

    def _factors(self) -> tuple[Tensor | None, Tensor, Tensor]:
        """``(dense U or None, E, c)`` for :func:`_times` by the cheaper route."""
        r = self._rank
        dense = self.dense_only or 2 * r >= self.in_features
        return (self.U if dense else None), self.basis[:, :r], self.coef[:r]

    def forward(self, h: Tensor) -> Tensor:
        if self.collect is not None:
            self.collect.append(h.detach())
        return torch.addmm(self.d, _times(h - self.mu, *self._factors()), self.V.t())

    @torch.no_grad()
    def refresh(self, h: Tensor, eps: float) -> None:
        """Re-estimate ``mu``, ``U`` from inputs ``h`` (B, n_in), preserving the function.

        Directions without variance get gain 1 (see the module docstring); non-finite
        ``h`` fills ``U``, ``mu``, ``V`` and ``d`` with NaN instead of raising.
        """
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"refresh expects inputs of shape (batch, {self.in_features}), "
                             f"got {tuple(h.shape)}")
        dtype = self.U.dtype
        h = h.to(dtype)
        if not bool(torch.isfinite(h).all()):
            for t in (self.U, self.mu, self.V, self.d, self.basis, self.coef):
                t.fill_(float("nan"))
            return
        mu_new = h.mean(0)
        lam, evecs = _spectrum(h - mu_new, eps)      # eigenvalues of the undamped covariance
        scale = torch.maximum(lam.max(), (h * h).mean(0).max().to(lam.dtype))
        tol = self.in_features * torch.finfo(dtype).eps * (scale + eps)  # round-off level
        keep = lam > tol                              # the non-degenerate directions
        E, gain = evecs[:, keep].to(dtype), (lam[keep] + eps).rsqrt().to(dtype)
        r = E.shape[1]
        low_rank = 2 * r < self.in_features
        eye = torch.eye(self.in_features, dtype=dtype, device=h.device)
        U_new = torch.addmm(eye, E * (gain - 1), E.t())
        U_new_inv = None if low_rank else torch.addmm(eye, E * (gain.reciprocal() - 1), E.t())
        W = _times(self.V, *self._factors())
        self.d.add_(W @ (mu_new - self.mu))
        self.V.copy_(_times(W, U_new_inv, E, gain.reciprocal() - 1))
        self.U.copy_(U_new)
        self.mu.copy_(mu_new)
        self.basis.zero_()[:, :r] = E
        self.coef.zero_()[:r] = gain - 1
        self.rank.fill_(r)
        self._rank = r


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


def _record_training_input(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook: keep the model's input of a training pass (grad enabled, training mode)."""
    if torch.is_grad_enabled() and module.training:
        module.__dict__["_nnn_input"] = tuple(a.detach() if isinstance(a, Tensor) else a
                                              for a in args)


class NNN(LearningRate, torch.optim.Optimizer):
    """Natural Neural Networks (PRONG) as a ``torch.optim.Optimizer`` over ``(V, d)``.

    ``NNN(model, lr, amortization=100, eps=...)`` rewrites ``model``'s linear layers
    into PRONG form (see :func:`prong`; the function is unchanged). Its parameters are
    every layer's ``V`` and ``d`` (one param group with ``lr``, so learning-rate
    schedulers work). Every :meth:`step` does one SGD step on ``(V, d)`` and, every
    ``amortization`` updates (after updates 0, N, 2N, ...), re-estimates each layer's
    ``mu`` and ``U``, preserving the function, from the layers' inputs on the model
    input of the last training forward pass, recomputed with the updated parameters
    (see the module docstring: evaluation passes never feed the statistics; degenerate
    directions are not whitened; non-finite statistics leave NaN in the layer so that
    the run is recorded as diverged, no exception).

    ``capturable=True``: every layer multiplies by its dense ``U`` (never through the
    eigenvectors, whose number changes from refresh to refresh), so the plain updates
    (SGD on ``(V, d)``) read and write fixed buffers and can be replayed from a CUDA graph;
    ``refresh_due()`` tells the caller that the next update refreshes (it must run
    eagerly) and ``count_replayed_update()`` counts a replayed one
    (:class:`sokit.graphs.CapturedStep`, ``tests/test_capturable.py``).

    ``state_dict()`` holds the param groups (``lr``) and, under ``"nnn"``,
    ``n_updates``, ``amortization`` and ``eps`` (plain values); ``U`` and ``mu`` are
    buffers of the model, in its ``state_dict``.
    """

    def __init__(self, model: nn.Module, lr: float, amortization: int = 100,
                 eps: float = 1e-3, capturable: bool = False) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if amortization < 1:
            raise ValueError(f"amortization must be a positive number of updates, got {amortization}")
        if eps <= 0:
            raise ValueError(f"eps must be positive (it damps the covariance so that "
                             f"U = (C + eps I)^-1/2 exists), got {eps}")
        layers = prong(model)
        flag = {"capturable": True} if capturable else {}
        super().__init__([p for layer in layers for p in (layer.V, layer.d)], {"lr": lr, **flag})
        for layer in layers:
            layer.dense_only = capturable
        self.model, self.layers = model, layers
        self.amortization, self.eps = int(amortization), float(eps)
        self.n_updates = 0
        self.params = [p for group in self.param_groups for p in group["params"]]
        model.__dict__.pop("_nnn_input", None)
        self._hook = model.register_forward_pre_hook(_record_training_input)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                torch._foreach_add_(params, [p.grad for p in params], alpha=-group["lr"])
        if self.refresh_due():
            self.refresh()
        self.n_updates += 1
        return loss

    def refresh_due(self) -> bool:
        """Whether this update (the next ``step()``) refreshes ``U`` and ``mu``."""
        return self.n_updates % self.amortization == 0

    def count_replayed_update(self) -> None:
        """Count one plain update replayed from a captured graph (its Python did not run)."""
        self.n_updates += 1

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-estimate every layer's ``mu`` and ``U`` from its inputs on the last training
        forward input, computed with the current parameters (one extra no_grad pass)."""
        inputs = self.model.__dict__.get("_nnn_input")
        if inputs is None:
            raise RuntimeError("NNN.refresh needs a training forward pass through the model "
                               "first (gradients enabled, model.train()).")
        for layer in self.layers:
            layer.collect = []
        try:
            self.model(*inputs)
            collected = [layer.collect for layer in self.layers]
        finally:
            for layer in self.layers:
                layer.collect = None
        for layer, hs in zip(self.layers, collected):
            if hs:  # a layer the forward pass did not use keeps its statistics
                layer.refresh(torch.cat([h.reshape(-1, layer.in_features) for h in hs]), self.eps)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["nnn"] = {"n_updates": self.n_updates, "amortization": self.amortization,
                        "eps": self.eps}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("nnn")
        super().load_state_dict(state_dict)
        self.n_updates = int(extra["n_updates"])
        self.amortization, self.eps = int(extra["amortization"]), float(extra["eps"])
