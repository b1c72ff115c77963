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
  the Jacobian of the network output w.r.t. ``a_i`` (Algorithm 2, lines 2, 5, 9).
* ``hessian="exact"``: the full ``d2L/da2``, including the second derivatives of the
  layers above that section 5.2 drops.

Both products ``H_i v_i`` are taken without forming ``J_i`` or ``H_i``
(:class:`Curvature`): one Jacobian-vector product up through the layers above (the
tangent of every preactivation), ``d2L/df2`` at the output, and one pass back down
(Pearlmutter's R-operator); the exact Hessian adds ``f''(a) * dL/dh * tangent`` at every
layer, from the gradients of the unmodified network. Algorithm 2 carries ``J_i``
itself, ``(B, m, n_l)`` per layer (:func:`carried_jacobians`, kept for section 5.5's
matrices); ``J_i^T J_i v_i`` from the same ``J_i`` is the same vector up to rounding.

Cost of one update (B examples, layers ``l = 1..L`` with ``c_l = n_{l-1} n_l`` weights):

* the product for layer ``k``: ``2 B sum_{l > k} c_l`` multiply-adds (two matrix products
  per layer above it), for all layers ``2 B sum_l (l - 2) c_l``; ``"exact"`` adds the
  gradients of the unmodified network, ``B sum_{l >= 2} c_l``, and elementwise terms;
* the sweep itself (lines 4, 6-8): ``4 B c_l`` per layer above the first, ``B c_1`` for it;
* the train loop's forward and backward (an SGD step's products; its ``.grad`` is unused).

Carrying ``J_i`` instead costs ``B m sum_l c_l`` (``m`` outputs; m = 784 for the
autoencoder), about ``m / 3`` SGD steps. Memory: a few ``(B, n_l)`` tangents per layer.
The sweep needs the train loop's forward pass (activations kept by forward hooks) and
``dL/df`` (a hook on the output).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jvp

