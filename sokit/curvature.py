"""Exact curvature of small models with ``torch.func``: the ground truth.

Every approximate curvature method in :mod:`sokit.optim` is tested against these
quantities. They are dense ``(P, P)`` matrices, so use them on small models only
(a few thousand parameters at most); float64 models give float64 results.

Conventions (thesis chapter 3, eq 3.3.1 and tables 3.I-3.II):

* parameters are flattened in ``model.named_parameters()`` order, each one row-major
  (``p.reshape(-1)``); :func:`layer_block` can re-order a layer's block to the
  thesis's column-major ``theta = vec([W b])``;
* ``loss_fn(output, target)`` returns the MEAN over examples of a per-example loss,
  so :func:`hessian` and :func:`gauss_newton` are ``(1/n) sum_i`` of per-example terms;
* :func:`fisher` is the Fisher of the model's predictive distribution, written as
  ``(1/n) sum_i J_i^T D_i J_i`` with ``D_i`` the Fisher of the distribution with
  respect to the network output.

The factor 2: for ``l = ||f - y||^2`` (sokit's ``mse_sum``, the thesis's "MSE"),
``d2l/df2 = 2 I``, so ``gauss_newton = 2 * fisher(kind="gaussian")`` where the
Gaussian has unit variance (``D = I``). Table 3.I of the thesis writes ``I``, which is
the GN of ``0.5 ||f - y||^2``, i.e. of ``-log N(y; f, I)`` up to a constant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap
from torch.func import hessian as _func_hessian

__all__ = [
    "flat_params",
    "flat_grad",
    "hessian",
    "gauss_newton",
    "fisher",
    "fisher_middle",
    "output_hessian",
    "per_example_jacobian",
    "preactivation_jacobian",
    "layer_inputs",
    "layer_slice",
    "layer_block",
    "layer_vector",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _named(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [(n, p) for n, p in model.named_parameters()]


def flat_params(model: nn.Module) -> Tensor:
    """All parameters as one detached vector (``named_parameters`` order, row-major)."""
    return torch.cat([p.detach().reshape(-1) for _, p in _named(model)])


def flat_grad(model: nn.Module) -> Tensor:
    """The ``.grad`` of every parameter as one vector (zeros where ``.grad`` is None)."""
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
            for _, p in _named(model)
        ]
    )


def _unflatten(model: nn.Module, theta: Tensor) -> dict[str, Tensor]:
    out, i = {}, 0
    for name, p in _named(model):
        out[name] = theta[i : i + p.numel()].view_as(p)
        i += p.numel()
    if i != theta.numel():
        raise ValueError(f"theta has {theta.numel()} entries, the model has {i} parameters")
    return out


def _forward(model: nn.Module, x: Tensor) -> Callable[[Tensor], Tensor]:
    """theta -> model output at x, with buffers taken from the model as they are."""
    buffers = dict(model.named_buffers())

    def f(theta: Tensor) -> Tensor:
        return functional_call(model, {**_unflatten(model, theta), **buffers}, (x,))

    return f


def _check_batch(x: Tensor) -> None:
    if x.dim() < 2:
        raise ValueError(
            f"x must have a batch dimension (shape (B, ...)); got shape {tuple(x.shape)}. "
            "Use x[None] for a single example."
        )


def hessian(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    """Exact Hessian ``d2 R / d theta2`` of ``R = loss_fn(model(x), y)``; shape ``(P, P)``."""
    _check_batch(x)
    f = _forward(model, x)
    return _func_hessian(lambda th: loss_fn(f(th), y))(flat_params(model))


def per_example_jacobian(model: nn.Module, x: Tensor) -> Tensor:
    """Jacobian of each example's output w.r.t. all parameters; shape ``(B, out, P)``.

    Output features are flattened (``out = prod(output.shape[1:])``). For models whose
    examples interact (batch norm in training mode) row ``i`` is still the derivative
    of output ``i``, which then also depends on the other examples.
    """
    _check_batch(x)
    f = _forward(model, x)
    theta = flat_params(model)
    jac = jacrev(f)(theta)  # (B, *out, P)
    return jac.reshape(x.shape[0], -1, theta.numel())


def output_hessian(loss_fn: LossFn, output: Tensor, y: Tensor) -> Tensor:
    """``D_i = d2 l_i / d f_i^2`` of the per-example loss; shape ``(B, out, out)``.

    ``l_i`` is ``loss_fn`` evaluated on example ``i`` alone (a batch of one), i.e. the
    per-example loss whose mean is ``loss_fn(output, y)``.
    """
    out = output.detach()

    def one(o: Tensor, t: Tensor) -> Tensor:
        return loss_fn(o.unsqueeze(0), t.unsqueeze(0))

    d = vmap(_func_hessian(one))(out, y)  # (B, *out, *out)
    k = out[0].numel()
    return d.reshape(out.shape[0], k, k)


def gauss_newton(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    """Exact Gauss-Newton matrix ``(1/n) sum_i J_i^T (d2 l_i / df^2) J_i``; ``(P, P)``.

    Computed as ``J^T (d2 R / d f2) J`` with ``J`` the Jacobian of the whole batch's
    output and ``d2 R / d f2`` the Hessian of the mean loss w.r.t. that output, which
    equals the per-example sum above for any loss that is a mean of per-example terms.
    """
    _check_batch(x)
    f = _forward(model, x)
    theta = flat_params(model)
    out = f(theta).detach()
    jac = jacrev(f)(theta).reshape(out.numel(), theta.numel())
    h_out = _func_hessian(lambda o: loss_fn(o, y))(out).reshape(out.numel(), out.numel())
    return jac.T @ h_out @ jac


def fisher_middle(output: Tensor, kind: str, param: str | None = None) -> Tensor:
    """The Fisher ``D_i`` of the predictive distribution w.r.t. the output; ``(B, k, k)``.

    ``kind`` and the meaning of the network output ``param`` (table 3.II):

    * ``"gaussian"``: output is the mean of ``N(f, I)``; ``D = I``.
    * ``"bernoulli"``: independent Bernoulli per output; ``param="probs"`` (default,
      as the sigmoid-output autoencoder): ``D = diag(1 / (f (1 - f)))``;
      ``param="logits"``: ``D = diag(p (1 - p))``.
    * ``"categorical"``: ``param="logits"`` (default, as :func:`sokit.losses.cross_entropy`):
      ``D = diag(p) - p p^T`` with ``p = softmax(f)``; ``param="probs"`` (softmax inside
      the model): ``D = diag(1 / f)``.
    """
    f = output.detach().reshape(output.shape[0], -1)
    b, k = f.shape
    eye = torch.eye(k, dtype=f.dtype, device=f.device).expand(b, k, k)
    if kind == "gaussian":
        if param not in (None, "mean"):
            raise ValueError(f"gaussian Fisher takes param='mean', got {param!r}")
        return eye.clone()
    if kind == "bernoulli":
        param = param or "probs"
        if param == "probs":
            return torch.diag_embed(1.0 / (f * (1.0 - f)))
        if param == "logits":
            p = torch.sigmoid(f)
            return torch.diag_embed(p * (1.0 - p))
        raise ValueError(f"bernoulli Fisher takes param='probs' or 'logits', got {param!r}")
    if kind == "categorical":
        param = param or "logits"
        if param == "logits":
            p = torch.softmax(f, dim=1)
            return torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
        if param == "probs":
            return torch.diag_embed(1.0 / f)
        raise ValueError(f"categorical Fisher takes param='logits' or 'probs', got {param!r}")
    raise ValueError(f"kind must be 'gaussian', 'bernoulli' or 'categorical', got {kind!r}")


def fisher(model: nn.Module, x: Tensor, kind: str, param: str | None = None) -> Tensor:
    """Exact Fisher ``(1/n) sum_i J_i^T D_i J_i`` of the predictive distribution; ``(P, P)``.

    ``D_i`` is :func:`fisher_middle` (see there for ``kind`` and ``param``). No target
    enters: the expectation over ``y ~ p(y | x)`` is taken in closed form.
    """
    jac = per_example_jacobian(model, x)  # (B, k, P)
    out = _forward(model, x)(flat_params(model))
    d = fisher_middle(out, kind, param)
    return torch.einsum("bkp,bkl,blq->pq", jac, d, jac) / x.shape[0]


def _preactivation_forward(
    model: nn.Module, layer: nn.Module, x: Tensor
) -> Callable[[Tensor], Tensor]:
    """delta -> model output with ``delta`` added to ``layer``'s output (its preactivation)."""

    def f(delta: Tensor) -> Tensor:
        handle = layer.register_forward_hook(lambda m, i, o: o + delta)
        try:
            return model(x)
        finally:
            handle.remove()

    return f


