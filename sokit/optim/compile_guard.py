"""Refuse a step whose hooks did not run (a stale ``torch.compile`` graph), never a silent SGD step.

Every factorized method needs each layer's input ``h`` and ``dl/da``, recorded by the
hooks of :class:`~sokit.optim.hooks.LinearHooks`. TorchDynamo does not guard on module
hooks (``torch._dynamo.config.skip_nnmodule_hook_guards`` is True by default), so a
compiled model reuses any graph traced before the hooks were attached: a model of the
same class compiled and run without them, or this model compiled and run before the
optimizer was built. In that graph the hooks never run, the layers keep a gradient but
no record, and the preconditioner, which only rewrites layers with a record, would leave
the plain gradient in place: a plain SGD step. :func:`check_recorded`, called where the
preconditioner picks its layers, raises instead.

Fused mode (``fused=True``) replaces each layer's ``forward``, which Dynamo does guard,
so its steps match eager ones under a compiled model (``tests/test_compile.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

from .hooks import LayerRecord

__all__ = ["HooksNotRunError", "check_recorded"]


class HooksNotRunError(RuntimeError):
    """A layer has a gradient but its hooks recorded no forward pass since the last step."""


def check_recorded(layers: Iterable[LayerRecord]) -> None:
    """Raise :class:`HooksNotRunError` naming every layer with a ``weight.grad`` but no recorded ``h``."""
    missed = [rec.name for rec in layers if rec.h is None and rec.module.weight.grad is not None]
    if missed:
        raise HooksNotRunError(
            f"layers {missed} have gradients but sokit.optim's hooks recorded no forward pass "
            "for them since the last step, so no preconditioned direction can be computed "
            "(the step would be plain SGD). Under torch.compile this happens when Dynamo "
            "reuses a graph traced without the hooks (it does not guard on module hooks): a "
            "model of the same class compiled and run before this optimizer was built. Fix: "
            "use fused=True, or set torch._dynamo.config.skip_nnmodule_hook_guards = False and "
            "call torch._dynamo.reset() before compiling, or build the optimizer before the "
            "model's first compiled call. Outside torch.compile: run the forward pass with "
            "gradients enabled before backward() and step(), with zero_grad() between steps."
        )
