"""The thesis's experiments and their stored results.

An :class:`Experiment` (:mod:`.experiment`) is one figure or table of the thesis with
a configuration per profile and notes for the reader. :mod:`.catalog` lists them;
:mod:`.store` keeps each result in ``results/<name>/<profile>.json`` with its
provenance (:mod:`.provenance`); :mod:`.run` runs an experiment or loads its stored
result; :mod:`.runner` trains the methods of a comparison figure (resumable, several at
once); :mod:`.methods` is the one method spec that builds (model, optimizer)
everywhere. The definitions live in :mod:`.searches` (Fig 2.2, Table 4.I, Fig 4.1),
:mod:`.sgd_baseline`, :mod:`.fig5`, :mod:`.fig6` and :mod:`.fig6_tuning`.
"""

from .catalog import EXPERIMENTS, get, registry
from .experiment import PROFILES, Experiment
from .provenance import git_commit, git_dirty, provenance
from .run import default_profile, is_current, load_or_run, pick_profile, run_experiment
from .store import StoreError, load, matches, result_path, results_dir, work_dir

__all__ = [
    "EXPERIMENTS",
    "PROFILES",
    "Experiment",
    "StoreError",
    "default_profile",
    "get",
    "git_commit",
    "git_dirty",
    "is_current",
    "load",
    "load_or_run",
    "matches",
    "pick_profile",
    "provenance",
    "registry",
    "result_path",
    "results_dir",
    "run_experiment",
    "work_dir",
]
