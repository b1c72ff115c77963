"""The result store: ``<results>/<experiment>/<profile>.json``, written atomically.

A record is ``{"experiment", "profile", "config", "notes", "results", "provenance"}``.
It matches its experiment while ``config`` equals the registered configuration; the
notes are kept for the reader and never compared.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sokit

#: the folder of the imported ``sokit`` package (tests replace it to play an installed copy)
PACKAGE_DIR = Path(sokit.__file__).resolve().parent


class StoreError(ValueError):
    """A stored file that cannot be read; the message names the file and the fix."""


def repository_root() -> Path | None:
    """The checkout sokit runs from (the folder holding ``sokit/`` beside a ``.git`` or the
    book's ``_toc.yml``), or None for an installed copy (e.g. in site-packages)."""
    root = PACKAGE_DIR.parent
    return root if (root / ".git").exists() or (root / "_toc.yml").exists() else None


def results_dir() -> Path:
    """Where results are stored: ``$SOKIT_RESULTS``; else the ``results/`` folder of the
    checkout sokit runs from; else (an installed package) ``./results`` in the working directory."""
    env = os.environ.get("SOKIT_RESULTS")
    if env:
        return Path(env)
    root = repository_root()
    return (root if root is not None else Path.cwd()) / "results"


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


def lock_path(name: str, profile: str) -> Path:
    """The lock file held while ``name`` runs under ``profile``."""
    return results_dir() / name / f"{profile}.lock"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


@contextmanager
def lock(name: str, profile: str) -> Iterator[Path]:
    """Hold ``results/<name>/<profile>.lock`` (``fcntl.flock``) while the block runs.

    A second run of the same experiment and profile, in any process on this machine,
    fails at once with :class:`StoreError` naming the lock and the process that holds it.
    The lock goes with the process (also when it is killed); the file is removed on release.
    """
    path = lock_path(name, profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise StoreError(f"{name} [{profile}] is already running: process {holder} holds the lock {path}; "
                             "wait for it to finish (or stop it), then run again") from None
        try:  # the file we locked may have been removed by a run that just finished: lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # still held: nobody else can hold this file now
        os.close(fd)
