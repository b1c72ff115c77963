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
import functools
import math
import zlib
from pathlib import Path
from typing import Any

import torch

from sokit import data as sokit_data
from sokit.device import default_device
from sokit.search import BiasedRandomSearch, LogUniform, Space, run_search
from sokit.train import train

from . import fig6
from .experiment import Experiment
from .methods import build, for_device
from .runner import map_methods, prepare_workdir, slug
from .store import read_json, write_json

#: SGD-like methods search the learning rate in the first range, preconditioned ones
#: (whose step is already scaled by the curvature) in the second
FIRST_ORDER = ("SGD", "mean-only batch norm + SGD", "batch norm + SGD", "centered GD")
LR_RANGE = {"first_order": [1e-3, 1.0], "second_order": [1e-4, 0.3]}
PRESCALE_RANGE = {"autoencoder": [0.5, 20.0], "classifier": [0.5, 8.0]}
TAIL = 20
#: each optimizer's own knobs, searched beside the learning rate and prescale by the
#: equal-budget searches (log-uniform ranges); ACP with a fixed alpha also searches alpha
KNOBS = {"acp": {"eps": [1e-4, 1.0]}, "nnn": {"eps": [1e-4, 1.0]}, "kfac": {"damping": [1e-4, 1.0]}}
ALPHA_RANGE = [0.01, 100.0]


def space(config: dict[str, Any], label: str) -> Space:
    """The searched space of method ``label``: log learning rate and log prescale, and
    log alpha when the config has an ``alpha_range`` (ACP with a fixed alpha)."""
    kind = "first_order" if label in FIRST_ORDER else "second_order"
    dims = {"lr": LogUniform(*config["lr_range"][kind]),
            "prescale": LogUniform(*config["prescale_range"])}
    if "alpha_range" in config:
        dims["alpha"] = LogUniform(*config["alpha_range"])
    for name, bounds in config.get("knobs", {}).get(label, {}).items():
        dims[name] = LogUniform(*bounds)
    return Space(dims)


def searcher_seed(config: dict[str, Any], label: str) -> int:
    """The search's own seed: shared by every method in the first searches, one per method
    (a stable hash of the label) in the equal-budget ones, so that no two methods are
    offered the same proposals."""
    if config.get("searcher_seeds") == "per_method":  # a "searcher_salt" draws other proposals
        return config["seed"] + zlib.crc32((label + config.get("searcher_salt", "")).encode()) % 1_000_000
    return config["seed"]


def trial_cost(config: dict[str, Any], label: str, hp: dict[str, float],
               data: sokit_data.Dataset) -> float:
    """Train method ``label`` with ``hp`` for ``config["updates"]``; mean of the last 20
    minibatch losses (NaN when the run diverged)."""
    spec = copy.deepcopy(config["methods"][label])
    spec["prescale"] = hp["prescale"]
    spec["kwargs"].update({k: v for k, v in hp.items() if k != "prescale"})  # lr and the knobs
    torch.manual_seed(config["seed"])
    model, optimizer = build(config, for_device(spec, data.train_x.device))
    res = train(model, optimizer, data, config["loss"], config["updates"],
                batch_size=config["batch_size"], seed=config["seed"], n_evals=1, eval_subset=200,
                progress=False)
    tail = res["minibatch_loss"][-TAIL:]
    if res["diverged"] or not all(math.isfinite(v) for v in tail):
        return math.nan
    return sum(tail) / len(tail)


def search_method(config: dict[str, Any], label: str, data: sokit_data.Dataset) -> dict[str, Any]:
    """One biased random search of method ``label``: {"history", "best", "best_cost", "rejections"}."""
    searcher = BiasedRandomSearch(space(config, label), seed=searcher_seed(config, label))
    history = run_search(searcher, lambda hp: trial_cost(config, label, hp, data), config["trials"])
    best = history.best()
    return {"history": history.to_dict(), "best": best.config if best else None,
            "best_cost": best.cost if best else None, "rejections": searcher.rejections}


def run(config: dict[str, Any]) -> dict[str, Any]:
    """One biased random search per method; {label: search_method(...)}."""
    data = sokit_data.load(config["dataset"], device=default_device())
    return {label: search_method(config, label, data) for label in config["methods"]}


