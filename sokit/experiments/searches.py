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
  variance factor), both on log scales, showing the tilted valley; its ``long`` profile
  uses the thesis's minibatch of 200 and its figure's 99 experiments.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import optuna
import torch

from sokit import data as sokit_data
from sokit import models
from sokit.device import default_device
from sokit.optuna_search import OptunaSearch
from sokit.population import Population, architecture, train_population
from sokit.search import (
    BiasedRandomSearch,
    GridSearch,
    LogUniform,
    NearestNeighbour,
    RandomSearch,
    Space,
    Uniform,
    run_lockstep,
)

from .experiment import Experiment

METHOD_LABELS = {"grid": "Grid search", "random": "Random search", "biased_random": "Biased random search",
                 "tpe": "Optuna TPE"}

SPACE_4_1 = {"lr": [1e-7, 1e2], "prescale": [10.0, 20.0]}       # section 4.1
SPACE_2_2 = {"lr": [10 ** -3.5, 10 ** 1.7], "prescale": [0.1, 10 ** 4.5]}  # Fig 2.2's axes


def search_space(bounds: dict[str, list[float]], log_prescale: bool) -> Space:
    """The searched (learning rate, prescale) space; the prescale log-uniform or uniform."""
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


def run_searches(config: dict[str, Any], space: Space) -> tuple[dict[str, list], AutoencoderObjective]:
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
    out, objective = run_searches(config, search_space(config["space"], log_prescale=False))
    return {"methods": {m: _summary(hs) for m, hs in out.items()},
            "model_steps": objective.model_steps, "train_seconds": objective.train_seconds,
            "ms_per_model_step": 1e3 * objective.train_seconds / objective.model_steps,
            "population_size": len(config["methods"]) * config["searches"]}


def run_scatter(config: dict[str, Any], log_prescale: bool) -> dict[str, Any]:
    out, objective = run_searches(config, search_space(config["space"], log_prescale))
    return {"histories": {m: hs[0].to_dict() for m, hs in out.items()},
            "model_steps": objective.model_steps, "train_seconds": objective.train_seconds}


_DATA = {"smoke": {"n_train": 1000, "n_eval": 100, "batch": 20},
         "quick": {"n_train": 60000, "n_eval": 500, "batch": 32},
         "long": {"n_train": 60000, "n_eval": 500, "batch": 200},  # Fig 2.2's minibatch (section 4.3)
         "full": {"n_train": 60000, "n_eval": 10000, "batch": 200}}


def profiles(bounds: dict[str, list[float]], methods: list[str],
             budgets: dict[str, tuple[int, int, int]]) -> dict[str, dict[str, Any]]:
    """Per profile: the data sizes of ``_DATA`` and (searches, experiments, iterations)."""
    return {profile: {"seed": 0, "space": bounds, **_DATA[profile], "methods": methods,
                      "searches": s, "experiments": e, "iterations": i}
            for profile, (s, e, i) in budgets.items()}


TABLE4_1 = Experiment(
    "table4_1",
    "Table 4.I: grid vs random vs biased random search (plus Optuna TPE); best final training "
    "MSE per search, mean and std over searches",
    profiles(SPACE_4_1, ["grid", "random", "biased_random", "tpe"],
             {"smoke": (2, 4, 5), "quick": (5, 16, 15), "full": (100, 100, 100)}),
    run_table4_1,
)

FIG4_1 = Experiment(
    "fig4_1",
    "Figure 4.1: points chosen by grid, random and biased random search over the 1-NN "
    "interpolated landscape (log10 learning rate, prescale)",
    profiles(SPACE_4_1, ["grid", "random", "biased_random"],
             {"smoke": (1, 9, 5), "quick": (1, 25, 15), "full": (1, 100, 100)}),
    lambda config: run_scatter(config, log_prescale=False),
)

FIG2_2 = Experiment(
    "fig2_2",
    "Figure 2.2: final training MSE of a random search over learning rate and prescale "
    "(initial weight variance factor), both on log scales",
    profiles(SPACE_2_2, ["random"], {"smoke": (1, 12, 5), "quick": (1, 36, 40), "long": (1, 99, 200),
                                      "full": (1, 100, 1000)}),
    lambda config: run_scatter(config, log_prescale=True),
)
