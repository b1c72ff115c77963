"""Chapter 6 experiments: Figures 6.1, 6.2 and 6.3 of the thesis.

* ``fig6_1``: centering tricks on the MNIST autoencoder (SGD, mean-only batch norm
  + SGD, centered gradient descent (Algorithm 3), ACP with fixed alpha (Algorithm 4)).
* ``fig6_2``: approximate second-order methods on the MNIST autoencoder (ACP with
  fixed and heuristic alpha, Natural Neural Networks, KFAC, batch norm + SGD, SGD).
* ``fig6_3``: the same comparison plus KFAC for Gauss-Newton and KFAC for the natural
  gradient on the CIFAR-10 MLP (8 x 100 ReLU, cross-entropy). CIFAR-10 can only be
  downloaded, so this result exists only where the download works.
* ``fig6_3_fashion``: the fig6_3 comparison on Fashion-MNIST (784 inputs), a
  stand-in that runs offline; it is not the thesis's experiment.

All runs use minibatches of 200 and amortization N = 100 (section 6.5.2). A figure is
a table ``legend label -> method``, where a method is a function ``(task, N) -> spec``
(:mod:`sokit.experiments.methods`); the learning rate and prescale of a label come from
the stored searches (:data:`HPARAMS`, :mod:`sokit.experiments.fig6_tuning`) unless the
spec carries its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import store
from .experiment import PROFILES, Experiment
from .methods import method
from .runner import run_methods

BATCH = 200
AMORTIZATION = 100
SMOKE_AMORTIZATION = 5  # so that the smoke run refreshes the statistics more than once
EPS = 1e-3  # Tikhonov damping of ACP, KFAC and NNN (not searched)
LOSS = {"autoencoder": "mse", "classifier": "cross_entropy"}

NOTES = (
    "Learning rate and prescale (initial weight variance factor): for each method, the best "
    "trial of a biased random search (Algorithm 1) at a reduced budget, 10 trials of 300 "
    "updates (batch 200, seed 0, cost: mean of the last 20 minibatch losses), log-uniform "
    "lr in [1e-3, 1] for SGD-like methods and [1e-4, 0.3] for ACP, KFAC and NNN, prescale in "
    "[0.5, 20] (autoencoder) or [0.5, 8] (classifier); stored as results/fig6_hparams and "
    "results/fig6_3_fashion_hparams (quick profile). ACP's fixed alpha: on the autoencoder "
    "searched with its lr and prescale by fig6_acp_alpha (15 trials of 300 updates, alpha in "
    "[0.01, 100]), on the classifier 1. Damping eps = 1e-3 (ACP, KFAC, NNN) is not searched. "
    "The thesis searched at 3e5 updates."
)

#: (learning rate, prescale) per task and legend label: the best trials of the stored
#: searches (``fig6_hparams``, ``fig6_3_fashion_hparams``, quick profile; see NOTES)
HPARAMS = {
    "autoencoder": {
        "SGD": (0.08941, 6.337), "mean-only batch norm + SGD": (0.02244, 9.435),
        "batch norm + SGD": (0.08145, 1.353), "centered GD": (0.9809, 18.63),
        "ACP, fixed alpha": (0.0006797, 12.68), "ACP, heuristic alpha": (0.007634, 1.511),
        "Natural Neural Networks": (0.0023, 13.34), "KFAC": (0.0002949, 7.159),
    },
    "classifier": {
        "SGD": (0.009239, 2.598), "batch norm + SGD": (0.1545, 0.8137),
        "ACP, fixed alpha": (0.0007945, 0.9772), "ACP, heuristic alpha": (0.001199, 1.923),
        "Natural Neural Networks": (0.001093, 3.222), "KFAC (Gauss-Newton)": (0.0007945, 0.9772),
        "KFAC (natural gradient)": (0.001093, 3.222),
    },
}

#: ACP's fixed alpha per task: on the autoencoder the best trial of ``fig6_acp_alpha``
#: (quick), which searches it with the lr and prescale; on the classifier 1, not searched
ACP_ALPHA = {"autoencoder": 0.01715, "classifier": 1.0}

#: the long profile's hyperparameters per task and legend label: the best trials of the
#: equal-budget searches (``fig6_search``, ``fig6_3_fashion_search``, long profile; a test
#: checks that they are equal): prescale, learning rate and the method's own knobs, to full
#: precision (rounded to 4 digits, KFAC (Gauss-Newton)'s best trial diverges at update 32:
#: it sits on the edge of stability)
TUNED: dict[str, dict[str, dict[str, float]]] = {
    "autoencoder": {
        "ACP, fixed alpha": {
            "lr": 0.11593040872367924,
            "prescale": 10.171745752593122,
            "eps": 0.09566327053879896,
            "alpha": 0.24383474144301823,
        },
        "ACP, heuristic alpha": {
            "lr": 0.2556163994099416,
            "prescale": 5.267644338622007,
            "eps": 0.10076043302087621,
        },
        "Natural Neural Networks": {
            "lr": 0.06636165544183707,
            "prescale": 2.5177676403692253,
            "eps": 0.00010150624917253131,
        },
        "KFAC": {
            "lr": 0.0004946713820468046,
            "prescale": 3.905397659063584,
            "damping": 0.0007680398027637537,
        },
        "batch norm + SGD": {
            "lr": 0.06056323391137505,
            "prescale": 2.20024930615312,
        },
        "SGD": {
            "lr": 0.06787143382702474,
            "prescale": 7.688095401575347,
        },
        "mean-only batch norm + SGD": {
            "lr": 0.0023909699657760084,
            "prescale": 17.169601625381407,
        },
        "centered GD": {
            "lr": 0.9629411715436392,
            "prescale": 11.440727421903247,
        },
    },
    "classifier": {
        "ACP, fixed alpha": {
            "lr": 0.013890353967298175,
            "prescale": 0.8800500676234934,
            "eps": 0.019870687421346903,
            "alpha": 1.5653484279918424,
        },
        "ACP, heuristic alpha": {
            "lr": 0.026371117630611816,
            "prescale": 0.9596164182069065,
            "eps": 0.9514120236439495,
        },
        "Natural Neural Networks": {
            "lr": 0.00144471666749418,
            "prescale": 3.734295685491611,
            "eps": 0.008226779335828386,
        },
        "KFAC (Gauss-Newton)": {
            "lr": 0.005473571907769739,
            "prescale": 1.270335755526626,
            "damping": 0.004264650629811813,
        },
        "batch norm + SGD": {
            "lr": 0.04593045434990015,
            "prescale": 0.5594418185334064,
        },
        "SGD": {
            "lr": 0.046876206930557204,
            "prescale": 1.3818489639195173,
        },
        "KFAC (natural gradient)": {
            "lr": 0.0097207793065717,
            "prescale": 1.550560861882413,
            "damping": 0.01165917325920002,
        },
    },
}

#: ``(task, amortization) -> method spec``
Method = Callable[[str, int], dict[str, Any]]


def sgd(task: str, n: int) -> dict[str, Any]:
    return method("sgd")


def mean_only_bn(task: str, n: int) -> dict[str, Any]:
    return method("sgd", "mean_only")


def batchnorm(task: str, n: int) -> dict[str, Any]:
    return method("sgd", "batchnorm")


def centered(task: str, n: int) -> dict[str, Any]:
    return method("centered")


def acp_fixed(task: str, n: int) -> dict[str, Any]:
    return method("acp", amortization=n, eps=EPS, alpha=ACP_ALPHA[task])


def acp_heuristic(task: str, n: int) -> dict[str, Any]:
    return method("acp", amortization=n, eps=EPS, alpha="heuristic")


def nnn(task: str, n: int) -> dict[str, Any]:
    return method("nnn", amortization=n, eps=EPS)


def kfac_fisher(task: str, n: int) -> dict[str, Any]:
    return method("kfac", amortization=n, damping=EPS, loss=LOSS[task], curvature="fisher")


def kfac_gn(task: str, n: int) -> dict[str, Any]:
    return method("kfac", amortization=n, damping=EPS, loss=LOSS[task], curvature="gauss_newton")


FIG6_1: dict[str, Method] = {
    "SGD": sgd, "mean-only batch norm + SGD": mean_only_bn, "centered GD": centered,
    "ACP, fixed alpha": acp_fixed,
}
FIG6_2: dict[str, Method] = {
    "ACP, fixed alpha": acp_fixed, "ACP, heuristic alpha": acp_heuristic,
    "Natural Neural Networks": nnn, "KFAC": kfac_fisher, "batch norm + SGD": batchnorm, "SGD": sgd,
}
FIG6_3: dict[str, Method] = {
    "ACP, fixed alpha": acp_fixed, "ACP, heuristic alpha": acp_heuristic,
    "Natural Neural Networks": nnn, "KFAC (Gauss-Newton)": kfac_gn, "batch norm + SGD": batchnorm,
    "SGD": sgd, "KFAC (natural gradient)": kfac_fisher,
}


def tuned(task: str, label: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the searched learning rate and prescale of ``label`` (:data:`HPARAMS`),
    unless it carries its own."""
    if "lr" in spec["kwargs"] and "prescale" in spec:
        return spec
    if label not in HPARAMS[task]:
        raise ValueError(f"no searched learning rate and prescale for {label!r} ({task}); add it to "
                         "fig6.HPARAMS from a search, or give the method its own lr and prescale")
    lr, prescale = HPARAMS[task][label]
    return dict(spec, kwargs={"lr": lr, **spec["kwargs"]}, prescale=prescale)


