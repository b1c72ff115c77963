"""sokit.curvature against closed forms and against each other (float64, tiny models)."""

import pytest
import torch
from torch import nn

from sokit import curvature as cv

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def mse_sum(out, y):
    """||f - y||^2 summed over features, mean over examples (the thesis's 'MSE')."""
    return ((out - y) ** 2).sum(dim=1).mean()


def half_mse_sum(out, y):
    return 0.5 * mse_sum(out, y)


def mlp(sizes=(3, 4, 2), act=nn.Tanh, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


def assert_sym_psd(M, tol=1e-10):
    torch.testing.assert_close(M, M.T)
    assert torch.linalg.eigvalsh(M).min() > -tol * max(1.0, M.abs().max().item())


def test_flat_params_order_and_grad():
    m = mlp()
    theta = cv.flat_params(m)
    assert theta.numel() == sum(p.numel() for p in m.parameters())
    torch.testing.assert_close(theta[:12], m[0].weight.reshape(-1))
    torch.testing.assert_close(theta[12:16], m[0].bias)


def test_hessian_matches_finite_differences_of_autograd_gradient():
    m = mlp()
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    H = cv.hessian(m, mse_sum, x, y)
    theta = cv.flat_params(m)

    def grad_at(th):
        th = th.clone().requires_grad_(True)
        loss = mse_sum(torch.func.functional_call(m, cv._unflatten(m, th), (x,)), y)
        return torch.autograd.grad(loss, th)[0]

    e = torch.zeros_like(theta)
    e[7] = 1e-6
    fd = (grad_at(theta + e) - grad_at(theta - e)) / 2e-6
    torch.testing.assert_close(H[:, 7], fd, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(H, H.T)


def test_gn_equals_hessian_for_linear_model_and_quadratic_loss():
    m = mlp((3, 2))
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    H = cv.hessian(m, mse_sum, x, y)
    G = cv.gauss_newton(m, mse_sum, x, y)
    torch.testing.assert_close(G, H)
    assert_sym_psd(G)


def test_gn_differs_from_hessian_for_nonlinear_model():
    m = mlp()
    x, y = torch.randn(6, 3), 3 * torch.randn(6, 2)
    H = cv.hessian(m, mse_sum, x, y)
    G = cv.gauss_newton(m, mse_sum, x, y)
    assert (H - G).abs().max() > 1e-3
    assert_sym_psd(G)


def test_gn_is_mean_of_per_example_terms():
    m = mlp()
    x, y = torch.randn(4, 3), torch.randn(4, 2)
    J = cv.per_example_jacobian(m, x)
    D = cv.output_hessian(mse_sum, m(x), y)
    torch.testing.assert_close(D, 2 * torch.eye(2).expand(4, 2, 2))
    G = torch.einsum("bkp,bkl,blq->pq", J, D, J) / 4
    torch.testing.assert_close(cv.gauss_newton(m, mse_sum, x, y), G)


def test_quadratic_loss_gn_is_twice_gaussian_fisher():
    """d2/df2 ||f-y||^2 = 2I while the unit-variance Gaussian Fisher has D = I."""
    m = mlp()
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    F = cv.fisher(m, x, "gaussian")
    torch.testing.assert_close(cv.gauss_newton(m, mse_sum, x, y), 2 * F)
    torch.testing.assert_close(cv.gauss_newton(m, half_mse_sum, x, y), F)
    assert_sym_psd(F)


def test_per_example_jacobian_matches_autograd():
    m = mlp()
    x = torch.randn(3, 3)
    J = cv.per_example_jacobian(m, x)
    assert J.shape == (3, 2, cv.flat_params(m).numel())
    out = m(x[1:2])[0, 1]
    g = torch.autograd.grad(out, list(m.parameters()))
    torch.testing.assert_close(J[1, 1], torch.cat([t.reshape(-1) for t in g]))


def test_categorical_fisher_equals_expected_score_outer_product():
    m = mlp((3, 4, 3))
    x = torch.randn(4, 3)
    F = cv.fisher(m, x, "categorical")  # logits output
    p = torch.softmax(m(x), dim=1).detach()
    expect = torch.zeros_like(F)
    for i in range(4):
        for c in range(3):
            m.zero_grad()
            torch.log_softmax(m(x[i : i + 1]), dim=1)[0, c].backward()
            g = cv.flat_grad(m)
            expect += p[i, c] * torch.outer(g, g) / 4
    torch.testing.assert_close(F, expect)
    assert_sym_psd(F)


def test_categorical_fisher_probs_and_logits_agree():
    m = mlp((3, 4, 3))
    m_probs = nn.Sequential(m, nn.Softmax(dim=1))
    x = torch.randn(4, 3)
    torch.testing.assert_close(
        cv.fisher(m, x, "categorical", "logits"), cv.fisher(m_probs, x, "categorical", "probs")
    )


def test_bernoulli_fisher_equals_expected_score_outer_product():
    m = nn.Sequential(mlp((3, 4, 2)), nn.Sigmoid())
    x = torch.randn(3, 3)
    F = cv.fisher(m, x, "bernoulli")  # probs output
    p = m(x).detach()
    expect = torch.zeros_like(F)
    for i in range(3):
        for bits in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            t = torch.tensor(bits, dtype=torch.float64)
            m.zero_grad()
            pi = m(x[i : i + 1])[0]
            (t * torch.log(pi) + (1 - t) * torch.log(1 - pi)).sum().backward()
            w = torch.prod(torch.where(t == 1, p[i], 1 - p[i]))
            g = cv.flat_grad(m)
            expect += w * torch.outer(g, g) / 3
    torch.testing.assert_close(F, expect)
    logits_model = m[0]
    torch.testing.assert_close(cv.fisher(logits_model, x, "bernoulli", "logits"), F)


def test_bce_gn_has_thesis_middle_term():
    """Table 3.I: d2/df2 of the binary cross-entropy is y/f^2 + (1-y)/(1-f)^2."""
    f = torch.rand(4, 3) * 0.8 + 0.1
    y = torch.rand(4, 3)

    def bce(o, t):
        return -(t * torch.log(o) + (1 - t) * torch.log(1 - o)).sum(dim=1).mean()

    D = cv.output_hessian(bce, f, y)
    torch.testing.assert_close(D, torch.diag_embed(y / f**2 + (1 - y) / (1 - f) ** 2))


def test_layer_block_orders():
    m = mlp()
    P = cv.flat_params(m).numel()
    M = torch.arange(P * P, dtype=torch.float64).view(P, P)
    lin = m[2]  # Linear(4, 2): W at 16..23, b at 24..25
    row = cv.layer_block(M, m, lin)
    assert row.shape == (10, 10)
    torch.testing.assert_close(row, M[16:26, 16:26])
    thesis_idx = cv._layer_index(m, lin, "thesis")
    # column-major vec([W b]): W[0,0], W[1,0], W[0,1], ..., b[0], b[1]
    assert thesis_idx.tolist() == [16, 20, 17, 21, 18, 22, 19, 23, 24, 25]
    v = torch.arange(P, dtype=torch.float64)
    assert cv.layer_vector(v, m, lin, "thesis").tolist() == [float(i) for i in thesis_idx]


def test_preactivation_jacobian_and_layer_inputs():
    m = mlp()
    x = torch.randn(3, 3)
    Ja = cv.preactivation_jacobian(m, m[0], x)
    assert Ja.shape == (3, 2, 4)
    h = torch.tanh(m[0](x))
    torch.testing.assert_close(Ja, (m[2].weight * (1 - h**2).unsqueeze(1)))
    torch.testing.assert_close(cv.layer_inputs(m, m[2], x), h)
    # output layer: J_a is the identity
    torch.testing.assert_close(cv.preactivation_jacobian(m, m[2], x), torch.eye(2).expand(3, 2, 2))


def test_bad_inputs_raise():
    m = mlp()
    with pytest.raises(ValueError, match="batch dimension"):
        cv.hessian(m, mse_sum, torch.randn(3), torch.randn(2))
    with pytest.raises(ValueError, match="kind must be"):
        cv.fisher(m, torch.randn(2, 3), "poisson")
    with pytest.raises(TypeError, match="nn.Linear"):
        cv.layer_block(torch.eye(3), m, m[1])
