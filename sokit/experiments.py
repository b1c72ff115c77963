"""The registry of the thesis's experiments and their stored results.

An :class:`Experiment` is one figure or table of the thesis with a configuration
per profile ("smoke": seconds on a CPU, what the notebooks and CI run; "quick":
minutes on a 2-core CPU; "full": the thesis's scale). :func:`load_or_run` returns
the stored result ``results/<name>/<profile>.json`` when its configuration matches
the registered one, and otherwise runs the experiment and stores the result with
its provenance (configuration, git commit, versions, device, start time, wall-clock).
"""

from __future__ import annotations

import datetime
import importlib
import inspect
import json
import os
import pkgutil
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import sokit

PROFILES = ("smoke", "quick", "full")

_REGISTRY: dict[str, "Experiment"] = {}


@dataclass(frozen=True)
class Experiment:
    """A named experiment: one configuration per profile and the function that runs one."""

    name: str
    description: str
    configs: dict[str, dict[str, Any]]
    run: Callable[[dict[str, Any]], dict[str, Any]]

    def __post_init__(self) -> None:
        unknown = set(self.configs) - set(PROFILES)
        if unknown:
            raise ValueError(f"experiment {self.name!r}: unknown profiles {sorted(unknown)}; use {PROFILES}")
        for profile, config in self.configs.items():
            json.dumps(config)  # a config must be JSON, so that it can be compared when stored


def register(exp: Experiment) -> Experiment:
    """Add ``exp`` to the registry (called by each module of ``sokit.registry`` at import)."""
    old = _REGISTRY.get(exp.name)
    if old is not None and old.run.__module__ != exp.run.__module__:
        raise ValueError(f"experiment name {exp.name!r} registered twice ({old.run.__module__}, {exp.run.__module__})")
    _REGISTRY[exp.name] = exp
    return exp


def registry() -> dict[str, Experiment]:
    """Every registered experiment, after importing each module of ``sokit.registry``."""
    import sokit.registry as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Experiment:
    """The experiment registered as ``name``; the error lists the known names."""
    exps = registry()
    if name not in exps:
        raise KeyError(f"no experiment named {name!r}; known experiments: {sorted(exps)}")
    return exps[name]


def results_dir() -> Path:
    """``$SOKIT_RESULTS`` or the repository's ``results/`` folder (next to the package)."""
    env = os.environ.get("SOKIT_RESULTS")
    if env:
        return Path(env)
    return Path(sokit.__file__).resolve().parent.parent / "results"


def result_path(name: str, profile: str) -> Path:
    """Where the result of ``name`` under ``profile`` is stored."""
    return results_dir() / name / f"{profile}.json"


def default_profile() -> str:
    """``$SOKIT_PROFILE`` or "smoke"."""
    profile = os.environ.get("SOKIT_PROFILE", "smoke")
    if profile not in PROFILES:
        raise ValueError(f"SOKIT_PROFILE={profile!r} is not a profile; use one of {PROFILES}")
    return profile


def git_commit() -> str:
    """The repository's HEAD commit, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(sokit.__file__).resolve().parent,
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def device_name(device: str | torch.device | None = None) -> str:
    """The GPU's name on CUDA, else the CPU model from /proc/cpuinfo (or the platform)."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def provenance(device: torch.device, started: str, wall_clock_s: float) -> dict[str, Any]:
    """What produced a result: commit, versions, device, UTC start time, wall-clock."""
    return {
        "commit": git_commit(),
        "sokit_version": sokit.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device_name(device),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "started": started,
        "wall_clock_s": wall_clock_s,
    }


def work_dir(name: str, profile: str) -> Path:
    """Where a resumable run keeps its checkpoints until its result is stored."""
    return results_dir() / name / f"{profile}.work"


def run_experiment(name: str, profile: str, jobs: int = 1) -> dict[str, Any]:
    """Run ``name`` under ``profile`` and store the result; return the stored record.

    An experiment whose run function takes ``workdir`` and ``jobs`` (the comparison
    figures, see :mod:`sokit.runner`) checkpoints into :func:`work_dir`, resumes from
    it when run again after an interruption, and trains ``jobs`` methods at once; the
    work folder is removed once the result is stored. The wall-clock then counts only
    this invocation.
    """
    exp = get(name)
    if profile not in exp.configs:
        raise ValueError(f"experiment {name!r} has no profile {profile!r}; it has {sorted(exp.configs)}")
    config = exp.configs[profile]
    resumable = "workdir" in inspect.signature(exp.run).parameters
    if jobs != 1 and not resumable:
        raise ValueError(f"experiment {name!r} runs as one job; drop jobs={jobs}")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    if resumable:
        results = exp.run(config, workdir=work_dir(name, profile), jobs=jobs)
    else:
        results = exp.run(config)
    wall = time.perf_counter() - t0
    record = {
        "experiment": name,
        "profile": profile,
        "config": config,
        "results": results,
        "provenance": provenance(default_device(), started, wall),
    }
    path = result_path(name, profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=True) + "\n")
    tmp.replace(path)
    if resumable:
        shutil.rmtree(work_dir(name, profile), ignore_errors=True)
    return record


def matches(record: dict[str, Any] | None, name: str, profile: str) -> bool:
    """Whether ``record`` is a stored result of the registered config of ``name``/``profile``."""
    if record is None:
        return False
    config = get(name).configs.get(profile)
    return config is not None and record.get("config") == json.loads(json.dumps(config))


def pick_profile(name: str) -> str:
    """The profile a notebook shows: ``$SOKIT_PROFILE`` when set; else the largest of
    "full" and "quick" with a stored result of the registered config; else "smoke"."""
    if os.environ.get("SOKIT_PROFILE"):
        return default_profile()
    for profile in ("full", "quick"):
        if matches(load(name, profile), name, profile):
            return profile
    return "smoke"


def load(name: str, profile: str | None = None) -> dict[str, Any] | None:
    """The stored record of ``name`` under ``profile`` if it exists, else None."""
    path = result_path(name, profile or default_profile())
    if not path.exists():
        return None
    return json.loads(path.read_text())


def load_or_run(name: str, profile: str | None = None, rerun: bool = False,
                jobs: int = 1) -> dict[str, Any]:
    """The stored result of ``name`` under ``profile``, running it when needed.

    Without ``profile``, :func:`pick_profile` chooses (``$SOKIT_PROFILE``, else the
    largest stored profile, else smoke). It runs when no result is stored, when the
    stored configuration differs from the registered one, when ``rerun`` is true or
    when ``$SOKIT_RERUN=1``.
    """
    profile = profile or pick_profile(name)
    exp = get(name)
    if profile not in exp.configs:
        raise ValueError(f"experiment {name!r} has no profile {profile!r}; it has {sorted(exp.configs)}")
    rerun = rerun or os.environ.get("SOKIT_RERUN") == "1"
    stored = None if rerun else load(name, profile)
    if matches(stored, name, profile):
        return stored
    return run_experiment(name, profile, jobs)
