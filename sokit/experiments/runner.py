"""Run the methods of one comparison figure: resumable, and several at once.

A figure such as 6.2 trains every method for 3e5 updates from the same initial
weights. :func:`run_methods` trains them on the default device (the GPU when there is
one), each with its own checkpoint in a work folder, so that an interrupted run
continues where it stopped; a finished method is written there as JSON and not run
again. With ``jobs > 1`` the methods run in that many worker processes at once,
which share the one GPU (each process has its own CUDA context and streams).

Each method shows a progress bar labelled with its legend label (one line per worker
with ``jobs > 1``) when stderr is a terminal, or when ``$SOKIT_PROGRESS=1``
(``$SOKIT_PROGRESS=0``: never). Ctrl-C stops at once: with ``jobs > 1`` the pending
methods are cancelled and the workers terminated (they ignore SIGINT themselves, and
exit when the parent dies); the checkpoints written so far are kept for resuming.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from sokit import data as sokit_data
from sokit.device import default_device
from sokit.train import train

from .methods import build as build_method
from .methods import for_device
from .store import read_json, write_json

#: ``build(config, spec) -> (model, optimizer)``, called after seeding; must be a
#: module-level function when ``jobs > 1`` (it is sent to worker processes)
Build = Callable[[dict[str, Any], dict[str, Any]], tuple[nn.Module, Any]]


def slug(label: str) -> str:
    """A file-name-safe form of a legend label, with a short hash to keep labels apart."""
    digest = hashlib.sha1(label.encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")[:40] + "_" + digest


def config_key(config: dict[str, Any]) -> str:
    """A hash of the configuration, to tell a work folder's run apart from another's."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def prepare_workdir(workdir: Path, config: dict[str, Any]) -> None:
    """Create ``workdir`` for ``config``; a folder left by another configuration is cleared."""
    stamp = workdir / "config.sha256"
    key = config_key(config)
    if workdir.exists() and (not stamp.exists() or stamp.read_text().strip() != key):
        shutil.rmtree(workdir)  # checkpoints of another configuration cannot be resumed
    workdir.mkdir(parents=True, exist_ok=True)
    for tmp in workdir.glob(".*.tmp"):  # half-written files of a killed run (the run's lock is held)
        tmp.unlink(missing_ok=True)
    stamp.write_text(key + "\n")


def show_progress() -> bool:
    """Whether methods show progress bars: ``$SOKIT_PROGRESS`` ("1" / "0"), else whether
    stderr is a terminal (not in notebooks, logs or tests)."""
    env = os.environ.get("SOKIT_PROGRESS")
    if env in ("0", "1"):
        return env == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _worker_init(parent: int) -> None:
    """A worker process leaves Ctrl-C to its parent, and exits when the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a named semaphore, which a terminated worker would leak (and the
    # resource tracker warn about); a spawned worker shares it with no one, a thread lock does
    tqdm.set_lock(threading.RLock())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and terminate the workers now (their checkpoints stay)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # private, but no public way
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.terminate()
    for proc in processes:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    pool.shutdown(wait=True)  # the workers are gone: this returns at once and frees the pool's queues


def train_method(config: dict[str, Any], label: str, build: Build = build_method,
                 workdir: str | None = None, threads: int | None = None, progress: bool = False,
                 position: int | None = None) -> dict[str, Any]:
    """Train method ``label`` of ``config`` (resuming its checkpoint in ``workdir``).

    ``threads``: CPU threads for this process (so that concurrent workers share the cores).
    ``progress``: show a bar labelled with ``label``, on line ``position`` (concurrent workers).
    """
    finished = Path(workdir) / f"{slug(label)}.json" if workdir else None
    if finished is not None and finished.exists():
        return read_json(finished)
    if threads is not None:
        torch.set_num_threads(threads)
    device = default_device()
    dataset = sokit_data.load(config["dataset"], device=device)
    torch.manual_seed(config["seed"])
    model, optimizer = build(config, for_device(config["methods"][label], device))
    result = train(model, optimizer, dataset, config["loss"], config["updates"],
                   batch_size=config["batch_size"], seed=config["seed"],
                   n_evals=config["n_evals"], eval_subset=config["eval_subset"], device=device,
                   checkpoint=Path(workdir) / f"{slug(label)}.pt" if workdir else None,
                   progress=progress, desc=_bar_label(config, label), position=position)
    result["cpu_threads"] = torch.get_num_threads()  # workers share the cores: record what this one had
    if finished is not None:
        write_json(finished, result)
    return result


def _bar_label(config: dict[str, Any], label: str) -> str:
    labels = list(config["methods"])
    return f"{label} ({labels.index(label) + 1}/{len(labels)})" if label in labels else label


def run_methods(config: dict[str, Any], workdir: Path | None = None, jobs: int = 1,
                build: Build = build_method, progress: bool | None = None) -> dict[str, dict[str, Any]]:
    """Train every method of ``config["methods"]``; {label: train result}, in config order.

    ``workdir``: where checkpoints and finished methods are kept (None: nothing kept).
    ``jobs``: how many methods train at once, each in its own process. ``build`` turns
    (config, method spec) into (model, optimizer); by default the shared method spec.
    ``progress``: a bar per method (None: :func:`show_progress`).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    labels = list(config["methods"])
    if workdir is not None:
        prepare_workdir(workdir, config)
    where = str(workdir) if workdir is not None else None
    progress = show_progress() if progress is None else progress
    if jobs == 1 or len(labels) == 1:
        return {label: train_method(config, label, build, where, progress=progress) for label in labels}
    return map_methods(functools.partial(_train_one, config, build, where, progress), labels, jobs)


def _train_one(config: dict[str, Any], build: Build, workdir: str | None, progress: bool, label: str,
               threads: int, position: int) -> dict[str, Any]:
    return train_method(config, label, build, workdir, threads, progress, position)


def map_methods(work: Callable[[str, int, int], dict[str, Any]], labels: list[str],
                jobs: int) -> dict[str, dict[str, Any]]:
    """``{label: work(label, threads, position)}``, ``jobs`` labels at a time, each in its own
    spawned process with an equal share of the CPU threads; ``work`` must be picklable (a
    module-level function or a ``functools.partial`` of one). Ctrl-C terminates the workers
    at once (what they checkpointed stays); if one fails the others finish first."""
    workers = min(jobs, len(labels))
    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                               initargs=(os.getpid(),))
    try:
        futures = {label: pool.submit(work, label, threads, i) for i, label in enumerate(labels)}
        results = {label: futures[label].result() for label in labels}
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C: do not wait hours for the running methods
        _stop(pool)
        raise
    except BaseException:
        pool.shutdown(wait=True)  # a method failed: the others finish (and are kept) first
        raise
    pool.shutdown(wait=True)
    return results
