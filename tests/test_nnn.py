"""Natural Neural Networks (PRONG, thesis section 6.4.2): function preservation,
whitening, robustness to singular covariances, and checkpointing."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sokit import models, train
from sokit.data import Dataset
from sokit.optim import OPTIMIZERS
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
        model(torch.randn(32, 6, dtype=torch.float64) + 0.5)   # the training input refresh() reuses
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


# ---- the statistics: training passes only, current parameters ----------------------------

def one_step(model, opt, x, y, between=None):
    loss = ((model(x) - y) ** 2).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    if between is not None:
        between()
    opt.step()
    return loss.item()


@pytest.mark.parametrize("mode", ["no_grad", "eval_mode"])
def test_evaluation_forward_between_backward_and_step_changes_nothing(mode):
    """The refresh on update 0 used the inputs of *any* last forward pass: an evaluation
    between backward and step moved the parameters (by up to 7e2 in the issue)."""
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    other = torch.randn(40, 6, dtype=torch.float64) * 5 + 2
    runs = []
    for evaluate in (False, True):
        model = mlp()
        opt = NNN(model, lr=0.1, amortization=2, eps=1e-2)

        def between(model=model):
            if mode == "no_grad":
                with torch.no_grad():
                    model(other)
            else:
                model.eval()
                model(other)          # gradients enabled but evaluation mode
                model.train()
        for _ in range(3):            # refreshes after updates 0 and 2
            one_step(model, opt, x, y, between if evaluate else None)
        runs.append([t.detach().clone() for t in (*model.parameters(), *model.buffers())])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


class DenseWhitened(nn.Module):
    """The reference PRONG layer: ``U = E diag(gain) E^T`` from ``eigh`` of the n x n
    covariance (gain 1 on degenerate directions), multiplied densely."""

    def __init__(self, layer: WhitenedLinear) -> None:
        super().__init__()
        self.V, self.d = nn.Parameter(layer.V.detach().clone()), nn.Parameter(layer.d.detach().clone())
        self.U, self.mu = layer.U.clone(), layer.mu.clone()

    def forward(self, h):
        return (h - self.mu) @ self.U @ self.V.t() + self.d

    @torch.no_grad()
    def refresh(self, h, eps):
        mu = h.mean(0)
        lam, E = torch.linalg.eigh((h - mu).t() @ (h - mu) / len(h))
        lam = lam.clamp_min(0)
        tol = h.shape[1] * torch.finfo(h.dtype).eps * (max(lam.max(), (h * h).mean(0).max()) + eps)
        gain = torch.where(lam <= tol, torch.ones_like(lam), (lam + eps).rsqrt())
        U = (E * gain) @ E.t()
        W = self.V @ self.U
        self.d += W @ (mu - self.mu)
        self.V.copy_(W @ torch.linalg.inv(U))
        self.U, self.mu = U, mu


@pytest.mark.parametrize("batch", [5, 40])
def test_cheaper_routes_follow_the_dense_eigh_trajectory(batch):
    """Batch 5 below widths 12 and 10: the covariance's eigenpairs from a QR of the data
    and U applied through its non-degenerate eigenvectors (2 r < n); batch 40: eigh and
    dense U. Either way the same effective weights ``V U`` and the same function, after
    refreshes at updates 0, 2, 4, 6 and 8, as the reference layer."""
    model = mlp(sizes=(12, 10, 8, 3))
    opt = NNN(model, lr=0.2, amortization=2, eps=1e-2)
    ref_layers = [DenseWhitened(layer) for layer in opt.layers]
    ref = nn.Sequential(ref_layers[0], nn.Sigmoid(), ref_layers[1], nn.Sigmoid(), ref_layers[2])
    ref_params = [p for layer in ref_layers for p in (layer.V, layer.d)]
    g = torch.Generator().manual_seed(7)
    for update in range(9):
        x = torch.randn(batch, 12, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 12) + 1
        y = torch.randn(batch, 3, generator=g, dtype=torch.float64)
        one_step(model, opt, x, y)
        loss = ((ref(x) - y) ** 2).sum(1).mean()
        grads = torch.autograd.grad(loss, ref_params)
        with torch.no_grad():
            for p, gp in zip(ref_params, grads):
                p -= 0.2 * gp
            if update % 2 == 0:
                h = x
                for i, layer in enumerate(ref_layers):
                    layer.refresh(h, 1e-2)
                    h = ref[2 * i:2 * i + 1](h)
                    h = torch.sigmoid(h) if i < 2 else h
    low_rank = [2 * layer._rank < layer.in_features for layer in opt.layers]
    assert low_rank == ([True, True, False] if batch == 5 else [False, False, False])
    probe = torch.randn(30, 12, generator=g, dtype=torch.float64)
    assert_close(model(probe), ref(probe), atol=1e-11, rtol=1e-11)
    for layer, r in zip(opt.layers, ref_layers):
        assert_close(layer.U, r.U, atol=1e-11, rtol=0)
        assert_close(layer.V @ layer.U, r.V @ r.U, atol=1e-11, rtol=1e-11)


def whitened_inputs(model, opt, x):
    """Each layer's effective input ``U (h - mu)`` on ``x`` (collected under no_grad)."""
    hs = []
    hooks = [layer.register_forward_pre_hook(lambda m, a: hs.append(a[0])) for layer in opt.layers]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return [(h - layer.mu) @ layer.U for h, layer in zip(hs, opt.layers)]


