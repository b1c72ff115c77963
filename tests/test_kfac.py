"""KFAC (section 6.4.1) against exact curvature from sokit.curvature (float64)."""

import pytest
import torch
from spies import Spy
from torch import nn

from sokit import curvature as cv
from sokit.optim import KFAC, KFACPreconditioner
from sokit.optim.factors import DenseInverse, SampleFactor, WoodburyInverse, factor_inverses
from sokit.optim.kfac import factor_dampings, kfac_direction

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def mse_sum(out, y):
    return ((out - y) ** 2).sum(dim=1).mean()


def net(seed=0, sizes=(4, 5, 3)):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Tanh(), nn.Linear(sizes[1], sizes[2]))


def exact_g_factor(m, layer, x, D):
    """E_i[J_a^T D_i J_a] with J_a from torch.func."""
    Ja = cv.preactivation_jacobian(m, layer, x)
    return torch.einsum("bko,bkl,blp->op", Ja, D, Ja) / x.shape[0]


def exact_grad(m, loss_fn, x, y):
    """The minibatch gradient by torch.func (the fused layers are plain under transforms)."""
    theta = cv.flat_params(m)
    return torch.func.grad(lambda t: loss_fn(cv._forward(m, x)(t), y))(theta)


def kfac_step(m, pre, x, y, loss_fn=mse_sum, loss="mse"):
    """(gradient, KFAC direction) of one refresh update."""
    grad = exact_grad(m, loss_fn, x, y)
    pre.hooks.clear()  # the hooks saw that pass too
    out = m(x)
    pre.curvature_backward(out)
    loss_fn(out, y).backward()
    pre.precondition()
    return grad, cv.flat_grad(m)


def test_exact_gn_factor_and_eq_6_2_2_for_one_example():
    """Single example: A kron G is the exact GN block (eq 6.2.2), layer by layer."""
    m = net()
    x, y = torch.randn(1, 4), torch.randn(1, 3)
    pre = KFACPreconditioner(m, loss="mse", curvature="gauss_newton", gn_probes="exact", amortization=1)
    kfac_step(m, pre, x, y)
    GN = cv.gauss_newton(m, mse_sum, x, y)
    for i, layer in enumerate((m[0], m[2])):
        G_exact = exact_g_factor(m, layer, x, 2 * torch.eye(3).expand(1, 3, 3))
        torch.testing.assert_close(pre.G[i], G_exact)
        h1 = torch.cat([cv.layer_inputs(m, layer, x), torch.ones(1, 1)], dim=1)
        torch.testing.assert_close(pre.A[i], h1.T @ h1)
        block = cv.layer_block(GN, m, layer, vec="thesis")
        torch.testing.assert_close(torch.kron(h1.T @ h1, G_exact), block)  # eq 6.2.2
        torch.testing.assert_close(torch.kron(pre.A[i], pre.G[i]), block)


def test_per_example_gn_block_is_a_mean_of_kronecker_products():
    """Eq 6.2.2 for a batch: the GN block is (1/n) sum_i [h;1][h;1]^T kron J_a^T D J_a."""
    m = net(1)
    x, y = torch.randn(5, 4), torch.randn(5, 3)
    GN = cv.gauss_newton(m, mse_sum, x, y)
    layer = m[0]
    h1 = torch.cat([cv.layer_inputs(m, layer, x), torch.ones(5, 1)], dim=1)
    Ja = cv.preactivation_jacobian(m, layer, x)
    expect = sum(torch.kron(torch.outer(h1[i], h1[i]), 2 * Ja[i].T @ Ja[i]) for i in range(5)) / 5
    torch.testing.assert_close(cv.layer_block(GN, m, layer, vec="thesis"), expect)
    # and KFAC's product of means is not equal to it for a batch (the approximation)
    A, G = h1.T @ h1 / 5, exact_g_factor(m, layer, x, 2 * torch.eye(3).expand(5, 3, 3))
    assert (torch.kron(A, G) - expect).abs().max() > 1e-3


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("split", ["pi", "plain"])
def test_factored_inverse_equals_dense_kronecker_inverse(split, fused):
    m = net(2)
    x, y = torch.randn(6, 4), torch.randn(6, 3)
    pre = KFACPreconditioner(m, loss="mse", curvature="gauss_newton", gn_probes="exact",
                             damping=0.03, damping_split=split, amortization=1, fused=fused)
    grad, step = kfac_step(m, pre, x, y)
    for layer in (m[0], m[2]):
        A = torch.cat([cv.layer_inputs(m, layer, x), torch.ones(6, 1)], dim=1)
        A = A.T @ A / 6
        G = exact_g_factor(m, layer, x, 2 * torch.eye(3).expand(6, 3, 3))
        dA, dG = factor_dampings(A.diagonal().mean(), G.diagonal().mean(), 0.03, split)
        if split == "pi":
            pi = ((A.trace() / A.shape[0]) / (G.trace() / G.shape[0])).sqrt()
            torch.testing.assert_close(dA, pi * 0.03**0.5)
        dense = torch.kron(A + dA * torch.eye(A.shape[0]), G + dG * torch.eye(G.shape[0]))
        expect = torch.linalg.solve(dense, cv.layer_vector(grad, m, layer, "thesis"))
        torch.testing.assert_close(cv.layer_vector(step, m, layer, "thesis"), expect)


