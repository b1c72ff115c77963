"""Damped inverses (sokit.optim.linalg) against torch.linalg.inv."""

from __future__ import annotations

import pytest
import torch

from sokit.optim.linalg import damped_inverse, damped_inverses


def test_damped_inverse_matches_inv_and_survives_singular_float32():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    M = X.T @ X / 50
    torch.testing.assert_close(damped_inverse(M, 0.1), torch.linalg.inv(M + 0.1 * torch.eye(6)))
    S = torch.ones(40, 40) * 1e4  # rank one, float32: Cholesky of S + 1e-6 I fails
    inv = damped_inverse(S, 1e-6)
    assert torch.isfinite(inv).all()
    torch.testing.assert_close(inv, inv.T)


def test_non_finite_statistics_give_nan_only_where_they_are():
    M = torch.stack([torch.eye(3) * 2, torch.full((3, 3), float("nan")), torch.eye(3)])
    inv = damped_inverse(M, torch.tensor([1.0, 1.0, float("nan")]))
    torch.testing.assert_close(inv[0], torch.eye(3) / 3)
    assert torch.isnan(inv[1]).all() and torch.isnan(inv[2]).all()
    a, b = damped_inverses([torch.eye(2), torch.full((2, 2), float("inf"))], [1.0, 1.0])
    torch.testing.assert_close(a, torch.eye(2) / 2)
    assert torch.isnan(b).all()


def test_non_positive_damping_is_named():
    with pytest.raises(ValueError, match="damping must be positive"):
        damped_inverse(torch.eye(2), 0.0)
    with pytest.raises(ValueError, match="every damping must be positive"):
        damped_inverses([torch.eye(2)], [-1.0])


