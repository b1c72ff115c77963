"""Shared machinery of the layer-wise preconditioners and their SGD optimizers.

A *preconditioner* (``CenteredPreconditioner``, ``ACPPreconditioner``,
``KFACPreconditioner``) attaches :class:`~sokit.optim.hooks.LinearHooks` to a model;
after ``loss.backward()`` its :meth:`precondition` rewrites each ``nn.Linear``'s
``weight.grad`` and ``bias.grad`` in place with the preconditioned direction, so
that any ``torch.optim`` optimizer can take the step. :class:`PreconditionedSGD` is
the thesis's form of each method: preconditioned direction times a learning rate.

The preconditioners may rebuild a layer's gradient from the recorded ``h`` and
``dl/da`` (``g^T h``) when that association is cheaper, so modify gradients (clipping,
weight decay) AFTER :meth:`precondition`, not before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .amortization import AdaptiveAmortization, FixedAmortization, as_schedule
from .compile_guard import check_recorded
from .factors import FactorInverse
from .hooks import LayerRecord, LinearHooks


class _FusedLinear(torch.autograd.Function):
    """``a = h W^T + b`` whose backward returns the preconditioned direction for ``W``, ``b``."""

    @staticmethod
    def forward(ctx, h, weight, bias, pre, index):
        ctx.save_for_backward(h, weight)
        ctx.pre, ctx.index, ctx.has_bias = pre, index, bias is not None
        return F.linear(h, weight, bias)

    @staticmethod
    def backward(ctx, g):
        h, weight = ctx.saved_tensors
        grad_h = g @ weight if ctx.needs_input_grad[0] else None
        with torch.no_grad():
            dW, db = ctx.pre.fused_direction(ctx.index, h, g)
        return grad_h, dW, (db if ctx.has_bias else None), None, None


class LayerPreconditioner:
    """Base class: hooks, an amortization schedule and an update counter.

    ``fused=True`` (for subclasses with a ``fused_direction(index, h, g)``) replaces each
    layer's forward by one whose backward writes the preconditioned direction into
    ``.grad`` directly, instead of the gradient ``g^T h`` that would be rewritten later:
    that saves the ``B n_in n_out`` weight-gradient product per layer and step. The
    layers' ``forward`` stays replaced until :meth:`remove` (save the model with its
    ``state_dict``; do not pickle or deep-copy it while fused). Any backward pass through
    the model with gradients enabled then gives the direction, not the gradient (build
    with ``fused=False`` to read gradients); ``torch.func`` transforms see plain layers.

    ``capturable=True`` makes the plain updates (those that refresh nothing) replayable
    from a CUDA graph: they read the inverses from fixed buffers that each refresh
    overwrites in place (:meth:`keep`), count updates on the device too
    (:attr:`device_updates`), and make no host synchronisation. The refreshes are decided
    on the host from the update counter (:meth:`refresh_due`, so a fixed amortization is
    required) and must run eagerly; after each replay the caller reports it with
    :meth:`count_replayed_update`, the host bookkeeping the replayed Python did not do.
    :class:`sokit.graphs.CapturedStep` does both. The CPU tests replay the recorded
    operations of a plain update (``tests/test_capturable.py``); CUDA capture itself is
    untested on hardware.
    """

    def __init__(self, model: nn.Module,
                 amortization: int | FixedAmortization | AdaptiveAmortization = 1,
                 skip_unsupported: bool = False, reduction: str = "mean",
                 fused: bool = False, capturable: bool = False, record_grad: bool = True) -> None:
        self.model = model
        self.hooks = LinearHooks(model, skip_unsupported=skip_unsupported, reduction=reduction,
                                 record_grad=record_grad, forward_hooks=not fused)
        self.schedule = as_schedule(amortization)
        if capturable and not isinstance(self.schedule, FixedAmortization):
            raise ValueError("capturable=True needs a fixed amortization (an int N or a "
                             "FixedAmortization): an AdaptiveAmortization decides refreshes "
                             "from tensor values, a host synchronisation at every check")
        self.n_updates = 0
        self.capturable = capturable
        self.device_updates: Tensor | None = None  # capturable: n_updates, on the device
        self.fused = fused
        self._fused_done: set[int] = set()
        if fused:
            for i, rec in enumerate(self.layers):
                rec.module.forward = self._fused_forward(i, rec.module)

    def _fused_forward(self, index: int, module: nn.Linear):
        rec, record = self.layers[index], self.hooks.record

        def forward(h: Tensor) -> Tensor:
            # plain under no_grad, and under torch.func transforms (sokit.curvature's
            # exact quantities of a model with a fused optimizer attached stay exact)
            if not torch.is_grad_enabled() or (not torch.compiler.is_compiling()
                                               and torch._C._functorch.peek_interpreter_stack() is not None):
                a = F.linear(h, module.weight, module.bias)
            else:
                a = _FusedLinear.apply(h, module.weight, module.bias, self, index)
            record(rec, h, a)  # in place of the forward hook (none registered when fused)
            return a

        return forward

    def fused_finish(self, active: list[tuple[int, LayerRecord]]) -> None:
        """End of a fused update: every active layer must have run its fused backward."""
        missing = [rec.name for i, rec in active if i not in self._fused_done]
        if missing:
            raise RuntimeError(f"fused mode: no backward pass reached layers {missing}; "
                               "call loss.backward() before step()/precondition()")
        self._fused_done.clear()
        self.finish()

    @property
    def layers(self) -> list[LayerRecord]:
        return self.hooks.layers

    def active(self) -> list[tuple[int, LayerRecord]]:
        """Layers that took part in the last forward pass and have a gradient (a layer with a
        gradient but no recorded input raises: torch.compile reused a graph without hooks)."""
        self.hooks.check_one_forward()
        check_recorded(self.layers)
        return [(i, r) for i, r in enumerate(self.layers)
                if r.h is not None and r.module.weight.grad is not None]

    @staticmethod
    def grads(rec: LayerRecord) -> tuple[Tensor, Tensor]:
        """``(dR/dW, dR/db)``; for a layer without bias ``dR/db`` is ``sum_i dl/da_i``."""
        m = rec.module
        if m.bias is not None and m.bias.grad is not None:
            return m.weight.grad, m.bias.grad
        if rec.g is None:
            raise RuntimeError(f"layer {rec.name!r}: no backward pass was recorded")
        return m.weight.grad, rec.g.sum(0)

    @staticmethod
    def write(rec: LayerRecord, dW: Tensor, db: Tensor) -> None:
        """Make the preconditioned direction the layer's gradients (the tensors themselves,
        not a copy into the old ``.grad``)."""
        rec.module.weight.grad = dW
        if rec.module.bias is not None and rec.module.bias.grad is not None:
            rec.module.bias.grad = db

    def keep(self, table: dict[int, FactorInverse], i: int, new: FactorInverse) -> None:
        """Store layer ``i``'s refreshed inverse: copied into its existing buffers when they
        have the same layout (what a captured graph reads), else stored as new buffers
        (refused in capturable mode after the first refresh)."""
        old = table.get(i)
        if old is not None and old.layout() == new.layout():
            old.copy_(new)
        elif old is not None and self.capturable:
            raise RuntimeError(f"layer {self.layers[i].name!r}: capturable mode needs the same "
                               "refresh minibatch size at every refresh (its inverse buffers "
                               f"changed from {old.layout()} to {new.layout()})")
        else:
            table[i] = new

    def refresh_due(self) -> bool:
        """Whether the next update refreshes some layer (host-side; fixed amortization)."""
        if not isinstance(self.schedule, FixedAmortization):
            raise TypeError("refresh_due() is decided on the host for a fixed amortization only")
        return any(self.schedule.due(self.n_updates, i, None) for i in range(len(self.layers)))

    def count_replayed_update(self) -> None:
        """Count one plain update replayed from a captured graph (its Python did not run)."""
        self.n_updates += 1

    def precondition(self) -> None:
        raise NotImplementedError("a LayerPreconditioner subclass defines precondition()")

    def finish(self) -> None:
        if self.capturable:
            device = self.layers[0].module.weight.device
            if self.device_updates is None or self.device_updates.device != device:
                self.device_updates = torch.full((), self.n_updates, dtype=torch.long,
                                                 device=device)
            self.device_updates.add_(1)
        self.n_updates += 1
        self.hooks.clear()

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        if self.device_updates is not None and int(self.device_updates) != self.n_updates:
            raise RuntimeError(f"{int(self.device_updates)} updates ran on the device but "
                               f"{self.n_updates} were counted on the host: report each "
                               "replayed update with count_replayed_update()")
        return {"n_updates": self.n_updates, "schedule": self.schedule.state_dict(),
                **self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_updates = state["n_updates"]
        self.device_updates = None  # restarted from n_updates at the next update
        self.schedule.load_state_dict(state["schedule"])
        self._load_state(state)

    def remove(self) -> None:
        """Detach the hooks and, in fused mode, restore the layers' own forward."""
        self.hooks.remove()
        if self.fused:
            for rec in self.layers:
                del rec.module.forward
            self.fused = False