@pytest.mark.parametrize("loss, curvature", [("mse", "fisher"), ("mse", "gauss_newton"),
                                             ("cross_entropy", "gauss_newton")])
@pytest.mark.parametrize("fused", [False, True])
def test_woodbury_step_equals_dense_kronecker_inverse(loss, curvature, fused):
    """A batch of 4 under n / 2 for both factors of the first layer (13 rows [h 1], 14
    outputs) and for A of the second: those inverses are Woodbury's, the step is still
    (A kron G + damping)^-1 grad of the factors measured."""
    m = net(3, sizes=(12, 14, 3))
    x = torch.rand(4, 12)
    y = torch.randn(4, 3) if loss == "mse" else torch.tensor([0, 2, 1, 2])
    loss_fn = mse_sum if loss == "mse" else nn.functional.cross_entropy
    pre = KFACPreconditioner(m, loss=loss, curvature=curvature, damping=0.03, amortization=1,
                             fused=fused, seed=2)
    grad, step = kfac_step(m, pre, x, y, loss_fn, loss)
    assert [type(pre.inverse_a[i]) for i in (0, 1)] == [WoodburyInverse, WoodburyInverse]
    assert [type(pre.inverse_g[i]) for i in (0, 1)] == [WoodburyInverse, DenseInverse]
    h1 = torch.cat([x, torch.ones(4, 1)], dim=1)
    torch.testing.assert_close(pre.A[0], h1.T @ h1 / 4)
    for i, layer in enumerate((m[0], m[2])):
        A, G = pre.A[i], pre.G[i]
        dA, dG = factor_dampings(A.diagonal().mean(), G.diagonal().mean(), 0.03, "pi")
        torch.testing.assert_close(pre.inv_a[i], torch.linalg.inv(A + dA * torch.eye(A.shape[0])))
        dense = torch.kron(A + dA * torch.eye(A.shape[0]), G + dG * torch.eye(G.shape[0]))
        expect = torch.linalg.solve(dense, cv.layer_vector(grad, m, layer, "thesis"))
        torch.testing.assert_close(cv.layer_vector(step, m, layer, "thesis"), expect)


# (batch, n_in, n_out, fused, vectors G^-1 is applied to, vectors A^-1 is applied to):
# fused, g G^-1 when batch < m = n_in + 1 and [h 1] A^-1 when batch < n_out; unfused, the
# gradient's columns and rows unless the minibatch route is cheaper despite its product
ASSOCIATIONS = [(2, 30, 40, True, "g", "h"), (5, 30, 3, True, "g", "X"),
                (5, 2, 30, True, "X", "h"), (50, 3, 4, True, "X", "X"),
                (50, 3, 4, False, "X", "X"), (2, 300, 400, False, "g", "h"),
                (2, 30, 40, False, "g", "h")]