def test_eigh_that_fails_in_float32_is_redone_in_float64(monkeypatch):
    """A float32 ``linalg.eigh`` that does not converge (MNIST's pixel covariance, see
    tests/test_divergence.py) is redone in float64, per matrix; never a LinAlgError."""
    real = torch.linalg.eigh
    calls = []

    def eigh(m, *args, **kwargs):
        calls.append((tuple(m.shape), m.dtype))
        if m.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real(m, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    S = torch.ones(2, 40, 40) * 1e4  # float32 Cholesky of S + 1e-6 I fails: the eigh fallback
    S[1] = torch.eye(40)  # Cholesky succeeds: no eigh for it
    inv = damped_inverse(S, 1e-6)
    assert calls == [((2, 40, 40), torch.float32), ((40, 40), torch.float32), ((40, 40), torch.float64)]
    assert inv.dtype == torch.float32 and torch.isfinite(inv).all()
    want = torch.linalg.inv(S[0].double() + 1e-6 * torch.eye(40, dtype=torch.float64))
    assert (inv[0].double() - want).abs().max() < 1e-3 * want.abs().max()  # entries ~ 1e6
    torch.testing.assert_close(inv[1], torch.eye(40) / (1 + 1e-6))

    def broken(m, *args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", broken)
    inv = damped_inverse(S, 1e-6)  # fails in float64 too: NaN (a divergence), no exception
    assert torch.isnan(inv[0]).all() and torch.isfinite(inv[1]).all()


# --- damped inverse roots and the two forms of a factor's inverse (sokit.optim.factors) ---

from sokit.optim.factors import (  # noqa: E402
    DenseInverse,
    SampleFactor,
    WoodburyInverse,
    factor_inverses,
    inverse_from_state,
)
from sokit.optim.linalg import damped_inverse_root  # noqa: E402


def test_damped_inverse_root_has_the_inverse_as_its_gram_matrix():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    M = X.T @ X  # rank 3
    W = damped_inverse_root(M, 0.2)
    torch.testing.assert_close(W.T @ W, torch.linalg.inv(M + 0.2 * torch.eye(8, dtype=torch.float64)))
    assert torch.equal(W, W.tril())  # L^-1 of the Cholesky factor
    S = torch.ones(40, 40) * 1e4  # float32 Cholesky fails: the root from the same eigh
    W = damped_inverse_root(S, 1e-6)  # as damped_inverse's fallback
    assert torch.isfinite(W).all() and not torch.equal(W, W.tril())
    inv = damped_inverse(S, 1e-6)
    assert ((W.T @ W) - inv).abs().max() < 1e-4 * inv.abs().max()
    bad = damped_inverse_root(torch.stack([torch.eye(2), torch.full((2, 2), float("nan"))]), 1.0)
    torch.testing.assert_close(bad[0], torch.eye(2) / 2**0.5)
    assert torch.isnan(bad[1]).all()


@pytest.mark.parametrize("rows, n, form", [(3, 7, WoodburyInverse), (4, 7, DenseInverse),
                                           (2, 40, WoodburyInverse)])
def test_factor_inverse_forms_are_the_damped_inverse(rows, n, form):
    """Both forms against torch.linalg.inv, as right and left products, with a count N
    other than the rows (KFAC's several probe batches); Woodbury when 2 rows < n."""
    gen = torch.Generator().manual_seed(rows * n)
    S = torch.randn(rows, n, generator=gen, dtype=torch.float64)
    F = S.T @ S / 5
    (inv,) = factor_inverses([SampleFactor(S, count=5)], [torch.tensor(0.3, dtype=torch.float64)])
    assert type(inv) is form
    assert inv.cost_per_row == (2 * rows * n if form is WoodburyInverse else n * n)
    want = torch.linalg.inv(F + 0.3 * torch.eye(n, dtype=torch.float64))
    torch.testing.assert_close(inv.matrix(), want)
    torch.testing.assert_close(inv.factor(), F)
    X = torch.randn(6, n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(inv.right(X), X @ want)
    torch.testing.assert_close(inv.left(X.T), want @ X.T)
    scratch = X.clone()
    torch.testing.assert_close(inv.right(scratch, scratch=True), X @ want)
    assert torch.equal(scratch, X) == (form is DenseInverse)  # Woodbury wrote over it
    torch.testing.assert_close(inv.left(X.T.clone(), scratch=True), want @ X.T)
    a, b = inv.right_columns(X, [slice(0, n - 1), slice(n - 1, n)])
    torch.testing.assert_close(torch.cat([a, b], dim=1), X @ want)
    assert a.is_contiguous() and b.is_contiguous()
    mean, kept = X.mean(0), X.clone()
    for scale in (1.0, 0.25, torch.tensor(0.25, dtype=torch.float64)):  # ACP's 1/alpha
        torch.testing.assert_close(inv.right_centered(X, mean, scale), (X - mean) @ want * scale)
    assert torch.equal(X, kept)  # the inputs are left intact
    torch.testing.assert_close(inverse_from_state(inv.state_dict()).matrix(), want)


def test_copy_writes_a_refresh_into_the_same_buffers_and_nan_statistics_give_nan():
    gen = torch.Generator().manual_seed(0)
    S1, S2 = torch.randn(2, 3, 9, generator=gen)
    old, new = factor_inverses([SampleFactor(S1), SampleFactor(S2)], [0.1, 0.1])
    pointers = {k: t.data_ptr() for k, t in old.buffers().items()}
    assert old.layout() == new.layout()
    old.copy_(new)
    assert {k: t.data_ptr() for k, t in old.buffers().items()} == pointers
    torch.testing.assert_close(old.matrix(), new.matrix())
    S2[1, 4] = float("nan")
    for inv in factor_inverses([SampleFactor(S2), SampleFactor(S2[:, 3:7])], [0.1, 0.1]):
        assert torch.isnan(inv.right(torch.ones(1, inv.matrix().shape[0]))).all()
    (inv,) = factor_inverses([SampleFactor(S1)], [torch.tensor(float("inf"))])  # overflowed damping
    assert torch.isnan(inv.right(torch.ones(1, 9))).all()
