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
uniformly and independently. Failed trials count as the worst cost.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sokit.search import CostModel, History, Integer, LogUniform, NearestNeighbour, Space, Trial, acceptance_probability

__all__ = ["BiasedRandomSampler", "OptunaSearch"]

_NUMERIC = (FloatDistribution, IntDistribution)


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
        finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
                    if all(n in t.params for n in names)]
        costs = self._costs(study, finished)
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
    random search. Diverged or failed trials are told to Optuna as FAIL."""

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
