"""Updated backpropagation (UBP): thesis chapter 5, Algorithm 2.

Backpropagation visits the layers from the top down. UBP updates each layer as soon
as its gradient is known and corrects the signal sent to the layer below, to first
order, for that update (section 5.2). For a layer ``a = W h + b``, ``h' = f(a)``, with
``da = dL/da`` (already corrected for the layers above) and the update
``dW = -lr da^T h``, ``db = -lr sum_i da_i``, the corrected signal of example ``i`` is

    dL/dh_i (W + dW, b + db) ~= (W + dW)^T da_i + W^T H_i (dW h_i + db),

where ``H_i = d2L/da_i^2`` is the Hessian of the loss w.r.t. the preactivation
(examples do not interact, so it is block diagonal over the minibatch). Two choices:

* ``hessian="gn"`` (the thesis's choice): ``H_i ~= J_i^T (d2L/df2) J_i`` with ``J_i``
  the Jacobian of the network output w.r.t. ``a_i``, carried down layer by layer as in
  Algorithm 2 (lines 2, 5, 9), starting from a square root of ``d2L/df2``.
* ``hessian="exact"``: the full ``d2L/da2``, including the second derivatives of the
  layers above that section 5.2 drops, as one forward-over-reverse Hessian-vector
  product per layer through the layers above (``torch.func``).

Cost of one update (B examples, m outputs, layer widths n_0 .. n_L):

* ``"gn"``: the Jacobians cost ``B m sum_l n_l n_{l-1}`` multiply-adds and ``B m max n_l``
  floats of memory, i.e. about ``m`` times an SGD step (m = 784 for the autoencoder).
  With ``compress=True`` a Jacobian at least 4 times taller than wide is replaced by
  its ``R`` factor (``J^T J = R^T R``), so below a narrow layer (the 30-unit code)
  only ``n_code`` rows are carried. The result is the same up to rounding.
* ``"exact"``: for each layer one Hessian-vector product through the layers above it,
  about ``L^2 / 2`` layer passes in all instead of SGD's ``L``; memory as SGD.
* Both: the sweep needs the train loop's forward pass (activations kept by forward
  hooks) and ``dL/df`` (a hook on the output); the train loop's own ``backward`` is
  not used for the update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, jvp

__all__ = [
    "UBP", "Block", "LayerStep", "blocks", "ubp_sweep", "output_hessian_factor", "preactivation_hvp",
    "carried_jacobians", "forward_record",
]

HESSIANS = ("gn", "exact")
LOSSES = ("mse", "cross_entropy")
ELEMENTWISE = (
    nn.Sigmoid, nn.Tanh, nn.ReLU, nn.Identity, nn.LeakyReLU, nn.ELU, nn.Softplus,
    nn.GELU, nn.SiLU,
)


@dataclass(frozen=True)
class Block:
    """One ``nn.Linear`` at position ``index`` of the Sequential and the elementwise
    activations that follow it (none for a linear layer such as the code layer)."""

    index: int
    linear: nn.Linear
    activations: tuple[nn.Module, ...]

    def derivative(self, a: Tensor) -> Tensor:
        """``f'(a)`` of the composed activations, elementwise."""
        if not self.activations:
            return torch.ones_like(a)
        return jvp(nn.Sequential(*self.activations), (a,), (torch.ones_like(a),))[1]


@dataclass
class LayerStep:
    """What the sweep decided for one block: its update and the corrected signal
    ``dL/dh`` for its input (None for the bottom block, whose input is the data)."""

    dW: Tensor
    db: Tensor | None
    signal: Tensor | None


def blocks(model: nn.Module) -> list[Block]:
    """Split a Sequential MLP into :class:`Block` s, bottom first; raise otherwise."""
    fix = (
        "UBP supports an nn.Sequential of nn.Linear layers and elementwise activations "
        f"({', '.join(t.__name__ for t in ELEMENTWISE)}), e.g. sokit.models.mlp(..., norm=None)"
    )
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"UBP needs an nn.Sequential, got {type(model).__name__}. {fix}")
    out: list[Block] = []
    for i, module in enumerate(model):
        if isinstance(module, nn.Linear):
            out.append(Block(i, module, ()))
        elif isinstance(module, ELEMENTWISE):
            if not out:
                raise TypeError(f"module {i} ({type(module).__name__}) comes before any nn.Linear. {fix}")
            last = out[-1]
            out[-1] = Block(last.index, last.linear, last.activations + (module,))
        else:
            raise TypeError(f"module {i} is a {type(module).__name__}, which UBP cannot backpropagate. {fix}")
    if not out:
        raise TypeError(f"the Sequential has no nn.Linear. {fix}")
    return out


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"UBP knows the losses {LOSSES} (sokit.losses names); got {loss!r}")


