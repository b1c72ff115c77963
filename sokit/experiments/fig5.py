"""Figure 5.1: updated backpropagation (Algorithm 2) vs SGD on the MNIST autoencoder.

``fig5_1`` trains the autoencoder with plain SGD and with updated backpropagation,
both with the thesis's Gauss-Newton curvature (per-example Jacobians carried down) and
with the exact Hessian w.r.t. each preactivation, from the same initial weights and
minibatch order, and records the loss against updates and against training seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import fig6_tuning
from .experiment import Experiment
from .methods import method
from .runner import run_methods

BATCH = 200
#: the long profile's run, and the equal-budget search that tunes it (5 trials of a tenth of it)
LONG_UPDATES = 3_000
SEARCH_TRIALS, SEARCH_UPDATES = 5, 300

#: learning rates (see NOTES)
LR = {"sgd": 0.3, "ubp": 0.01}

NOTES = (
    "Learning rates: SGD 0.3, the lowest mean minibatch loss over the last 10 of 40 updates "
    "(batch 200, seed 0, MNIST, CPU) over 0.03, 0.1, 0.3, 1 (0.03-0.3 tie near 53.3; 1 gives "
    "94.6). UBP 0.01: not searched by loss (a UBP update of batch 200 takes seconds on the "
    "shared 2-core CPU); it is the largest of 0.001, 0.003, 0.01, 0.03, 0.1 at which, at "
    "initialization (200 training images), UBP's correction relative to the backpropagated "
    "signal does not grow going down the layers (about 0.8 at every layer for 0.01, 2.5 "
    "to 4.7 for 0.03, 8 at the top to overflow at the bottom at 0.1: the explosion of "
    "section 5.5). SGD is also run at UBP's learning rate, to separate the correction from "
    "the step size. Prescale 1, not searched. The thesis tuned each method at about 3e5 updates."
)


def methods() -> dict[str, dict[str, Any]]:
    """SGD (at its own and at UBP's learning rate) and the two UBP variants, by legend label."""
    return {
        "SGD": method("sgd", prescale=1.0, lr=LR["sgd"]),
        f"SGD, lr {LR['ubp']}": method("sgd", prescale=1.0, lr=LR["ubp"]),
        "UBP (Gauss-Newton)": method("ubp", prescale=1.0, lr=LR["ubp"], loss="mse", hessian="gn"),
        "UBP (exact Hessian)": method("ubp", prescale=1.0, lr=LR["ubp"], loss="mse", hessian="exact"),
    }


#: the searched methods: SGD and the two UBP variants, learning rate and prescale searched
SEARCHED = {
    "SGD": method("sgd"),
    "UBP (Gauss-Newton)": method("ubp", loss="mse", hessian="gn"),
    "UBP (exact Hessian)": method("ubp", loss="mse", hessian="exact"),
}

#: the best trials of the stored ``fig5_1_search`` (long), copied exactly (a test checks them);
#: empty while it is not stored, and then ``fig5_1`` has no long profile
TUNED: dict[str, dict[str, float]] = {
    "SGD": {
        "lr": 0.019577919152492698,
        "prescale": 18.225511438217964,
    },
    "UBP (Gauss-Newton)": {
        "lr": 0.006462065416037418,
        "prescale": 1.8790016488805434,
    },
    "UBP (exact Hessian)": {
        "lr": 0.021335483604470226,
        "prescale": 5.261277458721601,
    },
}


def long_methods() -> dict[str, dict[str, Any]] | None:
    """The long profile's specs from :data:`TUNED`, plus SGD at UBP's (Gauss-Newton) learning
    rate, which separates the correction from the step size; None until TUNED is filled."""
    if set(TUNED) != set(SEARCHED):
        return None
    specs = {}
    for label, spec in SEARCHED.items():
        best = dict(TUNED[label])
        specs[label] = dict(spec, prescale=best.pop("prescale"), kwargs={**spec["kwargs"], **best})
    ubp_lr = TUNED["UBP (Gauss-Newton)"]["lr"]
    specs["SGD at UBP's learning rate"] = dict(specs["SGD"], kwargs={**specs["SGD"]["kwargs"], "lr": ubp_lr})
    return specs


def prescale_swap_methods() -> dict[str, dict[str, Any]]:
    """The probe of the long profile's outcome (UBP never leaves the mean-image plateau while
    SGD does): each method at the other's searched prescale. "UBP (Gauss-Newton) at SGD's
    prescale" has the learning rate and prescale of the long profile's "SGD at UBP's learning
    rate", so the two differ only by UBP's correction; "SGD at UBP's prescale" keeps SGD's
    learning rate."""
    sgd, ubp = TUNED["SGD"], TUNED["UBP (Gauss-Newton)"]
    return {
        "UBP (Gauss-Newton) at SGD's prescale": method("ubp", prescale=sgd["prescale"], lr=ubp["lr"],
                                                      loss="mse", hessian="gn"),
        "SGD at UBP's prescale": method("sgd", prescale=ubp["prescale"], lr=sgd["lr"]),
    }


def run(config: dict[str, Any], workdir: Path | None = None, jobs: int = 1) -> dict[str, Any]:
    """Train every method of ``config`` from the same initial weights; {label: train result}."""
    return run_methods(config, workdir, jobs)


BASE = {"dataset": "mnist", "model": "autoencoder", "loss": "mse", "seed": 0, "methods": methods()}


def profiles() -> dict[str, dict[str, Any]]:
    """smoke, quick and full with the hand-picked learning rates; long (3,000 updates) with
    the equal-budget search's best trials once they are in :data:`TUNED`."""
    configs = {
        # seconds on a CPU: 5 updates of minibatches of 20, losses on 200 examples
        "smoke": dict(BASE, batch_size=20, updates=5, eval_subset=200, n_evals=3),
        # minutes on a 2-core CPU
        "quick": dict(BASE, batch_size=BATCH, updates=50, eval_subset=2000, n_evals=6),
        # the thesis's scale, for a GPU
        "full": dict(BASE, batch_size=BATCH, updates=300_000, eval_subset=None, n_evals=30),
    }
    tuned = long_methods()
    if tuned is not None:
        configs["long"] = dict(BASE, methods=tuned, batch_size=BATCH, updates=LONG_UPDATES, eval_subset=10_000,
                               n_evals=30)
    return configs


FIG5_1 = Experiment(
    "fig5_1",
    "Figure 5.1: updated backpropagation (Gauss-Newton and exact curvature) vs SGD, MNIST autoencoder",
    profiles(),
    run,
    notes="Quick profile: 50 updates of batch 200, losses on the first 2,000 training and test "
          "images; full: 3e5 updates. " + NOTES + " Long profile: 3,000 updates, losses on the first "
          "10,000 images at 30 log-spaced points, learning rate and prescale of each method from the "
          "equal-budget search fig5_1_search.",
    resumable=True,
)

FIG5_1_SEARCH = Experiment(
    "fig5_1_search",
    f"Equal-budget biased random search of every fig5_1 method ({SEARCH_TRIALS} trials x "
    f"{SEARCH_UPDATES:,} updates each)",
    {profile: {"dataset": "mnist", "model": "autoencoder", "loss": "mse", "seed": 0, "batch_size": b,
               "methods": methods_, "knobs": {}, "lr_range": fig6_tuning.LR_RANGE,
               "prescale_range": fig6_tuning.PRESCALE_RANGE["autoencoder"], "searcher_seeds": "per_method",
               "trials": trials, "updates": updates}
     for profile, b, trials, updates, methods_ in (
         ("smoke", 20, 2, 3, dict(list(SEARCHED.items())[:2])),
         ("long", BATCH, SEARCH_TRIALS, SEARCH_UPDATES, SEARCHED))},
    fig6_tuning.run_resumable,
    notes=f"Every method gets the same budget, {SEARCH_TRIALS} trials of {SEARCH_UPDATES} updates (a tenth of "
          f"the {LONG_UPDATES:,}-update runs they tune), over log lr and log prescale; each method's searcher "
          "has its own seed; cost: mean of the last 20 minibatch losses. UBP's learning rate is searched in "
          "the second-order range, SGD's in the first-order one.",
    resumable=True,
)

FIG5_1_PRESCALE = Experiment(
    "fig5_1_prescale",
    "Figure 5.1, a probe of the long profile: UBP at SGD's searched prescale, SGD at UBP's",
    {"smoke": dict(BASE, methods=prescale_swap_methods(), batch_size=20, updates=5, eval_subset=200,
                   n_evals=3),
     "long": dict(BASE, methods=prescale_swap_methods(), batch_size=BATCH, updates=LONG_UPDATES,
                  eval_subset=10_000, n_evals=30)},
    run,
    notes="Not a tuned comparison: the fig5_1 long profile's searched settings with the prescales swapped, "
          "to test whether the prescale (the initial weights' scale, section 2.4.2), rather than the update "
          "rule, keeps UBP on the mean-image plateau. Same budget, data, seed and evaluation as fig5_1 long.",
    resumable=True,
)

#: the setback of the probe's UBP arm came near update 1,540: run past it
SETBACK_UPDATES = 1_700


def setback_methods() -> dict[str, dict[str, Any]]:
    """The probe's "UBP (Gauss-Newton) at SGD's prescale", monitoring its correction."""
    label = "UBP (Gauss-Newton) at SGD's prescale"
    spec = prescale_swap_methods()[label]
    return {label: dict(spec, kwargs={**spec["kwargs"], "monitor": True})}


FIG5_1_SETBACK = Experiment(
    "fig5_1_setback",
    "Figure 5.1, the probe's setback: UBP's relative correction at every update of its UBP run",
    {"smoke": dict(BASE, methods=setback_methods(), batch_size=20, updates=5, eval_subset=200, n_evals=3),
     "long": dict(BASE, methods=setback_methods(), batch_size=BATCH, updates=SETBACK_UPDATES,
                  eval_subset=10_000, n_evals=10)},
    run,
    notes=f"The UBP (Gauss-Newton) arm of fig5_1_prescale long (same settings, seed and minibatches, so the "
          f"same trajectory) for its first {SETBACK_UPDATES:,} updates, past the setback near update 1,540, "
          "with UBP(monitor=True): at every update the relative correction |UBP - BP| / |BP| of the signal "
          "below each layer (section 5.5), before the update is applied.",
    resumable=True,
)
