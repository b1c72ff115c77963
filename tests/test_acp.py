"""ACP (Algorithm 4) against the dense G_in inverse (eq 6.2.3), the local criterion
(section 6.1) and its brute-force least-squares solution; robustness and state."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spies import Spy
from torch import nn

from sokit import curvature as cv
from sokit.optim import ACP, ACPPreconditioner
from sokit.optim.acp import acp_direction, covariance
from sokit.optim.factors import DenseInverse, SampleFactor, WoodburyInverse, factor_inverses

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def mse_sum(out, y):
    return ((out - y) ** 2).sum(dim=1).mean()


def net(seed=0, sizes=(4, 5, 3)):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Sigmoid(), nn.Linear(sizes[1], sizes[2]))


def dense_g_in_step(A, alpha, eps, grad_thesis, n_in):
    """(A kron alpha I + eps I_W)^-1 grad, theta = vec([W b]) column-major (eq 6.2.3).

    The Tikhonov term damps the weight block only: the local criterion penalizes
    ||Delta W||^2 alone, and then the Schur complement is exactly C + eps/alpha I.
    """
    n_out = grad_thesis.numel() // (n_in + 1)
    G_in = torch.kron(A, alpha * torch.eye(n_out))
    damp = torch.cat([torch.ones(n_in * n_out), torch.zeros(n_out)])
    return torch.linalg.solve(G_in + eps * torch.diag(damp), grad_thesis)


def exact_grad(m, loss_fn, x, y):
    """The minibatch gradient by torch.func (the fused layers are plain under transforms)."""
    theta = cv.flat_params(m)
    return torch.func.grad(lambda t: loss_fn(cv._forward(m, x)(t), y))(theta)


# (sizes, batch): dense inverses; Woodbury ones (batch 4 < n_in / 2 in both layers), with
# the input-side association in the first layer (B < n_out) and the gradient side in the second
SHAPES = {"dense": ((4, 5, 3), 8), "woodbury": ((12, 14, 3), 4)}


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("alpha", [0.7, "heuristic"])
def test_acp_equals_dense_inverse_of_g_in(alpha, shape, fused):
    sizes, B = SHAPES[shape]
    m = net(sizes=sizes)
    x, y = torch.randn(B, sizes[0]), torch.randn(B, sizes[2])
    # independent alpha heuristic: per-example preactivation gradients by single backward
    alphas = []
    for layer in (m[0], m[2]):
        per = []
        for i in range(B):
            a = torch.zeros(1, layer.out_features, requires_grad=True)
            handle = layer.register_forward_hook(lambda mod, inp, out: out + a)
            mse_sum(m(x[i : i + 1]), y[i : i + 1]).backward(inputs=[a])
            handle.remove()
            per.append(a.grad[0])
        alphas.append(float(torch.stack(per).pow(2).max()) if alpha == "heuristic" else alpha)
    m.zero_grad()
    grad = exact_grad(m, mse_sum, x, y)
    pre = ACPPreconditioner(m, eps=0.05, alpha=alpha, amortization=1, fused=fused)
    mse_sum(m(x), y).backward()
    pre.precondition()
    step = cv.flat_grad(m)
    form = WoodburyInverse if shape == "woodbury" else DenseInverse
    assert all(isinstance(inv, form) for inv in pre.inverse_c.values())
    for layer, a in zip((m[0], m[2]), alphas):
        h = cv.layer_inputs(m, layer, x)
        h1 = torch.cat([h, torch.ones(B, 1)], dim=1)
        A = h1.T @ h1 / B
        expect = dense_g_in_step(A, a, 0.05, cv.layer_vector(grad, m, layer, "thesis"),
                                 layer.in_features)
        torch.testing.assert_close(cv.layer_vector(step, m, layer, "thesis"), expect)


def local_criterion_closed_form(h, grads, lr, eps):
    """Section 6.1.1: Delta W (C + eps I) = -lr/n sum_i grad_i (h_i - mean h)^T and
    Delta b = -lr/n sum_i grad_i - Delta W mean h (grads are per-example nabla_a l)."""
    n = h.shape[0]
    C = covariance(h)
    rhs = -lr / n * grads.T @ (h - h.mean(0))
    dW = torch.linalg.solve(C + eps * torch.eye(h.shape[1]), rhs.T).T
    db = -lr * grads.mean(0) - dW @ h.mean(0)
    return dW, db


def local_criterion_lstsq(h, grads, lr, eps):
    """argmin (1/n) sum_i ||dW h_i + db + lr grad_i||^2 + eps ||dW||^2, by lstsq."""
    n, n_in = h.shape
    n_out = grads.shape[1]
    Z = torch.cat([h, torch.ones(n, 1)], dim=1) / n**0.5
    reg = torch.cat([eps**0.5 * torch.eye(n_in), torch.zeros(n_in, 1)], dim=1)
    lhs = torch.cat([Z, reg])
    rhs = torch.cat([-lr * grads / n**0.5, torch.zeros(n_in, n_out)])
    X = torch.linalg.lstsq(lhs, rhs).solution  # (n_in + 1, n_out) = [dW b]^T
    return X[:n_in].T, X[n_in]


@pytest.mark.parametrize("batch", [3, 12])  # batch < n_in (singular C) and batch > n_in
def test_local_criterion_closed_form_equals_acp_and_lstsq(batch):
    torch.manual_seed(batch)
    n_in, n_out, lr, alpha, eps = 5, 3, 0.3, 2.0, 0.04
    h = torch.rand(batch, n_in) + 0.5
    grads = torch.randn(batch, n_out)  # per-example nabla_a l
    g = grads / batch  # autograd's dl/da for a mean loss
    inv_c = DenseInverse(torch.linalg.inv(covariance(h) + eps / alpha * torch.eye(n_in)))
    dW, db = acp_direction(g.T @ h, g.sum(0), h, g, inv_c, alpha)
    # ACP's step -lr (dW, db) is the local criterion with lr/alpha and eps/alpha
    cW, cb = local_criterion_closed_form(h, grads, lr / alpha, eps / alpha)
    lW, lb = local_criterion_lstsq(h, grads, lr / alpha, eps / alpha)
    torch.testing.assert_close(-lr * dW, cW)
    torch.testing.assert_close(-lr * db, cb)
    torch.testing.assert_close(cW, lW)
    torch.testing.assert_close(cb, lb)


# (batch, n_in, n_out, fused, side the inverse is applied to); Woodbury when 2 batch < n_in.
# fused: the inputs when batch < n_out; unfused: when B c + B n_in n_out < n_out c
ASSOCIATIONS = [(2, 6, 7, True, "inputs"), (9, 6, 7, True, "gradient"),
                (2, 30, 3, False, "gradient"), (2, 30, 300, False, "inputs"),
                (2, 3, 300, False, "inputs"),
                (3, 20, 9, True, "inputs"), (12, 20, 9, True, "gradient"),
                (50, 6, 7, False, "gradient")]


@pytest.mark.parametrize("batch, n_in, n_out, fused, side", ASSOCIATIONS)
def test_each_association_and_form_gives_the_same_direction(batch, n_in, n_out, fused, side):
    torch.manual_seed(5)
    h, g = torch.randn(batch, n_in), torch.randn(batch, n_out)
    (inv,) = factor_inverses([SampleFactor(h - h.mean(0))], [0.1])
    assert isinstance(inv, WoodburyInverse if 2 * batch < n_in else DenseInverse)
    spy = Spy(inv)
    dW, db = acp_direction(None if fused else g.T @ h, g.sum(0), h, g, spy, 1.5)
    assert spy.rows == [batch if side == "inputs" else n_out]
    dense = torch.linalg.inv(covariance(h) + 0.1 * torch.eye(n_in))
    torch.testing.assert_close(dW, g.T @ (h - h.mean(0)) @ dense / 1.5)
    torch.testing.assert_close(db, g.sum(0) / 1.5 - dW @ h.mean(0))
    _, plain = acp_direction(g.T @ h, g.sum(0), h, g, inv, 1.5, bias_correction=False)
    torch.testing.assert_close(plain, g.sum(0) / 1.5)  # Algorithm 4 line 13


@pytest.mark.parametrize("fused", [False, True])
def test_woodbury_applies_the_refresh_covariance_to_the_current_centered_inputs(fused):
    """Between refreshes: C and eps/alpha of the refresh minibatch (heuristic alpha),
    centering and 1/alpha of the current one, whatever the form of the inverse."""
    m = net(6, sizes=(12, 14, 3))
    xs, y = torch.rand(2, 4, 12) * 2, torch.randn(4, 3)
    opt = ACP(m, lr=0.1, eps=0.05, alpha="heuristic", amortization=3, fused=fused)
    opt.zero_grad()
    mse_sum(m(xs[0]), y).backward()
    alpha0 = opt.preconditioner.hooks.per_example(opt.preconditioner.layers[0]).pow(2).max()
    opt.step()
    assert isinstance(opt.preconditioner.inverse_c[0], WoodburyInverse)
    grad = exact_grad(m, mse_sum, xs[1], y)
    opt.preconditioner.hooks.clear()  # the hooks saw that pass too
    opt.zero_grad()
    mse_sum(m(xs[1]), y).backward()
    rec = opt.preconditioner.layers[0]
    alpha1 = opt.preconditioner.hooks.per_example(rec).pow(2).max()
    opt.preconditioner.precondition()
    gW, gb = cv.layer_vector(grad, m, m[0]).split([12 * 14, 14])
    gW = gW.reshape(14, 12)
    C0 = covariance(xs[0])
    expect = (gW - torch.outer(gb, xs[1].mean(0))) @ torch.linalg.inv(C0 + 0.05 / alpha0 * torch.eye(12))
    torch.testing.assert_close(m[0].weight.grad, expect / alpha1)


def test_amortization_keeps_inverse_between_refreshes():
    m = net(1)
    opt = ACP(m, lr=0.1, eps=0.1, amortization=3)
    data = [torch.randn(6, 4) for _ in range(7)]
    invs = []
    for x in data:
        opt.zero_grad()
        mse_sum(m(x), torch.zeros(6, 3)).backward()
        opt.step()
        invs.append(opt.preconditioner.inv_c[0].clone())
    assert opt.preconditioner.schedule.refreshes == {0: 3, 1: 3}  # updates 0, 3, 6
    torch.testing.assert_close(invs[1], invs[0])
    torch.testing.assert_close(invs[2], invs[0])
    assert not torch.allclose(invs[3], invs[2])
    h = data[3]
    expect = torch.linalg.inv(covariance(h) + 0.1 * torch.eye(4))
    torch.testing.assert_close(invs[3], expect)


@pytest.mark.parametrize("alpha, fused", [(1.0, False), ("heuristic", False), ("heuristic", True)])
def test_singular_covariance_never_gives_nan(alpha, fused):
    """Dead ReLUs, constant inputs, batch smaller than n_in, float32."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10), nn.ReLU(),
                      nn.Linear(10, 20)).float()
    with torch.no_grad():
        m[2].bias.fill_(-100.0)  # every unit of the second ReLU is dead
    opt = ACP(m, lr=0.5, eps=1e-6, alpha=alpha, amortization=2, fused=fused)
    for t in range(6):
        x = torch.rand(4, 20, dtype=torch.float32)  # batch 4 < n_in 20 and 30
        x[:, :5] = 0.3  # constant pixels
        opt.zero_grad()
        mse_sum(m(x), x).backward()
        opt.step()
        assert all(torch.isfinite(p).all() for p in m.parameters()), f"non-finite at {t}"


