"""Updated backpropagation (chapter 5, Algorithm 2) against exact recomputation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import hessian as func_hessian

from sokit import curvature, losses
from sokit.optim.ubp import UBP, Curvature, backprop_signals, blocks, carried_jacobians, relative_corrections, ubp_sweep

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def tiny(seed: int = 0, out: int = 5, code_linear: bool = True) -> nn.Sequential:
    """5-4-3-4-out: sigmoid, linear (or tanh) code, tanh, then linear output."""
    torch.manual_seed(seed)
    mid = nn.Identity() if code_linear else nn.Tanh()
    return nn.Sequential(
        nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 3), mid, nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, out)
    ).double()


def batch(loss: str, n: int = 6, out: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = x.clone() if loss == "mse" else torch.randint(0, out, (n,), generator=g)
    return x, y


def record(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, loss: str):
    """Each block's input and preactivation, the output and dL/df, by hand."""
    inputs, preacts = [], []
    h = x
    for blk in blocks(model):
        inputs.append(h)
        a = blk.linear(h)
        preacts.append(a)
        h = a
        for act in blk.activations:
            h = act(h)
    out = h.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(losses.get(loss)(out, y), out)
    return [t.detach() for t in inputs], [t.detach() for t in preacts], out.detach(), g


def sweep(model, x, y, loss, lr, hessian="exact"):
    inputs, preacts, out, g = record(model, x, y, loss)
    return ubp_sweep(model, inputs, preacts, out, g, loss, lr, hessian), inputs


def true_signal(model, steps, inputs, k, y, loss) -> torch.Tensor:
    """dL/dh at block k's input after applying the updates of blocks k and above (UBP's target)."""
    moved = copy.deepcopy(model)
    mb = blocks(moved)
    with torch.no_grad():
        for j in range(k, len(mb)):
            mb[j].linear.weight.add_(steps[j].dW)
            if steps[j].db is not None:
                mb[j].linear.bias.add_(steps[j].db)
    h = inputs[k].clone().requires_grad_(True)
    out = moved[mb[k].index :](h)
    (g,) = torch.autograd.grad(losses.get(loss)(out, y), h)
    return g


def plain_signal(model, inputs, k, y, loss) -> torch.Tensor:
    h = inputs[k].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(losses.get(loss)(model[blocks(model)[k].index :](h), y), h)
    return g


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("hessian", ["exact", "gn"])
def test_zero_step_is_backprop(loss, hessian):
    model = tiny()
    x, y = batch(loss)
    steps, inputs = sweep(model, x, y, loss, lr=0.0, hessian=hessian)
    for k in range(1, len(steps)):
        torch.testing.assert_close(steps[k].signal, plain_signal(model, inputs, k, y, loss))
        assert steps[k].dW.abs().max() == 0
    assert steps[0].signal is None


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_exact_signal_error_is_second_order(loss):
    """Halving the step divides UBP's error by ~4; plain backprop's error only by ~2."""
    model = tiny(code_linear=False)
    x, y = batch(loss)
    errors, stale = [], []
    for lr in (0.02, 0.01, 0.005):
        steps, inputs = sweep(model, x, y, loss, lr, "exact")
        e, s = [], []
        for k in range(1, len(steps)):
            truth = true_signal(model, steps, inputs, k, y, loss)
            e.append((steps[k].signal - truth).norm())
            s.append((plain_signal(model, inputs, k, y, loss) - truth).norm())
        errors.append(torch.stack(e))
        stale.append(torch.stack(s))
    for a, b in zip(errors, errors[1:]):
        ratio = a / b
        assert ((ratio > 3.3) & (ratio < 4.8)).all(), ratio
    for a, b in zip(stale, stale[1:]):
        ratio = a / b
        assert ((ratio > 1.6) & (ratio < 2.5)).all(), ratio
    assert (errors[-1] < 0.2 * stale[-1]).all()


def test_gn_signal_error_is_first_order_on_a_nonlinear_net():
    """The Gauss-Newton curvature drops terms of d2L/da2, so its error is O(lr)."""
    model = tiny(code_linear=False)
    x, y = batch("mse")
    err = []
    for lr in (0.02, 0.01):
        steps, inputs = sweep(model, x, y, "mse", lr, "gn")
        err.append((steps[1].signal - true_signal(model, steps, inputs, 1, y, "mse")).norm())
    assert 1.6 < err[0] / err[1] < 2.6


