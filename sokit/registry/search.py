"""Hyperparameter-search experiments: Table 4.I, Figure 4.1 (section 4.1) and Figure 2.2
(section 2.3) of the thesis.

Every experiment trains the MNIST autoencoder (section 4.3) with plain SGD for a fixed
number of iterations from a fresh initialisation, for configurations chosen by a search;
an experiment's cost is the final training loss (summed squared error, mean over
``n_eval`` training examples). Searches run side by side (:func:`sokit.search.run_lockstep`):
in round r every search proposes its r-th configuration, and all proposals of all
methods are trained as *one population* (:mod:`sokit.population`). Within a round the
members share their minibatches, and the members of search s use the same
initialisation seed for every method, so the methods are compared on common random
numbers. Each search still sees all its earlier results before choosing (Algorithm 1).

* ``table4_1``: grid, random and biased random search, plus Optuna's TPE; mean and
  standard deviation over searches of each search's best cost.
* ``fig4_1``: one search of each of the three methods; the sampled points over the
  1-NN interpolated landscape, axes log10 learning rate and prescale.
* ``fig2_2``: a random search over learning rate and prescale (the initial weight
  variance factor), both on log scales, showing the tilted valley.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from sokit import data as sokit_data
from sokit import models
from sokit.experiments import Experiment, default_device, register
from sokit.optuna_sampler import OptunaSearch
from sokit.population import Population, architecture, train_population
from sokit.search import BiasedRandomSearch, GridSearch, LogUniform, NearestNeighbour, RandomSearch, Space, run_lockstep

#: The thesis's Table 4.I (final empirical risk, mean and std over 100 searches).
THESIS_TABLE4_1 = {"grid": (27.23, 0.42), "random": (27.02, 0.28), "biased_random": (26.61, 0.13)}
METHOD_LABELS = {"grid": "Grid search", "random": "Random search", "biased_random": "Biased random search",
                 "tpe": "Optuna TPE"}

SPACE_4_1 = {"lr": [1e-7, 1e2], "prescale": [10.0, 20.0]}       # section 4.1
SPACE_2_2 = {"lr": [10 ** -3.5, 10 ** 1.7], "prescale": [0.1, 10 ** 4.5]}  # Fig 2.2's axes


def _space(bounds: dict[str, list[float]], log_prescale: bool) -> Space:
    from sokit.search import Uniform
    return Space({"lr": LogUniform(*bounds["lr"]),
                  "prescale": (LogUniform if log_prescale else Uniform)(*bounds["prescale"])})


def _searcher(method: str, space: Space, budget: int, seed: int):
    if method == "grid":
        return GridSearch(space, budget, seed=seed)
    if method == "random":
        return RandomSearch(space, seed=seed)
    if method == "biased_random":
        return BiasedRandomSearch(space, seed=seed, cost_model=NearestNeighbour())
    if method == "tpe":
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return OptunaSearch(space, optuna.samplers.TPESampler(seed=seed))
    raise ValueError(f"unknown search method {method!r}; choose one of {sorted(METHOD_LABELS)}")


class AutoencoderObjective:
    """Train a population of autoencoders, one member per configuration, and return
    each member's final training loss (NaN when it diverged)."""

    def __init__(self, config: dict[str, Any], device: torch.device):
        ds = sokit_data.load("mnist", device=device)
        self.train_x = ds.train_x[: config["n_train"]]
        self.eval_x = self.train_x[: config["n_eval"]]
        self.sizes, self.acts = architecture(models.autoencoder())
        self.config, self.device = config, device
        self.model_steps = 0
        self.train_seconds = 0.0

    def __call__(self, configs: list[dict], seeds: list[int], round_seed: int) -> list[float]:
        c = self.config
        pop = Population.init(self.sizes, self.acts, lr=[q["lr"] for q in configs],
                              prescale=[q["prescale"] for q in configs], seeds=seeds, device=self.device)
        batches = ((x, x) for x, _ in sokit_data.Sampler(self.train_x, self.train_x, c["batch"], seed=round_seed))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = train_population(pop, batches, c["iterations"], eval_data=(self.eval_x, self.eval_x),
                               eval_chunk=c.get("eval_chunk", 500))
        self.train_seconds += time.perf_counter() - t0
        self.model_steps += len(configs) * c["iterations"]
        return out["final_loss"].tolist()


