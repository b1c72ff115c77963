"""The optimizers of sokit.optim as torch.optim optimizers; their preconditioners before any
torch optimizer (issue: optimizers as ``torch.optim.Optimizer`` subclasses)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from sokit.losses import cross_entropy, mse_sum
from sokit.optim import ACP, KFAC, ACPPreconditioner, CenteredGD, KFACPreconditioner

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def net(seed: int = 0, sizes=(6, 5, 4)) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Tanh(), nn.Linear(sizes[1], sizes[2]))


# name -> (factory(model, lr), loss name); amortization 1 so every step sees its own statistics
FACTORIES = {
    "centered": (lambda m, lr: CenteredGD(m, lr), "mse"),
    "acp": (lambda m, lr: ACP(m, lr, eps=0.1, alpha=0.5, amortization=1), "mse"),
    "acp_heuristic": (lambda m, lr: ACP(m, lr, eps=0.1, alpha="heuristic", amortization=3), "mse"),
    "kfac_gn_exact": (lambda m, lr: KFAC(m, lr, "mse", curvature="gauss_newton", gn_probes="exact",
                                          damping=0.1, amortization=1), "mse"),
    "kfac_fisher": (lambda m, lr: KFAC(m, lr, "mse", damping=0.1, amortization=2, seed=4), "mse"),
    "kfac_fisher_ce": (lambda m, lr: KFAC(m, lr, "cross_entropy", damping=0.1, amortization=2), "cross_entropy"),
    "acp_fused": (lambda m, lr: ACP(m, lr, eps=0.1, alpha="heuristic", amortization=2, fused=True), "mse"),
}
LOSS_FN = {"mse": mse_sum, "cross_entropy": cross_entropy}


def batch(seed: int, loss: str, n: int = 8, sizes=(6, 5, 4)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, sizes[0], generator=gen)
    if loss == "mse":
        return x, torch.randn(n, sizes[-1], generator=gen)
    return x, torch.randint(0, sizes[-1], (n,), generator=gen)


def train_step(model, opt, x, y, loss: str) -> torch.Tensor:
    """The step of sokit.train.train in a user's loop."""
    out = model(x)
    value = LOSS_FN[loss](out, y)
    if hasattr(opt, "curvature_backward"):
        opt.curvature_backward(out)
    opt.zero_grad()
    value.backward()
    opt.step()
    return value.detach()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("name", ["centered", "acp", "kfac_gn_exact"])
def test_is_a_torch_optimizer_over_the_trainable_parameters(name):
    factory, _ = FACTORIES[name]
    m = net()
    m[0].bias.requires_grad_(False)
    opt = factory(m, 0.1)
    assert isinstance(opt, torch.optim.Optimizer)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == 0.1 and opt.lr == 0.1
    assert [id(p) for p in opt.param_groups[0]["params"]] == [
        id(p) for p in m.parameters() if p.requires_grad]
    assert opt.defaults == {"lr": 0.1}
    assert opt.preconditioner.model is m


def test_kfac_keeps_its_attributes():
    opt = KFAC(net(), 0.1, "cross_entropy")
    assert opt.loss == "cross_entropy" and opt.preconditioner.loss == "cross_entropy"
    assert opt.curvature_backward == opt.preconditioner.curvature_backward
    with pytest.raises(TypeError):
        KFAC(net(), 0.1)  # the loss has no default
    with pytest.raises(ValueError, match="loss must be one of"):
        KFAC(net(), 0.1, "mae")
    assert not hasattr(ACP(net(), 0.1), "curvature_backward")