def methods_for(task: str, figure: dict[str, Method], amortization: int = AMORTIZATION) -> dict[str, dict[str, Any]]:
    """The tuned method specs of one figure's table, by legend label."""
    return {label: tuned(task, label, make(task, amortization)) for label, make in figure.items()}


def long_methods(task: str, figure: dict[str, Method]) -> dict[str, dict[str, Any]] | None:
    """The method specs of the long profile (:data:`TUNED`), or None while a method of the
    figure has no equal-budget search result yet."""
    if not all(label in TUNED[task] for label in figure):
        return None
    specs = {}
    for label, make in figure.items():
        spec, best = make(task, AMORTIZATION), dict(TUNED[task][label])
        spec["prescale"] = best.pop("prescale")
        spec["kwargs"].update(best)
        specs[label] = spec
    return specs


#: the comparison figures, whose identical runs are shared (Fig 6.1 and 6.2 both have SGD
#: and ACP with a fixed alpha on the autoencoder: the thesis ran them once)
COMPARISONS = ("fig6_1", "fig6_2", "fig6_3", "fig6_3_fashion")


def shared_runs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Results of this configuration's methods already stored by another comparison figure
    with the same data, model, budget and method spec; each marked ``shared_from``."""
    base = {k: v for k, v in config.items() if k != "methods"}
    found: dict[str, dict[str, Any]] = {}
    for name in COMPARISONS:
        for profile in PROFILES:
            record = store.load(name, profile)
            if record is None or {k: v for k, v in record["config"].items() if k != "methods"} != base:
                continue
            for label, spec in config["methods"].items():
                if label not in found and record["config"]["methods"].get(label) == spec:
                    found[label] = dict(record["results"][label], shared_from=f"{name}/{profile}")
    return found


def run(config: dict[str, Any], workdir: Path | None = None, jobs: int = 1) -> dict[str, Any]:
    """Train every method of ``config`` from the same initial weights; {label: train result}.
    A method another figure already ran with the same configuration is taken from there."""
    config = json.loads(json.dumps(config))
    shared = shared_runs(config)
    todo = {label: spec for label, spec in config["methods"].items() if label not in shared}
    trained = run_methods(dict(config, methods=todo), workdir, jobs) if todo else {}
    return {label: shared[label] if label in shared else trained[label] for label in config["methods"]}


def task_base(task: str, dataset: str, model: str) -> dict[str, Any]:
    """What every profile of a task shares: data, network, loss, batch, seed."""
    base = {"dataset": dataset, "model": model, "batch_size": BATCH, "seed": 0, "loss": LOSS[task]}
    if task == "classifier":
        base["sizes"] = [784] + [100] * 8 + [10] if model == "mlp" else None
    return base


def profiles(task: str, dataset: str, model: str, figure: dict[str, Method],
             quick_updates: int) -> dict[str, dict[str, Any]]:
    """smoke (seconds: 12 updates, N = 5, losses on 200 examples), quick (minutes on a
    CPU, losses on the first 10,000 training and test examples) and full (3e5 updates,
    whole sets) configurations; N = 100 outside smoke."""
    base = task_base(task, dataset, model)
    full_methods = methods_for(task, figure)
    configs = {
        "smoke": dict(base, updates=12, eval_subset=200, n_evals=3, amortization=SMOKE_AMORTIZATION,
                      methods=methods_for(task, figure, SMOKE_AMORTIZATION)),
        "quick": dict(base, updates=quick_updates, eval_subset=10_000, n_evals=12,
                      amortization=AMORTIZATION, methods=full_methods),
        "full": dict(base, updates=300_000, eval_subset=None, n_evals=30,
                     amortization=AMORTIZATION, methods=full_methods),
    }
    tuned_long = long_methods(task, figure)
    if tuned_long is not None:
        # about 30 log-spaced evaluations on the first 10,000 training and test examples
        configs["long"] = dict(base, updates=LONG_UPDATES, eval_subset=10_000, n_evals=30,
                               amortization=AMORTIZATION, methods=tuned_long)
    return configs


QUICK_AE, QUICK_CLS = 1000, 3000
LONG_UPDATES = 10_000


def comparison(name: str, description: str, task: str, dataset: str, model: str,
               figure: dict[str, Method], quick_updates: int) -> Experiment:
    """One comparison figure as an :class:`Experiment` (resumable, one process per method)."""
    return Experiment(name, description, profiles(task, dataset, model, figure, quick_updates), run,
                      notes=f"Quick profile: {quick_updates:,} updates instead of the thesis's 3e5. " + NOTES,
                      resumable=True)


def fig6_1() -> Experiment:
    return comparison("fig6_1", "Figure 6.1: centering tricks on the MNIST autoencoder",
                      "autoencoder", "mnist", "autoencoder", FIG6_1, QUICK_AE)


def fig6_2() -> Experiment:
    return comparison("fig6_2", "Figure 6.2: approximate second-order methods on the MNIST autoencoder",
                      "autoencoder", "mnist", "autoencoder", FIG6_2, QUICK_AE)


def fig6_3() -> Experiment:
    return comparison("fig6_3", "Figure 6.3: approximate second-order methods on the CIFAR-10 MLP "
                      "(needs CIFAR-10, download-only)", "classifier", "cifar10", "cifar_mlp", FIG6_3, QUICK_CLS)


def fig6_3_fashion() -> Experiment:
    return comparison("fig6_3_fashion", "Stand-in for Figure 6.3 on Fashion-MNIST (not the thesis's "
                      "experiment)", "classifier", "fashion-mnist", "mlp", FIG6_3, QUICK_CLS)
