"""What produced a stored result: commit (and whether the tree was dirty), versions,
device, start time, wall-clock and CPU seconds (summed over the invocations of a resumed run)."""

from __future__ import annotations

import datetime
import platform
import resource
import subprocess
from typing import Any

import torch

import sokit
from sokit.device import device_name

from . import store

#: the commit recorded by an installed copy of sokit (not run from a checkout)
INSTALLED = "unknown (installed package)"


def _git(*args: str) -> str | None:
    root = store.repository_root()
    if root is None:  # an installed copy: a git repository around site-packages is not sokit's
        return None
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str:
    """The checkout's HEAD commit; "unknown" in a checkout without git; for an installed
    package :data:`INSTALLED` (the record's ``sokit_version`` then names the release)."""
    if store.repository_root() is None:
        return INSTALLED
    return _git("rev-parse", "HEAD") or "unknown"


def git_dirty() -> bool | None:
    """Whether the checkout has uncommitted changes to tracked files (None outside git)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def now() -> str:
    """The UTC time, to the second, in ISO format."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished child processes."""
    self, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self.ru_utime + self.ru_stime + children.ru_utime + children.ru_stime


def provenance(device: torch.device, started: str, wall_clock_s: float,
               cpu_s: float | None = None) -> dict[str, Any]:
    """The provenance block of a stored record (``cpu_s``: CPU seconds it took, all processes)."""
    return {
        "commit": git_commit(),
        "dirty": git_dirty(),
        "sokit_version": sokit.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device_name(device),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "started": started,
        "wall_clock_s": wall_clock_s,
        "cpu_seconds": cpu_s,
    }