__all__ = [
    "UBP", "Block", "Curvature", "LayerStep", "blocks", "ubp_sweep", "output_hessian_factor",
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

    def activation(self, a: Tensor) -> Tensor:
        """``f(a)``, the composed activations."""
        for act in self.activations:
            a = act(a)
        return a

    def derivative(self, a: Tensor) -> Tensor:
        """``f'(a)`` of the composed activations, elementwise."""
        if not self.activations:
            return torch.ones_like(a)
        return jvp(self.activation, (a,), (torch.ones_like(a),))[1]

    def second_derivative(self, a: Tensor) -> Tensor:
        """``f''(a)`` of the composed activations, elementwise."""
        if not self.activations:
            return torch.zeros_like(a)
        return jvp(self.derivative, (a,), (torch.ones_like(a),))[1]


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


def backprop_signals(weights: list[Tensor], fprime: list[Tensor], grad_output: Tensor) -> list[Tensor]:
    """Plain backpropagation's ``dL/dh`` of each block's input, blocks ``1..K-1`` (bottom
    first), from every block's weight and ``f'(a)``: the signals that :func:`ubp_sweep`'s
    ``LayerStep.signal`` corrects."""
    dh, out = grad_output.detach(), []
    with torch.no_grad():
        for k in reversed(range(1, len(weights))):
            dh = (dh * fprime[k]) @ weights[k]
            out.append(dh)
    return out[::-1]


@dataclass
class Curvature:
    """``(d2L/da_k^2) v`` (``"exact"``) or its Gauss-Newton part ``J^T (d2L/df2) J v``
    (``"gn"``, section 5.2) at every block's preactivation, for all examples at once.

    Built once per minibatch (:meth:`at`) from the forward pass at the current
    parameters: the weights, ``f'`` of every block and, for ``"exact"``, ``f''`` and the
    gradient ``dL/dh`` of every block's output (of the unmodified network).
    """

    weights: list[Tensor]
    fprime: list[Tensor]
    fsecond: list[Tensor] | None
    grad_h: list[Tensor] | None
    output: Tensor
    loss: str

    @classmethod
    def at(cls, model: nn.Sequential, preacts: list[Tensor], output: Tensor, grad_output: Tensor,
           loss: str, hessian: str) -> Curvature:
        """The curvature of the mean loss at the forward pass ``preacts``, ``output``."""
        if hessian not in HESSIANS:
            raise ValueError(f"hessian must be one of {HESSIANS}, got {hessian!r}")
        _check_loss(loss)
        bl = blocks(model)
        weights = [blk.linear.weight.detach() for blk in bl]
        fprime = [blk.derivative(a.detach()) for blk, a in zip(bl, preacts)]
        fsecond = grad_h = None
        if hessian == "exact":
            fsecond = [blk.second_derivative(a.detach()) for blk, a in zip(bl, preacts)]
            # dL/dh of each block's output, bottom first
            grad_h = [*backprop_signals(weights, fprime, grad_output), grad_output.detach()]
        return cls(weights, fprime, fsecond, grad_h, output.detach(), loss)

    def apply(self, k: int, v: Tensor) -> Tensor:
        """``H v_i`` at block ``k``'s preactivation for every example ``i``: the tangent
        of every preactivation above (forward), ``d2L/df2`` at the output, and back down."""
        tangents = [v]
        for j in range(k + 1, len(self.weights)):
            tangents.append((tangents[-1] * self.fprime[j - 1]) @ self.weights[j].T)
        r = _output_hessian_apply(self.output, tangents[-1] * self.fprime[-1], self.loss)
        for j in range(len(self.weights) - 1, k - 1, -1):
            r = r * self.fprime[j]
            if self.fsecond is not None:
                r = r + self.grad_h[j] * self.fsecond[j] * tangents[j - k]
            if j > k:
                r = r @ self.weights[j]
        return r


def _scale_columns(jac: Tensor, d: Tensor) -> Tensor:
    """``J_i diag(d_i)`` (Algorithm 2, line 5)."""
    return jac * d if jac.dim() == 2 else jac * d.unsqueeze(1)


def _times_weight(jac: Tensor, weight: Tensor) -> Tensor:
    """``J_i W`` (Algorithm 2, line 9)."""
    return jac.unsqueeze(2) * weight if jac.dim() == 2 else jac @ weight


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
            h = blk.activation(h)
    return inputs, preacts, h


def carried_jacobians(model: nn.Sequential, preacts: list[Tensor], output: Tensor, loss: str) -> list[Tensor]:
    """The ``J_i`` of Algorithm 2 at every block's preactivation, bottom first; ``(B, m, n_l)``.

    ``J_i^T J_i`` is the Gauss-Newton block ``(da/dF)^T (d2L/df2) (df/da)`` of example ``i``
    (section 5.5's matrix): ``sqrt(d2L/df2)`` times the Jacobian of the output w.r.t.
    the preactivation. The sweep never forms them (:class:`Curvature`).
    """
    bl = blocks(model)
    jac = output_hessian_factor(output.detach(), loss)
    out: list[Tensor] = []
    with torch.no_grad():
        for blk, a in zip(reversed(bl), reversed(preacts)):
            jac = _scale_columns(jac, blk.derivative(a.detach()))
            out.append(torch.diag_embed(jac) if jac.dim() == 2 else jac)
            jac = _times_weight(jac, blk.linear.weight)
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
) -> list[LayerStep]:
    """Algorithm 2 on one minibatch; returns one :class:`LayerStep` per block, bottom first.

    ``inputs[k]`` and ``preacts[k]`` are block ``k``'s input ``h`` and preactivation
    ``a`` from the forward pass, ``grad_output`` is ``dL/df`` of the MEAN loss (so the
    sums over examples of Algorithm 2 are already averages). Parameters are not
    modified; :class:`UBP` applies the returned updates.
    """
    bl = blocks(model)
    if not (len(inputs) == len(preacts) == len(bl)):
        raise ValueError(f"got {len(inputs)} inputs and {len(preacts)} preactivations for {len(bl)} Linear layers")
    with torch.no_grad():
        curvature = Curvature.at(model, preacts, output, grad_output, loss, hessian)
        dh = grad_output.detach()
        steps: list[LayerStep] = []
        for k in reversed(range(len(bl))):
            h, W, bias = inputs[k].detach(), curvature.weights[k], bl[k].linear.bias
            da = dh * curvature.fprime[k]  # line 4
            dW = -lr * da.T @ h  # line 7
            db = -lr * da.sum(dim=0) if bias is not None else None  # line 6
            signal = None
            if k > 0:
                delta_a = torch.addmm(db, h, dW.T) if db is not None else h @ dW.T
                curv = curvature.apply(k, delta_a)  # J^T J (dW h + db), lines 5 and 9
                signal = torch.addmm(curv @ W, da, W + dW)  # line 8
                dh = signal
            steps.append(LayerStep(dW, db, signal))
    return steps[::-1]