@pytest.mark.parametrize("name", ["centered", "acp", "kfac_gn_exact"])
def test_step_lr_halves_the_step_for_the_same_gradient(name):
    """A plain user loop with StepLR: from the same parameters and minibatch, each
    epoch's parameter change is half the previous one (the step reads param_groups)."""
    factory, loss = FACTORIES[name]
    m = net()
    theta0 = copy.deepcopy(m.state_dict())
    opt = factory(m, 0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = batch(0, loss)
    changes, lrs = [], []
    for _ in range(3):
        m.load_state_dict(theta0)
        before = flat(m)
        lrs.append(opt.param_groups[0]["lr"])
        train_step(m, opt, x, y, loss)
        changes.append(flat(m) - before)
        sched.step()
    assert lrs == [0.2, 0.1, 0.05]
    assert changes[0].abs().max() > 1e-3
    torch.testing.assert_close(changes[1], changes[0] / 2, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(changes[2], changes[0] / 4, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["acp", "kfac_fisher", "kfac_fisher_ce"])
def test_step_with_a_closure_returns_its_loss_and_matches_the_plain_step(name):
    factory, loss = FACTORIES[name]
    m1, m2 = net(1), net(1)
    o1, o2 = factory(m1, 0.1), factory(m2, 0.1)
    for t in range(4):
        x, y = batch(t, loss)
        want = train_step(m1, o1, x, y, loss)

        def closure(x=x, y=y):
            o2.zero_grad()
            out = m2(x)
            if hasattr(o2, "curvature_backward"):
                o2.curvature_backward(out)
            value = LOSS_FN[loss](out, y)
            value.backward()
            return value

        with torch.no_grad():  # step evaluates the closure with gradients enabled
            got = o2.step(closure)
        assert torch.equal(got.detach(), want)
        assert torch.equal(flat(m1), flat(m2))


def test_zero_grad():
    m = net()
    opt = CenteredGD(m, 0.1)
    x, y = batch(0, "mse")
    mse_sum(m(x), y).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("which", ["acp", "kfac"])
def test_preconditioner_before_adam(which):
    """precondition() rewrites .grad, then adam.step(): Adam's first step is
    -lr d / (|d| + eps) of the PRECONDITIONED direction d."""
    m = net(2)
    if which == "acp":
        pre = ACPPreconditioner(m, eps=0.1, alpha="heuristic", amortization=2)
    else:
        pre = KFACPreconditioner(m, "mse", damping=0.1, amortization=2)
    adam = torch.optim.Adam(m.parameters(), lr=1e-2, eps=1e-8)
    xs = torch.randn(64, 6, generator=torch.Generator().manual_seed(9))
    ys = 0.5 * torch.tanh(xs[:, :4])  # a target the network can fit

    def full_loss():
        with torch.no_grad():
            return float(mse_sum(m(xs), ys))

    start = full_loss()
    for t in range(40):
        x, y = xs[t % 4 * 16:(t % 4 + 1) * 16], ys[t % 4 * 16:(t % 4 + 1) * 16]
        out = m(x)
        value = mse_sum(out, y)
        if hasattr(pre, "curvature_backward"):
            pre.curvature_backward(out)
        adam.zero_grad()
        value.backward()
        raw = [p.grad.clone() for p in m.parameters()]
        pre.precondition()
        d = [p.grad.clone() for p in m.parameters()]
        before = [p.detach().clone() for p in m.parameters()]
        adam.step()
        if t == 0:
            assert any(not torch.allclose(r, q) for r, q in zip(raw, d))
            for p, b, q in zip(m.parameters(), before, d):
                torch.testing.assert_close(p.detach() - b, -1e-2 * q / (q.abs() + 1e-8))
    assert pre.n_updates == 40
    assert full_loss() < 0.5 * start


@pytest.mark.parametrize("curvature", ["fisher", "gauss_newton"])
def test_classifier_trained_with_cross_entropy_kfac(curvature):
    """Three Gaussian blobs, a 2-16-3 tanh classifier, KFAC(loss="cross_entropy")."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    labels = torch.randint(0, 3, (300,), generator=gen)
    x = centers[labels] + 0.5 * torch.randn(300, 2, generator=gen)
    m = net(3, sizes=(2, 16, 3))
    opt = KFAC(m, 0.2, loss="cross_entropy", curvature=curvature, damping=1e-2, amortization=5)
    assert opt.loss == "cross_entropy"
    with torch.no_grad():
        start = float(cross_entropy(m(x), labels))
    for t in range(60):
        idx = torch.arange(t * 50, (t + 1) * 50) % 300
        train_step(m, opt, x[idx], labels[idx], "cross_entropy")
    with torch.no_grad():
        logits = m(x)
        end = float(cross_entropy(logits, labels))
        error = float((logits.argmax(1) != labels).double().mean())
    assert end < 0.3 * start and error < 0.05


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_round_trip_through_weights_only_load(name):
    """torch.save / torch.load(weights_only=True) of model and optimizer (with a
    scheduler): the restored run takes the same steps as the original."""
    factory, loss = FACTORIES[name]
    m = net(5)
    opt = factory(m, 0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for t in range(3):
        train_step(m, opt, *batch(t, loss), loss)
        sched.step()
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": torch.get_rng_state()}, buf)
    lr_at_save = opt.param_groups[0]["lr"]
    after = []
    for t in range(3, 7):
        train_step(m, opt, *batch(t, loss), loss)
        sched.step()
        after.append(flat(m))

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert "preconditioner" in saved["opt"] and "param_groups" in saved["opt"]
    m2 = net(6)
    m2.load_state_dict(saved["model"])
    opt2 = factory(m2, 7.0)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    torch.set_rng_state(saved["rng"])
    assert opt2.param_groups[0]["lr"] == lr_at_save == 0.05
    assert opt2.preconditioner.n_updates == 3
    for t, want in zip(range(3, 7), after):
        train_step(m2, opt2, *batch(t, loss), loss)
        sched2.step()
        assert torch.equal(flat(m2), want), f"update {t}"


def test_old_state_dict_form_still_loads():
    m = net()
    opt = ACP(m, 0.1, amortization=2)
    train_step(m, opt, *batch(0, "mse"), "mse")
    old = {"lr": 0.3, "preconditioner": opt.preconditioner.state_dict()}
    opt2 = ACP(net(), 1.0, amortization=2)
    opt2.load_state_dict(old)
    assert opt2.param_groups[0]["lr"] == 0.3 and opt2.preconditioner.n_updates == 1


def test_kfac_mse_against_nn_mse_loss():
    """KFAC's "mse" is sokit.losses.mse_sum (summed over the n_out outputs); training with
    nn.MSELoss() (also averaged over the outputs) is KFAC on mse_sum with lr / n_out."""
    n_out = 4
    m1, m2 = net(7), net(7)
    o1 = KFAC(m1, 0.1 / n_out, "mse", damping=0.1, amortization=2, seed=1)
    o2 = KFAC(m2, 0.1, "mse", damping=0.1, amortization=2, seed=1)
    mse_mean = nn.MSELoss()
    for t in range(4):
        x, y = batch(t, "mse")
        out1, out2 = m1(x), m2(x)
        torch.testing.assert_close(mse_mean(out2, y), mse_sum(out2, y) / n_out)
        o1.curvature_backward(out1)
        o2.curvature_backward(out2)
        o1.zero_grad(), o2.zero_grad()
        mse_sum(out1, y).backward()
        mse_mean(out2, y).backward()
        o1.step(), o2.step()
        torch.testing.assert_close(flat(m1), flat(m2), rtol=1e-12, atol=1e-12)