def test_right_after_a_refresh_the_batch_is_whitened():
    """The statistics are those of the current parameters, not one update stale (the
    issue measured a whitened mean of 0.94 right after a refresh)."""
    model = mlp(sizes=(6, 5, 4, 3))
    x = torch.randn(64, 6, dtype=torch.float64) * torch.tensor([1, 2, 3, .5, 1, 4.0]) + 1
    y = torch.randn(64, 3, dtype=torch.float64)
    opt = NNN(model, lr=0.02, amortization=3, eps=1e-10)  # cov(h_e) = C (C + eps)^-1 ~ I
    for update in range(7):
        one_step(model, opt, x, y)
        if update % 3 == 0:       # this step refreshed after its SGD update
            for he in whitened_inputs(model, opt, x):
                n = he.shape[1]
                assert_close(he.mean(0), torch.zeros(n, dtype=torch.float64), atol=1e-9, rtol=0)
                assert_close(he.t() @ he / len(he), torch.eye(n, dtype=torch.float64),
                             atol=1e-5, rtol=0)


def test_degenerate_directions_are_centered_not_whitened():
    """Constant features of the batch get gain 1 (not 1/sqrt(eps)); the others are whitened."""
    torch.manual_seed(6)
    layer = WhitenedLinear(nn.Linear(6, 2).double())
    h = torch.randn(100, 6, dtype=torch.float64) * 3
    h[:, 4:] = 0.7                                 # two constant features
    probe = torch.randn(10, 6, dtype=torch.float64)
    before = layer(probe).detach()
    layer.refresh(h, eps=1e-9)
    he = (h - layer.mu) @ layer.U
    assert_close(he.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-10, rtol=0)
    cov = he.t() @ he / 100
    assert_close(cov[:4, :4], torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert_close(layer.U[4:, 4:], torch.eye(2, dtype=torch.float64), atol=1e-10, rtol=0)
    assert_close(layer.U[4:, :4], torch.zeros(2, 4, dtype=torch.float64), atol=1e-10, rtol=0)
    assert_close(layer(probe), before)            # still function preserving


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["constant", "zero", "single_example"])
def test_degenerate_batches_do_not_blow_up(case, dtype):
    """The old refresh gave zero-variance directions gain 1/sqrt(eps): on these batches the
    loss went from ~3 to ~1e11 within 8 steps."""
    torch.manual_seed(0)
    model = models.mlp([20, 16, 8, 5], "tanh", "linear").to(dtype)
    opt = NNN(model, lr=0.1, amortization=1, eps=1e-3)
    g = torch.Generator().manual_seed(1)
    v = torch.rand(1, 20, generator=g, dtype=dtype)
    x = {"constant": v.expand(32, 20).clone(), "zero": torch.zeros(32, 20, dtype=dtype),
         "single_example": v}[case]
    y = torch.randn(1, 5, generator=g, dtype=dtype).expand(len(x), 5)
    losses = sgd_steps(model, opt, x, y, 8)
    assert all(math.isfinite(v) for v in losses)
    assert max(losses) <= losses[0] and losses[-1] < losses[0]


# ---- non-finite statistics: recorded as divergence, no exception ----------------------------

def test_nan_statistics_leave_nan_and_do_not_raise():
    layer = WhitenedLinear(nn.Linear(4, 2))
    h = torch.randn(8, 4)
    h[3, 1] = float("nan")
    layer.refresh(h, eps=1e-3)                     # eigh used to raise "ill-conditioned"
    assert torch.isnan(layer(torch.randn(5, 4))).all()


