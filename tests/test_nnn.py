"""Natural Neural Networks (PRONG, thesis section 6.4.2): function preservation,
whitening, robustness to singular covariances, and checkpointing."""

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sokit.optim.nnn import NNN, WhitenedLinear, prong


def mlp(sizes=(6, 5, 4, 3), dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers).to(dtype)


def sgd_steps(model, opt, x, y, n):
    losses = []
    for _ in range(n):
        loss = ((model(x) - y) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_prong_wrapping_preserves_function():
    model = mlp()
    reference = copy.deepcopy(model)
    layers = prong(model)
    assert len(layers) == 3 and all(isinstance(m, WhitenedLinear) for m in layers)
    x = torch.randn(17, 6, dtype=torch.float64)
    assert_close(model(x), reference(x))


def test_every_refresh_preserves_function():
    model = mlp()
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64)
    opt = NNN(model, lr=0.05, amortization=3, eps=1e-2)
    probe = torch.randn(50, 6, dtype=torch.float64) * 3 + 1
    for _ in range(7):
        before = model(probe).detach()
        model(torch.randn(32, 6, dtype=torch.float64) + 0.5)   # inputs feeding the refresh
        mus_before = [layer.mu.clone() for layer in opt.layers]
        opt.refresh()
        assert_close(model(probe), before)
        assert all(not torch.equal(m, layer.mu) for m, layer in zip(mus_before, opt.layers))
        sgd_steps(model, opt, x, y, 2)


def test_refresh_inside_step_is_function_preserving():
    """The refresh done by step() (after update 0) changes nothing but the SGD update."""
    model = mlp()
    x, y = torch.randn(20, 6, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
    opt = NNN(model, lr=0.1, amortization=100, eps=1e-2)
    twin = copy.deepcopy(model)           # same PRONG form, U = I, mu = 0
    loss = ((model(x) - y) ** 2).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()                            # SGD update, then refresh (n_updates == 0)
    assert not torch.allclose(opt.layers[0].U, torch.eye(6, dtype=torch.float64))
    # the twin takes the same SGD step on (V, d) without a refresh
    loss_t = ((twin(x) - y) ** 2).sum(1).mean()
    loss_t.backward()
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.1 * p.grad
    probe = torch.randn(40, 6, dtype=torch.float64)
    assert_close(model(probe), twin(probe))


def test_refresh_on_whitened_statistics_gives_identity():
    torch.manual_seed(1)
    layer = WhitenedLinear(nn.Linear(8, 3).double())
    z = torch.randn(100_000, 8, dtype=torch.float64)
    layer.refresh(z, eps=1e-9)
    assert_close(layer.U, torch.eye(8, dtype=torch.float64), atol=2e-2, rtol=0)
    assert_close(layer.mu, torch.zeros(8, dtype=torch.float64), atol=2e-2, rtol=0)
    # exact version: data with identity sample covariance and zero sample mean
    q, _ = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64))
    q = q - q.mean(0)                      # still orthogonal columns? re-orthonormalize
    q, _ = torch.linalg.qr(torch.cat([torch.ones(64, 1, dtype=torch.float64), q], 1))
    h = q[:, 1:] * 8.0                     # orthogonal to 1 => zero mean; cov = I
    layer.refresh(h, eps=1e-12)
    assert_close(layer.U, torch.eye(8, dtype=torch.float64), atol=1e-8, rtol=0)


def test_refresh_whitens_the_effective_input():
    torch.manual_seed(2)
    layer = WhitenedLinear(nn.Linear(5, 2).double())
    mix = torch.randn(5, 5, dtype=torch.float64)
    h = torch.randn(500, 5, dtype=torch.float64) @ mix + torch.arange(5.0, dtype=torch.float64)
    layer.refresh(h, eps=1e-10)
    he = (h - layer.mu) @ layer.U
    assert_close(he.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-10, rtol=0)
    assert_close(he.t() @ he / 500, torch.eye(5, dtype=torch.float64), atol=1e-7, rtol=0)