def run_methods(config: dict[str, Any], space: Space) -> dict[str, list]:
    """Run ``config["searches"]`` searches of every method in ``config["methods"]`` in
    lockstep; returns ``{method: [History, ...]}`` and the objective's counters."""
    device = default_device()
    objective = AutoencoderObjective(config, device)
    methods, S, n = config["methods"], config["searches"], config["experiments"]
    searchers = [_searcher(m, space, n, seed=config["seed"] + 1000 * s) for m in methods for s in range(S)]

    def evaluate(configs: list[dict], r: int) -> list[float]:
        # member (method, s) uses seed (s, r) whatever the method: common random numbers
        seeds = [config["seed"] + 1_000_003 * (k % S) + r for k in range(len(configs))]
        return objective(configs, seeds, round_seed=config["seed"] + r)

    histories = run_lockstep(searchers, evaluate, n)
    out = {m: histories[i * S:(i + 1) * S] for i, m in enumerate(methods)}
    return out, objective


def _summary(histories) -> dict[str, Any]:
    best = [h.best_cost() for h in histories]
    return {"best": best, "mean": float(np.mean(best)), "std": float(np.std(best)),
            "diverged": int(sum(t.status == "diverged" for h in histories for t in h.trials)),
            "failed": int(sum(t.status == "failed" for h in histories for t in h.trials))}


def run_table4_1(config: dict[str, Any]) -> dict[str, Any]:
    out, objective = run_methods(config, _space(config["space"], log_prescale=False))
    return {"methods": {m: _summary(hs) for m, hs in out.items()},
            "model_steps": objective.model_steps, "train_seconds": objective.train_seconds,
            "ms_per_model_step": 1e3 * objective.train_seconds / objective.model_steps,
            "population_size": len(config["methods"]) * config["searches"]}


def run_scatter(config: dict[str, Any], log_prescale: bool) -> dict[str, Any]:
    out, objective = run_methods(config, _space(config["space"], log_prescale))
    return {"histories": {m: hs[0].to_dict() for m, hs in out.items()},
            "model_steps": objective.model_steps, "train_seconds": objective.train_seconds}


_BASE = {"seed": 0, "space": SPACE_4_1}
_DATA = {"smoke": {"n_train": 1000, "n_eval": 100, "batch": 20},
         "quick": {"n_train": 60000, "n_eval": 500, "batch": 32},
         "full": {"n_train": 60000, "n_eval": 10000, "batch": 200}}
_ALL = ["grid", "random", "biased_random", "tpe"]

register(Experiment(
    name="table4_1",
    description="Table 4.I: grid vs random vs biased random search (plus Optuna TPE); "
                "best final training MSE per search, mean and std over searches",
    configs={
        "smoke": {**_BASE, **_DATA["smoke"], "methods": _ALL, "searches": 2, "experiments": 4, "iterations": 5},
        "quick": {**_BASE, **_DATA["quick"], "methods": _ALL, "searches": 5, "experiments": 16, "iterations": 15},
        "full": {**_BASE, **_DATA["full"], "methods": _ALL, "searches": 100, "experiments": 100, "iterations": 100},
    },
    run=run_table4_1,
))

_THREE = ["grid", "random", "biased_random"]
register(Experiment(
    name="fig4_1",
    description="Figure 4.1: points chosen by grid, random and biased random search over the "
                "1-NN interpolated landscape (log10 learning rate, prescale)",
    configs={
        "smoke": {**_BASE, **_DATA["smoke"], "methods": _THREE, "searches": 1, "experiments": 9, "iterations": 5},
        "quick": {**_BASE, **_DATA["quick"], "methods": _THREE, "searches": 1, "experiments": 25, "iterations": 15},
        "full": {**_BASE, **_DATA["full"], "methods": _THREE, "searches": 1, "experiments": 100, "iterations": 100},
    },
    run=lambda config: run_scatter(config, log_prescale=False),
))

register(Experiment(
    name="fig2_2",
    description="Figure 2.2: final training MSE of a random search over learning rate and "
                "prescale (initial weight variance factor), both on log scales",
    configs={
        "smoke": {**_DATA["smoke"], "seed": 0, "space": SPACE_2_2, "methods": ["random"], "searches": 1,
                  "experiments": 12, "iterations": 5},
        "quick": {**_DATA["quick"], "seed": 0, "space": SPACE_2_2, "methods": ["random"], "searches": 1,
                  "experiments": 36, "iterations": 40},
        "full": {**_DATA["full"], "seed": 0, "space": SPACE_2_2, "methods": ["random"], "searches": 1,
                 "experiments": 100, "iterations": 1000},
    },
    run=lambda config: run_scatter(config, log_prescale=True),
))


