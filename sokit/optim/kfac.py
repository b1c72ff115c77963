"""KFAC (Martens & Grosse 2015, thesis section 6.4.1): Gauss-Newton and Fisher variants.

For a layer ``a = W h + b`` with ``theta = vec([W b])`` (column-major), the block of the
Gauss-Newton matrix / Fisher (eq 6.2.2) is a mean of Kronecker products; KFAC replaces
it by the product of the means

    A = E[(h; 1)(h; 1)^T]          ((n_in + 1) x (n_in + 1), forward statistics)
    G = E[J_a^T D J_a]             (n_out x n_out, backward statistics)

and steps along ``(A kron G)^-1 grad = vec(G^-1 [dW db] A^-1)``. ``G`` is estimated by
back-propagating per-example vectors ``v_i`` with ``E[v_i v_i^T] = D_i`` from the
network output (``g_i = J_a^T v_i``, ``G = (1/B) sum_i g_i g_i^T``):

* ``curvature="fisher"`` (natural gradient): ``v_i`` is the loss gradient at a target
  sampled from the model's predictive distribution, ``y ~ N(f, I/2)`` for ``"mse"``
  (``||f - y||^2 = -log N(y; f, I/2) + const``, so ``D = 2 I``, the GN of that loss) and
  ``y ~ softmax(f)`` for ``"cross_entropy"`` (``D = diag(p) - p p^T``).
* ``curvature="gauss_newton"``: for ``"mse"``, ``D = 2 I``: ``v = sqrt(2) r`` with ``r``
  Rademacher (``gn_probes="rademacher"``, one backward pass, unbiased) or the columns of
  ``sqrt(2) I`` (``gn_probes="exact"``, one pass per output: exact, for small outputs);
  for ``"cross_entropy"``, the thesis's GN with the softmax probabilities as the network
  output (section 3.4, eq 3.4.1): ``D = e_t e_t^T / p_t^2`` for the true class ``t``,
  so ``J_a^T D J_a`` is the outer product of the TRUE-label gradient ``nabla_{a_i} l``,
  which the main backward already gives: no extra pass.

For ``"mse"`` the two variants have the same ``G`` in expectation (the thesis: the
Fisher and GN coincide for the quadratic loss); they differ only in the probes.

Damping ``gamma`` (Tikhonov, section 3.1.3) is split over the factors:
``damping="pi"`` (default, Martens & Grosse section 6.3): ``A + pi sqrt(gamma) I`` and
``G + sqrt(gamma)/pi I`` with ``pi = sqrt((tr A / dim A) / (tr G / dim G))`` (traces
floored at 1e-12 so a dead layer stays finite); ``damping="plain"``: ``A + sqrt(gamma) I``
and ``G + sqrt(gamma) I``. Factors are estimated from the current minibatch and
inverted (batched Cholesky) every ``amortization`` updates, as in the thesis's
experiments (section 6.5.2); there is no running average. Both factors are means over
the examples (per-example gradients, whatever the loss's ``reduction``), so a factor of
``n`` rows measured on ``R < n / 2`` samples (the ``R = B`` rows ``[h 1]`` for ``A``; for
``G`` the ``B`` back-propagated probes, or ``B`` true-label gradients) is inverted
through the Woodbury identity from those samples (:mod:`.factors`): ``A`` and ``G`` then
have rank at most ``R``, and applying the inverse costs ``2 R n`` per vector instead of
``n^2``. KFAC's exact Gauss-Newton probes (one batch per output) are too many samples:
that ``G`` stays dense.

Association: ``G^-1`` is applied either to the ``B`` rows of ``g`` or to the ``m``
columns of the gradient (``m = n_in + 1``), ``A^-1`` to the ``B`` rows ``[h 1]`` or to the
``n_out`` rows of the gradient, whichever is cheaper (:func:`kfac_direction`); in fused
mode that is ``g G^-1`` when ``B < m`` and ``[h 1] A^-1`` when ``B < n_out``.

``fused=True`` (the default of :class:`KFAC`; :class:`KFACPreconditioner`, whose contract
is to rewrite ``.grad``, defaults to ``False``): the layers' backward computes the
direction in place of their weight gradient (see
:class:`~sokit.optim.base.LayerPreconditioner`); ``fused=False`` rewrites ``.grad``
after the backward; same step up to rounding. ``capturable=True``: the
plain updates can be replayed from a CUDA graph (fixed amortization; see
:class:`~sokit.optim.base.LayerPreconditioner`).

Extra backward pass: the train loop calls :meth:`KFACPreconditioner.curvature_backward`
``(output, loss)`` after the forward pass and before ``loss.backward()``; on refresh
steps it back-propagates the probes with ``torch.autograd.grad`` (``.grad`` untouched).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .amortization import AdaptiveAmortization, FixedAmortization
from .base import LayerPreconditioner, PreconditionedSGD
from .factors import (
    DenseInverse,
    FactorInverse,
    SampleFactor,
    factor_inverses,
    inverse_from_state,
    uses_woodbury,
)
from .hooks import LayerRecord

__all__ = ["KFACPreconditioner", "KFAC", "input_factor", "factor_dampings", "kfac_direction"]

LOSSES = ("mse", "cross_entropy")
CURVATURES = ("fisher", "gauss_newton")


def input_factor(h: Tensor, bias: bool = True) -> SampleFactor:
    """``A = E[(h; 1)(h; 1)^T]`` (or ``E[h h^T]`` for a layer without bias), by its samples."""
    if bias:
        h = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)
    return SampleFactor(h)


def factor_dampings(mean_diag_a: Tensor, mean_diag_g: Tensor, gamma: float,
                    damping: str) -> tuple[Tensor, Tensor]:
    """The damping added to ``A`` and to ``G`` for a total Tikhonov ``gamma``, from their
    mean diagonals ``tr A / dim A`` and ``tr G / dim G`` (the pi split)."""
    root = math.sqrt(gamma)
    if damping == "plain":
        one = torch.ones((), dtype=mean_diag_a.dtype, device=mean_diag_a.device)
        return root * one, root * one
    pi = torch.sqrt(mean_diag_a.clamp_min(1e-12) / mean_diag_g.clamp_min(1e-12))
    return pi * root, root / pi


def kfac_direction(gW: Tensor | None, gb: Tensor | None, h: Tensor, g: Tensor,
                   inv_a: FactorInverse, inv_g: FactorInverse,
                   bias: bool) -> tuple[Tensor, Tensor | None]:
    """``G^-1 [gW gb] A^-1``, i.e. ``(A kron G)^-1 vec([gW gb])``, as ``(dW, db)``.

    ``G^-1`` (cost ``cG`` per vector) is applied to the ``B`` rows of ``g`` or to the ``m``
    columns of ``X = [gW gb] = g^T [h 1]``, ``A^-1`` (``cA``) to the ``B`` rows ``[h 1]`` or
    to the ``n_out`` rows of ``X``: the four associations cost ``(B or m) cG + (B or n_out)
    cA``, plus ``B n_out m`` for the product over the minibatch, which only the one
    applying both factors to a given ``X`` avoids. ``gW=None`` (fused mode): ``X`` is not
    formed, every association pays that product. ``bias=False``: a layer without bias
    (``A`` over ``h`` alone, ``db`` None).
    """
    B, n_in = h.shape
    n_out, m = g.shape[1], n_in + bias
    cA, cG, form = inv_a.cost_per_row, inv_g.cost_per_row, B * n_out * m
    costs = {(False, False): m * cG + n_out * cA + (form if gW is None else 0),
             (True, False): B * cG + n_out * cA + form,
             (False, True): m * cG + B * cA + form,
             (True, True): B * cG + B * cA + form}
    g_side, h_side = min(costs, key=costs.get)
    h1 = torch.cat([h, torch.ones_like(h[:, :1])], dim=1) if bias else h
    L = inv_g.right(g) if g_side else g
    cols = [slice(0, n_in), slice(n_in, m)] if bias else [slice(0, n_in)]
    if h_side:
        Rh = inv_a.right(h1, scratch=bias)  # [h 1] is a temporary, h is not
        parts = [L.T @ Rh[:, c] for c in cols]
        if not g_side:
            parts = [inv_g.left(p, scratch=True) for p in parts]
    else:
        fresh = g_side or gW is None or bias  # X is not the caller's gW
        if g_side or gW is None:
            X = L.T @ h1
        else:
            X = torch.cat([gW, gb[:, None]], dim=1) if bias else gW
        if not g_side:
            X = inv_g.left(X, scratch=fresh)
        parts = inv_a.right_columns(X, cols)
    return parts[0], (parts[1][:, 0] if bias else None)


class KFACPreconditioner(LayerPreconditioner):
    """KFAC as a preconditioner: :meth:`precondition` rewrites ``.grad`` in place.

    ``KFACPreconditioner(model, loss, curvature="fisher", damping=1e-3,
    damping_split="pi", amortization=100, gn_probes="rademacher", seed=0, fused=False,
    capturable=False)``. ``loss`` is the training loss, given once here ("mse" or
    "cross_entropy", see :mod:`sokit.losses`): it decides the probes of
    :meth:`curvature_backward`. :attr:`inverse_a` and :attr:`inverse_g` hold each
    layer's damped factor inverses (:mod:`.factors`); :attr:`A`, :attr:`G`,
    :attr:`inv_a`, :attr:`inv_g` show the undamped factors and the inverses as matrices.
    """

    def __init__(self, model: nn.Module, loss: str, curvature: str = "fisher",
                 damping: float = 1e-3, damping_split: str = "pi",
                 amortization: int | FixedAmortization | AdaptiveAmortization = 100,
                 gn_probes: str = "rademacher", seed: int = 0,
                 skip_unsupported: bool = False, reduction: str = "mean",
                 fused: bool = False, capturable: bool = False) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if not damping > 0:
            raise ValueError(f"damping must be positive (keeps the factors invertible), "
                             f"got {damping!r}")
        if damping_split not in ("pi", "plain"):
            raise ValueError(f"damping_split must be 'pi' or 'plain', got {damping_split!r}")
        if gn_probes not in ("rademacher", "exact"):
            raise ValueError(f"gn_probes must be 'rademacher' or 'exact', got {gn_probes!r}")
        super().__init__(model, amortization, skip_unsupported, reduction, fused, capturable)
        self.loss, self.curvature, self.damping = loss, curvature, damping
        self.damping_split, self.gn_probes, self.seed = damping_split, gn_probes, seed
        self.generator: torch.Generator | None = None
        self.inverse_a: dict[int, FactorInverse] = {}  # damped inverses of the last refresh
        self.inverse_g: dict[int, FactorInverse] = {}
        self._plan: list[int] | None = None
        self._probed = False
        self._g_factors: dict[int, SampleFactor] = {}
        self._fresh: set[int] = set()

    @property
    def A(self) -> dict[int, Tensor]:
        """Each layer's undamped ``A`` of the last refresh."""
        return {i: inv.factor() for i, inv in self.inverse_a.items()}

    @property
    def G(self) -> dict[int, Tensor]:
        """Each layer's undamped ``G`` of the last refresh."""
        return {i: inv.factor() for i, inv in self.inverse_g.items()}

    @property
    def inv_a(self) -> dict[int, Tensor]:
        """Each layer's damped ``A^-1`` as a matrix."""
        return {i: inv.matrix() for i, inv in self.inverse_a.items()}

    @property
    def inv_g(self) -> dict[int, Tensor]:
        """Each layer's damped ``G^-1`` as a matrix."""
        return {i: inv.matrix() for i, inv in self.inverse_g.items()}

    @property
    def uses_main_gradient(self) -> bool:
        """True when ``G`` comes from the true-label gradient (GN, cross-entropy)."""
        return self.curvature == "gauss_newton" and self.loss == "cross_entropy"

    def plan(self) -> list[int]:
        """Indices of the layers refreshed at this update (asked once per update)."""
        if self._plan is None:
            self.hooks.check_one_forward()
            self._plan = [i for i, r in enumerate(self.layers)
                          if r.h is not None and self.schedule.due(self.n_updates, i, r.h)]
        return self._plan

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return self.generator

    def probes(self, output: Tensor) -> list[Tensor]:
        """Vectors ``v`` (one or more batches) with ``E[v v^T] = D`` to back-propagate."""
        f = output.detach()
        gen = self._generator(f.device)
        if self.loss == "cross_entropy":
            if self.curvature == "gauss_newton":
                return []
            p = torch.softmax(f, dim=1)
            # non-finite logits (a diverged run): sample those rows from a uniform
            # placeholder; their probe p - e_y stays NaN, so is the factor G, so is the step
            ok = torch.isfinite(p).all(1, keepdim=True)
            y = torch.multinomial(torch.where(ok, p, 1.0), 1, generator=gen).squeeze(1)
            return [p - nn.functional.one_hot(y, p.shape[1]).to(p.dtype)]
        if self.curvature == "gauss_newton" and self.gn_probes == "exact":
            eye = math.sqrt(2.0) * torch.eye(f.shape[1], dtype=f.dtype, device=f.device)
            return [eye[c].expand_as(f) for c in range(f.shape[1])]
        if self.curvature == "gauss_newton":
            r = torch.randint(0, 2, f.shape, generator=gen, device=f.device).to(f.dtype)
            return [math.sqrt(2.0) * (2 * r - 1)]
        eps = torch.randn(f.shape, generator=gen, dtype=f.dtype, device=f.device)
        return [math.sqrt(2.0) * eps]  # 2 (f - y) with y = f - eps / sqrt(2) ~ N(f, I/2)

    def curvature_backward(self, output: Tensor) -> None:
        """Back-propagate the probes on refresh updates; leaves ``.grad`` untouched.

        Call it after the forward pass and before ``loss.backward()``. Each layer's ``G``
        keeps the probes' gradients as samples where it will be inverted by Woodbury,
        else their sum of outer products."""
        if output.dim() != 2:
            raise ValueError(f"KFAC expects a (batch, outputs) network output, got shape "
                             f"{tuple(output.shape)}")
        due = self.plan()
        if not due or self.uses_main_gradient:
            return
        weights = [self.layers[i].module.weight for i in due]
        probes = self.probes(output)
        B = output.shape[0]
        keep = {i: uses_woodbury(len(probes) * B, self.layers[i].module.out_features)
                for i in due}
        seen: dict[int, list[Tensor]] = {i: [] for i in due}
        sums: dict[int, Tensor] = {}
        with self.hooks.curvature_pass():
            for v in probes:
                torch.autograd.grad(output, weights, grad_outputs=v, retain_graph=True)
                for i in due:
                    gc = self.layers[i].g_curvature
                    if keep[i]:
                        seen[i].append(gc)
                    else:
                        sums[i] = sums.get(i, 0) + gc.T @ gc
        self._g_factors = {i: SampleFactor(torch.cat(seen[i]), count=B) if keep[i]
                           else SampleFactor(matrix=sums[i] / B) for i in due}
        self._probed = True

    def backward_factor(self, i: int, rec: LayerRecord) -> SampleFactor:
        """``G`` of layer ``i`` at this refresh update."""
        if self.uses_main_gradient:
            return SampleFactor(self.hooks.per_example(rec))
        if not self._probed:
            raise RuntimeError(
                "KFAC needs its curvature pass on refresh updates: call "
                "curvature_backward(output) after the forward pass and before "
                "loss.backward() (sokit.train.train does this)"
            )
        return self._g_factors[i]

    @torch.no_grad()
    def refresh(self, due: list[int]) -> None:
        """Recompute the damped factor inverses of the given layers (one batched inversion)."""
        if not due:
            return
        As, Gs, dA, dG = [], [], [], []
        for i in due:
            rec = self.layers[i]
            A = input_factor(rec.h, rec.module.bias is not None)
            G = self.backward_factor(i, rec)
            a, g = factor_dampings(A.mean_diagonal(), G.mean_diagonal(), self.damping,
                                   self.damping_split)
            As.append(A), Gs.append(G), dA.append(a), dG.append(g)
        invs = factor_inverses(As + Gs, dA + dG)
        for k, i in enumerate(due):
            self.keep(self.inverse_a, i, invs[k])
            self.keep(self.inverse_g, i, invs[len(due) + k])
            self._fresh.add(i)
            self.schedule.refreshed(self.n_updates, i, self.layers[i].h)

    def fused_direction(self, i: int, h: Tensor, g: Tensor) -> tuple[Tensor, Tensor | None]:
        """The direction of layer ``i`` from inside its backward (``fused=True``)."""
        if self.hooks.in_curvature_pass:
            return g.T @ h, g.sum(0)  # the probes' pass only needs dl/da: plain gradient
        if i in self.plan() and i not in self._fresh:
            self.refresh([i])
        self._fused_done.add(i)
        return kfac_direction(None, None, h, g, self.inverse_a[i], self.inverse_g[i],
                              self.layers[i].module.bias is not None)

    @torch.no_grad()
    def precondition(self) -> None:
        active = self.active()
        if self.fused:
            self.fused_finish(active)
            return
        self.refresh(self.plan())
        for i, rec in active:
            gW, gb = self.grads(rec)
            dW, db = kfac_direction(gW, gb, rec.h, rec.g, self.inverse_a[i], self.inverse_g[i],
                                    rec.module.bias is not None)
            self.write(rec, dW, gb if db is None else db)
        self.finish()

    def finish(self) -> None:
        self._plan, self._probed, self._g_factors = None, False, {}
        self._fresh = set()
        super().finish()

    def _state(self) -> dict[str, Any]:
        return {"loss": self.loss, "curvature": self.curvature, "damping": self.damping,
                "damping_split": self.damping_split, "gn_probes": self.gn_probes,
                "seed": self.seed,
                "inverse_a": {i: inv.state_dict() for i, inv in self.inverse_a.items()},
                "inverse_g": {i: inv.state_dict() for i, inv in self.inverse_g.items()},
                "generator": None if self.generator is None else self.generator.get_state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        for key in ("loss", "curvature", "damping", "damping_split", "gn_probes", "seed"):
            setattr(self, key, state[key])
        if "inverse_a" in state:
            self.inverse_a = {i: inverse_from_state(s) for i, s in state["inverse_a"].items()}
            self.inverse_g = {i: inverse_from_state(s) for i, s in state["inverse_g"].items()}
        else:  # saved before the inverses had a form: dense "A", "G", "inv_a", "inv_g"
            self.inverse_a = {i: DenseInverse(inv.clone(), state["A"][i].clone())
                              for i, inv in state["inv_a"].items()}
            self.inverse_g = {i: DenseInverse(inv.clone(), state["G"][i].clone())
                              for i, inv in state["inv_g"].items()}
        if state["generator"] is not None:
            buffers = [t for inv in self.inverse_a.values() for t in inv.buffers().values()]
            device = buffers[0].device if buffers else "cpu"
            self.generator = torch.Generator(device=device)
            self.generator.set_state(state["generator"])


class KFAC(PreconditionedSGD):
    """KFAC with a learning rate: ``KFAC(model, lr, loss, curvature="fisher", ...)``.

    Takes ``theta <- theta - lr (A kron G + damping)^-1 grad`` (factored) with the
    arguments of :class:`KFACPreconditioner`, fused by default; a ``torch.optim.Optimizer`` (see
    :class:`~sokit.optim.base.PreconditionedSGD`). ``loss`` has no default: it must name
    the loss the model is trained with, since it decides the curvature.

    ``loss="mse"`` is the thesis's squared error, :func:`sokit.losses.mse_sum`:
    ``||f(x) - y||^2`` SUMMED over the ``n_out`` outputs and averaged over the examples;
    the curvature KFAC estimates (``D = 2 I``) is that loss's. ``nn.MSELoss()``
    (``reduction="mean"``) averages over the outputs too, so it is ``mse_sum / n_out``:
    training with it gives the gradient ``1/n_out`` of sokit's while the curvature
    (from :meth:`curvature_backward`'s probes) stays the same, hence the step of
    ``KFAC(model, lr, "mse")`` on sokit's loss with the learning rate ``lr / n_out``,
    damping included. Pass ``lr * n_out`` (or train with :func:`sokit.losses.mse_sum`)
    to get the thesis's step; ``nn.MSELoss(reduction="sum")`` is ``B`` times sokit's
    loss for a minibatch of ``B``.

    With ``step(closure)``, the closure must call ``curvature_backward(output)``
    between the forward pass and ``loss.backward()``, as the training step does.
    """

    def __init__(self, model: nn.Module, lr: float, loss: str,
                 curvature: str = "fisher", damping: float = 1e-3, damping_split: str = "pi",
                 amortization: int | FixedAmortization | AdaptiveAmortization = 100,
                 gn_probes: str = "rademacher", seed: int = 0,
                 skip_unsupported: bool = False, reduction: str = "mean",
                 fused: bool = True, capturable: bool = False) -> None:
        super().__init__(KFACPreconditioner(model, loss, curvature, damping, damping_split,
                                            amortization, gn_probes, seed, skip_unsupported,
                                            reduction, fused, capturable), lr)
