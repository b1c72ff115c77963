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
Natural Neural Networks       (reparametrizes the model)         :class:`NNN`
updated backprop (Alg. 2)     -                                  :class:`UBP`
============================  =================================  ==========================

The contract
------------
*Construction.* An optimizer is built from the model, not from its parameters, because
it needs the layers: ``ACP(model, lr, ...)``. :data:`OPTIMIZERS` maps a name to such a
factory ``(model, **kwargs)``; experiments, searches and the CLI build every optimizer
through it (:func:`build`), so a new optimizer is a module of its own plus one line in
that table. :class:`CenteredGD`, :class:`ACP` and :class:`KFAC` are
``torch.optim.Optimizer`` subclasses over the model's trainable parameters (``lr`` in
``param_groups``, so ``torch.optim.lr_scheduler`` works; ``step(closure)``); the
preconditioners serve any other optimizer (Adam, momentum SGD).

*What a step sees.* :class:`LinearHooks` (:mod:`.hooks`) puts a forward hook on every
``nn.Linear`` ``a = W h + b``: it records the layer's input ``h`` and, through a tensor
hook on ``a``, the gradient ``dl/da`` of the backward pass (in fused mode the replaced
``forward`` records ``h`` itself and the fused backward is handed ``dl/da``). Only passes with gradients
enabled are recorded, so an evaluation under ``torch.no_grad`` between backward and
step changes nothing. ``step()`` (or ``precondition()``) then uses the records of the
last forward/backward pair and clears them. NNN and UBP keep their own records (NNN
reparametrizes each layer; UBP keeps preactivations and ``dL/df``).

*The training step.* ``output = model(x)``; ``optimizer.curvature_backward(output)`` if
the optimizer has that method; ``loss = loss_fn(output, target)``; ``zero_grad()``;
``loss.backward()``; ``step()``. :func:`sokit.train.train` runs exactly this.

*curvature_backward.* Only KFAC has it: on a refresh update it back-propagates its
probes (a target sampled from the model's predictive distribution for the Fisher, or
Rademacher / exact probes of the output Hessian for Gauss-Newton) so that the hooks see
``dl/da`` under the curvature's distribution rather than the data's; it leaves ``.grad``
untouched and returns at once on the other updates. KFAC (and UBP) are told the
training loss once, at construction (``loss="mse"`` or ``"cross_entropy"``, names of
:mod:`sokit.losses`); ``sokit.train`` refuses a run whose loss differs.

*Schedule.* ``amortization`` is an ``int`` N (refresh the statistics and inverses
every N updates, Algorithm 4) or an :class:`AdaptiveAmortization` (refresh a layer
when its input statistics drift). The optimizers :class:`ACP` and :class:`KFAC` are
fused by default: each layer's backward computes the direction in place of the weight
gradient (``fused=False`` rewrites ``.grad`` afterwards; the preconditioners, made to
serve another optimizer, are unfused by default). ``capturable=True`` (ACP, KFAC,
centered GD, NNN; a fixed amortization) keeps the plain updates replayable from a CUDA
graph: fixed buffers, a device-side update counter, no host synchronisation, refreshes run
eagerly when ``refresh_due()`` (:class:`sokit.graphs.CapturedStep`; untested on CUDA
hardware).

*torch.compile.* Under a compiled model the fused steps equal the eager ones; unfused,
if Dynamo replays a graph traced without the hooks (a model compiled before its
optimizer was built, or another model of the same class compiled first), the step raises
``HooksNotRunError`` (:mod:`.compile_guard`) instead of silently taking an SGD step
(``tests/test_compile.py``).

*Divergence.* A step never raises because the numbers went bad: non-finite or
overflowing statistics (NaN or inf inputs, or finite float32 inputs near 1e20 whose
second moments overflow) give NaN inverses and NaN directions, not exceptions, so the
loss turns non-finite and :func:`sokit.train.train` records the run as diverged at that
update, keeping its curves up to it. The refreshes never raise from the linear algebra
(an ``eigh`` that fails in float32 is redone in float64; one that fails in float64 too
gives NaN), KFAC's Fisher samples no class for NaN logits (their probes are NaN), and
the dampings are validated once, as the user's arguments at construction, not as the
values computed from the statistics at each refresh. Inputs are not checked (that would
cost a host synchronisation per step), so non-finite input is recorded as divergence:
NaN or inf input makes its own update's loss non-finite; finite input whose statistics
overflow makes the next update's loss non-finite when it falls on a refresh (between
refreshes it gets the previous inverses and a step as large as its gradient, as with
SGD). In a loop of your own, check ``torch.isfinite(loss)``
(``tests/test_divergence.py``).

*State.* ``state_dict()`` / ``load_state_dict()`` hold tensors and plain values only,
so checkpoints load with ``torch.load(weights_only=True)``.
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