def test_gn_equals_exact_for_linear_net_and_quadratic_loss():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3), nn.Identity(), nn.Linear(3, 5)).double()
    x, y = batch("mse")
    gn, _ = sweep(model, x, y, "mse", 0.3, "gn")
    ex, inputs = sweep(model, x, y, "mse", 0.3, "exact")
    for a, b in zip(gn[1:], ex[1:]):
        torch.testing.assert_close(a.signal, b.signal)
        torch.testing.assert_close(a.dW, b.dW)
    # so the Gauss-Newton signal is then second-order accurate too
    gn, inputs = sweep(model, x, y, "mse", 0.01, "gn")
    truth = true_signal(model, gn, inputs, 1, y, "mse")
    assert (gn[1].signal - truth).norm() < 0.1 * (plain_signal(model, inputs, 1, y, "mse") - truth).norm()


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_exact_curvature_product_matches_torch_func_hessian(loss):
    model = tiny(code_linear=False)
    x, y = batch(loss)
    _, preacts, out, g = record(model, x, y, loss)
    curv = Curvature.at(model, preacts, out, g, loss, "exact")
    lf = losses.get(loss)
    for k, (blk, a) in enumerate(zip(blocks(model), preacts)):
        v = torch.randn_like(a)
        H = func_hessian(lambda z: lf(model[blk.index + 1 :](z), y))(a)  # (B, n, B, n)
        torch.testing.assert_close(curv.apply(k, v), torch.einsum("bnco,co->bn", H, v))


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_gauss_newton_product_matches_the_explicit_blocks(loss):
    """J^T (d2L/df2) J v from Jacobian-vector products = the explicit matrices (torch.func)."""
    model = tiny(code_linear=False)
    x, y = batch(loss)
    _, preacts, out, g = record(model, x, y, loss)
    curv = Curvature.at(model, preacts, out, g, loss, "gn")
    D = curvature.output_hessian(losses.get(loss), out, y) / x.shape[0]
    for k, (blk, a) in enumerate(zip(blocks(model), preacts)):
        J = curvature.preactivation_jacobian(model, blk.linear, x)  # (B, m, n)
        v = torch.randn_like(a)
        expected = torch.einsum("bmn,bmo,bop,bp->bn", J, D, J, v)
        torch.testing.assert_close(curv.apply(k, v), expected)


def test_curvature_rejects_unknown_hessian():
    model = tiny()
    x, y = batch("mse")
    _, preacts, out, g = record(model, x, y, "mse")
    with pytest.raises(ValueError, match="hessian"):
        Curvature.at(model, preacts, out, g, "mse", "fisher")


def reference_sweep(model, x, y, loss, lr, hessian):
    """Algorithm 2 with curvature from torch.func (sokit.curvature), example by example."""
    lf = losses.get(loss)
    inputs, preacts, out, g = record(model, x, y, loss)
    bl = blocks(model)
    dh, signals, dws = g, [None] * len(bl), [None] * len(bl)
    for k in reversed(range(len(bl))):
        blk, h, a = bl[k], inputs[k], preacts[k]
        da = dh * blk.derivative(a)
        dW, db = -lr * da.T @ h, -lr * da.sum(0)
        dws[k] = dW
        if k == 0:
            break
        delta = h @ dW.T + db
        if hessian == "gn":
            J = curvature.preactivation_jacobian(model, blk.linear, x)  # (B, m, n)
            D = curvature.output_hessian(lf, out, y) / x.shape[0]  # mean loss
            curv = torch.stack([J[i].T @ D[i] @ J[i] @ delta[i] for i in range(x.shape[0])])
        else:
            H = func_hessian(lambda z: lf(model[blk.index + 1 :](z), y))(a)
            curv = torch.stack([H[i, :, i, :] @ delta[i] for i in range(x.shape[0])])
        W = blk.linear.weight
        dh = da @ (W + dW) + curv @ W
        signals[k] = dh
    return signals, dws


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("hessian", ["exact", "gn"])
def test_sweep_matches_torch_func_reference(loss, hessian):
    model = tiny(code_linear=False, out=12)  # more outputs than any layer's width
    x, y = batch(loss, out=12)
    if loss == "mse":
        y = torch.randn(x.shape[0], 12, generator=torch.Generator().manual_seed(2))
    steps, _ = sweep(model, x, y, loss, 0.3, hessian)
    signals, dws = reference_sweep(model, x, y, loss, 0.3, hessian)
    for k, s in enumerate(steps):
        torch.testing.assert_close(s.dW, dws[k])
        if k > 0:
            torch.testing.assert_close(s.signal, signals[k])


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_carried_jacobians_give_the_gauss_newton_blocks(loss):
    model = tiny(code_linear=False)
    x, y = batch(loss)
    _, preacts, out, _ = record(model, x, y, loss)
    D = curvature.output_hessian(losses.get(loss), out, y) / x.shape[0]
    for blk, J in zip(blocks(model), carried_jacobians(model, preacts, out, loss)):
        Ja = curvature.preactivation_jacobian(model, blk.linear, x)
        torch.testing.assert_close(J.transpose(1, 2) @ J, Ja.transpose(1, 2) @ D @ Ja)


