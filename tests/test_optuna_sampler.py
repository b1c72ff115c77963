"""BiasedRandomSampler: Algorithm 1 as an Optuna sampler."""

import math

import numpy as np
import optuna
import pytest

from sokit.optuna_search import BiasedRandomSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def quadratic(trial):
    x = trial.suggest_float("lr", 1e-7, 1e2, log=True)
    y = trial.suggest_float("prescale", 10, 20)
    return (math.log10(x) + 2) ** 2 + ((y - 15) / 2) ** 2


def mixed(trial):
    k = trial.suggest_int("k", 1, 4)
    s = trial.suggest_float("s", 0.0, 1.0, step=0.25)
    m = trial.suggest_int("m", 1, 1000, log=True)
    c = trial.suggest_categorical("act", ["relu", "tanh"])
    return k + s + math.log(m) + (c == "tanh")


def test_samples_in_bounds_all_kinds():
    study = optuna.create_study(sampler=BiasedRandomSampler(seed=0))
    study.optimize(mixed, n_trials=60)
    p = [t.params for t in study.trials]
    assert {q["k"] for q in p} == {1, 2, 3, 4}
    assert set(q["s"] for q in p) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert all(1 <= q["m"] <= 1000 and isinstance(q["m"], int) for q in p)
    assert {q["act"] for q in p} == {"relu", "tanh"}
    assert study.sampler.rejections > 0  # the numeric part was biased


def test_seeded_reproducible():
    runs = []
    for seed in (3, 3, 4):
        study = optuna.create_study(sampler=BiasedRandomSampler(seed=seed))
        study.optimize(quadratic, n_trials=25)
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_maximize_direction_is_respected():
    study = optuna.create_study(direction="maximize", sampler=BiasedRandomSampler(seed=0))
    study.optimize(lambda t: -quadratic(t), n_trials=80)
    lr = np.log10([t.params["lr"] for t in study.trials[20:]])
    assert np.mean(np.abs(lr + 2) < 1.5) > 0.4  # concentrates near the maximum, not away from it


def test_beats_random_sampler_on_a_quadratic():
    best = {"biased": [], "random": []}
    frac = {"biased": [], "random": []}
    for seed in range(15):
        samplers = (("biased", BiasedRandomSampler(seed=seed)), ("random", optuna.samplers.RandomSampler(seed=seed)))
        for name, sampler in samplers:
            study = optuna.create_study(sampler=sampler)
            study.optimize(quadratic, n_trials=60)
            best[name].append(study.best_value)
            lr = np.log10([t.params["lr"] for t in study.trials[20:]])
            frac[name].append(np.mean(np.abs(lr + 2) < 1.5))
    assert np.mean(best["biased"]) < 0.75 * np.mean(best["random"])
    assert np.mean(frac["biased"]) > np.mean(frac["random"]) + 0.05


def test_failed_trials_count_as_worst_and_do_not_stop_the_study():
    def sometimes_fails(trial):
        v = quadratic(trial)
        if trial.params["prescale"] > 18:
            raise RuntimeError("out of memory")
        return v
    study = optuna.create_study(sampler=BiasedRandomSampler(seed=1))
    study.optimize(sometimes_fails, n_trials=40, catch=(RuntimeError,))
    states = [t.state for t in study.trials]
    assert len(states) == 40 and optuna.trial.TrialState.FAIL in states


def test_multi_objective_is_refused():
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=BiasedRandomSampler(seed=0))
    with pytest.raises(ValueError, match="single-objective"):
        study.optimize(lambda t: (quadratic(t), 0.0), n_trials=2)


def test_optuna_search_adapter_runs_tpe_in_lockstep():
    from sokit.optuna_search import OptunaSearch
    from sokit.search import Integer, LogUniform, Space, Uniform, run_lockstep
    space = Space({"lr": LogUniform(1e-7, 1e2), "prescale": Uniform(10, 20), "k": Integer(1, 3)})
    def f(c):
        return (math.log10(c["lr"]) + 2) ** 2 + ((c["prescale"] - 15) / 2) ** 2 + c["k"]
    searchers = [OptunaSearch(space, optuna.samplers.TPESampler(seed=s)) for s in range(2)]
    hs = run_lockstep(searchers, lambda cs, r: [f(c) if r != 3 else float("nan") for c in cs], 30)
    assert all(len(h) == 30 for h in hs)
    assert [t.status for t in hs[0].trials][3] == "diverged"
    assert searchers[0].study.trials[3].state == optuna.trial.TrialState.FAIL
    assert all(1e-7 <= c["lr"] <= 1e2 and c["k"] in (1, 2, 3) for h in hs for c in h.configs())
    assert np.mean([h.best_cost() for h in hs]) < 2.0  # TPE finds the valley (minimum 1.0)


def test_a_reported_failure_counts_as_the_worst_cost_and_a_crash_is_ignored():
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from sokit.optuna_search import REPORTED

    sampler = BiasedRandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: quadratic(t) * (math.nan if t.number == 0 else 1), n_trials=5)  # 0 diverged
    dists = {"lr": FloatDistribution(1e-7, 1e2, log=True), "prescale": FloatDistribution(10, 20)}
    # what a killed worker leaves once the heartbeat has failed it: FAIL, never reported
    study.add_trial(create_trial(state=TrialState.FAIL, params={"lr": 1e-2, "prescale": 15.0}, distributions=dists))
    assert study.trials[0].state == study.trials[5].state == TrialState.FAIL
    assert study.trials[0].system_attrs[REPORTED] is True and REPORTED not in study.trials[5].system_attrs
    fitted, costs = sampler.fitted(study, ["lr", "prescale"])
    assert [t.number for t in fitted] == [0, 1, 2, 3, 4]
    assert costs[0] == costs.max() == max(t.value for t in study.trials[1:5])
    study.optimize(quadratic, n_trials=3)  # sampling goes on around the crash
    assert all(t.state == TrialState.COMPLETE for t in study.trials[6:])