def _linear(model: nn.Module, layer: nn.Module) -> nn.Linear:
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
    if not any(m is layer for m in model.modules()):
        raise ValueError("layer is not a submodule of model")
    return layer


def layer_inputs(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """The input ``h`` of ``layer`` for every example; shape ``(B, n_in)``."""
    _linear(model, layer)
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0].reshape(-1, layer.in_features)


def preactivation_jacobian(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """``J_a``: Jacobian of each example's output w.r.t. its preactivation ``a`` at
    ``layer``; shape ``(B, out, n_out)`` (section 6.2, eq 6.2.1)."""
    _check_batch(x)
    lin = _linear(model, layer)
    delta = torch.zeros(x.shape[0], lin.out_features, dtype=x.dtype, device=x.device)
    jac = jacrev(_preactivation_forward(model, lin, x))(delta)  # (B, *out, B, n_out)
    b = x.shape[0]
    jac = jac.reshape(b, -1, b, lin.out_features)
    idx = torch.arange(b, device=x.device)
    return jac[idx, :, idx, :]


def layer_slice(model: nn.Module, layer: nn.Module) -> tuple[slice, slice | None]:
    """Positions of ``layer.weight`` and ``layer.bias`` in the flat parameter vector."""
    _linear(model, layer)
    offsets, i = {}, 0
    for _, p in _named(model):
        offsets[id(p)] = slice(i, i + p.numel())
        i += p.numel()
    w = offsets[id(layer.weight)]
    b = offsets[id(layer.bias)] if layer.bias is not None else None
    return w, b


def _layer_index(model: nn.Module, layer: nn.Linear, vec: str) -> Tensor:
    w, b = layer_slice(model, layer)
    n_out, n_in = layer.out_features, layer.in_features
    w_idx = torch.arange(w.start, w.stop).view(n_out, n_in)
    if vec == "row":
        parts = [w_idx.reshape(-1)]
        if b is not None:
            parts.append(torch.arange(b.start, b.stop))
        return torch.cat(parts)
    if vec == "thesis":
        cols = [w_idx]
        if b is not None:
            cols.append(torch.arange(b.start, b.stop).view(n_out, 1))
        return torch.cat(cols, dim=1).T.reshape(-1)  # column-major vec([W b])
    raise ValueError(f"vec must be 'row' or 'thesis', got {vec!r}")


def layer_block(M: Tensor, model: nn.Module, layer: nn.Module, vec: str = "row") -> Tensor:
    """The diagonal block of a ``(P, P)`` matrix ``M`` for one ``nn.Linear`` layer.

    ``vec="row"``: ``[W.reshape(-1), b]`` (the flat-parameter order).
    ``vec="thesis"``: the thesis's ``theta = vec([W b])``, column-major, so that
    ``theta = [vec(W); b]`` and eq 6.2.2's ``A kron G`` applies directly.
    """
    idx = _layer_index(model, _linear(model, layer), vec).to(M.device)
    return M[idx][:, idx]


def layer_vector(v: Tensor, model: nn.Module, layer: nn.Module, vec: str = "row") -> Tensor:
    """The entries of a flat ``(P,)`` vector for one layer, ordered as in :func:`layer_block`."""
    idx = _layer_index(model, _linear(model, layer), vec).to(v.device)
    return v[idx]
