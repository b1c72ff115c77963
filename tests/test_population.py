"""Population training (sokit.population) against separate single-model SGD runs."""


import pytest
import torch
from torch import nn

from sokit.graphs import CapturedStep
from sokit.losses import cross_entropy, mse_sum
from sokit.models import autoencoder, mlp
from sokit.population import Population, population_loss, train_population

pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(n, B, n_in, n_out, seed, labels=False):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(B, n_in, generator=g, dtype=torch.float64)
        y = (torch.randint(0, n_out, (B,), generator=g) if labels
             else torch.rand(B, n_out, generator=g, dtype=torch.float64))
        yield x, y


@pytest.mark.parametrize("loss,acts,out", [("mse", "sigmoid", "sigmoid"), ("cross_entropy", "relu", "linear")])
def test_population_equals_separate_sgd_runs(loss, acts, out):
    sizes = [6, 5, 4, 3]
    lrs = [0.05, 0.2, 0.5, 1.0]
    models = []
    for i, prescale in enumerate([0.5, 1.0, 4.0, 16.0]):
        torch.manual_seed(100 + i)
        models.append(mlp(sizes, acts, out, prescale=prescale).double())
    pop = Population.from_models(models, lrs, loss=loss)
    batches = list(_batches(15, 8, sizes[0], sizes[-1], seed=3, labels=loss == "cross_entropy"))
    res = train_population(pop, batches, updates=len(batches))
    loss_fn = mse_sum if loss == "mse" else cross_entropy
    for i, (m, lr) in enumerate(zip(models, lrs)):
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        ref = []
        for x, y in batches:
            opt.zero_grad()
            l = loss_fn(m(x), y)
            l.backward()
            opt.step()
            ref.append(l.detach())
        torch.testing.assert_close(res["minibatch_loss"][:, i], torch.stack(ref))
        for p_pop, p_ref in zip(pop.member(i).parameters(), m.parameters()):
            torch.testing.assert_close(p_pop, p_ref)
    assert not res["diverged"].any()


def test_population_loss_matches_sokit_losses():
    out = torch.randn(3, 7, 5, dtype=torch.float64)
    y = torch.rand(7, 5, dtype=torch.float64)
    torch.testing.assert_close(population_loss(out, y, "mse"), torch.stack([mse_sum(o, y) for o in out]))
    lab = torch.randint(0, 5, (7,))
    torch.testing.assert_close(population_loss(out, lab, "cross_entropy"),
                               torch.stack([cross_entropy(o, lab) for o in out]))


def test_init_matches_thesis_scale_and_seeds():
    sizes = [400, 300, 10]
    pop = Population.init(sizes, ["sigmoid", "linear"], lr=[0.1] * 3, prescale=[1.0, 16.0, 16.0], seeds=[0, 1, 1])
    var = pop.weights[0].var(dim=(1, 2))
    torch.testing.assert_close(var * 400, torch.tensor([1.0, 16.0, 16.0]), rtol=0.02, atol=0)
    torch.testing.assert_close(pop.weights[1][1], pop.weights[1][2])  # same seed, same prescale
    assert not torch.equal(pop.weights[1][0] * 4, pop.weights[1][1])  # different seed
    assert (torch.cat([b.flatten() for b in pop.biases]) == 0).all()


def test_a_third_diverge_frozen_and_reported_others_improve():
    P = 9
    sizes = [10, 20, 20, 10]
    lr = [0.02] * P
    diverging = [1, 4, 7]
    for i in diverging:
        lr[i] = 1e4
    pop = Population.init(sizes, ["relu", "relu", "linear"], lr=lr, prescale=[2.0] * P, seeds=range(P),
                          dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(10, 10, generator=g, dtype=torch.float64) / 3
    def batches():
        while True:
            x = torch.randn(32, 10, generator=g, dtype=torch.float64)
            yield x, x @ A
    ex = torch.randn(500, 10, generator=g, dtype=torch.float64)
    before = pop.losses(ex, ex @ A)
    res = train_population(pop, batches(), updates=200, eval_data=(ex, ex @ A))
    assert res["diverged"].nonzero().flatten().tolist() == diverging
    assert (res["diverged_at"][diverging] >= 0).all() and (res["diverged_at"][[0, 2, 3, 5, 6, 8]] == -1).all()
    final = res["final_loss"]
    assert torch.isnan(final[diverging]).all()
    alive = [i for i in range(P) if i not in diverging]
    assert torch.isfinite(final[alive]).all()
    assert (final[alive] < 0.5 * before[alive]).all()
    # frozen members hold finite parameters: the NaN stayed out of the state
    for p in pop.parameters():
        assert torch.isfinite(p).all()
    # the losses recorded after divergence are NaN, the live members' are finite throughout
    mb = res["minibatch_loss"]
    assert torch.isfinite(mb[:, alive]).all()
    for i in diverging:
        assert torch.isnan(mb[res["diverged_at"][i]:, i]).all()


def test_shared_and_per_member_inputs_agree():
    pop = Population.init([4, 3, 2], ["tanh", "linear"], lr=[0.1, 0.1], prescale=[1.0, 2.0], seeds=[0, 1])
    x = torch.randn(5, 4)
    torch.testing.assert_close(pop.forward(x), pop.forward(x.expand(2, 5, 4).clone()))


def test_member_roundtrip_and_bad_input():
    torch.manual_seed(0)
    m = autoencoder(prescale=3.0)
    pop = Population.from_models([m], [0.1])
    x = torch.rand(2, 784)
    torch.testing.assert_close(pop.forward(x)[0], m(x))
    torch.testing.assert_close(pop.member(0)(x), m(x))
    with pytest.raises(ValueError, match="one learning rate per member"):
        Population.from_models([m], [0.1, 0.2])
    with pytest.raises(ValueError, match="unsupported module"):
        Population.from_models([nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))], [0.1])
    with pytest.raises(ValueError, match="unknown loss"):
        Population.from_models([m], [0.1], loss="hinge")
    with pytest.raises(ValueError, match="CUDA"):
        CapturedStep(lambda: pop.step(torch.zeros(2, 784), torch.zeros(2, 784)), torch.device("cpu"))


def test_search_over_a_population_where_a_third_diverge():
    """Lockstep random searches whose populations lose a third of their members to
    divergence: the searches complete and record exactly those trials as diverged."""
    from sokit.search import LogUniform, RandomSearch, Space, run_lockstep
    space = Space({"lr": LogUniform(1e-2, 1e-1)})
    g = torch.Generator().manual_seed(1)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64) / 3
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    blown = []

    def evaluate(configs, r):
        lr = [c["lr"] for c in configs]
        for i in range(r % 3, len(lr), 3):  # every third member gets a huge learning rate
            lr[i] = 1e5
            blown.append((r, i))
        pop = Population.init([6, 16, 6], ["relu", "linear"], lr=lr, prescale=[2.0] * len(lr),
                              seeds=[100 * r + i for i in range(len(lr))], dtype=torch.float64)
        out = train_population(pop, ((x, x @ A) for _ in iter(int, 1)), 60, eval_data=(x, x @ A))
        return out["final_loss"].tolist()

    hs = run_lockstep([RandomSearch(space, seed=s) for s in range(6)], evaluate, 4)
    diverged = sorted((t.number, s) for s, h in enumerate(hs) for t in h.trials if t.status == "diverged")
    assert diverged == sorted(blown) and len(diverged) == 4 * 2
    assert all(t.status == "ok" and t.cost < 1.0 for h in hs for t in h.trials if (t.number, hs.index(h)) not in blown)
