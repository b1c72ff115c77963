"""Tests for sokit.symbolic: vec/Kronecker identities, loss derivatives, Fisher terms."""

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sokit.symbolic import (
    bce_loss,
    check_differs,
    check_equal,
    cross_entropy_logits_loss,
    cross_entropy_loss,
    fisher_middle,
    gn_middle,
    gradient,
    hessian,
    kron,
    log_likelihood,
    quadratic_loss,
    softmax,
    sym_matrix,
    sym_symmetric,
    sym_vector,
    unvec,
    vec,
)

dims = st.integers(min_value=1, max_value=4)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


def _well_conditioned(rng: np.random.Generator, n: int) -> np.ndarray:
    return _rand(rng, n, n) + n * np.eye(n)


# --- vec / unvec --------------------------------------------------------------------


def test_vec_stacks_columns():
    X = sp.Matrix([[1, 2, 3], [4, 5, 6]])
    assert list(vec(X)) == [1, 4, 2, 5, 3, 6]
    assert vec(np.array([[1, 2, 3], [4, 5, 6]])).tolist() == [1, 4, 2, 5, 3, 6]
    assert vec(torch.tensor([[1, 2, 3], [4, 5, 6]])).tolist() == [1, 4, 2, 5, 3, 6]


@settings(max_examples=30, deadline=None)
@given(m=dims, n=dims, seed=seeds)
def test_unvec_inverts_vec(m, n, seed):
    rng = np.random.default_rng(seed)
    X = _rand(rng, m, n)
    np.testing.assert_array_equal(unvec(vec(X), (m, n)), X)
    T = torch.from_numpy(X)
    torch.testing.assert_close(unvec(vec(T), (m, n)), T)
    S = sym_matrix("X", m, n)
    assert unvec(vec(S), (m, n)) == S


def test_unvec_rejects_wrong_size():
    with pytest.raises(ValueError, match="cannot fill shape"):
        unvec(np.zeros(5), (2, 3))


def test_vec_rejects_non_matrix():
    with pytest.raises(ValueError, match="2 dimensions"):
        vec(np.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="sympy Matrix, numpy array or torch tensor"):
        vec([[1, 2]])


# --- Kronecker identities (section 6.2), property tests on random shapes -------------