def run_resumable(config: dict[str, Any], workdir: Path | None = None, jobs: int = 1) -> dict[str, Any]:
    """:func:`run`, keeping each method's finished search in ``workdir`` (an interrupted
    run continues with the methods not yet searched); ``jobs`` methods at a time, each in
    its own process (:func:`~sokit.experiments.runner.map_methods`)."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if workdir is not None:
        prepare_workdir(workdir, config)
    labels = list(config["methods"])
    where = str(workdir) if workdir is not None else None
    if jobs == 1 or len(labels) == 1:
        data = sokit_data.load(config["dataset"], device=default_device())
        return {label: _search_kept(config, where, label, data) for label in labels}
    return map_methods(functools.partial(_search_in_worker, config, where), labels, jobs)


def _search_kept(config: dict[str, Any], workdir: str | None, label: str,
                 data: sokit_data.Dataset) -> dict[str, Any]:
    """The search of ``label``: read from ``workdir`` when finished there, else run and kept."""
    done = Path(workdir) / f"{slug(label)}.json" if workdir is not None else None
    if done is not None and done.exists():
        return read_json(done)
    result = search_method(config, label, data)
    if done is not None:
        write_json(done, result)
    return result


def _search_in_worker(config: dict[str, Any], workdir: str | None, label: str, threads: int,
                      position: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    return _search_kept(config, workdir, label, sokit_data.load(config["dataset"], device=default_device()))


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


def equal_budget(name: str, task: str, dataset: str, model: str, figure: dict[str, fig6.Method],
                 trials: int, updates: int, tuned_for: int, title: str | None = None,
                 notes: str = "", **extra: Any) -> Experiment:
    """One figure's equal-budget search: every method gets ``trials`` trials of ``updates``
    updates over its log learning rate, log prescale and its own knobs (:data:`KNOBS`;
    ACP with a fixed alpha also alpha), each method with its own searcher seed; ``extra``
    goes into the configuration (e.g. a ``searcher_salt``)."""
    if updates * 10 < tuned_for:
        raise ValueError(f"{name}: trials of {updates} updates are too short to tune runs of {tuned_for:,}")
    plain = {label: make(task, fig6.AMORTIZATION) for label, make in figure.items()}
    knobs = {label: {**KNOBS.get(spec["optimizer"], {}),
                     **({"alpha": ALPHA_RANGE} if isinstance(spec["kwargs"].get("alpha"), float) else {})}
             for label, spec in plain.items()}
    methods = searched(task, figure, search_alpha=True)
    for label, spec in methods.items():
        for knob in knobs[label]:
            spec["kwargs"].pop(knob, None)  # searched
    base = dict(fig6.task_base(task, dataset, model), methods=methods, knobs=knobs, lr_range=LR_RANGE,
                prescale_range=PRESCALE_RANGE[task], searcher_seeds="per_method", **extra)
    two = dict(list(methods.items())[:2])
    return Experiment(
        name, title or f"Equal-budget biased random search of every {name.split('_search')[0]} method "
        f"({trials} trials x {updates:,} updates each)",
        {"smoke": dict(base, trials=2, updates=3, methods=two), "long": dict(base, trials=trials, updates=updates)},
        run_resumable,
        notes=f"Every method gets the same budget, {trials} trials of {updates:,} updates (a tenth of the "
              f"{tuned_for:,}-update runs they tune), over log lr, log prescale and its own knobs "
              "(damping eps of ACP and NNN, damping of KFAC, alpha of fixed-alpha ACP); each method's "
              "searcher has its own seed; cost: mean of the last 20 minibatch losses." + notes,
        resumable=True)


def fig6_search() -> Experiment:
    return equal_budget("fig6_search", "autoencoder", "mnist", "autoencoder", {**fig6.FIG6_2, **fig6.FIG6_1},
                        trials=5, updates=1000, tuned_for=fig6.LONG_UPDATES)


def fig6_3_fashion_search() -> Experiment:
    return equal_budget("fig6_3_fashion_search", "classifier", "fashion-mnist", "mlp", fig6.FIG6_3,
                        trials=10, updates=1000, tuned_for=fig6.LONG_UPDATES)


#: the methods of fig6_2 and fig6_1 that the long profile left far from the thesis's curves
BEHIND = ("KFAC", "Natural Neural Networks", "mean-only batch norm + SGD")


def fig6_probe_search() -> Experiment:
    """A probe of the likeliest cause of those disagreements (5 trials too few): 10 more
    trials of the same kind for each, with other proposals. Not a retuning (the other
    methods get none), so nothing is trained from it."""
    figure = {**fig6.FIG6_2, **fig6.FIG6_1}
    return equal_budget("fig6_probe_search", "autoencoder", "mnist", "autoencoder",
                        {label: figure[label] for label in BEHIND}, trials=10, updates=1000,
                        tuned_for=fig6.LONG_UPDATES, searcher_salt="probe",
                        title="Probe: 10 more trials x 1,000 updates for KFAC, NNN and mean-only batch norm, "
                              "the methods fig6_search (5 trials) left far from the thesis",
                        notes=" A probe, not a retuning: only these three methods get the extra trials, so "
                              "the long profile keeps fig6_search's equal-budget choices.")
