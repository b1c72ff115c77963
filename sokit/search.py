"""Hyperparameter search: spaces, grid / random / biased random search, history.

Biased random search is Algorithm 1 of the thesis (section 4.1): a cost model of the
landscape (a 1-nearest-neighbour regressor by default) estimates the cost c_est of a
uniformly drawn candidate, which is kept with probability

    p = (c_max - c_est) / (c_max - c_min),

c_max and c_min being the worst and best costs seen so far; otherwise another candidate
is drawn. Grid and random search are the baselines of section 2.3.

Every searcher has the same ask / tell interface, so searches can run one trial at a
time (:func:`run_search`) or many searches in lockstep, one population per round
(:func:`run_lockstep`), which is how :mod:`sokit.population` trains them. Failed or
diverged trials are recorded and count as the worst cost; they never stop a search.
(In a shared Optuna study, :mod:`sokit.optuna_search` also meets trials whose worker
crashed, which never report: its sampler ignores those.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

__all__ = [
    "Uniform", "LogUniform", "Integer", "Space", "Trial", "History",
    "NearestNeighbour", "GridSearch", "RandomSearch", "BiasedRandomSearch",
    "run_search", "run_lockstep", "acceptance_probability",
]


# ----------------------------------------------------------------------------- spaces
@dataclass(frozen=True)
class Uniform:
    """A real hyperparameter drawn uniformly in [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"{type(self).__name__} needs finite low < high, got [{self.low}, {self.high}]")

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        return self.low + (self.high - self.low) * np.asarray(u, dtype=float)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=float) - self.low) / (self.high - self.low)


@dataclass(frozen=True)
class LogUniform(Uniform):
    """A positive real hyperparameter whose logarithm is uniform (learning rates)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.low <= 0:
            raise ValueError(f"LogUniform needs low > 0 (it samples log(x)), got low={self.low}")

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        lo, hi = math.log(self.low), math.log(self.high)
        return np.exp(lo + (hi - lo) * np.asarray(u, dtype=float))

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        lo, hi = math.log(self.low), math.log(self.high)
        return (np.log(np.asarray(x, dtype=float)) - lo) / (hi - lo)


@dataclass(frozen=True)
class Integer(Uniform):
    """An integer hyperparameter, uniform over {low, ..., high}."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.low) != self.low or int(self.high) != self.high:
            raise ValueError(f"Integer bounds must be integers, got [{self.low}, {self.high}]")

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        # Each integer owns an equal slice of [0, 1].
        n = int(self.high - self.low) + 1
        k = np.minimum(np.floor(np.asarray(u, dtype=float) * n), n - 1)
        return (self.low + k).astype(int)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        n = int(self.high - self.low) + 1
        return (np.asarray(x, dtype=float) - self.low + 0.5) / n


Dimension = Uniform  # Uniform, LogUniform and Integer share this interface


class Space:
    """A product of named dimensions; configurations are ``dict[name, value]``.

    Distances are measured in the unit cube (log scale for :class:`LogUniform`),
    which is the space in which the 1-NN cost model of Algorithm 1 works.
    """

    def __init__(self, dims: dict[str, Dimension]):
        if not dims:
            raise ValueError("Space needs at least one dimension, e.g. Space({'lr': LogUniform(1e-7, 1e2)})")
        for name, d in dims.items():
            if not isinstance(d, Uniform):
                raise TypeError(f"dimension {name!r} must be Uniform, LogUniform or Integer, got {type(d).__name__}")
        self.dims = dict(dims)
        self.names = list(dims)

    def from_unit(self, u: np.ndarray) -> list[dict]:
        u = np.atleast_2d(u)
        cols = [self.dims[n].from_unit(u[:, j]) for j, n in enumerate(self.names)]
        return [{n: _py(cols[j][i]) for j, n in enumerate(self.names)} for i in range(u.shape[0])]

    def to_unit(self, configs: Sequence[dict]) -> np.ndarray:
        if len(configs) == 0:
            return np.zeros((0, len(self.names)))
        missing = [n for n in self.names if n not in configs[0]]
        if missing:
            raise KeyError(f"configuration {configs[0]} lacks {missing}; the space has {self.names}")
        return np.stack([self.dims[n].to_unit([c[n] for c in configs]) for n in self.names], axis=1)

    def sample(self, rng: np.random.Generator, n: int = 1) -> list[dict]:
        return self.from_unit(rng.random((n, len(self.names))))

    def grid(self, budget: int) -> list[dict]:
        """Cell-centred grid with k points per dimension, k**d <= budget (section 2.3)."""
        k = int(math.floor(budget ** (1.0 / len(self.names)) + 1e-9))
        if k < 1:
            raise ValueError(f"a grid needs budget >= 1, got {budget}")
        centres = (np.arange(k) + 0.5) / k
        u = np.array(list(itertools.product(centres, repeat=len(self.names))))
        return self.from_unit(u)