@pytest.mark.parametrize("case", ["constant_inputs", "batch_smaller_than_n_in", "dead_relu"])
def test_singular_covariance_never_gives_nan(case):
    torch.manual_seed(3)
    n_in = 30
    model = nn.Sequential(nn.Linear(n_in, 20), nn.ReLU(), nn.Linear(20, 5))
    if case == "dead_relu":
        with torch.no_grad():
            model[0].bias[:10] = -100.0   # half the hidden units never fire
    batch = 4 if case == "batch_smaller_than_n_in" else 64
    x = torch.rand(batch, n_in)
    if case == "constant_inputs":
        x[:, :15] = 0.5
    y = torch.randn(batch, 5)
    opt = NNN(model, lr=0.01, amortization=1, eps=1e-3)
    losses = sgd_steps(model, opt, x, y, 20)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(b).all() for b in model.buffers())
    assert losses[-1] < losses[0]


def test_state_dict_round_trip():
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    model = mlp()
    opt = NNN(model, lr=0.05, amortization=2, eps=1e-2)
    sgd_steps(model, opt, x, y, 3)
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    assert {"0.V", "0.d", "0.U", "0.mu"} <= set(model_state)
    expected = sgd_steps(model, opt, x, y, 4)

    restored = mlp(seed=123)
    opt2 = NNN(restored, lr=1.0, amortization=7, eps=1.0)
    restored.load_state_dict(model_state)
    opt2.load_state_dict(opt_state)
    assert opt2.n_updates == 3 and opt2.amortization == 2
    assert sgd_steps(restored, opt2, x, y, 4) == expected


def test_nnn_learns_faster_than_sgd_on_badly_scaled_inputs():
    """Whitening pays off when input features have very different scales."""
    torch.manual_seed(4)
    scales = torch.logspace(-2, 1, 10, dtype=torch.float64)
    x = torch.randn(256, 10, dtype=torch.float64) * scales + 3.0
    w_true = torch.randn(10, 2, dtype=torch.float64)
    y = (x - 3.0) / scales @ w_true
    m_sgd = nn.Sequential(nn.Linear(10, 2)).double()
    m_nnn = nn.Sequential(nn.Linear(10, 2)).double()
    m_nnn.load_state_dict(m_sgd.state_dict())
    sgd = torch.optim.SGD(m_sgd.parameters(), lr=5e-3)   # larger diverges (scale 10 + mean 3)
    nnn = NNN(m_nnn, lr=0.2, amortization=10, eps=1e-6)
    loss_sgd = sgd_steps(m_sgd, sgd, x, y, 200)[-1]
    loss_nnn = sgd_steps(m_nnn, nnn, x, y, 200)[-1]
    assert loss_nnn < 1e-3 * loss_sgd


def test_bad_models_and_arguments_raise():
    with pytest.raises(ValueError, match="Conv2d"):
        NNN(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)), lr=0.1)
    with pytest.raises(ValueError, match="BatchNorm1d"):
        NNN(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)), lr=0.1)
    with pytest.raises(ValueError, match="wrap it"):
        NNN(nn.Linear(3, 2), lr=0.1)
    with pytest.raises(ValueError, match="no nn.Linear"):
        NNN(nn.Sequential(nn.ReLU()), lr=0.1)
    with pytest.raises(ValueError, match="eps must be positive"):
        NNN(mlp(), lr=0.1, eps=0.0)
    with pytest.raises(ValueError, match="amortization"):
        NNN(mlp(), lr=0.1, amortization=0)
    with pytest.raises(RuntimeError, match="forward pass"):
        NNN(mlp(), lr=0.1).refresh()
    with pytest.raises(ValueError, match="shape"):
        WhitenedLinear(nn.Linear(4, 2)).refresh(torch.randn(5, 3), eps=1e-3)


def test_float32_refresh_with_many_constant_inputs():
    """MNIST-like input (many always-zero pixels, batch 200 < 784 inputs): float32 eigh of
    the undamped covariance fails to converge; the refresh must still succeed."""
    torch.manual_seed(5)
    h = (torch.rand(200, 784) > 0.7).float() * torch.rand(200, 784)
    h[:, torch.randperm(784)[:300]] = 0.0
    layer = WhitenedLinear(nn.Linear(784, 50))
    probe = torch.rand(10, 784)
    before = layer(probe).detach()
    layer.refresh(h, eps=1e-3)
    assert torch.isfinite(layer.U).all() and torch.isfinite(layer.V).all()
    assert_close(layer(probe), before, atol=1e-4, rtol=1e-4)