def test_state_dict_round_trip_continues_identically():
    x_all = torch.randn(10, 6, 4)

    def run(m, opt, xs):
        for x in xs:
            opt.zero_grad()
            mse_sum(m(x), torch.zeros(6, 3)).backward()
            opt.step()

    m = net(2)
    opt = ACP(m, lr=0.2, eps=0.05, alpha="heuristic", amortization=4)
    run(m, opt, x_all[:5])
    saved_model = {k: v.clone() for k, v in m.state_dict().items()}
    saved_opt = opt.state_dict()
    run(m, opt, x_all[5:])
    m2 = net(3)
    m2.load_state_dict(saved_model)
    opt2 = ACP(m2, lr=1.0, eps=1.0, alpha="heuristic", amortization=4)
    opt2.load_state_dict(saved_opt)
    assert opt2.lr == 0.2 and opt2.preconditioner.n_updates == 5
    assert opt2.preconditioner.eps == 0.05
    run(m2, opt2, x_all[5:])
    for p, q in zip(m.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_preconditioner_before_torch_optimizer_matches_acp():
    x, y = torch.randn(6, 4), torch.randn(6, 3)
    m1, m2 = net(4), net(4)
    acp = ACP(m1, lr=0.1, eps=0.1, amortization=1)
    pre = ACPPreconditioner(m2, eps=0.1, amortization=1)
    sgd = torch.optim.SGD(m2.parameters(), lr=0.1)
    for m, step in ((m1, acp.step), (m2, lambda: (pre.precondition(), sgd.step()))):
        mse_sum(m(x), y).backward()
        step()
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q)


