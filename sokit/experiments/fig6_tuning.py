"""Hyperparameters of the chapter 6 methods by biased random search (thesis section 4.1).

The thesis tuned every method of Figures 6.1-6.3 by biased random search (Algorithm 1)
at its full budget. ``fig6_hparams`` (the MNIST autoencoder: every method of Figures 6.1
and 6.2) and ``fig6_3_fashion_hparams`` (the classifier) run the same search per method
at a reduced budget: ``trials`` experiments of ``updates`` updates each (batch 200,
seed 0), over the learning rate and the prescale (the factor of the initial weight
variance), both log-uniform. A trial's cost is the mean of its last 20 minibatch losses;
diverged or failed trials count as the worst cost. :data:`sokit.experiments.fig6.HPARAMS`
holds the best trials of the stored ``quick`` results (a test checks that they agree).
Damping (eps = 1e-3) is not searched; ACP's fixed alpha is held at 1 there, and
``fig6_acp_alpha`` searches it (with the lr and prescale) on the autoencoder.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from sokit import data as sokit_data
from sokit.device import default_device
from sokit.search import BiasedRandomSearch, LogUniform, Space, run_search
from sokit.train import train

from . import fig6
from .experiment import Experiment
from .methods import build

#: SGD-like methods search the learning rate in the first range, preconditioned ones
#: (whose step is already scaled by the curvature) in the second
FIRST_ORDER = ("SGD", "mean-only batch norm + SGD", "batch norm + SGD", "centered GD")
LR_RANGE = {"first_order": [1e-3, 1.0], "second_order": [1e-4, 0.3]}
PRESCALE_RANGE = {"autoencoder": [0.5, 20.0], "classifier": [0.5, 8.0]}
TAIL = 20


def space(config: dict[str, Any], label: str) -> Space:
    """The searched space of method ``label``: log learning rate and log prescale, and
    log alpha when the config has an ``alpha_range`` (ACP with a fixed alpha)."""
    kind = "first_order" if label in FIRST_ORDER else "second_order"
    dims = {"lr": LogUniform(*config["lr_range"][kind]),
            "prescale": LogUniform(*config["prescale_range"])}
    if "alpha_range" in config:
        dims["alpha"] = LogUniform(*config["alpha_range"])
    return Space(dims)


def trial_cost(config: dict[str, Any], label: str, hp: dict[str, float],
               data: sokit_data.Dataset) -> float:
    """Train method ``label`` with ``hp`` for ``config["updates"]``; mean of the last 20
    minibatch losses (NaN when the run diverged)."""
    spec = copy.deepcopy(config["methods"][label])
    spec["kwargs"]["lr"] = hp["lr"]
    spec["prescale"] = hp["prescale"]
    if "alpha" in hp:
        spec["kwargs"]["alpha"] = hp["alpha"]
    torch.manual_seed(config["seed"])
    model, optimizer = build(config, spec)
    res = train(model, optimizer, data, config["loss"], config["updates"],
                batch_size=config["batch_size"], seed=config["seed"], n_evals=1, eval_subset=200,
                progress=False)
    tail = res["minibatch_loss"][-TAIL:]
    if res["diverged"] or not all(math.isfinite(v) for v in tail):
        return math.nan
    return sum(tail) / len(tail)


def run(config: dict[str, Any]) -> dict[str, Any]:
    """One biased random search per method; {label: {"history", "best", "best_cost"}}."""
    data = sokit_data.load(config["dataset"], device=default_device())
    out = {}
    for label in config["methods"]:
        searcher = BiasedRandomSearch(space(config, label), seed=config["seed"])
        history = run_search(searcher, lambda hp, label=label: trial_cost(config, label, hp, data),
                             config["trials"])
        best = history.best()
        out[label] = {"history": history.to_dict(), "best": best.config if best else None,
                      "best_cost": best.cost if best else None, "rejections": searcher.rejections}
    return out


def searched(task: str, figure: dict[str, fig6.Method], search_alpha: bool) -> dict[str, dict[str, Any]]:
    """The method specs of a search: no lr and prescale (searched); ACP's fixed alpha left
    out when searched, else held at 1."""
    specs = {label: make(task, fig6.AMORTIZATION) for label, make in figure.items()}
    for spec in specs.values():
        if isinstance(spec["kwargs"].get("alpha"), float):
            if search_alpha:
                del spec["kwargs"]["alpha"]
            else:
                spec["kwargs"]["alpha"] = 1.0
    return specs


def profiles(task: str, dataset: str, model: str, figure: dict[str, fig6.Method], trials: int = 10,
             **extra: Any) -> dict[str, dict[str, Any]]:
    """smoke (2 trials of 3 updates, two methods) and quick (the stored search)."""
    methods = searched(task, figure, "alpha_range" in extra)
    base = dict(fig6.task_base(task, dataset, model), methods=methods, lr_range=LR_RANGE,
                prescale_range=PRESCALE_RANGE[task], **extra)
    return {"smoke": dict(base, trials=2, updates=3, methods=dict(list(methods.items())[:2])),
            "quick": dict(base, trials=trials, updates=300)}


def fig6_hparams() -> Experiment:
    return Experiment(
        "fig6_hparams",
        "Biased random search of lr and prescale for every Figure 6.1/6.2 method (MNIST autoencoder)",
        profiles("autoencoder", "mnist", "autoencoder", {**fig6.FIG6_2, **fig6.FIG6_1}), run,
        notes="10 trials of 300 updates per method (quick), batch 200.")


def fig6_acp_alpha() -> Experiment:
    return Experiment(
        "fig6_acp_alpha",
        "Biased random search of ACP's lr, prescale and fixed alpha (MNIST autoencoder)",
        profiles("autoencoder", "mnist", "autoencoder", {"ACP, fixed alpha": fig6.acp_fixed}, trials=15,
                 alpha_range=[0.01, 100.0]), run,
        notes="15 trials of 300 updates (quick), batch 200, alpha log-uniform in [0.01, 100]. Run after "
              "fig6_hparams showed ACP with alpha = 1 far behind SGD.")


def fig6_3_fashion_hparams() -> Experiment:
    return Experiment(
        "fig6_3_fashion_hparams",
        "Biased random search of lr and prescale for every Figure 6.3 method (Fashion-MNIST classifier)",
        profiles("classifier", "fashion-mnist", "mlp", fig6.FIG6_3), run,
        notes="10 trials of 300 updates per method (quick), batch 200.")