def toy_data(n=256, d=8, seed=0, nan_at=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n + 64, d, generator=g)
    if nan_at is not None:
        x[nan_at] = float("nan")
    y = torch.zeros(n + 64, dtype=torch.long)
    return Dataset("toy", x[:n], y[:n], x[n:], y[n:])


def toy_model(seed=0):
    torch.manual_seed(seed)
    return models.mlp([8, 6, 8], "sigmoid", "sigmoid", prescale=4.0)


@pytest.mark.parametrize("source", ["data", "parameters"])
def test_nan_statistics_are_recorded_as_divergence_by_train(source):
    model = toy_model()
    data = toy_data(nan_at=list(range(256)) if source == "data" else None)
    opt = OPTIMIZERS["nnn"](model, lr=0.05, amortization=5, eps=1e-3)
    if source == "parameters":
        with torch.no_grad():
            opt.layers[0].V[0, 0] = float("nan")
    r = train.train(model, opt, data, "mse", 40, batch_size=16, progress=False, eval_every=10)
    assert r["diverged"] and r["diverged_at"] == 1


def test_inf_statistics_from_a_diverging_run_are_recorded():
    """A learning rate far too large: the run must end as diverged, not with an exception."""
    torch.manual_seed(0)
    model = models.mlp([8, 6, 8], "tanh", "linear")
    opt = NNN(model, lr=1e30, amortization=1, eps=1e-3)
    r = train.train(model, opt, toy_data(), "mse", 40, batch_size=16, progress=False,
                    eval_every=10)
    assert r["diverged"]


# ---- the torch.optim.Optimizer interface ----------------------------------------------------

def test_is_a_torch_optimizer_over_v_and_d():
    model = mlp()
    opt = NNN(model, lr=0.05)
    assert isinstance(opt, torch.optim.Optimizer)
    assert [p for g in opt.param_groups for p in g["params"]] == list(model.parameters())
    assert opt.param_groups[0]["lr"] == 0.05 == opt.lr


def test_step_lr_scheduler_changes_the_step():
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    model = mlp()
    opt = NNN(model, lr=0.1, amortization=1000, eps=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(2):
        one_step(model, opt, x, y)
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    before = [p.detach().clone() for p in model.parameters()]
    loss = ((model(x) - y) ** 2).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()                                       # no refresh on this update
    for p, b, g in zip(model.parameters(), before, grads):
        assert_close(p.detach(), b - 0.01 * g)


def test_step_with_closure_returns_its_loss():
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    model, twin = mlp(), mlp()
    opt, opt_twin = NNN(model, lr=0.1, amortization=2), NNN(twin, lr=0.1, amortization=2)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).sum(1).mean()
        loss.backward()
        return loss

    for _ in range(3):
        want = one_step(twin, opt_twin, x, y)
        got = opt.step(closure)
        assert isinstance(got, torch.Tensor) and got.item() == want
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_loads_with_weights_only_and_resumes(tmp_path):
    class Crash(Exception):
        pass

    class CrashAfter:
        def __init__(self, opt, limit):
            self.opt, self.limit, self.steps = opt, limit, 0

        def zero_grad(self):
            self.opt.zero_grad()

        def step(self):
            if self.steps == self.limit:
                raise Crash
            self.steps += 1
            self.opt.step()

        def state_dict(self):
            return self.opt.state_dict()

        def load_state_dict(self, state):
            self.opt.load_state_dict(state)

    kw = dict(batch_size=16, seed=0, eval_every=5, progress=False)
    model = toy_model()
    straight = train.train(model, NNN(model, lr=0.05, amortization=7), toy_data(), "mse", 40, **kw)
    ckpt = tmp_path / "run.pt"
    model = toy_model()
    with pytest.raises(Crash):
        train.train(model, CrashAfter(NNN(model, lr=0.05, amortization=7), 23), toy_data(), "mse",
                    40, checkpoint=ckpt, **kw)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["optimizer"]["nnn"]["n_updates"] == 20
    model = toy_model(seed=5)
    resumed = train.train(model, NNN(model, lr=1.0, amortization=3, eps=0.5), toy_data(), "mse",
                          40, checkpoint=ckpt, **kw)
    for key in ("updates", "train_loss", "test_loss", "minibatch_loss", "diverged"):
        assert resumed[key] == straight[key], key