def _py(v):
    return int(v) if isinstance(v, (np.integer, int)) else float(v)


# ---------------------------------------------------------------------------- history
@dataclass
class Trial:
    """One experiment: its configuration, its cost and its status.

    ``status`` is "ok", "diverged" (the cost came back NaN or infinite) or "failed"
    (the objective raised; ``error`` holds the message).
    """

    number: int
    config: dict
    cost: float
    status: str = "ok"
    error: str | None = None


@dataclass
class History:
    """The list H of Algorithm 1: explored configurations and their costs."""

    trials: list[Trial] = field(default_factory=list)

    def add(self, config: dict, cost: float | None, error: str | None = None) -> Trial:
        if error is not None:
            status, cost = "failed", math.nan
        elif cost is None or not math.isfinite(float(cost)):
            status, cost = "diverged", math.nan
        else:
            status, cost = "ok", float(cost)
        t = Trial(len(self.trials), dict(config), cost, status, error)
        self.trials.append(t)
        return t

    def __len__(self) -> int:
        return len(self.trials)

    def configs(self) -> list[dict]:
        return [t.config for t in self.trials]

    def costs(self) -> np.ndarray:
        """Costs with failed and diverged trials replaced by the worst finite cost.

        With no finite cost at all every entry is +inf.
        """
        c = np.array([t.cost for t in self.trials], dtype=float)
        ok = np.isfinite(c)
        c[~ok] = c[ok].max() if ok.any() else math.inf
        return c

    def best(self) -> Trial | None:
        ok = [t for t in self.trials if t.status == "ok"]
        return min(ok, key=lambda t: t.cost) if ok else None

    def best_cost(self) -> float:
        b = self.best()
        return b.cost if b is not None else math.inf

    def to_dict(self) -> list[dict]:
        return [
            {"number": t.number, "config": t.config, "cost": (t.cost if math.isfinite(t.cost) else None),
             "status": t.status, **({"error": t.error} if t.error else {})}
            for t in self.trials
        ]


# -------------------------------------------------------------------------- cost model
class CostModel(Protocol):
    """Estimates the cost at unit-cube points from the history (the M of Algorithm 1)."""

    def predict(self, x_seen: np.ndarray, c_seen: np.ndarray, x: np.ndarray) -> np.ndarray: ...