def output_hessian_factor(output: Tensor, loss: str) -> Tensor:
    """``S_i`` with ``S_i^T S_i = d2L/df_i^2`` for the mean loss (Algorithm 2, line 2).

    ``"mse"``: ``d2L/df2 = (2/B) I``, returned as the diagonal ``(B, m)``.
    ``"cross_entropy"``: ``(diag(p) - p p^T) / B = S^T S`` with
    ``S = (diag(sqrt p) - sqrt(p) p^T) / sqrt(B)``, returned dense ``(B, m, m)``.
    """
    _check_loss(loss)
    b = output.shape[0]
    if loss == "mse":
        return torch.full_like(output, (2.0 / b) ** 0.5)
    p = torch.softmax(output, dim=1)
    s = torch.diag_embed(p.sqrt()) - p.sqrt().unsqueeze(2) * p.unsqueeze(1)
    return s / b**0.5


def _output_hessian_apply(output: Tensor, d: Tensor, loss: str) -> Tensor:
    """``(d2L/df2) d`` for each example, without forming the matrices."""
    b = output.shape[0]
    if loss == "mse":
        return 2.0 * d / b
    p = torch.softmax(output, dim=1)
    return (p * d - p * (p * d).sum(dim=1, keepdim=True)) / b


def preactivation_hvp(
    upper: Callable[[Tensor], Tensor], a: Tensor, v: Tensor, output: Tensor, grad_output: Tensor, loss: str
) -> Tensor:
    """``(d2L/da_i^2) v_i`` for every example at once (``hessian="exact"``).

    ``upper`` maps the preactivation ``a`` to the network output. The loss enters only
    through its gradient ``grad_output = dL/df`` and Hessian at ``output``: the
    surrogate ``<f(a), g> + 1/2 (f(a) - f)^T (d2L/df2) (f(a) - f)`` has the same
    gradient and Hessian in ``a`` as ``L``. The minibatch Hessian is block diagonal,
    so one Hessian-vector product with all the ``v_i`` stacked gives every block's.
    """
    _check_loss(loss)
    f0, g0 = output.detach(), grad_output.detach()

    def surrogate(z: Tensor) -> Tensor:
        d = upper(z) - f0
        return (d * g0).sum() + 0.5 * (d * _output_hessian_apply(f0, d, loss)).sum()

    return jvp(grad(surrogate), (a.detach(),), (v,))[1]


def _gram_apply(jac: Tensor, v: Tensor) -> Tensor:
    """``J_i^T J_i v_i``; ``jac`` is a diagonal ``(B, n)`` or dense ``(B, m, n)``."""
    if jac.dim() == 2:
        return jac.square() * v
    return torch.einsum("bmn,bm->bn", jac, torch.einsum("bmn,bn->bm", jac, v))


def _scale_columns(jac: Tensor, d: Tensor) -> Tensor:
    """``J_i diag(d_i)`` (Algorithm 2, line 5)."""
    return jac * d if jac.dim() == 2 else jac * d.unsqueeze(1)


def _times_weight(jac: Tensor, weight: Tensor, compress: bool) -> Tensor:
    """``J_i W`` (Algorithm 2, line 9); with ``compress``, a ``J_i`` at least 4 times
    taller than wide is replaced by ``R`` of ``J_i = Q R`` (same ``J_i^T J_i``)."""
    out = jac.unsqueeze(2) * weight if jac.dim() == 2 else jac @ weight
    if compress and out.shape[1] >= 4 * out.shape[2]:
        out = torch.linalg.qr(out, mode="r")[1]
    return out