@pytest.mark.parametrize("batch, n_in, n_out, fused, g_on, a_on", ASSOCIATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_each_association_and_form_gives_the_same_direction(batch, n_in, n_out, fused, g_on, a_on,
                                                            bias):
    torch.manual_seed(0)
    h, g = torch.randn(batch, n_in), torch.randn(batch, n_out)
    h1 = torch.cat([h, torch.ones(batch, 1)], dim=1) if bias else h
    m = h1.shape[1]
    rows_a, rows_g = torch.randn(3, m), torch.randn(3, n_out)  # Woodbury where 6 < n
    inv_a, inv_g = factor_inverses([SampleFactor(rows_a), SampleFactor(rows_g)], [0.5, 0.2])
    spy_a, spy_g = Spy(inv_a), Spy(inv_g)
    gW, gb = g.T @ h, g.sum(0)
    dW, db = kfac_direction(None if fused else gW, None if fused else gb, h, g, spy_a, spy_g, bias)
    assert sum(spy_g.rows) == (batch if g_on == "g" else m)
    assert spy_a.rows == [batch if a_on == "h" else n_out]
    dense_a = torch.linalg.inv(rows_a.T @ rows_a / 3 + 0.5 * torch.eye(m))
    dense_g = torch.linalg.inv(rows_g.T @ rows_g / 3 + 0.2 * torch.eye(n_out))
    expect = dense_g @ (g.T @ h1) @ dense_a
    torch.testing.assert_close(dW, expect[:, :n_in])
    if bias:
        torch.testing.assert_close(db, expect[:, n_in])
    else:
        assert db is None


def test_gn_cross_entropy_factor_is_true_label_gradient_outer_product():
    """Thesis section 3.4: with softmax probabilities as the output, the GN middle term
    is e_t e_t^T / p_t^2, so J_a^T D J_a is exact from the main backward, any batch."""
    m = net(3)
    x, labels = torch.randn(6, 4), torch.randint(0, 3, (6,))
    pre = KFACPreconditioner(m, loss="cross_entropy", curvature="gauss_newton", amortization=1)
    kfac_step(m, pre, x, labels, nn.functional.cross_entropy, "cross_entropy")
    probs_model = nn.Sequential(m, nn.Softmax(dim=1))
    p = probs_model(x).detach()
    onehot = nn.functional.one_hot(labels, 3).to(p.dtype)

    def nll_probs(q, t):
        return -(t * torch.log(q)).sum(dim=1).mean()

    D = cv.output_hessian(nll_probs, p, onehot)
    torch.testing.assert_close(D, torch.diag_embed(onehot / p**2))
    for i, layer in enumerate((m[0], m[2])):
        torch.testing.assert_close(pre.G[i], exact_g_factor(probs_model, layer, x, D))


@pytest.mark.parametrize("loss, curvature", [("cross_entropy", "fisher"), ("mse", "fisher"),
                                             ("mse", "gauss_newton")])
def test_sampled_probes_have_covariance_d(loss, curvature):
    """E[v v^T] = D for the back-propagated probes, so the sampled G is unbiased
    (G is linear in v v^T; the exact-probe tests check the rest)."""
    m = net(4)
    pre = KFACPreconditioner(m, loss=loss, curvature=curvature, seed=7)
    f = torch.randn(1, 3).expand(40000, 3)
    v = pre.probes(f)[0]
    if loss == "mse":
        D = 2 * torch.eye(3)
    else:
        D = cv.fisher_middle(f[:1], "categorical", "logits")[0]
    torch.testing.assert_close(v.T @ v / v.shape[0], D, atol=0.03 * D.abs().max(), rtol=0)


def test_sampled_fisher_factor_matches_exact_on_average():
    """A short end-to-end check through curvature_backward (cross-entropy Fisher)."""
    m = net(4)
    x = torch.randn(2, 4).repeat(500, 1)  # many copies: one draw per copy
    pre = KFACPreconditioner(m, loss="cross_entropy", amortization=1, seed=1)
    out = m(x)
    pre.curvature_backward(out)
    out.sum().backward()
    pre.precondition()
    D = cv.fisher_middle(m(x[:2]), "categorical", "logits")
    exact = exact_g_factor(m, m[2], x[:2], D)
    torch.testing.assert_close(pre.G[1], exact, atol=0.1 * exact.abs().max(), rtol=0)


def test_fisher_equals_gn_for_quadratic_loss_in_expectation():
    """For ||f - y||^2 the Fisher (targets from N(f, I/2)) and the GN share D = 2I."""
    m = net(5)
    x, y = torch.randn(4, 4), torch.randn(4, 3)
    F = cv.fisher(m, x, "gaussian")
    torch.testing.assert_close(cv.gauss_newton(m, mse_sum, x, y), 2 * F)


def test_curvature_backward_leaves_grad_untouched_and_is_required():
    m = net(6)
    x, y = torch.randn(4, 4), torch.randn(4, 3)
    pre = KFACPreconditioner(m, loss="mse", amortization=1)
    out = m(x)
    pre.curvature_backward(out)
    assert all(p.grad is None for p in m.parameters())
    mse_sum(out, y).backward()
    pre.precondition()
    out = m(x)  # no curvature pass on a refresh update: the backward (fused) or the
    with pytest.raises(RuntimeError, match="curvature_backward"):  # precondition raises
        mse_sum(out, y).backward()
        pre.precondition()


def test_amortized_updates_skip_the_curvature_pass():
    m = net(7)
    opt = KFAC(m, loss="mse", lr=0.1, amortization=3, damping=0.1)
    for _ in range(4):
        x = torch.randn(5, 4)
        out = m(x)
        opt.curvature_backward(out)
        opt.zero_grad()
        mse_sum(out, torch.zeros(5, 3)).backward()
        opt.step()
    assert opt.preconditioner.schedule.refreshes == {0: 2, 1: 2}  # updates 0 and 3


@pytest.mark.parametrize("fused", [False, True])
def test_no_nan_with_dead_units_and_constant_inputs(fused):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10), nn.ReLU(),
                      nn.Linear(10, 20)).float()
    with torch.no_grad():
        m[2].bias.fill_(-100.0)
    for curvature in ("fisher", "gauss_newton"):
        opt = KFAC(m, loss="mse", lr=0.5, damping=1e-8, curvature=curvature, amortization=2, fused=fused)
        for _ in range(4):
            x = torch.rand(4, 20, dtype=torch.float32)
            x[:, :5] = 0.3
            out = m(x)
            opt.curvature_backward(out)
            opt.zero_grad()
            mse_sum(out, x).backward()
            opt.step()
            assert all(torch.isfinite(p).all() for p in m.parameters())
        opt.preconditioner.remove()


