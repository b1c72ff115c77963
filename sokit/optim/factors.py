"""The damped inverse of a factor measured on a minibatch: dense, or through Woodbury.

ACP's covariance ``C = Hc^T Hc / R`` (eq 6.2.4) and KFAC's factors ``A = E[(h; 1)(h; 1)^T]``
and ``G = E[g g^T]`` (section 6.4.1) are means over the ``R`` rows of a refresh
minibatch's samples ``S``: ``F = S^T S / N`` (``N = R`` but for KFAC's several probe
batches), of rank at most ``R``. Its damped inverse (Tikhonov, section 3.1.3) is kept in
one of two forms, both linear operators on row vectors:

* :class:`DenseInverse`: the ``n x n`` matrix ``(F + d I)^-1``; applying it to ``k``
  vectors costs ``k n^2``;
* :class:`WoodburyInverse`: by the Woodbury identity
  ``(S^T S / N + d I)^-1 = (1/d) (I - S^T K S)`` with ``K = (d N I + S S^T)^-1``
  (``R x R``), it keeps ``V = W S`` with ``W^T W = K`` (so ``S^T K S = V^T V``);
  applying it costs ``2 k R n``.

:func:`factor_inverses` uses Woodbury where that is cheaper to apply, ``2 R < n``
(:func:`uses_woodbury`; its refresh, ``R^2 n + R^3`` instead of ``R n^2 + n^3``, is then
cheaper too), and inverts every small matrix of one refresh with
:func:`~sokit.optim.linalg.damped_inverses` (and ``damped_inverse_roots``), so that
module's robustness holds: non-finite statistics or dampings give NaN operators, never an
exception.

Both forms are fixed buffers: :meth:`FactorInverse.copy_` writes a new refresh into them
in place, so that a captured CUDA graph reading them sees every refresh.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .linalg import damped_inverse_roots, damped_inverses

__all__ = ["DenseInverse", "FactorInverse", "SampleFactor", "WoodburyInverse",
           "factor_inverses", "inverse_from_state", "uses_woodbury"]


def uses_woodbury(rows: int, n: int) -> bool:
    """Woodbury (``2 R n`` per vector) is cheaper to apply than the dense inverse (``n^2``)."""
    return 2 * rows < n


@dataclass
class SampleFactor:
    """A factor ``F = S^T S / count`` given by its samples ``S`` (rows), or by ``F`` itself
    (``matrix``) where the samples are too many to keep (KFAC's exact Gauss-Newton probes)."""

    samples: Tensor | None = None
    count: int | None = None
    matrix: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.samples is None) == (self.matrix is None):
            raise ValueError("a SampleFactor has either samples or a matrix")
        if self.samples is not None and self.count is None:
            self.count = self.samples.shape[0]

    @property
    def woodbury(self) -> bool:
        return self.samples is not None and uses_woodbury(*self.samples.shape)

    def dense(self) -> Tensor:
        """The ``n x n`` matrix ``F``."""
        if self.matrix is None:
            self.matrix = self.samples.T @ self.samples / self.count
        return self.matrix

    def mean_diagonal(self) -> Tensor:
        """``tr F / n`` (KFAC's pi damping split), without forming ``F``."""
        if self.samples is not None:
            return self.samples.pow(2).sum() / (self.count * self.samples.shape[1])
        return torch.diagonal(self.matrix).mean()