def test_bad_arguments_raise():
    m = net()
    with pytest.raises(ValueError, match="eps must be positive"):
        ACP(m, lr=0.1, eps=0.0)
    with pytest.raises(ValueError, match="alpha must be"):
        ACP(m, lr=0.1, alpha="max")
    with pytest.raises(ValueError, match="lr must be positive"):
        ACP(m, lr=-1.0)
    with pytest.raises(TypeError, match="amortization must be"):
        ACP(m, lr=0.1, amortization=2.5)


def test_acp_through_the_train_loop():
    from sokit.data import Dataset
    from sokit.train import train

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 12, generator=gen, dtype=torch.float32)
    data = Dataset("toy", x, torch.zeros(64, dtype=torch.int64), x[:16], torch.zeros(16, dtype=torch.int64))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 6), nn.Sigmoid(), nn.Linear(6, 12), nn.Sigmoid()).float()
    opt = ACP(model, lr=0.05, eps=0.1, alpha="heuristic", amortization=5)
    out = train(model, opt, data, "mse", updates=40, batch_size=16, progress=False, eval_every=20)
    assert not out["diverged"]
    assert out["train_loss"][-1] < out["train_loss"][0]
    assert opt.preconditioner.schedule.refreshes[0] == 8



@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 9), n_in=st.integers(1, 7), n_out=st.integers(1, 7),
       eps=st.floats(1e-3, 10.0), alpha=st.floats(0.1, 10.0), seed=st.integers(0, 10**6))
