"""Damped inverses of symmetric PSD matrices, batched over layers (thesis section 3.1.3).

The refresh step of ACP and KFAC inverts one small matrix per layer. Matrices of the
same size are stacked and inverted in one batched Cholesky call; a matrix whose
Cholesky factorization fails (numerically indefinite in float32) is inverted instead
through its eigendecomposition with eigenvalues clamped at the damping, so the result
is always finite and symmetric positive definite. Non-finite statistics (a diverged
run) give an all-NaN inverse, so the step turns NaN and the training loop records the
divergence instead of failing inside the linear algebra.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
from torch import Tensor


def damped_inverse(M: Tensor, damping: Tensor | float) -> Tensor:
    """``(M + damping I)^-1`` for a symmetric PSD ``M`` of shape ``(..., n, n)``.

    ``damping`` is a positive float or a tensor broadcastable to ``M.shape[:-2]``.
    """
    n = M.shape[-1]
    d = torch.as_tensor(damping, dtype=M.dtype, device=M.device).expand(M.shape[:-2])
    if bool((d <= 0).any()):
        raise ValueError(f"damping must be positive to keep the inverse finite, got {damping}")
    finite = torch.isfinite(M).flatten(-2).all(-1) & torch.isfinite(d)
    eye = torch.eye(n, dtype=M.dtype, device=M.device)
    sym = 0.5 * (M + M.transpose(-1, -2))
    sym = torch.where(finite[..., None, None], sym, eye)  # placeholder, replaced by NaN below
    d_ok = torch.where(finite, d, torch.ones_like(d))
    L, info = torch.linalg.cholesky_ex(sym + d_ok[..., None, None] * eye)
    bad = info > 0
    inv = torch.cholesky_inverse(torch.where(bad[..., None, None], eye, L))  # a failed L may be singular
    if bool(bad.any()):
        vals, vecs = torch.linalg.eigh(sym)
        vals = vals.clamp_min(0) + d_ok[..., None]
        fixed = (vecs / vals[..., None, :]) @ vecs.transpose(-1, -2)
        fixed = 0.5 * (fixed + fixed.transpose(-1, -2))
        inv = torch.where(bad[..., None, None], fixed, inv)
    return torch.where(finite[..., None, None], inv, torch.full_like(inv, float("nan")))


def damped_inverses(mats: Sequence[Tensor], dampings: Sequence[Tensor | float]) -> list[Tensor]:
    """:func:`damped_inverse` of each matrix, batching the matrices of equal shape."""
    if len(mats) != len(dampings):
        raise ValueError(f"got {len(mats)} matrices but {len(dampings)} dampings")
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
        if bool((damp <= 0).any()):
            raise ValueError("every damping must be positive to keep the inverses finite")
        for i, inv in zip(idx, damped_inverse(stack, damp)):
            out[i] = inv
    return out  # type: ignore[return-value]