class FactorInverse(ABC):
    """A damped inverse ``M = (F + d I)^-1`` stored in fixed buffers (see the module); the
    dense and the Woodbury form implement its abstract methods."""

    kind = ""

    @abstractmethod
    def buffers(self) -> dict[str, Tensor]:
        """The tensors that hold ``M`` (what :meth:`copy_` overwrites)."""

    @property
    @abstractmethod
    def cost_per_row(self) -> int:
        """Multiply-adds of :meth:`right` (or :meth:`left`) per vector."""

    def right(self, X: Tensor, scratch: bool = False, scale: Tensor | float | None = None) -> Tensor:
        """``X M`` (times ``scale`` when given) for ``X`` of shape ``(k, n)``; ``scratch``:
        ``X`` is a temporary that may be overwritten with the result (saves an allocation)."""
        out = self.right_columns(X, [slice(None)])[0]
        return out if scale is None else out.mul_(scale)

    def right_centered(self, h: Tensor, mean: Tensor, scale: Tensor | float = 1.0) -> Tensor:
        """``(h - mean) M`` times ``scale``, ``h`` left intact: the centering and the scale
        are one pass, ``scale * h - scale * mean`` (ACP's ``(h - mean h) C^-1 / alpha``)."""
        return self._centered_times(h, mean, scale) @ self.matrix()

    @staticmethod
    def _centered_times(h: Tensor, mean: Tensor, scale: Tensor | float) -> Tensor:
        """``scale * (h - mean)`` in one pass over ``h`` (no tensor made from a float: a
        captured graph would keep the value of its capture)."""
        if isinstance(scale, Tensor):
            return torch.addcmul(mean * -scale, h, scale)
        return torch.add(mean * -scale, h, alpha=scale)

    @abstractmethod
    def right_columns(self, X: Tensor, cols: Sequence[slice]) -> list[Tensor]:
        """``(X M)[:, c]`` for each ``c`` of ``cols`` (each one contiguous)."""

    @abstractmethod
    def left(self, X: Tensor, scratch: bool = False) -> Tensor:
        """``M X`` for ``X`` of shape ``(n, k)`` (``M`` is symmetric); ``scratch`` as for
        :meth:`right`."""

    @abstractmethod
    def matrix(self) -> Tensor:
        """``M`` as an ``n x n`` matrix (formed on demand for Woodbury)."""

    @abstractmethod
    def factor(self) -> Tensor:
        """The undamped factor ``F`` (formed on demand for Woodbury)."""

    def layout(self) -> tuple:
        """What must match for :meth:`copy_`: the form and every buffer's shape and type."""
        return (self.kind, *((k, tuple(t.shape), t.dtype, t.device)
                             for k, t in sorted(self.buffers().items())))

    def copy_(self, other: FactorInverse) -> None:
        """Write ``other``'s values into these buffers (same :meth:`layout`)."""
        theirs = other.buffers()
        for key, t in self.buffers().items():
            t.copy_(theirs[key])

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: t.detach().clone() for k, t in self.buffers().items()}}


class DenseInverse(FactorInverse):
    """``(F + d I)^-1`` as an ``n x n`` matrix, with the factor ``F`` (None: not kept)."""

    kind = "dense"

    def __init__(self, inverse: Tensor, factor: Tensor | None = None) -> None:
        self.inverse, self._factor = inverse, factor

    def buffers(self) -> dict[str, Tensor]:
        return {"inverse": self.inverse,
                **({} if self._factor is None else {"factor": self._factor})}

    @property
    def cost_per_row(self) -> int:
        return self.inverse.shape[0] ** 2

    def right_columns(self, X: Tensor, cols: Sequence[slice]) -> list[Tensor]:
        return [X @ self.inverse[:, c] for c in cols]

    def left(self, X: Tensor, scratch: bool = False) -> Tensor:
        return self.inverse @ X

    def matrix(self) -> Tensor:
        return self.inverse

    def factor(self) -> Tensor:
        if self._factor is None:
            raise ValueError("this inverse was loaded from a state without its factor")
        return self._factor


