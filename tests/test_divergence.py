"""Divergence honesty (the sokit.optim contract's *Divergence* paragraph).

Non-finite or overflowing statistics give NaN directions, never an exception from
``curvature_backward`` / ``step`` (no "damping must be positive" for a damping the user
gave positive, no ``torch.multinomial`` error on NaN logits, no ``LinAlgError`` from a
refresh); the loss then turns non-finite and :func:`sokit.train.train` records the run
as diverged, its curves kept up to the divergence. Float32 models, as in the thesis's
runs: inputs of 1e20 are finite but their second moments (1e40) overflow.
"""

from __future__ import annotations

import math

import pytest
import torch

from sokit import data as sodata
from sokit import losses, models, train
from sokit.data import Dataset, Sampler
from sokit.optim import ACP, KFAC, CenteredGD, linalg

AE = (6, 5, 4, 6)  # autoencoder, "mse" (the target is the input)
CLF = (6, 5, 3)  # classifier, "cross_entropy"
AMORT = 2  # refreshes at updates 0, 2, 4, ...



def kfac(loss: str, curvature: str, fused: bool):
    return lambda m: KFAC(m, lr=0.05, loss=loss, curvature=curvature, damping=1e-2,
                          amortization=AMORT, fused=fused)


# name -> (loss, factory(model))
METHODS = {
    "sgd": ("mse", lambda m: torch.optim.SGD(m.parameters(), lr=0.1)),
    "centered": ("mse", lambda m: CenteredGD(m, lr=0.1)),
    "acp_fixed_mse": ("mse", lambda m: ACP(m, lr=0.05, eps=1e-2, alpha=0.5, amortization=AMORT)),
    "acp_heuristic_mse": ("mse", lambda m: ACP(m, lr=0.05, eps=1e-2, alpha="heuristic",
                                               amortization=AMORT)),
    "acp_fixed_ce": ("cross_entropy", lambda m: ACP(m, lr=0.05, eps=1e-2, alpha=0.5,
                                                    amortization=AMORT)),
    "acp_heuristic_ce": ("cross_entropy", lambda m: ACP(m, lr=0.05, eps=1e-2, alpha="heuristic",
                                                        amortization=AMORT)),
    "acp_heuristic_fused_mse": ("mse", lambda m: ACP(m, lr=0.05, eps=1e-2, alpha="heuristic",
                                                     amortization=AMORT, fused=True)),
    **{
        f"kfac_{curv}_{loss}{'_fused' if fused else ''}": (loss, kfac(loss, curv, fused))
        for curv in ("fisher", "gauss_newton")
        for loss in ("mse", "cross_entropy")
        for fused in (False, True)
    },
    "kfac_gauss_newton_mse_exact": ("mse", lambda m: KFAC(m, lr=0.05, loss="mse",
                                                          curvature="gauss_newton",
                                                          gn_probes="exact", damping=1e-2,
                                                          amortization=AMORT)),
    "kfac_fisher_cross_entropy_plain": ("cross_entropy", lambda m: KFAC(
        m, lr=0.05, loss="cross_entropy", damping=1e-2, damping_split="plain", amortization=AMORT)),
}
BAD = {"1e20": 1e20, "nan": float("nan"), "inf": float("inf")}