@settings(max_examples=40, deadline=None)
@given(m=dims, n=dims, p=dims, q=dims, seed=seeds)
def test_vec_AXB_numpy(m, n, p, q, seed):
    rng = np.random.default_rng(seed)
    A, X, B = _rand(rng, m, n), _rand(rng, n, p), _rand(rng, p, q)
    np.testing.assert_allclose(vec(A @ X @ B), kron(B.T, A) @ vec(X), atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(m=dims, n=dims, p=dims, q=dims, seed=seeds)
def test_vec_AXB_torch(m, n, p, q, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, generator=g, dtype=torch.float64)
    X = torch.randn(n, p, generator=g, dtype=torch.float64)
    B = torch.randn(p, q, generator=g, dtype=torch.float64)
    torch.testing.assert_close(vec(A @ X @ B), kron(B.T, A) @ vec(X))


@settings(max_examples=40, deadline=None)
@given(m=dims, n=dims, p=dims, q=dims, r=dims, s=dims, seed=seeds)
def test_mixed_product(m, n, p, q, r, s, seed):
    rng = np.random.default_rng(seed)
    A, C = _rand(rng, m, n), _rand(rng, n, r)
    B, D = _rand(rng, p, q), _rand(rng, q, s)
    np.testing.assert_allclose(kron(A, B) @ kron(C, D), kron(A @ C, B @ D), atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(m=dims, n=dims, seed=seeds)
def test_kron_inverse(m, n, seed):
    rng = np.random.default_rng(seed)
    A, B = _well_conditioned(rng, m), _well_conditioned(rng, n)
    np.testing.assert_allclose(
        np.linalg.inv(kron(A, B)), kron(np.linalg.inv(A), np.linalg.inv(B)), atol=1e-8
    )


@settings(max_examples=40, deadline=None)
@given(m=dims, n=dims, p=dims, q=dims, seed=seeds)
def test_kron_transpose(m, n, p, q, seed):
    rng = np.random.default_rng(seed)
    A, B = _rand(rng, m, n), _rand(rng, p, q)
    np.testing.assert_array_equal(kron(A, B).T, kron(A.T, B.T))


def test_kron_matches_definition_and_numpy():
    A, B = sym_matrix("a", 2, 3), sym_matrix("b", 2, 2)
    K = kron(A, B)
    assert K.shape == (4, 6)
    for i in range(2):
        for j in range(3):
            assert K[2 * i : 2 * i + 2, 2 * j : 2 * j + 2] == A[i, j] * B
    rng = np.random.default_rng(0)
    An, Bn = _rand(rng, 2, 3), _rand(rng, 2, 2)
    subs = {A[i, j]: An[i, j] for i in range(2) for j in range(3)}
    subs |= {B[i, j]: Bn[i, j] for i in range(2) for j in range(2)}
    np.testing.assert_allclose(np.array(K.subs(subs), dtype=float), np.kron(An, Bn))


def test_kron_rejects_mixed_types():
    with pytest.raises(TypeError, match="two sympy Matrices"):
        kron(np.eye(2), torch.eye(2))


def test_kron_identities_symbolic():
    A, X, B = sym_matrix("a", 2, 2), sym_matrix("x", 2, 3), sym_matrix("b", 3, 1)
    check_equal(vec(A * X * B), kron(B.T, A) * vec(X), "vec(AXB)")
    A, B = sym_matrix("a", 2, 2), sym_matrix("b", 1, 1)
    check_equal(kron(A, B).inv(), kron(A.inv(), B.inv()), "(A kron B)^-1")
    C, D = sym_matrix("c", 2, 1), sym_matrix("d", 1, 2)
    check_equal(kron(A, B) * kron(C, D), kron(A * C, B * D), "mixed product")


# --- losses and their derivatives (appendix A) -------------------------------------


def test_loss_derivatives_against_appendix_a():
    f = sym_vector("f", 3, positive=True)
    y = sym_vector("y", 3)
    check_equal(gradient(quadratic_loss(f, y), f), 2 * (f - y))
    check_equal(hessian(quadratic_loss(f, y), f), 2 * sp.eye(3))
    bce_grad = sp.Matrix([-(y[i] / f[i] - (1 - y[i]) / (1 - f[i])) for i in range(3)])
    check_equal(gradient(bce_loss(f, y), f), bce_grad)
    check_equal(
        gn_middle("bce", f, y),
        sp.diag(*[y[i] / f[i] ** 2 + (1 - y[i]) / (1 - f[i]) ** 2 for i in range(3)]),
    )
    check_equal(gradient(cross_entropy_loss(f, y), f), -sp.Matrix([y[i] / f[i] for i in range(3)]))
    check_equal(gn_middle("cross_entropy", f, y), sp.diag(*[y[i] / f[i] ** 2 for i in range(3)]))


def test_logits_cross_entropy_hessian_is_softmax_covariance():
    z, y = sym_vector("z", 3, real=True), sym_vector("y", 3)
    p = softmax(z)
    check_equal(gn_middle("cross_entropy_logits", z, y), sp.diag(*p) - p * p.T)
    # the logits form agrees with -y^T log softmax(z) for one-hot targets
    onehot = sp.Matrix([0, 1, 0])
    check_equal(
        cross_entropy_logits_loss(z, onehot),
        cross_entropy_loss(p, onehot),
    )


def test_losses_reject_bad_shapes():
    with pytest.raises(ValueError, match="must match"):
        quadratic_loss(sym_vector("f", 2), sym_vector("y", 3))
    with pytest.raises(ValueError, match="column vector"):
        bce_loss(sym_matrix("f", 2, 2), sym_matrix("y", 2, 2))
    with pytest.raises(ValueError, match="unknown loss"):
        gn_middle("hinge", sym_vector("f", 2), sym_vector("y", 2))


# --- Fisher middle terms (appendix B) -----------------------------------------------


def test_fisher_middle_terms():
    f = sym_vector("f", 2, positive=True)
    s2 = sp.Symbol("sigma2", positive=True)
    check_equal(fisher_middle("gaussian", f, s2), sp.eye(2) / s2)
    check_equal(fisher_middle("bernoulli", f), sp.diag(*[1 / (fi * (1 - fi)) for fi in f]))
    check_equal(fisher_middle("categorical", f), sp.diag(*[1 / fi for fi in f]))
    p = softmax(f)
    check_equal(fisher_middle("categorical_logits", f), sp.diag(*p) - p * p.T)


def test_fisher_is_negative_expected_hessian_of_log_likelihood():
    """Second identity of the Fisher: E[s s^T] = -E[d^2 log p / df^2] (Bernoulli)."""
    f = sym_vector("f", 2, positive=True)
    y = sym_vector("y", 2)
    H = hessian(log_likelihood("bernoulli", f, y), f)
    expected = H.subs({y[0]: f[0], y[1]: f[1]})  # H is affine in y
    check_equal(fisher_middle("bernoulli", f), -expected)


def test_fisher_middle_rejects_bad_input():
    f = sym_vector("f", 2)
    with pytest.raises(ValueError, match="needs sigma2"):
        fisher_middle("gaussian", f)
    with pytest.raises(ValueError, match="unknown distribution"):
        fisher_middle("poisson", f)


# --- the checks themselves -------------------------------------------------------------


def test_check_equal_passes_on_identities():
    x = sp.Symbol("x", positive=True)
    check_equal(sp.sin(x) ** 2 + sp.cos(x) ** 2, 1)
    check_equal(sp.log(x**2), 2 * sp.log(x))
    check_equal(sym_symmetric("c", 3), sym_symmetric("c", 3).T)


def test_check_equal_raises_readable_message():
    f, y = sym_vector("f", 2), sym_vector("y", 2)
    with pytest.raises(AssertionError) as err:
        check_equal(hessian(quadratic_loss(f, y), f), sp.eye(2), "Table 3.I, quadratic")
    text = str(err.value)
    assert "Table 3.I, quadratic" in text
    assert "lhs = Matrix([[2, 0], [0, 2]])" in text
    assert "rhs = Matrix([[1, 0], [0, 1]])" in text
    assert "simplifies to Matrix([[1, 0], [0, 1]])" in text


def test_check_equal_scalar_message_and_shapes():
    x = sp.Symbol("x")
    with pytest.raises(AssertionError, match=r"lhs - rhs simplifies to 1"):
        check_equal(x + 1, x)
    with pytest.raises(AssertionError, match="shapes differ"):
        check_equal(sp.eye(2), sp.eye(3))
    with pytest.raises(AssertionError, match="matrix with a scalar"):
        check_equal(sp.eye(1), 1)


def test_check_differs():
    x = sp.Symbol("x")
    assert check_differs(2 * x, x, "erratum") == x
    with pytest.raises(AssertionError, match="expected the two sides to differ"):
        check_differs((x + 1) ** 2, x**2 + 2 * x + 1, "not an erratum")


def test_checks_respect_symbol_assumptions():
    neg = sp.Symbol("x", negative=True)
    check_equal(sp.sqrt(neg**2), -neg)  # true only for negative x
    with pytest.raises(AssertionError, match="expected the two sides to differ"):
        check_differs(sp.sqrt(neg**2), -neg, "not an erratum for negative x")
    k = sp.Symbol("k", integer=True)
    check_equal(sp.cos(sp.pi * k) ** 2, 1)