class WoodburyInverse(FactorInverse):
    """``(S^T S / N + d I)^-1 = (1/d) (I - V^T V)``, ``V = W S`` with ``W^T W = (d N I + S S^T)^-1``
    (:func:`~sokit.optim.linalg.damped_inverse_root`), kept as ``V``, ``1/d``, and ``S`` and
    ``N`` for :meth:`factor`. (``V`` rather than ``K S`` with the explicit ``K``: where the
    samples are nearly dependent, ``K`` has entries near ``1 / (d N)`` whose float32
    rounding swamps ``I - S^T K S``.)"""

    kind = "woodbury"

    def __init__(self, samples: Tensor, root: Tensor, inv_d: Tensor, count: Tensor) -> None:
        self.samples, self.root, self.inv_d, self.count = samples, root, inv_d, count

    def buffers(self) -> dict[str, Tensor]:
        return {"samples": self.samples, "root": self.root, "inv_d": self.inv_d, "count": self.count}

    @property
    def cost_per_row(self) -> int:
        rows, n = self.root.shape
        return 2 * rows * n

    def right(self, X: Tensor, scratch: bool = False, scale: Tensor | float | None = None) -> Tensor:
        if not scratch:
            return super().right(X, scale=scale)
        # one pass for 1/d and the scale
        return X.addmm_(X @ self.root.T, self.root, alpha=-1).mul_(
            self.inv_d if scale is None else self.inv_d * scale)

    def right_centered(self, h: Tensor, mean: Tensor, scale: Tensor | float = 1.0) -> Tensor:
        X = self._centered_times(h, mean, self.inv_d * scale)  # 1/d folded in the same pass
        return X.addmm_(X @ self.root.T, self.root, alpha=-1)

    def right_columns(self, X: Tensor, cols: Sequence[slice]) -> list[Tensor]:
        P = X @ self.root.T
        return [torch.addmm(X[:, c], P, self.root[:, c], alpha=-1).mul_(self.inv_d) for c in cols]

    def left(self, X: Tensor, scratch: bool = False) -> Tensor:
        VX = self.root @ X
        out = X.addmm_(self.root.T, VX, alpha=-1) if scratch else torch.addmm(X, self.root.T, VX, alpha=-1)
        return out.mul_(self.inv_d)

    def matrix(self) -> Tensor:
        eye = torch.eye(self.root.shape[1], dtype=self.root.dtype, device=self.root.device)
        return (eye - self.root.T @ self.root) * self.inv_d

    def factor(self) -> Tensor:
        return self.samples.T @ self.samples / self.count


def inverse_from_state(state: dict[str, Any]) -> FactorInverse:
    """The inverse saved by :meth:`FactorInverse.state_dict`."""
    if state["kind"] == "dense":
        factor = state.get("factor")
        return DenseInverse(state["inverse"].clone(), None if factor is None else factor.clone())
    return WoodburyInverse(state["samples"].clone(), state["root"].clone(), state["inv_d"].clone(),
                           state["count"].clone())


def factor_inverses(factors: Sequence[SampleFactor],
                    dampings: Sequence[Tensor | float]) -> list[FactorInverse]:
    """``(F + d I)^-1`` of each factor, Woodbury where :func:`uses_woodbury`; the small
    matrices are inverted together (batched by shape) by :mod:`~sokit.optim.linalg`."""
    factors, dampings = list(factors), list(dampings)
    if len(factors) != len(dampings):
        raise ValueError(f"got {len(factors)} factors but {len(dampings)} dampings")
    wood = [k for k, f in enumerate(factors) if f.woodbury]
    dense = [k for k, f in enumerate(factors) if not f.woodbury]
    out: list[FactorInverse | None] = [None] * len(factors)
    roots = damped_inverse_roots([factors[k].samples @ factors[k].samples.T for k in wood],
                                 [dampings[k] * factors[k].count for k in wood])
    for k, W in zip(wood, roots):
        S = factors[k].samples
        inv_d = 1 / torch.as_tensor(dampings[k], dtype=S.dtype, device=S.device)
        count = torch.as_tensor(factors[k].count, dtype=S.dtype, device=S.device)
        out[k] = WoodburyInverse(S, W @ S, inv_d, count)
    invs = damped_inverses([factors[k].dense() for k in dense], [dampings[k] for k in dense])
    for k, inv in zip(dense, invs):
        out[k] = DenseInverse(inv, factors[k].dense())
    return out  # type: ignore[return-value]