def test_property_acp_step_solves_the_local_criterion(batch, n_in, n_out, eps, alpha, seed):
    torch.set_default_dtype(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, n_in, generator=gen)
    grads = torch.randn(batch, n_out, generator=gen)
    g = grads / batch
    (inv_c,) = factor_inverses([SampleFactor(h - h.mean(0))], [eps / alpha])  # Woodbury if 2 batch < n_in
    dW, db = acp_direction(g.T @ h, g.sum(0), h, g, inv_c, alpha)
    lW, lb = local_criterion_lstsq(h, grads, 1.0 / alpha, eps / alpha)
    torch.testing.assert_close(-dW, lW, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(-db, lb, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("widths, batch", [((4, 9, 3, 2), 6), ((12, 14, 3, 2), 4)],
                         ids=["dense", "woodbury"])
@pytest.mark.parametrize("alpha, bias_correction", [(0.5, True), ("heuristic", False)])
def test_fused_mode_equals_unfused_mode(alpha, bias_correction, widths, batch):
    """Seven updates, three refreshes; the wide layers (2 batch < n_in) by Woodbury."""
    n0, n1, n2, n3 = widths
    xs = torch.randn(7, batch, n0)
    models = []
    for fused in (False, True):
        torch.manual_seed(11)
        m = nn.Sequential(nn.Linear(n0, n1), nn.ReLU(inplace=True), nn.Linear(n1, n2, bias=False),
                          nn.Tanh(), nn.Linear(n2, n3))
        opt = ACP(m, lr=0.1, eps=0.1, alpha=alpha, amortization=3,
                  bias_correction=bias_correction, fused=fused)
        for x in xs:
            opt.zero_grad()
            mse_sum(m(x), x[:, :n3]).backward()
            opt.step()
        models.append(m)
        assert opt.preconditioner.schedule.refreshes == {0: 3, 1: 3, 2: 3}
        inverses = opt.preconditioner.inverse_c
        woodbury = [isinstance(inverses[i], WoodburyInverse) for i in range(3)]
        assert woodbury == [2 * batch < n for n in (n0, n1, n2)]
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q)
    opt.preconditioner.remove()
    assert "forward" not in vars(models[1][0])


def test_fused_mode_requires_backward():
    m = net()
    opt = ACP(m, lr=0.1, fused=True)
    with torch.no_grad():
        m(torch.randn(2, 4))  # evaluation: plain linear, nothing recorded
    out = m(torch.randn(3, 4))
    m[0].weight.grad = torch.zeros_like(m[0].weight)
    with pytest.raises(RuntimeError, match="no backward pass reached"):
        opt.step()
    del out
