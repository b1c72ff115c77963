"""Capture each ``nn.Linear``'s input ``h`` and preactivation gradient ``dl/da``.

Every method of chapter 6 needs, per layer ``a = W h + b``, the layer's input ``h``
(forward statistics, the left Kronecker factor of eq 6.2.2) and the gradient of the
loss w.r.t. its preactivation ``a`` (the backpropagated part, Algorithms 3 and 4 line
"Delta_a_i"). :class:`LinearHooks` records both:

* a forward hook on each ``nn.Linear`` stores its input ``h`` (detached; a fused
  preconditioner's replaced ``forward`` calls :meth:`LinearHooks.record` instead);
* inside that hook a tensor hook is registered on the layer's OUTPUT ``a``, so the
  gradient is the one w.r.t. ``a`` itself even when an in-place activation
  (``nn.ReLU(inplace=True)``) later overwrites ``a``, and whatever the model's
  structure (``nn.Sequential`` or any ``forward``).

Nothing is recorded when gradients are disabled (evaluation under ``torch.no_grad``).

Per-example scaling: with a loss that is a MEAN over the ``B`` examples of the
minibatch (sokit's losses), autograd's ``dl/da_i`` is ``(1/B)`` times the per-example
gradient ``nabla_{a_i} l``. :attr:`LayerRecord.g` keeps autograd's value (so that
``g.T @ h`` is exactly ``W.grad``); :meth:`LinearHooks.per_example` multiplies by
``B`` (``reduction="mean"``) or by 1 (``reduction="sum"``) to get ``nabla_{a_i} l``,
which is what the alpha heuristic of ACP and the KFAC factor ``G`` need.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["LayerRecord", "LinearHooks", "UnsupportedLayerError"]


class UnsupportedLayerError(TypeError):
    """A module with parameters that the factorized methods do not handle."""


@dataclass
class LayerRecord:
    """What the hooks saw for one ``nn.Linear`` since the last :meth:`LinearHooks.clear`."""

    name: str
    module: nn.Linear
    h: Tensor | None = None  # (B, n_in) input of the layer, detached
    g: Tensor | None = None  # (B, n_out) autograd's dl/da of the main backward
    g_curvature: Tensor | None = None  # (B, n_out) from a curvature pass
    calls: int = 0  # forward calls with gradients enabled
    handles: list = field(default_factory=list, repr=False)

    @property
    def batch_size(self) -> int:
        if self.h is None:
            raise RuntimeError(f"layer {self.name!r}: no forward pass was recorded")
        return self.h.shape[0]


class LinearHooks:
    """Hooks on every ``nn.Linear`` of ``model`` recording ``h`` and ``dl/da``.

    Any other module that owns parameters (``Conv2d``, ``BatchNorm1d``, ``Embedding``,
    ...) raises :class:`UnsupportedLayerError` naming it, unless
    ``skip_unsupported=True``, in which case it is listed in :attr:`skipped` and the
    caller leaves its gradient as it is. ``record_grad=False`` records ``h`` only (no
    tensor hook per layer and step): for a fused preconditioner whose backward is handed
    ``dl/da`` directly. ``forward_hooks=False`` registers no module hook: the layers'
    own (replaced) ``forward`` calls :meth:`record` (a fused preconditioner's, which
    saves the hook dispatch of every layer and step).
    """

    def __init__(self, model: nn.Module, skip_unsupported: bool = False,
                 reduction: str = "mean", record_grad: bool = True,
                 forward_hooks: bool = True) -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum' (how the loss combines "
                             f"examples), got {reduction!r}")
        self.reduction = reduction
        self.record_grad = record_grad
        self.layers: list[LayerRecord] = []
        self.skipped: list[tuple[str, nn.Module]] = []
        self._mode = "grad"
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                self.layers.append(LayerRecord(name or "<model>", module))
            elif any(True for _ in module.parameters(recurse=False)):
                if not skip_unsupported:
                    raise UnsupportedLayerError(
                        f"layer {name!r} ({type(module).__name__}) has parameters but is not "
                        "an nn.Linear; sokit.optim's factorized methods only precondition "
                        "nn.Linear layers. Pass skip_unsupported=True to leave its gradient "
                        "unpreconditioned (plain SGD on it)."
                    )
                self.skipped.append((name, module))
        if not self.layers:
            raise ValueError("model has no nn.Linear layer to precondition")
        if forward_hooks:
            for rec in self.layers:
                rec.handles.append(rec.module.register_forward_hook(self._forward_hook(rec)))

    def _forward_hook(self, rec: LayerRecord):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self.record(rec, inputs[0], output)

        return hook

    def record(self, rec: LayerRecord, h: Tensor, output: Tensor) -> None:
        """Record one forward call of ``rec``'s layer, input ``h``, output ``output`` (what
        the forward hook does; called by the layer itself with ``forward_hooks=False``)."""
        if not (torch.is_grad_enabled() and output.requires_grad):
            return
        if h.dim() != 2:
            raise ValueError(
                f"layer {rec.name!r}: sokit.optim expects 2-D inputs (batch, features) "
                f"to nn.Linear, got shape {tuple(h.shape)}; flatten the extra dimensions"
            )
        rec.h = h.detach()
        rec.calls += 1
        if self.record_grad:
            output.register_hook(self._tensor_hook(rec))

    def _tensor_hook(self, rec: LayerRecord):
        def hook(grad: Tensor) -> None:
            if self._mode == "grad":
                rec.g = grad.detach()
            else:
                rec.g_curvature = grad.detach()

        return hook

    @property
    def in_curvature_pass(self) -> bool:
        """True inside :meth:`curvature_pass`."""
        return self._mode == "curvature"

    @contextmanager
    def curvature_pass(self) -> Iterator[None]:
        """Route the gradients of backward passes run inside to ``g_curvature``."""
        self._mode = "curvature"
        try:
            yield
        finally:
            self._mode = "grad"

    def per_example_scale(self, batch_size: int) -> int:
        """``B`` (``reduction="mean"``) or 1: ``nabla_{a_i} l = per_example_scale * dl/da_i``."""
        return batch_size if self.reduction == "mean" else 1

    @staticmethod
    def grad(rec: LayerRecord) -> Tensor:
        """The main backward's ``dl/da`` (raises if no backward pass was recorded)."""
        if rec.g is None:
            raise RuntimeError(f"layer {rec.name!r}: no backward pass was recorded; call "
                               "loss.backward() before step()/precondition()")
        return rec.g

    def per_example(self, rec: LayerRecord) -> Tensor:
        """``nabla_{a_i} l`` for each example, from the main backward's ``dl/da``."""
        g = self.grad(rec)
        return g * rec.batch_size if self.reduction == "mean" else g

    def check_one_forward(self) -> None:
        """Raise if a layer ran more than once with gradients since the last clear."""
        for rec in self.layers:
            if rec.calls > 1:
                raise RuntimeError(
                    f"layer {rec.name!r} ran {rec.calls} times with gradients enabled since "
                    "the last step; sokit.optim supports one forward pass per step (no weight "
                    "sharing, no gradient accumulation). Evaluate under torch.no_grad()."
                )

    def clear(self) -> None:
        """Forget what was recorded (called after each step)."""
        for rec in self.layers:
            rec.h = rec.g = rec.g_curvature = None
            rec.calls = 0

    def remove(self) -> None:
        """Remove the hooks from the model."""
        for rec in self.layers:
            for handle in rec.handles:
                handle.remove()
            rec.handles.clear()