def relative_corrections(steps: list[LayerStep], plain: list[Tensor]) -> list[float]:
    """``|UBP signal - BP signal| / |BP signal|`` below each block ``1..K-1`` (bottom first):
    the size of Algorithm 2's correction against the signal it corrects (section 5.5)."""
    return [float((s.signal - p).norm() / p.norm()) for s, p in zip(steps[1:], plain)]


class UBP(torch.optim.Optimizer):
    """Updated backpropagation (Algorithm 2) as a ``torch.optim`` optimizer.

    Forward hooks keep each Linear's input and preactivation and a hook on the output
    keeps ``dL/df`` during ``loss.backward()``; :meth:`step` then runs
    :func:`ubp_sweep` and applies the updates. Usage, as with SGD::

        opt = UBP(model, lr=0.1, loss="mse")
        out = model(x); loss = mse_sum(out, x)
        opt.zero_grad(); loss.backward(); opt.step()

    It plugs into :func:`sokit.train.train` unchanged (which checks that its loss is
    the ``loss`` UBP was built for). ``monitor=True`` keeps, for every update, the
    :func:`relative_corrections` of its sweep (:attr:`corrections`, in the state dict and
    in :meth:`diagnostics`, which :func:`~sokit.train.train` adds to its result): how close
    each update came to section 5.5's explosion.
    """

    def __init__(self, model: nn.Sequential, lr: float, loss: str, hessian: str = "gn",
                 monitor: bool = False) -> None:
        if lr < 0:
            raise ValueError(f"lr must be non-negative, got {lr}")
        if hessian not in HESSIANS:
            raise ValueError(f"hessian must be one of {HESSIANS}, got {hessian!r}")
        _check_loss(loss)
        self.model = model
        self.blocks = blocks(model)
        self.loss, self.hessian = loss, hessian
        super().__init__(model.parameters(), {"lr": lr})
        self._record: dict[str, Any] = {}
        self._recording = True
        self.monitor = monitor
        self.corrections: list[list[float]] = []
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
                self.loss, self.param_groups[0]["lr"], self.hessian,
            )
            if self.monitor:  # before the update: the signals of the weights the sweep saw
                weights = [b.linear.weight.detach() for b in self.blocks]
                fprime = [b.derivative(a) for b, a in zip(self.blocks, rec["preacts"])]
                plain = backprop_signals(weights, fprime, rec["grad_output"])
                self.corrections.append(relative_corrections(steps, plain))
        finally:
            self._recording = True
            self._record = {}
        for blk, s in zip(self.blocks, steps):
            blk.linear.weight.add_(s.dW)
            if s.db is not None:
                blk.linear.bias.add_(s.db)
        return value

    def diagnostics(self) -> dict[str, Any]:
        """``{"relative_correction": corrections}`` (one list per update, bottom first) when
        monitoring, else ``{}``."""
        return {"relative_correction": self.corrections} if self.monitor else {}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "corrections": [list(c) for c in self.corrections]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self.corrections = [list(c) for c in state.pop("corrections", [])]
        super().load_state_dict(state)
