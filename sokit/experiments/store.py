"""The result store: ``<results>/<experiment>/<profile>.json``, written atomically.

A record is ``{"experiment", "profile", "config", "notes", "results", "provenance"}``.
It matches its experiment while ``config`` equals the registered configuration; the
notes are kept for the reader and never compared.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import sokit


class StoreError(ValueError):
    """A stored file that cannot be read; the message names the file and the fix."""


def results_dir() -> Path:
    """``$SOKIT_RESULTS`` or the repository's ``results/`` folder (next to the package)."""
    env = os.environ.get("SOKIT_RESULTS")
    if env:
        return Path(env)
    return Path(sokit.__file__).resolve().parent.parent / "results"


def result_path(name: str, profile: str) -> Path:
    """Where the result of ``name`` under ``profile`` is stored."""
    return results_dir() / name / f"{profile}.json"


def work_dir(name: str, profile: str) -> Path:
    """Where a resumable run keeps its checkpoints until its result is stored."""
    return results_dir() / name / f"{profile}.work"


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` atomically (a per-process temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(value, indent=1, allow_nan=True) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a corrupt file raises :class:`StoreError` naming it."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is not valid JSON ({e}); delete it, or rerun with --rerun "
                         "(SOKIT_RERUN=1) to replace it") from e


def load(name: str, profile: str) -> dict[str, Any] | None:
    """The stored record of ``name`` under ``profile``, or None when there is none."""
    path = result_path(name, profile)
    return read_json(path) if path.exists() else None


def save(record: dict[str, Any]) -> Path:
    """Store ``record`` at its :func:`result_path`; returns the path."""
    path = result_path(record["experiment"], record["profile"])
    write_json(path, record)
    return path


def matches(record: dict[str, Any] | None, config: dict[str, Any]) -> bool:
    """Whether ``record`` is a stored result of ``config`` (notes are not compared)."""
    return record is not None and record.get("config") == json.loads(json.dumps(config))


def check_writable(name: str) -> None:
    """Fail before training, not after, when the results of ``name`` cannot be written."""
    folder = results_dir() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise StoreError(f"cannot write results into {folder} ({e.strerror}); make it writable or set "
                         "SOKIT_RESULTS to a writable folder") from e