def test_state_dict_round_trip_continues_identically():
    xs = torch.randn(8, 5, 4)

    def run(m, opt, batch):
        for x in batch:
            out = m(x)
            opt.curvature_backward(out)
            opt.zero_grad()
            mse_sum(out, torch.zeros(5, 3)).backward()
            opt.step()

    m = net(8)
    opt = KFAC(m, loss="mse", lr=0.1, damping=0.05, amortization=2, seed=3)
    run(m, opt, xs[:3])
    saved_m = {k: v.clone() for k, v in m.state_dict().items()}
    saved_o = opt.state_dict()
    run(m, opt, xs[3:])
    m2 = net(9)
    m2.load_state_dict(saved_m)
    opt2 = KFAC(m2, loss="mse", lr=1.0, damping=1.0, amortization=2, seed=99)
    opt2.load_state_dict(saved_o)
    run(m2, opt2, xs[3:])
    for p, q in zip(m.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_bad_arguments_raise():
    m = net()
    with pytest.raises(ValueError, match="loss must be"):
        KFAC(m, lr=0.1, loss="hinge")
    with pytest.raises(ValueError, match="curvature must be"):
        KFAC(m, loss="mse", lr=0.1, curvature="hessian")
    with pytest.raises(ValueError, match="damping must be positive"):
        KFAC(m, loss="mse", lr=0.1, damping=0.0)


@pytest.mark.parametrize("loss, curvature", [("mse", "fisher"), ("cross_entropy", "fisher"),
                                             ("cross_entropy", "gauss_newton")])
def test_kfac_through_the_train_loop(loss, curvature):
    from sokit.data import Dataset
    from sokit.train import train

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 12, generator=gen, dtype=torch.float32)
    y = (x[:, :3].argmax(1)).to(torch.int64)
    data = Dataset("toy", x, y, x[:16], y[:16])
    torch.manual_seed(0)
    n_out = 12 if loss == "mse" else 3
    model = nn.Sequential(nn.Linear(12, 8), nn.Sigmoid(), nn.Linear(8, n_out)).float()
    opt = KFAC(model, lr=0.1, loss=loss, curvature=curvature, damping=0.1, amortization=5)
    out = train(model, opt, data, loss, updates=40, batch_size=16, progress=False, eval_every=20)
    assert not out["diverged"]
    assert out["train_loss"][-1] < out["train_loss"][0]
    assert opt.preconditioner.schedule.refreshes[0] == 8


