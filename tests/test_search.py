"""Search spaces, grid / random / biased random search (Algorithm 1) and history."""

import math

import numpy as np
import pytest

from sokit.search import (
    BiasedRandomSearch,
    GridSearch,
    Integer,
    LogUniform,
    NearestNeighbour,
    RandomSearch,
    Space,
    Uniform,
    acceptance_probability,
    run_lockstep,
    run_search,
)

pytestmark = pytest.mark.usefixtures("one_thread")


SPACE = Space({"lr": LogUniform(1e-7, 1e2), "prescale": Uniform(10, 20)})


def test_dimensions_roundtrip_and_bounds():
    rng = np.random.default_rng(0)
    s = Space({"a": Uniform(-1, 3), "b": LogUniform(1e-4, 1e1), "n": Integer(2, 5)})
    cs = s.sample(rng, 2000)
    a, b, n = (np.array([c[k] for c in cs]) for k in "abn")
    assert a.min() >= -1 and a.max() <= 3 and b.min() >= 1e-4 and b.max() <= 10
    assert set(n.tolist()) == {2, 3, 4, 5} and all(isinstance(c["n"], int) for c in cs)
    # log-uniform: log10 b is uniform on [-4, 1], so its median is near -1.5
    assert abs(np.median(np.log10(b)) + 1.5) < 0.15
    np.testing.assert_allclose(s.from_unit(s.to_unit(cs))[5]["b"], cs[5]["b"])


@pytest.mark.parametrize("bad", [lambda: Uniform(1, 1), lambda: LogUniform(0, 1), lambda: Integer(0.5, 3),
                                 lambda: Space({}), lambda: Space({"x": (0, 1)})])
def test_bad_spaces_raise(bad):
    with pytest.raises((ValueError, TypeError)):
        bad()


def test_grid_is_cell_centred_and_complete():
    g = GridSearch(SPACE, budget=100, seed=0)
    run_search(g, lambda c: 0.0, 100)
    lr = sorted({round(math.log10(c["lr"]), 6) for c in g.history.configs()})
    ps = sorted({round(c["prescale"], 6) for c in g.history.configs()})
    np.testing.assert_allclose(lr, -7 + 9 * (np.arange(10) + 0.5) / 10)
    np.testing.assert_allclose(ps, 10.5 + np.arange(10))
    with pytest.raises(IndexError, match="exhausted"):
        g.ask()