def registry_config(name: str, profile: str) -> dict[str, Any]:
    """A copy of the registered configuration of ``name`` under ``profile``."""
    from sokit.experiments import get
    return dict(get(name).configs[profile])


# ------------------------------------------------------------------------- plotting
def landscape(history: list[dict], space: Space, resolution: int = 200):
    """The 1-NN interpolated cost landscape of a stored history on a regular grid of the
    unit square; diverged trials take the worst cost. Returns (u1, u2, cost grid)."""
    configs = [t["config"] for t in history]
    costs = np.array([t["cost"] if t["cost"] is not None else np.nan for t in history], dtype=float)
    ok = np.isfinite(costs)
    costs[~ok] = costs[ok].max() if ok.any() else 0.0
    u = (np.arange(resolution) + 0.5) / resolution
    U1, U2 = np.meshgrid(u, u)
    grid = NearestNeighbour().predict(space.to_unit(configs), costs, np.stack([U1.ravel(), U2.ravel()], 1))
    return u, u, grid.reshape(resolution, resolution)


def _scatter_panel(ax, history: list[dict], space: Space, log_prescale: bool, vmin=None, vmax=None, log_cost=False):
    costs = np.array([t["cost"] if t["cost"] is not None else np.nan for t in history], dtype=float)
    u1, u2, grid = landscape(history, space)
    dims = space.dims
    x = np.log10(dims["lr"].from_unit(u1))
    y = dims["prescale"].from_unit(u2)
    y = np.log10(y) if log_prescale else y
    ok = np.isfinite(costs)
    c = np.where(ok, costs, np.nanmax(costs) if ok.any() else 0.0)
    if log_cost:
        grid, c = np.log10(grid), np.log10(c)
    im = ax.pcolormesh(x, y, grid, shading="auto", cmap="viridis", vmin=vmin, vmax=vmax)
    px = np.log10([t["config"]["lr"] for t in history])
    py = np.array([t["config"]["prescale"] for t in history])
    py = np.log10(py) if log_prescale else py
    ax.scatter(px, py, c=c, cmap="viridis", vmin=im.norm.vmin, vmax=im.norm.vmax, s=60, edgecolors="black")
    ax.set_xlabel("log10 learning rate")
    ax.set_ylabel("log10 prescale" if log_prescale else "prescale")
    return im


def plot_fig4_1(record: dict[str, Any]):
    """Figure 4.1's three panels (grid, random, biased random) from a stored ``fig4_1`` record."""
    import matplotlib.pyplot as plt
    space = _space(record["config"]["space"], log_prescale=False)
    hs = record["results"]["histories"]
    all_costs = [t["cost"] for h in hs.values() for t in h if t["cost"] is not None]
    fig, axes = plt.subplots(1, len(hs), figsize=(5 * len(hs), 4.2), constrained_layout=True)
    for ax, (m, h) in zip(np.atleast_1d(axes), hs.items()):
        im = _scatter_panel(ax, h, space, False, min(all_costs), max(all_costs))
        ax.set_title(METHOD_LABELS[m])
    fig.colorbar(im, ax=axes, label="final training MSE")
    return fig


def plot_fig2_2(record: dict[str, Any]):
    """Figure 2.2 from a stored ``fig2_2`` record: log10 final training MSE (colour)."""
    import matplotlib.pyplot as plt
    space = _space(record["config"]["space"], log_prescale=True)
    fig, ax = plt.subplots(figsize=(6.5, 5), constrained_layout=True)
    im = _scatter_panel(ax, record["results"]["histories"]["random"], space, True, log_cost=True)
    ax.set_ylabel("log10 prescale (initial weight variance x n_in)")
    fig.colorbar(im, ax=ax, label="log10 final training MSE")
    return fig


def table4_1_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of Table 4.I: ours (mean, std over searches) beside the thesis's."""
    rows = []
    for m, s in record["results"]["methods"].items():
        thesis = THESIS_TABLE4_1.get(m)
        rows.append({"method": METHOD_LABELS[m], "mean": round(s["mean"], 3), "std": round(s["std"], 3),
                     "thesis mean": thesis[0] if thesis else None, "thesis std": thesis[1] if thesis else None})
    return rows
