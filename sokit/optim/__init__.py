"""Factorized second-order optimizers of thesis chapter 6 (and UBP, chapter 5).

Each method exists as a *preconditioner* that rewrites the ``.grad`` of every
``nn.Linear`` in place (use it before any ``torch.optim`` optimizer) and as an
optimizer with the thesis's plain ``theta <- theta - lr * direction`` step:

============================  =================================  ==========================
method                        preconditioner                     optimizer
============================  =================================  ==========================
centered GD (Algorithm 3)     :class:`CenteredPreconditioner`    :class:`CenteredGD`
ACP (Algorithm 4)             :class:`ACPPreconditioner`         :class:`ACP`
KFAC, GN or Fisher (6.4.1)    :class:`KFACPreconditioner`        :class:`KFAC`
============================  =================================  ==========================

``amortization`` is an ``int`` N (refresh every N updates, Algorithm 4) or an
:class:`AdaptiveAmortization` (refresh a layer when its input statistics drift).
``fused=True`` (ACP, KFAC) computes the direction inside each layer's backward.
KFAC's optimizer and preconditioner have ``curvature_backward(output, loss)``, which
:func:`sokit.train.train` calls between the forward and the backward pass.

Natural Neural Networks (:class:`NNN`, :mod:`sokit.optim.nnn`, section 6.4.2) and
updated backpropagation (:class:`UBP`, :mod:`sokit.optim.ubp`, Algorithm 2) are
exported here too; their details live in their modules.
"""

from collections.abc import Callable
from typing import Any

from torch import nn

from .acp import ACP, ACPPreconditioner
from .amortization import AdaptiveAmortization, FixedAmortization
from .centered import CenteredGD, CenteredPreconditioner
from .hooks import LinearHooks, UnsupportedLayerError
from .kfac import KFAC, KFACPreconditioner
from .nnn import NNN
from .sgd import sgd
from .ubp import UBP

#: name -> factory ``(model, **kwargs) -> optimizer``: how experiments, searches and the
#: CLI build an optimizer from a method spec (:mod:`sokit.experiments.methods`). A new
#: optimizer is a module of its own plus one line here.
OPTIMIZERS: dict[str, Callable[..., Any]] = {
    "sgd": sgd,
    "centered": CenteredGD,
    "acp": ACP,
    "kfac": KFAC,
    "nnn": NNN,
    "ubp": UBP,
}


def build(name: str, model: nn.Module, **kwargs: Any) -> Any:
    """The optimizer ``OPTIMIZERS[name]`` for ``model``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](model, **kwargs)


__all__ = [
    "ACP",
    "ACPPreconditioner",
    "AdaptiveAmortization",
    "CenteredGD",
    "CenteredPreconditioner",
    "FixedAmortization",
    "KFAC",
    "KFACPreconditioner",
    "LinearHooks",
    "NNN",
    "OPTIMIZERS",
    "UBP",
    "build",
    "sgd",
    "UnsupportedLayerError",
]
