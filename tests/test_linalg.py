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
