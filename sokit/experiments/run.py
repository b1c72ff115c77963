"""Running an experiment, or loading its stored result, under a profile.

Environment: ``$SOKIT_PROFILE`` (the profile when none is given), ``$SOKIT_RERUN=1``
(run even when a matching result is stored), ``$SOKIT_RESULTS`` (see
:func:`sokit.experiments.store.results_dir`).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from sokit.device import default_device

from . import catalog, store
from .experiment import PROFILES, Experiment
from .provenance import cpu_seconds, now, provenance


def _experiment(exp: str | Experiment) -> Experiment:
    return exp if isinstance(exp, Experiment) else catalog.get(exp)


def default_profile() -> str:
    """``$SOKIT_PROFILE`` or "smoke"."""
    profile = os.environ.get("SOKIT_PROFILE") or "smoke"
    if profile not in PROFILES:
        raise ValueError(f"SOKIT_PROFILE={profile!r} is not a profile; use one of {PROFILES}")
    return profile


def pick_profile(exp: str | Experiment) -> str:
    """The profile a notebook shows: ``$SOKIT_PROFILE`` when set; else the largest of
    "full", "long" and "quick" with a stored result of the registered config; else "smoke"."""
    if os.environ.get("SOKIT_PROFILE"):
        return default_profile()
    exp = _experiment(exp)
    for profile in ("full", "long", "quick"):
        if profile in exp.configs and store.matches(store.load(exp.name, profile), exp.configs[profile]):
            return profile
    return "smoke"


def is_current(exp: str | Experiment, profile: str) -> bool:
    """Whether a result of ``exp`` under ``profile`` is stored with the registered config."""
    exp = _experiment(exp)
    return store.matches(store.load(exp.name, profile), exp.config(profile))


def run_experiment(exp: str | Experiment, profile: str, jobs: int = 1) -> dict[str, Any]:
    """Run ``exp`` under ``profile`` and store the result; return the stored record.

    A resumable experiment checkpoints into :func:`store.work_dir`, resumes from it when
    run again after an interruption, trains ``jobs`` methods at once, and removes the
    work folder once the result is stored.
    """
    exp = _experiment(exp)
    config = exp.config(profile)
    if jobs != 1 and not exp.resumable:
        raise ValueError(f"experiment {exp.name!r} runs as one job; drop jobs={jobs}")
    store.check_writable(exp.name)
    started = now()
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    if exp.resumable:
        results = exp.run(config, workdir=store.work_dir(exp.name, profile), jobs=jobs)
    else:
        results = exp.run(config)
    record = {"experiment": exp.name, "profile": profile, "config": config, "notes": exp.notes,
              "results": results,
              "provenance": provenance(default_device(), started, time.perf_counter() - t0, cpu_seconds() - cpu0)}
    store.save(record)
    if exp.resumable:
        shutil.rmtree(store.work_dir(exp.name, profile), ignore_errors=True)
    return record


def load_or_run(exp: str | Experiment, profile: str | None = None, rerun: bool = False,
                jobs: int = 1) -> dict[str, Any]:
    """The stored result of ``exp`` under ``profile``, running it when needed.

    Without ``profile``, :func:`pick_profile` chooses. It runs when no result is stored,
    when the stored configuration differs from the registered one, when ``rerun`` is true
    or when ``$SOKIT_RERUN=1``; a corrupt stored file is then replaced.
    """
    exp = _experiment(exp)
    profile = profile or pick_profile(exp)
    config = exp.config(profile)
    if not (rerun or os.environ.get("SOKIT_RERUN") == "1"):
        stored = store.load(exp.name, profile)
        if store.matches(stored, config):
            return stored
    return run_experiment(exp, profile, jobs)
