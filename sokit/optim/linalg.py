"""Damped inverses of symmetric PSD matrices, batched over layers (thesis section 3.1.3).

The refresh step of ACP and KFAC inverts one small matrix per layer. Matrices of the
same size are stacked and inverted in one batched Cholesky call; a matrix whose
Cholesky factorization fails (numerically indefinite in float32) is inverted instead
through its eigendecomposition with eigenvalues clamped at the damping, so the result
is finite and symmetric positive definite. Where that eigendecomposition does not
converge either (``linalg.eigh`` on a float32 matrix with many repeated eigenvalues,
such as the covariance of MNIST's constant border pixels), it is redone in float64.
:func:`damped_inverse_root` gives, the same way, a factor ``W`` with ``W^T W`` the damped
inverse (the inverse Cholesky factor, or the eigendecomposition's), which the Woodbury
form of :mod:`.factors` applies instead of the inverse itself.

Nothing here raises from statistics: non-finite statistics, or a damping computed from
them that is not positive and finite (overflowed traces of KFAC's ``pi`` split, ACP's
heuristic alpha), give an all-NaN inverse, so the step turns NaN and the training loop
records the divergence instead of failing inside the linear algebra. Only a damping
given as a Python number (a caller's argument) is validated, and raises if it is not
positive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor


def _check_number(damping: object, what: str) -> None:
    """A damping given as a Python number is an argument: it must be positive."""
    if isinstance(damping, (int, float)) and not damping > 0:
        raise ValueError(f"{what} must be positive to keep the inverse finite, got {damping}")


def _eigh_inverse(sym: Tensor, d: Tensor, need: Tensor, root: bool = False) -> Tensor:
    """``(sym_+ + d I)^-1`` through ``eigh`` with eigenvalues clamped at 0, for the
    matrices where ``need`` is True (the others are left unspecified); with ``root``, the
    factor ``(vals + d)^-1/2 Q^T`` whose Gram matrix is that inverse. Where the batched
    ``eigh`` fails or gives a non-finite result, that matrix is redone alone, then in
    float64; a matrix that fails in float64 too gets an all-NaN result."""

    def inverse(m: Tensor, dm: Tensor) -> Tensor:
        vals, vecs = torch.linalg.eigh(m)
        vals = vals.clamp_min(0) + dm[..., None]
        if root:
            return vecs.transpose(-1, -2) / vals.sqrt()[..., :, None]
        fixed = (vecs / vals[..., None, :]) @ vecs.transpose(-1, -2)
        return 0.5 * (fixed + fixed.transpose(-1, -2))

    try:
        out = inverse(sym, d)
        redo = need & ~torch.isfinite(out).flatten(-2).all(-1)
    except torch.linalg.LinAlgError:
        out, redo = torch.full_like(sym, float("nan")), need
    if not bool(redo.any()):
        return out
    n = sym.shape[-1]
    out, flat_s, flat_d = out.reshape(-1, n, n).clone(), sym.reshape(-1, n, n), d.reshape(-1)
    for k in torch.nonzero(redo.reshape(-1)).flatten().tolist():
        for dtype in (sym.dtype, torch.float64):
            try:
                row = inverse(flat_s[k].to(dtype), flat_d[k].to(dtype)).to(sym.dtype)
            except torch.linalg.LinAlgError:
                continue
            out[k] = row
            if bool(torch.isfinite(row).all()):
                break
    return out.reshape(sym.shape)


def _damped(M: Tensor, damping: Tensor | float, root: bool) -> Tensor:
    _check_number(damping, "damping")
    n = M.shape[-1]
    d = torch.as_tensor(damping, dtype=M.dtype, device=M.device).expand(M.shape[:-2])
    finite = torch.isfinite(M).flatten(-2).all(-1) & torch.isfinite(d) & (d > 0)
    eye = torch.eye(n, dtype=M.dtype, device=M.device)
    sym = 0.5 * (M + M.transpose(-1, -2))
    sym = torch.where(finite[..., None, None], sym, eye)  # placeholder, replaced by NaN below
    d_ok = torch.where(finite, d, torch.ones_like(d))
    L, info = torch.linalg.cholesky_ex(sym + d_ok[..., None, None] * eye)
    bad = info > 0
    L = torch.where(bad[..., None, None], eye, L)  # a failed L may be singular
    if root:
        inv = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
    else:
        inv = torch.cholesky_inverse(L)
    if bool(bad.any()):
        inv = torch.where(bad[..., None, None], _eigh_inverse(sym, d_ok, bad, root), inv)
    return torch.where(finite[..., None, None], inv, torch.full_like(inv, float("nan")))


def damped_inverse(M: Tensor, damping: Tensor | float) -> Tensor:
    """``(M + damping I)^-1`` for a symmetric PSD ``M`` of shape ``(..., n, n)``.

    ``damping`` is a positive float or a tensor broadcastable to ``M.shape[:-2]``. A
    matrix that is not finite, or whose (tensor) damping is not positive and finite,
    gets an all-NaN inverse; this never raises for statistics (see the module docstring).
    """
    return _damped(M, damping, root=False)


def damped_inverse_root(M: Tensor, damping: Tensor | float) -> Tensor:
    """A square ``W`` with ``W^T W = (M + damping I)^-1``: ``L^-1`` for the Cholesky factor
    ``L L^T = M + damping I``, or ``(vals + damping)^-1/2 Q^T`` from ``eigh`` where
    Cholesky fails; same arguments and robustness as :func:`damped_inverse`. Applying
    ``W`` to vectors avoids forming the inverse, whose entries grow like ``1 / damping``
    along the null space of ``M`` (the Woodbury form of :mod:`.factors` needs that)."""
    return _damped(M, damping, root=True)


def _batched(fn, mats: Sequence[Tensor], dampings: Sequence[Tensor | float]) -> list[Tensor]:
    if len(mats) != len(dampings):
        raise ValueError(f"got {len(mats)} matrices but {len(dampings)} dampings")
    for d in dampings:
        _check_number(d, "every damping")
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, m in enumerate(mats):
        groups[(tuple(m.shape), m.dtype, m.device)].append(i)
    out: list[Tensor | None] = [None] * len(mats)
    for idx in groups.values():
        stack = torch.stack([mats[i] for i in idx])
        ref = mats[idx[0]]
        damp = torch.stack(
            [torch.as_tensor(dampings[i], dtype=ref.dtype, device=ref.device).reshape(()) for i in idx]
        )
        for i, inv in zip(idx, fn(stack, damp)):
            out[i] = inv
    return out  # type: ignore[return-value]


def damped_inverses(mats: Sequence[Tensor], dampings: Sequence[Tensor | float]) -> list[Tensor]:
    """:func:`damped_inverse` of each matrix, batching the matrices of equal shape."""
    return _batched(damped_inverse, mats, dampings)


def damped_inverse_roots(mats: Sequence[Tensor], dampings: Sequence[Tensor | float]) -> list[Tensor]:
    """:func:`damped_inverse_root` of each matrix, batching the matrices of equal shape."""
    return _batched(damped_inverse_root, mats, dampings)
