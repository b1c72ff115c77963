"""The :class:`Experiment` type: one figure or table of the thesis."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: "smoke": seconds on a CPU (notebooks and CI); "quick": minutes on a 2-core CPU;
#: "long": an hour or more on a CPU, run in the background; "full": the thesis's scale, for a GPU
PROFILES = ("smoke", "quick", "long", "full")


@dataclass(frozen=True)
class Experiment:
    """A named experiment: a configuration per profile and the function that runs one.

    ``configs[profile]`` holds exactly what changes the numbers (data, model, methods,
    budgets, seeds): a stored result is valid while its configuration equals it.
    ``notes`` (how hyperparameters were chosen, caveats) is prose for the reader and is
    never compared. ``resumable`` experiments take ``run(config, workdir=..., jobs=...)``
    and checkpoint into ``workdir`` (see :mod:`sokit.experiments.runner`).
    """

    name: str
    description: str
    configs: dict[str, dict[str, Any]]
    run: Callable[..., dict[str, Any]]
    notes: str = ""
    resumable: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.configs) - set(PROFILES)
        if unknown:
            raise ValueError(f"experiment {self.name!r}: unknown profiles {sorted(unknown)}; use {PROFILES}")
        for profile, config in self.configs.items():
            try:
                json.dumps(config, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise ValueError(f"experiment {self.name!r}, profile {profile!r}: the configuration must be "
                                 f"plain JSON so that a stored result can be compared with it ({e})") from e

    def config(self, profile: str) -> dict[str, Any]:
        """The configuration of ``profile``; the error lists the profiles there are."""
        if profile not in self.configs:
            raise ValueError(f"experiment {self.name!r} has no profile {profile!r}; it has {sorted(self.configs)}")
        return self.configs[profile]