class LearningRate:
    """``opt.lr``: the learning rate of a one-group ``torch.optim`` optimizer, read and set
    through ``param_groups`` (so that LR schedulers and ``opt.lr`` agree)."""

    @property
    def lr(self) -> float:
        """The learning rate of the (first) parameter group."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.param_groups:
            group["lr"] = value


class PreconditionedSGD(LearningRate, torch.optim.Optimizer):
    """``theta <- theta - lr * P(grad)``: a preconditioner followed by plain SGD.

    A ``torch.optim.Optimizer`` over the model's trainable parameters (one parameter
    group, ``defaults = {"lr": lr}``, with ``"capturable": True`` in capturable mode, the
    flag :func:`sokit.train.can_capture` reads), so learning-rate schedulers
    (``torch.optim.lr_scheduler``), ``param_groups``, ``zero_grad`` and
    ``state_dict`` / ``load_state_dict`` work as for any torch optimizer; each step reads
    its learning rate from ``param_groups`` (a captured graph keeps the one of its
    capture, as ``torch.optim.SGD`` does). Parameters outside the preconditioned
    ``nn.Linear`` layers (skipped layers) get the plain SGD step. The method's own
    object is :attr:`preconditioner`; KFAC's also adds ``curvature_backward`` and
    ``loss`` (the loss it was built for). ``refresh_due`` and ``count_replayed_update``
    are the preconditioner's (see :class:`LayerPreconditioner`, ``capturable``).

    ``step(closure)`` evaluates the closure (forward, ``zero_grad``, backward; for KFAC
    also ``curvature_backward(output)`` before the backward) with gradients enabled,
    then preconditions and steps (one ``torch._foreach_add_`` per group), and returns
    the closure's loss. ``state_dict()`` is torch's (``state``, ``param_groups``) plus
    ``"preconditioner"``, the preconditioner's state (statistics, inverses, schedule,
    counters): tensors and plain values only, so it loads with
    ``torch.load(weights_only=True)``.
    """

    def __init__(self, preconditioner: LayerPreconditioner, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        params = [p for p in preconditioner.model.parameters() if p.requires_grad]
        capturable = {"capturable": True} if preconditioner.capturable else {}
        super().__init__(params, {"lr": lr, **capturable})
        self.preconditioner = preconditioner
        self.refresh_due = preconditioner.refresh_due
        self.count_replayed_update = preconditioner.count_replayed_update
        if hasattr(preconditioner, "curvature_backward"):
            self.curvature_backward = preconditioner.curvature_backward
        if hasattr(preconditioner, "loss"):
            self.loss = preconditioner.loss  # the loss it was built for (sokit.train checks it)

    def __getstate__(self) -> dict[str, Any]:
        # torch's keeps only defaults, state and param_groups; keep the preconditioner too
        return {**self.__dict__}

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self.preconditioner.precondition()
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    torch._foreach_add_(params, [p.grad for p in params], alpha=-group["lr"])
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["preconditioner"] = self.preconditioner.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        pre = state.pop("preconditioner")
        if "param_groups" in state:
            super().load_state_dict(state)
        else:  # the form before PreconditionedSGD was a torch optimizer: {"lr", "preconditioner"}
            self.lr = state["lr"]
        self.preconditioner.load_state_dict(pre)