def test_acceptance_probability_is_algorithm_1():
    np.testing.assert_allclose(acceptance_probability([1.0, 3.0, 2.0], 1.0, 3.0), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(acceptance_probability([5.0], 5.0, 5.0), [1.0])


def test_nearest_neighbour():
    xs = np.array([[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(NearestNeighbour().predict(xs, np.array([3.0, 7.0]), [[0.2, 0.1], [0.9, 0.6]]), [3, 7])


def quadratic(c):
    return (math.log10(c["lr"]) + 2) ** 2 + ((c["prescale"] - 15) / 2) ** 2


@pytest.mark.parametrize("cls", [RandomSearch, BiasedRandomSearch])
def test_seeded_and_reproducible(cls):
    h1 = run_search(cls(SPACE, seed=7), quadratic, 30).configs()
    h2 = run_search(cls(SPACE, seed=7), quadratic, 30).configs()
    h3 = run_search(cls(SPACE, seed=8), quadratic, 30).configs()
    assert h1 == h2 and h1 != h3


def test_biased_random_beats_random_on_average():
    best = {RandomSearch: [], BiasedRandomSearch: [], GridSearch: []}
    for seed in range(40):
        for cls in best:
            s = cls(SPACE, budget=49, seed=seed) if cls is GridSearch else cls(SPACE, seed=seed)
            best[cls].append(run_search(s, quadratic, 49).best_cost())
    assert np.mean(best[BiasedRandomSearch]) < 0.75 * np.mean(best[RandomSearch]) < np.mean(best[GridSearch])
    # and it concentrates its samples: more of them land in the middle third of log lr
    # (around the optimum) than the third that uniform sampling puts there
    frac = {}
    for cls in (RandomSearch, BiasedRandomSearch):
        f = []
        for seed in range(10):
            s = run_search(cls(SPACE, seed=seed), quadratic, 100)
            f.append(np.mean([abs(math.log10(c["lr"]) + 2) < 1.5 for c in s.configs()[20:]]))
        frac[cls] = np.mean(f)
    assert abs(frac[RandomSearch] - 1 / 3) < 0.05 and frac[BiasedRandomSearch] > 0.4


def test_failed_and_diverged_trials_are_worst_and_never_crash():
    def objective(c):
        if c["lr"] > 1.0:
            return float("nan")
        if c["prescale"] > 19:
            raise RuntimeError("out of memory")
        return quadratic(c)
    s = BiasedRandomSearch(SPACE, seed=1)
    h = run_search(s, objective, 60)
    status = [t.status for t in h.trials]
    assert len(h) == 60 and "diverged" in status and "failed" in status
    costs = h.costs()
    ok = np.array([st == "ok" for st in status])
    assert np.all(costs[~ok] == costs[ok].max())
    assert h.best().status == "ok" and h.best_cost() == costs[ok].min()
    failed = [t for t in h.trials if t.status == "failed"][0]
    assert "out of memory" in failed.error
    d = h.to_dict()
    assert d[[t.number for t in h.trials if t.status == "diverged"][0]]["cost"] is None


def test_an_error_of_the_machine_ends_the_search_instead_of_failing_every_trial(tmp_path):
    # a data file deleted under a running search once made every later trial "failed", and
    # the search was stored with no best configuration; it must stop instead
    data = tmp_path / "data.txt"
    data.write_text("1")

    def objective(c):
        return quadratic(c) + float(data.read_text())

    s = BiasedRandomSearch(SPACE, seed=3)
    run_search(s, objective, 3)
    data.unlink()
    with pytest.raises(FileNotFoundError):
        run_search(s, objective, 3)
    assert len(s.history) == 3 and all(t.status == "ok" for t in s.history.trials)


def test_all_diverged_history_still_samples():
    s = BiasedRandomSearch(SPACE, seed=2)
    h = run_search(s, lambda c: float("inf"), 5)
    assert len(h) == 5 and np.all(np.isinf(h.costs())) and h.best() is None


def test_lockstep_equals_sequential_searches():
    seq = [run_search(BiasedRandomSearch(SPACE, seed=s), quadratic, 25).configs() for s in range(3)]
    calls = []
    def batch(configs, r):
        calls.append(len(configs))
        return [quadratic(c) for c in configs]
    lock = run_lockstep([BiasedRandomSearch(SPACE, seed=s) for s in range(3)], batch, 25)
    assert [h.configs() for h in lock] == seq and calls == [3] * 25
    # a round that raises is recorded as failed for every member and the searches go on
    def flaky(configs, r):
        if r == 2:
            raise RuntimeError("device lost")
        return [quadratic(c) for c in configs]
    hs = run_lockstep([RandomSearch(SPACE, seed=s) for s in range(2)], flaky, 4)
    assert [t.status for t in hs[0].trials] == ["ok", "ok", "failed", "ok"]


# ------------------------------------------------------------ registered experiments
def test_registered_experiments_follow_the_thesis():
    from sokit.experiments import registry
    exps = registry()
    full = exps["table4_1"].configs["full"]
    assert (full["searches"], full["experiments"], full["iterations"]) == (100, 100, 100)
    assert full["space"] == {"lr": [1e-7, 1e2], "prescale": [10.0, 20.0]}
    assert set(full["methods"]) == {"grid", "random", "biased_random", "tpe"}
    assert exps["fig4_1"].configs["full"]["methods"] == ["grid", "random", "biased_random"]
    long_22 = exps["fig2_2"].configs["long"]  # Fig 2.2 at the thesis's minibatch and its 99 experiments
    assert (long_22["batch"], long_22["experiments"]) == (200, 99)
    for name in ("table4_1", "fig4_1", "fig2_2"):
        assert set(exps[name].configs) == {"smoke", "quick", "full"} | ({"long"} if name == "fig2_2" else set())
        for cfg in exps[name].configs.values():  # a grid search must not run out of points
            if "grid" in cfg["methods"]:
                assert round(cfg["experiments"] ** 0.5) ** 2 == cfg["experiments"]


def test_table4_1_runs_end_to_end_on_a_stand_in_dataset(monkeypatch):
    import torch

    from sokit import data
    from sokit.experiments import searches as reg
    from sokit.report import plots, tables
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 784, generator=g)
    labels = torch.zeros(64, dtype=torch.long)
    monkeypatch.setattr(data, "load", lambda name, device="cpu": data.Dataset(name, x, labels, x[:8], labels[:8]))
    cfg = {**reg.TABLE4_1.configs["smoke"], "n_train": 64, "n_eval": 16, "batch": 8, "iterations": 2,
           "searches": 2, "experiments": 4}
    res = reg.run_table4_1(cfg)
    assert set(res["methods"]) == {"grid", "random", "biased_random", "tpe"}
    assert res["model_steps"] == 4 * 2 * 4 * 2 and res["population_size"] == 8
    for s in res["methods"].values():
        assert len(s["best"]) == 2 and all(0 < b < 784 for b in s["best"])
        np.testing.assert_allclose(s["mean"], np.mean(s["best"]))
    rows = tables.table4_1_rows({"results": res})
    assert [r["thesis mean"] for r in rows] == [27.23, 27.02, 26.61, None]
    cfg41 = {**cfg, "methods": ["grid", "random", "biased_random"], "searches": 1}
    rec = {"config": cfg41, "results": reg.run_scatter(cfg41, log_prescale=False)}
    assert [len(h) for h in rec["results"]["histories"].values()] == [4, 4, 4]
    import matplotlib
    matplotlib.use("Agg")
    assert len(plots.plot_fig4_1(rec).axes) == 4  # three panels and a colour bar


def test_landscape_is_nearest_neighbour_with_diverged_as_worst():
    from sokit.report.plots import landscape
    space = Space({"lr": LogUniform(1e-4, 1e0), "prescale": Uniform(10, 20)})
    hist = [{"config": {"lr": 1e-4 * 10 ** 0.4, "prescale": 12.0}, "cost": 5.0},
            {"config": {"lr": 1e-4 * 10 ** 3.6, "prescale": 18.0}, "cost": None},
            {"config": {"lr": 1e-4 * 10 ** 3.6, "prescale": 12.0}, "cost": 9.0}]
    u1, u2, grid = landscape(hist, space, resolution=10)
    assert grid[1, 1] == 5.0 and grid[8, 8] == 9.0 and grid[1, 8] == 9.0  # rows: prescale, columns: lr


def test_custom_cost_model_is_used_and_a_hopeless_one_is_reported():
    class Pessimist:
        def predict(self, x_seen, c_seen, x):
            return np.full(len(np.atleast_2d(x)), c_seen.max())
    s = BiasedRandomSearch(SPACE, seed=0, cost_model=Pessimist(), max_rejections=50)
    s.tell(s.ask(), 1.0)
    s.tell(s.ask(), 2.0)
    with pytest.raises(RuntimeError, match="rejected"):
        s.ask()
    assert s.rejections == 51

    class LowLearningRate:  # a model that prefers small learning rates
        def predict(self, x_seen, c_seen, x):
            return np.atleast_2d(x)[:, 0] * (c_seen.max() - c_seen.min()) + c_seen.min()
    s = BiasedRandomSearch(SPACE, seed=0, cost_model=LowLearningRate())
    run_search(s, quadratic, 200)
    assert np.mean([math.log10(c["lr"]) < -2.5 for c in s.history.configs()[1:]]) > 0.6
