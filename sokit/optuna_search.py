"""Search with Optuna: biased random search (Algorithm 1 of the thesis) as an Optuna sampler,
and any Optuna sampler behind :mod:`sokit.search`'s ask / tell interface.

``BiasedRandomSampler`` plugs Algorithm 1 into any Optuna study (Akiba et al., 2019),
including studies shared by many worker processes or machines
through Optuna's relational-database storage (e.g. PostgreSQL).

The numeric parameters that every finished trial shares (Optuna's intersection search
space) are sampled *jointly*: a candidate is drawn uniformly in the unit cube (log
scale where the distribution is logarithmic), its cost is estimated by the 1-NN model of
the finished trials, and it is kept with probability
p = (c_max - c_est) / (c_max - c_min), as in Algorithm 1. Sampling jointly keeps the
interaction between hyperparameters (the tilted valley of Figure 2.2) in the model.
Other parameters (categorical ones, or ones that appear only in some trials) are drawn
uniformly and independently.

Failed trials: two kinds end in Optuna's ``FAIL`` state, and the sampler tells them apart.

* A trial whose objective *reported* a failure (returned NaN or infinity: a diverged
  run; or raised) was seen through to the end by a live worker: it says something about
  the landscape, and counts as the worst cost, as in :mod:`sokit.search`. The sampler
  marks it while the trial is still running (:meth:`BiasedRandomSampler.after_trial`
  sets the system attribute :data:`REPORTED`).
* A trial whose worker *crashed* (killed, out of memory, machine lost) never reports;
  with the heartbeat on (:func:`heartbeat_storage`), Optuna fails it once its heartbeat
  is older than the grace period. It says nothing about its hyperparameters, so the
  sampler ignores it: a FAIL trial without the mark is not fitted.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sokit.search import CostModel, History, Integer, LogUniform, NearestNeighbour, Space, Trial, acceptance_probability

__all__ = ["BiasedRandomSampler", "OptunaSearch", "heartbeat_storage", "REPORTED"]

_NUMERIC = (FloatDistribution, IntDistribution)

#: system attribute of a trial whose objective reported its failure (diverged or raised)
REPORTED = "sokit:reported_failure"

_log = logging.getLogger(__name__)


def _note_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    _log.warning("trial %d of study %r failed: its worker stopped sending heartbeats (killed or lost); "
                 "BiasedRandomSampler ignores it", trial.number, study.study_name)


def heartbeat_storage(url: str, heartbeat_interval: int = 60, grace_period: int | None = None,
                      **kwargs: Any) -> optuna.storages.RDBStorage:
    """Optuna's relational storage at ``url`` (e.g. ``postgresql+psycopg2://...``) with the
    heartbeat on: every running trial's worker records a heartbeat each ``heartbeat_interval``
    seconds, and a trial without one for ``grace_period`` seconds (default twice the interval)
    is failed by the next worker that starts a trial (a crash: :class:`BiasedRandomSampler`
    ignores it). Use it with ``study.optimize`` (the heartbeat does not run under ask / tell)."""
    callback = ("heartbeat_stale_trial_callback"
                if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
                else "failed_trial_callback")  # the name before Optuna 4.9
    with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna: we rely on it knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                          **{callback: _note_stale}, **kwargs)


def _to_unit(d: BaseDistribution, v: float) -> float:
    lo, hi = _span(d)
    if d.log:
        return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (v - lo) / (hi - lo)


def _span(d: BaseDistribution) -> tuple[float, float]:
    # Integers own a unit-wide slice each, so the ends are as likely as the middle.
    if isinstance(d, IntDistribution) and not d.log:
        return d.low - 0.5, d.high + 0.5
    return float(d.low), float(d.high)


def _from_unit(d: BaseDistribution, u: float) -> float | int:
    lo, hi = _span(d)
    v = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if d.log else lo + u * (hi - lo)
    step = getattr(d, "step", None)
    if step is not None:
        v = d.low + round((v - d.low) / step) * step
    v = min(max(v, d.low), d.high)
    return int(round(v)) if isinstance(d, IntDistribution) else float(v)


class BiasedRandomSampler(BaseSampler):
    """Algorithm 1 (biased random search) for Optuna studies.

    ``seed`` makes a study reproducible (for one process; give each worker of a shared
    study its own seed). ``cost_model`` replaces the 1-nearest-neighbour model (see
    :class:`sokit.search.CostModel`). Single-objective studies only.
    """

    def __init__(self, seed: int | None = None, cost_model: CostModel | None = None):
        self._rng = np.random.default_rng(seed)
        self._cost_model = cost_model if cost_model is not None else NearestNeighbour()
        self._intersection = IntersectionSearchSpace()
        self.rejections = 0

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if len(study.directions) != 1:
            raise ValueError("BiasedRandomSampler handles single-objective studies only; "
                             "use one objective or another sampler (e.g. NSGAIISampler)")
        space = self._intersection.calculate(study)
        return {n: d for n, d in sorted(space.items()) if isinstance(d, _NUMERIC) and not d.single()}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        names = list(search_space)
        finished, costs = self.fitted(study, names)
        if not np.isfinite(costs).any():
            return {}  # no landscape yet: every parameter is drawn uniformly
        x_seen = np.array([[_to_unit(search_space[n], t.params[n]) for n in names] for t in finished])
        c_min, c_max = float(costs.min()), float(costs.max())
        while True:  # the best trial's neighbourhood has p = 1, so this ends
            u = self._rng.random((1, len(names)))
            c_est = self._cost_model.predict(x_seen, costs, u)
            if self._rng.random() < acceptance_probability(c_est, c_min, c_max)[0]:
                return {n: _from_unit(search_space[n], float(u[0, j])) for j, n in enumerate(names)}
            self.rejections += 1

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if isinstance(param_distribution, CategoricalDistribution):
            return param_distribution.choices[int(self._rng.integers(len(param_distribution.choices)))]
        if isinstance(param_distribution, _NUMERIC):
            return _from_unit(param_distribution, float(self._rng.random()))
        raise TypeError(f"BiasedRandomSampler cannot sample {type(param_distribution).__name__} "
                        f"for {param_name!r}; use Float, Int or Categorical distributions")

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        """Mark a trial whose objective reported a failure (a NaN or infinite cost, or an
        exception) while it is still running, so that it is told apart from a crash."""
        if state == TrialState.FAIL:
            study._storage.set_trial_system_attr(trial._trial_id, REPORTED, True)

    def fitted(self, study: optuna.Study, names: Sequence[str]) -> tuple[list[FrozenTrial], np.ndarray]:
        """The trials the cost model is fitted to, and their costs (minimized): every
        complete trial, and every failed one whose objective reported its failure (at the
        worst cost); trials that crashed (failed by the heartbeat, never reported) are left out."""
        trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
                  if all(n in t.params for n in names)
                  and (t.state == TrialState.COMPLETE or t.system_attrs.get(REPORTED))]
        return trials, self._costs(study, trials)

    @staticmethod
    def _costs(study: optuna.Study, trials: Sequence[FrozenTrial]) -> np.ndarray:
        sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
        c = np.array([sign * t.value if t.state == TrialState.COMPLETE and t.value is not None else math.nan
                      for t in trials], dtype=float)
        ok = np.isfinite(c)
        c[~ok] = c[ok].max() if ok.any() else math.inf
        return c


class OptunaSearch:
    """Any Optuna sampler (e.g. TPE) behind :mod:`sokit.search`'s ask / tell interface,
    so that it runs in :func:`sokit.search.run_lockstep` beside grid, random and biased
    random search. Diverged or failed trials are told to Optuna as FAIL (reported failures:
    a :class:`BiasedRandomSampler` counts them as the worst cost)."""

    def __init__(self, space: Space, sampler: BaseSampler):
        self.space = space
        self.history = History()
        self.study = optuna.create_study(sampler=sampler)
        self.distributions = {n: _distribution(d) for n, d in space.dims.items()}
        self._pending: list[tuple[dict, optuna.Trial]] = []

    def ask(self) -> dict:
        trial = self.study.ask(self.distributions)
        config = dict(trial.params)
        self._pending.append((config, trial))
        return config

    def tell(self, config: dict, cost: float | None, error: str | None = None) -> Trial:
        i = next((k for k, (c, _) in enumerate(self._pending) if c == config), None)
        if i is None:
            raise KeyError(f"tell() for {config}, which ask() did not return (or was already told)")
        _, trial = self._pending.pop(i)
        t = self.history.add(config, cost, error)
        if t.status == "ok":
            self.study.tell(trial, t.cost)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
        return t


def _distribution(d) -> BaseDistribution:
    if isinstance(d, Integer):
        return IntDistribution(int(d.low), int(d.high))
    return FloatDistribution(d.low, d.high, log=isinstance(d, LogUniform))
