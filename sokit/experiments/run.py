"""Running an experiment, or loading its stored result, under a profile.

Environment: ``$SOKIT_PROFILE`` (the profile when none is given), ``$SOKIT_RERUN=1``
(run even when a matching result is stored), ``$SOKIT_RESULTS`` (see
:func:`sokit.experiments.store.results_dir`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from sokit.device import default_device

from . import catalog, store
from .experiment import PROFILES, Experiment
from .provenance import cpu_seconds, git_commit, git_dirty, now, provenance


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


#: the file in a work folder that keeps the start, wall-clock and CPU seconds of every invocation
INVOCATIONS = "invocations.json"


def _config_key(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _earlier_invocations(workdir: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The invocations of this configuration that the work folder has seen (a corrupt file
    raises :class:`store.StoreError` naming it)."""
    path = workdir / INVOCATIONS
    if not path.exists():
        return []
    saved = store.read_json(path)
    return list(saved["invocations"]) if saved.get("config") == _config_key(config) else []


def _summed_provenance(invocations: list[dict[str, Any]]) -> dict[str, Any]:
    """Provenance over every invocation: the first start, summed wall-clock and CPU seconds,
    the commit of the last one (all of them when they differ), dirty when any was dirty."""
    last = invocations[-1]
    prov = provenance(default_device(), invocations[0]["started"],
                      sum(i["wall_clock_s"] for i in invocations),
                      sum(i["cpu_seconds"] for i in invocations))
    commits = list(dict.fromkeys(i["commit"] for i in invocations))
    dirty = [i["dirty"] for i in invocations]
    prov.update(commit=last["commit"], dirty=True if True in dirty else (None if None in dirty else False),
                invocations=len(invocations))
    if len(commits) > 1:
        prov["commits"] = commits
    return prov


def resume_hint(exp: str | Experiment, profile: str) -> str:
    """One line on how an interrupted run of ``exp`` under ``profile`` continues."""
    exp = _experiment(exp)
    command = f"python -m sokit run {exp.name} --profile {profile}"
    if exp.resumable:
        return f"interrupted: run `{command}` to continue from {store.work_dir(exp.name, profile)}"
    return f"interrupted: {exp.name} keeps no checkpoints; run `{command}` to start it again"


def run_experiment(exp: str | Experiment, profile: str, jobs: int = 1, fresh: bool = False) -> dict[str, Any]:
    """Run ``exp`` under ``profile`` and store the result; return the stored record.

    A resumable experiment checkpoints into :func:`store.work_dir`, resumes from it when
    run again after an interruption (``fresh=True`` clears it first: start over), trains
    ``jobs`` methods at once, and removes the work folder once the result is stored. Its
    provenance covers every invocation: ``started`` is the first start, ``wall_clock_s``
    and ``cpu_seconds`` are sums, ``invocations`` their count (kept in the work folder's
    ``invocations.json`` meanwhile). The results folder must be writable (checked before
    anything runs), and one run per experiment and profile holds :func:`store.lock`.
    """
    exp = _experiment(exp)
    config = exp.config(profile)
    if jobs != 1 and not exp.resumable:
        raise ValueError(f"experiment {exp.name!r} runs as one job; drop jobs={jobs}")
    store.check_writable(exp.name)
    with store.lock(exp.name, profile):
        workdir = store.work_dir(exp.name, profile) if exp.resumable else None
        if fresh and workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        earlier = _earlier_invocations(workdir, config) if workdir is not None else []
        this = {"started": now(), "commit": git_commit(), "dirty": git_dirty()}
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        done = False
        try:
            results = exp.run(config, workdir=workdir, jobs=jobs) if exp.resumable else exp.run(config)
            done = True
        finally:
            this.update(wall_clock_s=time.perf_counter() - t0, cpu_seconds=cpu_seconds() - cpu0)
            if not done and workdir is not None and workdir.exists():  # interrupted: count it on resume
                store.write_json(workdir / INVOCATIONS,
                                 {"config": _config_key(config), "invocations": [*earlier, this]})
        record = {"experiment": exp.name, "profile": profile, "config": config, "notes": exp.notes,
                  "results": results, "provenance": _summed_provenance([*earlier, this])}
        store.save(record)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return record


def load_or_run(exp: str | Experiment, profile: str | None = None, rerun: bool = False,
                jobs: int = 1) -> dict[str, Any]:
    """The stored result of ``exp`` under ``profile``, running it when needed.

    Without ``profile``, :func:`pick_profile` chooses. It runs when no result is stored,
    when the stored configuration differs from the registered one (a resumable run then
    continues from its work folder), when ``rerun`` is true or when ``$SOKIT_RERUN=1``. A
    rerun starts over: the work folder is cleared first (so a corrupt checkpoint or
    finished-method file there is replaced too), and a corrupt stored result is replaced.
    """
    exp = _experiment(exp)
    profile = profile or pick_profile(exp)
    config = exp.config(profile)
    rerun = rerun or os.environ.get("SOKIT_RERUN") == "1"
    if not rerun:
        stored = store.load(exp.name, profile)
        if store.matches(stored, config):
            return stored
    return run_experiment(exp, profile, jobs, fresh=rerun)