@pytest.mark.parametrize("optimizer", ["kfac", "acp"])
def test_a_diverging_run_is_recorded_as_diverged(optimizer):
    """A huge learning rate blows the statistics up; the loop must say so, not raise."""
    from sokit.data import Dataset
    from sokit.optim.acp import ACP
    from sokit.train import train

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 12, generator=gen, dtype=torch.float32)
    data = Dataset("toy", x, torch.zeros(64, dtype=torch.int64), x[:16], torch.zeros(16, dtype=torch.int64))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 12)).float()
    opt = (KFAC(model, lr=1e8, loss="mse", damping=1e-3, amortization=2) if optimizer == "kfac"
           else ACP(model, lr=1e8, eps=1e-3, amortization=2))
    out = train(model, opt, data, "mse", updates=60, batch_size=16, progress=False, check_every=5)
    assert out["diverged"] and out["diverged_at"] is not None and out["diverged_at"] < 60


def test_preconditioner_before_torch_optimizer_matches_kfac():
    x, y = torch.randn(6, 4), torch.randn(6, 3)
    m1, m2 = net(10), net(10)
    kfac = KFAC(m1, loss="mse", lr=0.1, damping=0.1, amortization=1, seed=5)
    pre = KFACPreconditioner(m2, loss="mse", damping=0.1, amortization=1, seed=5)
    sgd = torch.optim.SGD(m2.parameters(), lr=0.1)
    for m, opt, step in ((m1, kfac, kfac.step), (m2, pre, lambda: (pre.precondition(), sgd.step()))):
        out = m(x)
        opt.curvature_backward(out)
        mse_sum(out, y).backward()
        step()
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("widths, batch", [((4, 9, 3, 2), 6), ((12, 14, 3, 2), 4)],
                         ids=["dense", "woodbury"])
@pytest.mark.parametrize("loss, curvature", [("mse", "fisher"), ("cross_entropy", "gauss_newton"),
                                             ("cross_entropy", "fisher")])
def test_fused_mode_equals_unfused_mode(loss, curvature, widths, batch):
    """Five updates, three refreshes; in the wide model both factors of the first layer
    and A of the second by Woodbury."""
    n0, n1, n2, n3 = widths
    xs = torch.randn(5, batch, n0)
    labels = torch.randint(0, 2, (5, batch))
    models = []
    for fused in (False, True):
        torch.manual_seed(12)
        m = nn.Sequential(nn.Linear(n0, n1), nn.ReLU(inplace=True), nn.Linear(n1, n2, bias=False),
                          nn.Tanh(), nn.Linear(n2, n3))
        opt = KFAC(m, lr=0.1, loss=loss, curvature=curvature, damping=0.1, amortization=2,
                   seed=4, fused=fused)
        for x, y in zip(xs, labels):
            out = m(x)
            opt.curvature_backward(out)
            opt.zero_grad()
            value = mse_sum(out, x[:, :n3]) if loss == "mse" else nn.functional.cross_entropy(out, y)
            value.backward()
            opt.step()
        models.append(m)
        pre = opt.preconditioner
        assert pre.schedule.refreshes == {0: 3, 1: 3, 2: 3}
        assert [isinstance(pre.inverse_a[i], WoodburyInverse) for i in range(3)] == \
            [2 * batch < n for n in (n0 + 1, n1, n2 + 1)]
        assert [isinstance(pre.inverse_g[i], WoodburyInverse) for i in range(3)] == \
            [2 * batch < n for n in (n1, n2, n3)]
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q)