def model_for(loss: str, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return models.mlp(AE if loss == "mse" else CLF, "tanh", "sigmoid" if loss == "mse" else "linear")


def minibatch(loss: str, seed: int, n: int = 8, bad: float | None = None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, AE[0], generator=gen)
    if bad is not None:
        x[n // 2, 1] = bad  # one entry of one example
    y = x if loss == "mse" else torch.randint(0, CLF[-1], (n,), generator=gen)
    return x, y


def step(model, opt, x, y, loss: str) -> float:
    out = model(x)
    value = losses.get(loss)(out, y)
    if hasattr(opt, "curvature_backward"):
        opt.curvature_backward(out)
    opt.zero_grad()
    value.backward()
    opt.step()
    return float(value.detach())


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("at", [2, 3], ids=["refresh", "between_refreshes"])
def test_plain_loop_never_raises_and_the_divergence_shows(name, bad, at):
    """A plain user loop: a minibatch with one entry 1e20 / NaN / inf at update ``at``
    raises nothing; that update's or the next one's loss is not finite."""
    loss, factory = METHODS[name]
    m = model_for(loss)
    opt = factory(m)
    values = [step(m, opt, *minibatch(loss, t), loss) for t in range(at)]
    assert all(math.isfinite(v) for v in values)
    values.append(step(m, opt, *minibatch(loss, at, bad=BAD[bad]), loss))
    values += [step(m, opt, *minibatch(loss, t), loss) for t in range(at + 1, at + 3)]
    if loss == "cross_entropy" and bad == "1e20" and at % AMORT:
        # finite logits (tanh saturates) and no refresh: the step uses the previous
        # inverses and is huge but finite, like SGD's; no divergence to record
        return
    # a non-finite loss at the bad update (NaN/inf input, the 1e20 squared error of the
    # autoencoder) or the next one (overflowed statistics at a refresh: NaN directions)
    assert not all(math.isfinite(v) for v in values[at:at + 2]), values


@pytest.mark.parametrize("curvature", ["fisher", "gauss_newton"])
def test_kfac_with_overflowing_statistics_steps_to_nan(curvature):
    """The pi damping split of infinite traces was 'every damping must be positive'."""
    m = model_for("cross_entropy")
    opt = KFAC(m, lr=0.05, loss="cross_entropy", curvature=curvature, amortization=1)
    x, y = minibatch("cross_entropy", 0, bad=1e20)
    out = m(x)
    assert torch.isfinite(out).all()  # the inputs and outputs are finite ...
    opt.curvature_backward(out)
    opt.zero_grad()
    losses.cross_entropy(out, y).backward()
    opt.step()  # ... their second moments are not
    assert not torch.isfinite(m[0].weight).any()
    assert torch.isnan(opt.preconditioner.inv_a[0]).all()


def test_kfac_fisher_samples_nan_logits_without_error():
    """torch.multinomial on softmax(NaN) raised; the probes of those rows are NaN."""
    m = model_for("cross_entropy")
    pre = KFAC(m, lr=0.05, loss="cross_entropy").preconditioner
    f = torch.randn(4, 3)
    f[1, 0] = float("nan")
    (v,) = pre.probes(f)
    assert torch.isnan(v[1]).all() and torch.isfinite(v[[0, 2, 3]]).all()


def test_damping_is_validated_at_construction_only():
    for make in (lambda m: KFAC(m, 0.1, "mse", damping=0.0), lambda m: ACP(m, 0.1, eps=-1.0)):
        with pytest.raises(ValueError, match="must be positive"):
            make(model_for("mse"))
    # a damping computed from overflowed statistics is no argument: a NaN inverse
    inv = linalg.damped_inverse(torch.eye(3).expand(3, 3, 3), torch.tensor([1.0, float("inf"), 0.0]))
    torch.testing.assert_close(inv[0], torch.eye(3) / 2)
    assert torch.isnan(inv[1:]).all()


@pytest.mark.skipif(not sodata.is_cached("mnist"), reason="needs MNIST in the sokit cache")
def test_acp_refresh_on_mnist_pixels_where_float32_eigh_fails():
    """Heuristic-alpha ACP on the MNIST autoencoder (lr 0.003, prescale 16) died at its
    refresh of update 200 in ``linalg.eigh`` (ill-conditioned: MNIST's constant pixels
    give many repeated eigenvalues): the input layer's covariance of that minibatch with
    the damping eps / alpha of that run is now inverted (in float64 where float32 fails)."""
    from sokit.optim.acp import covariance

    ds = sodata.load("mnist")
    sampler = Sampler(ds.train_x, ds.train_y, 200, 0)
    for _ in range(200):
        sampler.next_indices()
    x, _ = next(sampler)
    C, damping = covariance(x), torch.tensor(2.4515e-07)
    inv = linalg.damped_inverse(C, damping)
    assert torch.isfinite(inv).all()
    torch.testing.assert_close(inv, inv.T)
    # a direction of the input layer (what ACP multiplies by the inverse) stays bounded
    assert float(inv.abs().max()) <= 1.01 / float(damping)


# --- through sokit.train.train --------------------------------------------------------

N_TRAIN, BATCH, BAD_UPDATE, EVAL_SUBSET = 64, 8, 5, 32  # update 5 refreshes


def dataset(loss: str, bad: float | None) -> Dataset:
    """Toy data whose only bad example is drawn at update BAD_UPDATE (seed 0) and lies
    outside the evaluation subset."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(N_TRAIN + 16, AE[0], generator=gen)
    y = torch.randint(0, CLF[-1], (N_TRAIN + 16,), generator=gen)
    perm = Sampler(x[:N_TRAIN], y[:N_TRAIN], BATCH, 0).permutation(0)
    # an example of the minibatch of update BAD_UPDATE (first epoch) that is not evaluated
    drawn = perm[(BAD_UPDATE - 1) * BATCH:BAD_UPDATE * BATCH].tolist()
    where = next(i for i in drawn if i >= EVAL_SUBSET)
    if bad is not None:
        x[where, 2] = bad
    return Dataset("toy", x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])


def run(name: str, bad: float | None) -> dict:
    loss, factory = METHODS[name]
    m = model_for(loss, seed=1)
    return train.train(m, factory(m), dataset(loss, bad), loss, updates=12, batch_size=BATCH,
                       eval_every=2, eval_subset=EVAL_SUBSET, progress=False, check_every=1)


@pytest.mark.parametrize("bad", ["1e20", "nan"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_train_records_the_divergence_and_keeps_the_curves(name, bad):
    loss, _ = METHODS[name]
    clean = run(name, None)
    assert not clean["diverged"] and clean["updates"] == [2, 4, 6, 8, 10, 12]
    got = run(name, BAD[bad])
    assert got["diverged"] is True
    # the bad minibatch's own loss, or (overflowed statistics, finite loss) the next one
    assert BAD_UPDATE <= got["diverged_at"] <= BAD_UPDATE + 1, got["diverged_at"]
    kept = [u for u in clean["updates"] if u < got["diverged_at"]]
    assert got["updates"] == kept == [2, 4]
    for key in ("train_loss", "test_loss"):
        assert got[key] == clean[key][:len(kept)]
        assert all(math.isfinite(v) for v in got[key])
    n = got["diverged_at"] - 1
    assert len(got["minibatch_loss"]) == n and all(math.isfinite(v) for v in got["minibatch_loss"])
    assert got["minibatch_loss"][:BAD_UPDATE - 1] == clean["minibatch_loss"][:BAD_UPDATE - 1]
