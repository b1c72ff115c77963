"""Symbolic helpers (sympy) for the derivations of chapter 3 and appendices A and B.

Conventions follow the thesis (T. George, 2017):

* ``vec`` stacks the columns of a matrix (column-major), so that
  ``vec(A X B) = (B^T kron A) vec(X)`` (section 6.2).
* ``f`` is the network output (a column vector), ``y`` the target.
* Losses (section 1.5, appendix A): quadratic error ``||f - y||^2``, binary
  cross-entropy on sigmoid outputs, multiclass cross-entropy on probability outputs
  (and on logits).
* The Gauss-Newton middle term is the Hessian of the loss with respect to ``f``
  (eq 3.1.4, Table 3.I); the Fisher middle term ``D`` is
  ``E_{y ~ p(y|f)}[grad_f log p grad_f log p^T]`` (section 3.2.3, Table 3.II,
  appendix B).

Every derivation in the book ends in :func:`check_equal` (or, for a thesis
erratum, :func:`check_differs`), which raise ``AssertionError`` with both sides and
their simplified difference.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Literal

import numpy as np
import sympy as sp
import torch

__all__ = [
    "sym_vector",
    "sym_matrix",
    "sym_symmetric",
    "vec",
    "unvec",
    "kron",
    "quadratic_loss",
    "bce_loss",
    "cross_entropy_loss",
    "cross_entropy_logits_loss",
    "softmax",
    "gradient",
    "hessian",
    "gn_middle",
    "log_likelihood",
    "fisher_middle",
    "LOSSES",
    "check_equal",
    "check_differs",
]

MatrixLike = Any  # sympy.Matrix, numpy.ndarray or torch.Tensor
Distribution = Literal["gaussian", "bernoulli", "categorical", "categorical_logits"]


# ---------------------------------------------------------------------------
# symbols


def sym_vector(name: str, n: int, **assumptions: bool) -> sp.Matrix:
    """Column vector ``(name_0, ..., name_{n-1})^T`` of sympy symbols.

    Keyword assumptions (``positive=True``, ...) are passed to ``sympy.Symbol``.
    """
    _check_size(n, "n")
    return sp.Matrix([sp.Symbol(f"{name}_{i}", **assumptions) for i in range(n)])


def sym_matrix(name: str, m: int, n: int, **assumptions: bool) -> sp.Matrix:
    """``m x n`` matrix of sympy symbols ``name_{ij}``."""
    _check_size(m, "m")
    _check_size(n, "n")
    return sp.Matrix(m, n, lambda i, j: sp.Symbol(f"{name}_{i}{j}", **assumptions))


def sym_symmetric(name: str, n: int, **assumptions: bool) -> sp.Matrix:
    """Symmetric ``n x n`` matrix of sympy symbols (``name_{ij}`` with ``i <= j``)."""
    _check_size(n, "n")
    return sp.Matrix(
        n, n, lambda i, j: sp.Symbol(f"{name}_{min(i, j)}{max(i, j)}", **assumptions)
    )


def _check_size(n: int, what: str) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{what} must be a positive integer, got {n!r}")


# ---------------------------------------------------------------------------
# vec and Kronecker (section 6.2)


def vec(M: MatrixLike) -> MatrixLike:
    """Stack the columns of ``M`` into one column (thesis section 6.2).

    Works on sympy matrices (returns an ``mn x 1`` Matrix), numpy arrays and torch
    tensors (return a 1-d array/tensor of length ``mn``).
    """
    if isinstance(M, sp.MatrixBase):
        return sp.Matrix.vstack(*[M[:, j] for j in range(M.cols)])
    if isinstance(M, torch.Tensor):
        _check_2d(M)
        return M.T.reshape(-1)
    if isinstance(M, np.ndarray):
        _check_2d(M)
        return M.reshape(-1, order="F")
    raise TypeError(
        f"vec expects a sympy Matrix, numpy array or torch tensor, got {type(M).__name__}"
    )


def unvec(v: MatrixLike, shape: tuple[int, int]) -> MatrixLike:
    """Inverse of :func:`vec`: refill an ``m x n`` matrix column by column."""
    m, n = shape
    size = v.shape[0] * (v.shape[1] if len(v.shape) == 2 else 1)
    if size != m * n:
        raise ValueError(
            f"unvec: a vector of {size} entries cannot fill shape {shape}; "
            "pass the shape of the matrix that vec() flattened"
        )
    if isinstance(v, sp.MatrixBase):
        return sp.Matrix(m, n, lambda i, j: v[j * m + i])
    if isinstance(v, torch.Tensor):
        return v.reshape(n, m).T
    if isinstance(v, np.ndarray):
        return v.reshape((m, n), order="F")
    raise TypeError(
        f"unvec expects a sympy Matrix, numpy array or torch tensor, got {type(v).__name__}"
    )


def kron(A: MatrixLike, B: MatrixLike) -> MatrixLike:
    """Kronecker product ``A kron B`` (block ``(i, j)`` is ``a_ij B``, section 6.2)."""
    if isinstance(A, sp.MatrixBase) and isinstance(B, sp.MatrixBase):
        return sp.Matrix.vstack(
            *[sp.Matrix.hstack(*[A[i, j] * B for j in range(A.cols)]) for i in range(A.rows)]
        )
    if isinstance(A, torch.Tensor) and isinstance(B, torch.Tensor):
        # Not torch.kron: in torch 2.13 it raises "view size is not compatible" for
        # some inputs with size-1 dimensions (found by tests/test_symbolic.py).
        _check_2d(A)
        _check_2d(B)
        (m, n), (p, q) = A.shape, B.shape
        return (A[:, None, :, None] * B[None, :, None, :]).reshape(m * p, n * q)
    if isinstance(A, np.ndarray) and isinstance(B, np.ndarray):
        return np.kron(A, B)
    raise TypeError(
        "kron expects two sympy Matrices, two numpy arrays or two torch tensors, got "
        f"{type(A).__name__} and {type(B).__name__}"
    )


def _check_2d(M: np.ndarray | torch.Tensor) -> None:
    if M.ndim != 2:
        raise ValueError(f"expected a matrix (2 dimensions), got shape {tuple(M.shape)}")


# ---------------------------------------------------------------------------
# losses of the network output (section 1.5, Table 3.I, appendix A)


def _column(x: sp.Matrix | list, name: str) -> sp.Matrix:
    x = sp.Matrix(x)
    if x.cols != 1:
        raise ValueError(f"{name} must be a column vector, got shape {x.shape}")
    return x


def _same_shape(f: sp.Matrix, y: sp.Matrix) -> None:
    if f.shape != y.shape:
        raise ValueError(
            f"output f has shape {f.shape} but target y has shape {y.shape}; "
            "they must match"
        )


def quadratic_loss(f: sp.Matrix, y: sp.Matrix) -> sp.Expr:
    """Quadratic error ``||f - y||_2^2`` (appendix A.1)."""
    f, y = _column(f, "f"), _column(y, "y")
    _same_shape(f, y)
    return ((f - y).T * (f - y))[0, 0]


def bce_loss(f: sp.Matrix, y: sp.Matrix) -> sp.Expr:
    """Binary cross-entropy on sigmoid outputs, summed over outputs (appendix A.2):
    ``-sum_i y_i log f_i + (1 - y_i) log(1 - f_i)``."""
    f, y = _column(f, "f"), _column(y, "y")
    _same_shape(f, y)
    return -sum(
        (y[i] * sp.log(f[i]) + (1 - y[i]) * sp.log(1 - f[i]) for i in range(f.rows)),
        sp.S.Zero,
    )


def cross_entropy_loss(f: sp.Matrix, y: sp.Matrix) -> sp.Expr:
    """Multiclass cross-entropy on probability outputs ``-y^T log f`` (appendix A.3)."""
    f, y = _column(f, "f"), _column(y, "y")
    _same_shape(f, y)
    return -sum((y[i] * sp.log(f[i]) for i in range(f.rows)), sp.S.Zero)


def softmax(z: sp.Matrix) -> sp.Matrix:
    """Softmax of a column of logits."""
    z = _column(z, "z")
    e = z.applyfunc(sp.exp)
    return e / sum(e, sp.S.Zero)


def cross_entropy_logits_loss(z: sp.Matrix, y: sp.Matrix) -> sp.Expr:
    """Cross-entropy ``-y^T log softmax(z)`` as a function of the logits ``z``.

    Written as ``log sum_k exp z_k - y^T z``, which equals ``-y^T log softmax(z)`` for
    a target whose entries sum to one (one-hot or a probability vector).
    """
    z, y = _column(z, "z"), _column(y, "y")
    _same_shape(z, y)
    return sp.log(sum(z.applyfunc(sp.exp), sp.S.Zero)) - (y.T * z)[0, 0]


LOSSES = {
    "quadratic": quadratic_loss,
    "bce": bce_loss,
    "cross_entropy": cross_entropy_loss,
    "cross_entropy_logits": cross_entropy_logits_loss,
}


def gradient(expr: sp.Expr, wrt: sp.Matrix) -> sp.Matrix:
    """Column gradient ``d expr / d wrt`` (the transpose of the thesis's row
    derivative ``dl/df``)."""
    wrt = _column(wrt, "wrt")
    return sp.Matrix([sp.diff(expr, w) for w in wrt])


def hessian(expr: sp.Expr, wrt: sp.Matrix) -> sp.Matrix:
    """Hessian ``d^2 expr / d wrt^2``."""
    wrt = _column(wrt, "wrt")
    return sp.hessian(expr, list(wrt))


def gn_middle(loss: str, f: sp.Matrix, y: sp.Matrix) -> sp.Matrix:
    """Gauss-Newton middle term ``d^2 l / d f^2`` (eq 3.1.4, Table 3.I) for a loss
    named in :data:`LOSSES`, simplified entrywise."""
    return hessian(_loss(loss)(f, y), f).applyfunc(sp.simplify)


def _loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


# ---------------------------------------------------------------------------
# Fisher middle term (section 3.2.3, Table 3.II, appendix B)


def log_likelihood(
    dist: Distribution, f: sp.Matrix, y: sp.Matrix, sigma2: sp.Expr | None = None
) -> sp.Expr:
    """``log p(y | f)`` of the output distribution the network parametrizes (appendix B).

    * ``gaussian``: mean ``f``, covariance ``sigma2 I`` (appendix B.1);
    * ``bernoulli``: independent outputs with success probabilities ``f`` (B.2);
    * ``categorical``: class probabilities ``f``, one-hot ``y`` (B.3);
    * ``categorical_logits``: class probabilities ``softmax(f)``, one-hot ``y``.
    """
    f, y = _column(f, "f"), _column(y, "y")
    _same_shape(f, y)
    if dist == "gaussian":
        if sigma2 is None:
            raise ValueError("the gaussian log-likelihood needs sigma2 (the variance)")
        n = f.rows
        r = y - f
        return -(r.T * r)[0, 0] / (2 * sigma2) - sp.Rational(n, 2) * sp.log(2 * sp.pi * sigma2)
    if dist == "bernoulli":
        return -bce_loss(f, y)
    if dist == "categorical":
        return -cross_entropy_loss(f, y)
    if dist == "categorical_logits":
        return -cross_entropy_logits_loss(f, y)
    raise ValueError(
        f"unknown distribution {dist!r}; choose gaussian, bernoulli, categorical "
        "or categorical_logits"
    )


def _support(dist: Distribution, f: sp.Matrix) -> list[tuple[sp.Matrix, sp.Expr]]:
    """Every outcome ``y`` with its probability, for the discrete distributions."""
    n = f.rows
    if dist == "bernoulli":
        outcomes = []
        for bits in itertools.product((0, 1), repeat=n):
            prob = sp.Mul(*[f[i] if b else 1 - f[i] for i, b in enumerate(bits)])
            outcomes.append((sp.Matrix(bits), prob))
        return outcomes
    if dist in ("categorical", "categorical_logits"):
        p = f if dist == "categorical" else softmax(f)
        return [(sp.eye(n)[:, k], p[k]) for k in range(n)]
    raise ValueError(f"{dist!r} has no finite support")


def _gaussian_expectation(expr: sp.Expr, y: sp.Matrix, f: sp.Matrix, sigma2: sp.Expr) -> sp.Expr:
    """``E[expr]`` for ``y ~ N(f, sigma2 I)`` and ``expr`` polynomial in ``y``, from the
    standard normal moments ``E[z^k] = (k-1)!!`` (k even), 0 (k odd)."""
    z = sp.symbols(f"_z0:{y.rows}")
    sigma = sp.sqrt(sigma2)
    poly = sp.Poly(
        sp.expand(expr.subs({y[i]: f[i] + sigma * z[i] for i in range(y.rows)})), *z
    )
    total = sp.S.Zero
    for powers, coeff in poly.terms():
        moment = sp.Mul(*[0 if k % 2 else sp.factorial2(k - 1) for k in powers])
        total += coeff * moment
    return sp.simplify(total)


def fisher_middle(
    dist: Distribution, f: sp.Matrix, sigma2: sp.Expr | None = None
) -> sp.Matrix:
    """Fisher middle term ``D(f) = E_{y ~ p(y|f)}[s s^T]`` with the score
    ``s = d log p(y|f) / d f`` (Table 3.II, appendix B).

    The expectation is computed, not looked up: exact enumeration of the outcomes for
    the Bernoulli and categorical distributions, Gaussian moments for ``gaussian``.
    Then ``F = E_x[J^T D J]`` with ``J = df/dtheta``.
    """
    f = _column(f, "f")
    y = sym_vector("y", f.rows)
    s = gradient(log_likelihood(dist, f, y, sigma2), f)
    outer = s * s.T
    if dist == "gaussian":
        D = outer.applyfunc(lambda e: _gaussian_expectation(e, y, f, sigma2))
    else:
        D = sp.zeros(f.rows, f.rows)
        for outcome, prob in _support(dist, f):
            D += prob * outer.subs({y[i]: outcome[i] for i in range(f.rows)})
    return D.applyfunc(sp.simplify)


# ---------------------------------------------------------------------------
# checks


def _as_sympy(x: Any) -> sp.Basic:
    if isinstance(x, (sp.MatrixBase, sp.Basic)):
        return x
    if isinstance(x, (list, tuple, np.ndarray)):
        return sp.Matrix(x)
    return sp.sympify(x)


def _difference(lhs: Any, rhs: Any, msg: str) -> sp.Basic:
    lhs, rhs = _as_sympy(lhs), _as_sympy(rhs)
    lhs_is_matrix = isinstance(lhs, sp.MatrixBase)
    if lhs_is_matrix != isinstance(rhs, sp.MatrixBase):
        raise AssertionError(
            f"{msg}\n  cannot compare a matrix with a scalar:\n  lhs = {lhs}\n  rhs = {rhs}"
        )
    if lhs_is_matrix:
        if lhs.shape != rhs.shape:
            raise AssertionError(
                f"{msg}\n  shapes differ: lhs is {lhs.shape}, rhs is {rhs.shape}"
                f"\n  lhs = {lhs}\n  rhs = {rhs}"
            )
        return (lhs - rhs).applyfunc(_simplify_zero)
    return _simplify_zero(lhs - rhs)


def _numerically_nonzero(e: sp.Expr) -> bool:
    """True when ``e`` is clearly non-zero at a point of its symbols' domain.

    Symbols are set to fixed pseudo-random values in (0.1, 0.9), negated for negative
    symbols and integers for integer symbols, so the point respects their assumptions
    (and lies inside (0, 1), where probabilities live); one clearly non-zero value proves
    that ``e`` is not identically zero on that domain, which spares a slow ``simplify``.
    """
    rng = random.Random(20170101)
    point = {}
    for s in sorted(e.free_symbols, key=str):
        v = sp.Integer(rng.randint(1, 5)) if s.is_integer else sp.Rational(rng.randint(10, 90), 100)
        point[s] = -v if (s.is_negative or s.is_nonpositive) else v
    try:
        value = complex(e.subs(point).evalf(30))
    except (TypeError, ValueError, ZeroDivisionError):
        return False
    return bool(abs(value) > 1e-12) and not (value != value)  # NaN is inconclusive


def _simplify_zero(e: sp.Expr) -> sp.Expr:
    """Simplify ``e``; return exactly 0 when sympy can prove it vanishes."""
    expanded = sp.expand(e)
    if expanded == 0:
        return sp.S.Zero
    if _numerically_nonzero(expanded):
        return sp.cancel(sp.together(expanded))
    s = sp.simplify(sp.together(expanded))
    if s == 0:
        return sp.S.Zero
    try:
        vanishes = s.equals(0)
    except (RecursionError, TypeError, ValueError):
        vanishes = None
    return sp.S.Zero if vanishes else s


def _is_zero(d: sp.Basic) -> bool:
    if isinstance(d, sp.MatrixBase):
        return all(e == 0 for e in d)
    return d == 0


def check_equal(lhs: Any, rhs: Any, msg: str = "") -> None:
    """Assert that ``lhs`` and ``rhs`` (scalars or matrices) are symbolically equal.

    Raises ``AssertionError`` showing both sides and their simplified difference.
    """
    d = _difference(lhs, rhs, msg)
    if not _is_zero(d):
        raise AssertionError(
            f"{msg or 'expressions differ'}\n  lhs = {_as_sympy(lhs)}\n"
            f"  rhs = {_as_sympy(rhs)}\n  lhs - rhs simplifies to {d}"
        )


def check_differs(lhs: Any, rhs: Any, msg: str) -> sp.Basic:
    """Assert that ``lhs`` and ``rhs`` are NOT equal: a thesis statement that fails its
    check (an erratum). Returns the simplified difference ``lhs - rhs``.

    Raises ``AssertionError`` when the two sides turn out equal (the erratum is gone).
    """
    d = _difference(lhs, rhs, msg)
    if _is_zero(d):
        raise AssertionError(
            f"{msg}\n  expected the two sides to differ (a thesis erratum), but they are "
            f"equal:\n  lhs = {_as_sympy(lhs)}\n  rhs = {_as_sympy(rhs)}"
        )
    return d