def test_optimizer_applies_the_sweep_and_round_trips_state():
    model = tiny()
    x, y = batch("mse")
    ref = copy.deepcopy(model)
    steps, _ = sweep(ref, x, y, "mse", 0.1, "gn")
    opt = UBP(model, lr=0.1, loss="mse", hessian="gn")
    out = model(x)
    opt.zero_grad()
    losses.mse_sum(out, y).backward()
    top_grad = model[-1].weight.grad.clone()
    opt.step()
    for blk, rblk, s in zip(blocks(model), blocks(ref), steps):
        torch.testing.assert_close(blk.linear.weight, rblk.linear.weight + s.dW)
        torch.testing.assert_close(blk.linear.bias, rblk.linear.bias + s.db)
    # the top layer's update is plain SGD's
    torch.testing.assert_close(steps[-1].dW, -0.1 * top_grad)
    sd = opt.state_dict()
    other = UBP(tiny(), lr=0.5, loss="mse")
    other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.1


def test_eval_forward_does_not_overwrite_the_record():
    model = tiny()
    x, y = batch("mse")
    opt = UBP(model, lr=0.1, loss="mse", hessian="exact")
    ref = copy.deepcopy(model)
    out = model(x)
    losses.mse_sum(out, y).backward()
    with torch.no_grad():
        model(torch.randn(3, 5))
    opt.step()
    steps, _ = sweep(ref, x, y, "mse", 0.1, "exact")
    torch.testing.assert_close(model[0].weight, ref[0].weight + steps[0].dW)


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match="BatchNorm1d"):
        UBP(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)), lr=0.1, loss="mse")
    with pytest.raises(TypeError, match="nn.Sequential"):
        UBP(nn.Linear(3, 3), lr=0.1, loss="mse")
    with pytest.raises(ValueError, match="hessian"):
        UBP(tiny(), lr=0.1, loss="mse", hessian="fisher")
    with pytest.raises(ValueError, match="loss"):
        UBP(tiny(), lr=0.1, loss="hinge")
    opt = UBP(tiny(), lr=0.1, loss="mse")
    with pytest.raises(RuntimeError, match="loss.backward"):
        opt.step()


def test_train_loop_runs_ubp_as_the_manual_sweeps():
    from sokit.data import Dataset, Sampler
    from sokit.train import train

    g = torch.Generator().manual_seed(5)
    x = torch.rand(40, 5, generator=g)
    labels = torch.zeros(40, dtype=torch.long)
    data = Dataset("toy", x, labels, x[:10], labels[:10])
    model = tiny()
    ref = copy.deepcopy(model)
    res = train(model, UBP(model, lr=0.5, loss="mse", hessian="gn"), data, "mse", 3, batch_size=10,
                seed=0, n_evals=2, progress=False)
    assert not res["diverged"]
    sampler = Sampler(x, labels, 10, 0)
    for _ in range(3):
        xb = x[sampler.next_indices()]
        steps, _ = sweep(ref, xb, xb, "mse", 0.5, "gn")
        with torch.no_grad():
            for blk, s in zip(blocks(ref), steps):
                blk.linear.weight += s.dW
                blk.linear.bias += s.db
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_monitor_keeps_the_relative_correction_of_each_update_and_train_returns_it(tmp_path):
    """backprop_signals are autograd's dL/dh; the monitored relative correction of each
    update is |UBP - BP| / |BP| of the sweep at the weights before it (zero at lr 0), it
    survives a checkpoint, and train() returns it as diagnostics."""
    from sokit.data import Dataset
    from sokit.train import train

    model, (x, y) = tiny(), batch("mse")
    inputs, preacts, out, g = record(model, x, y, "mse")
    bl = blocks(model)
    plain = backprop_signals([b.linear.weight for b in bl], [b.derivative(a) for b, a in zip(bl, preacts)], g)
    for k, p in enumerate(plain, start=1):
        torch.testing.assert_close(p, plain_signal(model, inputs, k, y, "mse"))
    steps = ubp_sweep(model, inputs, preacts, out, g, "mse", 0.3, "gn")
    want = [((s.signal - p).norm() / p.norm()).item() for s, p in zip(steps[1:], plain)]
    assert relative_corrections(steps, plain) == pytest.approx(want) and min(want) > 0
    assert relative_corrections(ubp_sweep(model, inputs, preacts, out, g, "mse", 0.0), plain) == [0.0] * 3

    opt = UBP(model, lr=0.3, loss="mse", hessian="gn", monitor=True)
    losses.mse_sum(model(x), y).backward()
    opt.step()
    assert opt.corrections == [pytest.approx(want)]
    other = UBP(tiny(), lr=0.3, loss="mse", monitor=True)
    other.load_state_dict(opt.state_dict())
    assert other.corrections == opt.corrections
    assert UBP(tiny(), lr=0.3, loss="mse").diagnostics() == {}

    data = Dataset("toy", x, torch.zeros(6, dtype=torch.long), x, torch.zeros(6, dtype=torch.long))
    m = tiny()
    res = train(m, UBP(m, lr=0.3, loss="mse", monitor=True), data, "mse", 4, batch_size=3, seed=0,
                n_evals=2, progress=False, checkpoint=tmp_path / "ubp.pt")
    assert len(res["diagnostics"]["relative_correction"]) == 4
    assert all(len(c) == 3 and min(c) > 0 for c in res["diagnostics"]["relative_correction"])