def forward_record(model: nn.Sequential, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Forward pass keeping each block's input ``h`` and preactivation ``a`` (bottom
    first) and the output: what :func:`ubp_sweep` needs besides ``dL/df``."""
    inputs, preacts = [], []
    h = x
    with torch.no_grad():
        for blk in blocks(model):
            inputs.append(h)
            h = blk.linear(h)
            preacts.append(h)
            for act in blk.activations:
                h = act(h)
    return inputs, preacts, h


def carried_jacobians(model: nn.Sequential, preacts: list[Tensor], output: Tensor, loss: str) -> list[Tensor]:
    """The ``J_i`` of Algorithm 2 at every block's preactivation, bottom first; ``(B, m, n_l)``.

    ``J_i^T J_i`` is the Gauss-Newton block ``(da/dF)^T (d2L/df2) (df/da)`` of example ``i``
    (section 5.5's matrix); uncompressed, so it is ``sqrt(d2L/df2)`` times the Jacobian
    of the output w.r.t. the preactivation.
    """
    bl = blocks(model)
    jac = output_hessian_factor(output.detach(), loss)
    out: list[Tensor] = []
    with torch.no_grad():
        for blk, a in zip(reversed(bl), reversed(preacts)):
            jac = _scale_columns(jac, blk.derivative(a.detach()))
            out.append(torch.diag_embed(jac) if jac.dim() == 2 else jac)
            jac = _times_weight(jac, blk.linear.weight, compress=False)
    return out[::-1]


def ubp_sweep(
    model: nn.Sequential,
    inputs: list[Tensor],
    preacts: list[Tensor],
    output: Tensor,
    grad_output: Tensor,
    loss: str,
    lr: float,
    hessian: str = "gn",
    compress: bool = True,
) -> list[LayerStep]:
    """Algorithm 2 on one minibatch; returns one :class:`LayerStep` per block, bottom first.

    ``inputs[k]`` and ``preacts[k]`` are block ``k``'s input ``h`` and preactivation
    ``a`` from the forward pass, ``grad_output`` is ``dL/df`` of the MEAN loss (so the
    sums over examples of Algorithm 2 are already averages). Parameters are not
    modified; :class:`UBP` applies the returned updates.
    """
    if hessian not in HESSIANS:
        raise ValueError(f"hessian must be one of {HESSIANS}, got {hessian!r}")
    _check_loss(loss)
    bl = blocks(model)
    if not (len(inputs) == len(preacts) == len(bl)):
        raise ValueError(f"got {len(inputs)} inputs and {len(preacts)} preactivations for {len(bl)} Linear layers")
    dh = grad_output.detach()
    jac = output_hessian_factor(output.detach(), loss) if hessian == "gn" else None
    steps: list[LayerStep] = []
    with torch.no_grad():
        for k in reversed(range(len(bl))):
            blk, h, a = bl[k], inputs[k].detach(), preacts[k].detach()
            W, bias = blk.linear.weight, blk.linear.bias
            fprime = blk.derivative(a)
            da = dh * fprime  # line 4
            dW = -lr * da.T @ h  # line 7
            db = -lr * da.sum(dim=0) if bias is not None else None  # line 6
            signal = None
            if k > 0:
                delta_a = h @ dW.T + (db if db is not None else 0.0)
                if hessian == "gn":
                    jac = _scale_columns(jac, fprime)  # line 5
                    curv = _gram_apply(jac, delta_a)
                    jac = _times_weight(jac, W, compress)  # line 9
                else:
                    with torch.enable_grad():
                        curv = preactivation_hvp(model[blk.index + 1 :], a, delta_a, output, grad_output, loss)
                signal = da @ (W + dW) + curv @ W  # line 8
                dh = signal
            steps.append(LayerStep(dW, db, signal))
    return steps[::-1]


class UBP(torch.optim.Optimizer):
    """Updated backpropagation (Algorithm 2) as a ``torch.optim`` optimizer.

    Forward hooks keep each Linear's input and preactivation and a hook on the output
    keeps ``dL/df`` during ``loss.backward()``; :meth:`step` then runs
    :func:`ubp_sweep` and applies the updates. Usage, as with SGD::

        opt = UBP(model, lr=0.1, loss="mse")
        out = model(x); loss = mse_sum(out, x)
        opt.zero_grad(); loss.backward(); opt.step()

    It plugs into :func:`sokit.train.train` unchanged (which checks that its loss is
    the ``loss`` UBP was built for).
    """

    def __init__(
        self, model: nn.Sequential, lr: float, loss: str, hessian: str = "gn", compress: bool = True
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be non-negative, got {lr}")
        if hessian not in HESSIANS:
            raise ValueError(f"hessian must be one of {HESSIANS}, got {hessian!r}")
        _check_loss(loss)
        self.model = model
        self.blocks = blocks(model)
        self.loss, self.hessian, self.compress = loss, hessian, compress
        super().__init__(model.parameters(), {"lr": lr})
        self._record: dict[str, Any] = {}
        self._recording = True
        self._handles = [b.linear.register_forward_hook(self._keep_layer(k)) for k, b in enumerate(self.blocks)]
        self._handles.append(model.register_forward_hook(self._keep_output))

    def _keep_layer(self, k: int) -> Callable[..., None]:
        def hook(module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
            if self._recording and torch.is_grad_enabled():
                if k == 0:
                    self._record = {"inputs": [None] * len(self.blocks), "preacts": [None] * len(self.blocks)}
                self._record["inputs"][k] = inp[0].detach()
                self._record["preacts"][k] = out.detach()

        return hook

    def _keep_output(self, module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        if not (self._recording and torch.is_grad_enabled() and out.requires_grad):
            return
        self._record["output"] = out.detach()

        def keep_grad(g: Tensor) -> None:
            self._record["grad_output"] = g.detach()

        out.register_hook(keep_grad)

    def remove_hooks(self) -> None:
        """Detach the optimizer from the model."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One UBP update from the latest forward pass and ``loss.backward()``."""
        value = None
        if closure is not None:
            with torch.enable_grad():
                value = closure()
        rec = self._record
        if "grad_output" not in rec or any(t is None for t in rec.get("inputs", [None])):
            raise RuntimeError(
                "UBP.step() needs the forward pass and loss.backward() of the current minibatch: "
                "call model(x) with gradients enabled, then loss.backward(), then step()"
            )
        self._recording = False
        try:
            steps = ubp_sweep(
                self.model, rec["inputs"], rec["preacts"], rec["output"], rec["grad_output"],
                self.loss, self.param_groups[0]["lr"], self.hessian, self.compress,
            )
        finally:
            self._recording = True
            self._record = {}
        for blk, s in zip(self.blocks, steps):
            blk.linear.weight.add_(s.dW)
            if s.db is not None:
                blk.linear.bias.add_(s.db)
        return value