class NearestNeighbour:
    """The 1-nearest-neighbour regressor of section 4.1 (Euclidean, unit cube)."""

    def predict(self, x_seen: np.ndarray, c_seen: np.ndarray, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        d2 = ((x[:, None, :] - x_seen[None, :, :]) ** 2).sum(-1)
        return c_seen[np.argmin(d2, axis=1)]


def acceptance_probability(c_est: np.ndarray, c_min: float, c_max: float) -> np.ndarray:
    """p = (c_max - c_est) / (c_max - c_min) of Algorithm 1 (1 when c_max == c_min)."""
    c_est = np.asarray(c_est, dtype=float)
    if not c_max > c_min:
        return np.ones_like(c_est)
    return np.clip((c_max - c_est) / (c_max - c_min), 0.0, 1.0)


# --------------------------------------------------------------------------- searchers
class _Searcher:
    def __init__(self, space: Space, seed: int = 0):
        self.space = space
        self.rng = np.random.default_rng(seed)
        self.history = History()

    def ask(self) -> dict:
        raise NotImplementedError("a searcher subclass defines ask()")

    def tell(self, config: dict, cost: float | None, error: str | None = None) -> Trial:
        return self.history.add(config, cost, error)


class GridSearch(_Searcher):
    """Grid search: the cell-centred grid of :meth:`Space.grid`, in a seeded random order."""

    def __init__(self, space: Space, budget: int, seed: int = 0):
        super().__init__(space, seed)
        self.points = space.grid(budget)
        self.order = self.rng.permutation(len(self.points))

    def ask(self) -> dict:
        i = len(self.history)
        if i >= len(self.points):
            raise IndexError(f"grid of {len(self.points)} points exhausted; build GridSearch with a larger budget")
        return dict(self.points[self.order[i]])


class RandomSearch(_Searcher):
    """Random search: i.i.d. uniform draws in the space (Bergstra and Bengio, 2012)."""

    def ask(self) -> dict:
        return self.space.sample(self.rng)[0]


class BiasedRandomSearch(_Searcher):
    """Biased random search, Algorithm 1 of the thesis, with a pluggable cost model.

    ``rejections`` counts the candidates rejected so far (a measure of how biased the
    search has become). With the 1-NN model a candidate near the best trial is always
    accepted; a custom cost model that estimates every candidate at c_max or worse would
    reject forever, so more than ``max_rejections`` in a row raise an error.
    """

    def __init__(self, space: Space, seed: int = 0, cost_model: CostModel | None = None,
                 max_rejections: int = 100_000):
        super().__init__(space, seed)
        self.cost_model = cost_model if cost_model is not None else NearestNeighbour()
        self.max_rejections = max_rejections
        self.rejections = 0

    def ask(self) -> dict:
        if len(self.history) == 0:
            return self.space.sample(self.rng)[0]
        x_seen = self.space.to_unit(self.history.configs())
        c_seen = self.history.costs()
        if not np.isfinite(c_seen).any():  # nothing finite yet: no landscape to bias by
            return self.space.sample(self.rng)[0]
        c_min, c_max = float(c_seen.min()), float(c_seen.max())
        for _ in range(self.max_rejections + 1):
            u = self.rng.random((1, len(self.space.names)))
            c_est = self.cost_model.predict(x_seen, c_seen, u)
            p = acceptance_probability(c_est, c_min, c_max)[0]
            if self.rng.random() < p:
                return self.space.from_unit(u)[0]
            self.rejections += 1
        raise RuntimeError(
            f"{self.max_rejections} candidates in a row rejected: the cost model "
            f"{type(self.cost_model).__name__} estimates (almost) every point at the worst cost "
            f"{c_max}; use a model whose estimates reach c_min near the best trial (e.g. NearestNeighbour)")


# ---------------------------------------------------------------------------- drivers
#: errors of the machine, not of the configuration (a file gone, a module missing, memory
#: exhausted): they end the search instead of being recorded as a failed trial, since a
#: search whose trials failed for these reasons says nothing about the hyperparameters
ENVIRONMENT_ERRORS = (OSError, ImportError, MemoryError)


def _evaluate(objective: Callable[[dict], float], config: dict) -> tuple[float | None, str | None]:
    try:
        return float(objective(config)), None
    except ENVIRONMENT_ERRORS:
        raise
    except Exception as e:  # a failed trial is recorded, it does not end the search
        return None, f"{type(e).__name__}: {e}"


def run_search(searcher: _Searcher, objective: Callable[[dict], float], n_trials: int) -> History:
    """Run ``n_trials`` experiments one at a time; returns the searcher's history."""
    for _ in range(n_trials):
        config = searcher.ask()
        cost, error = _evaluate(objective, config)
        searcher.tell(config, cost, error)
    return searcher.history


def run_lockstep(
    searchers: Sequence[_Searcher],
    evaluate_batch: Callable[[list[dict], int], Sequence[float]],
    n_trials: int,
) -> list[History]:
    """Run independent searches side by side: each round asks every searcher for one
    configuration and evaluates them together, e.g. as one population.

    ``evaluate_batch(configs, round)`` returns one cost per configuration (NaN or inf
    for a diverged member). Each searcher still follows its own algorithm exactly
    (Algorithm 1 sees every result before choosing its next sample).
    """
    for r in range(n_trials):
        configs = [s.ask() for s in searchers]
        try:
            costs, error = list(evaluate_batch(configs, r)), None
        except ENVIRONMENT_ERRORS:
            raise
        except Exception as e:  # the whole round failed: every member counts as failed
            costs, error = [None] * len(configs), f"{type(e).__name__}: {e}"
        if len(costs) != len(configs):
            raise ValueError(f"evaluate_batch returned {len(costs)} costs for {len(configs)} configurations")
        for s, c, cost in zip(searchers, configs, costs):
            s.tell(c, cost, error)
    return [s.history for s in searchers]
