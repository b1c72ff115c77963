"""The training loop of the thesis's experiments (chapter 4's protocol, chapter 6's figures).

A run is (model, optimizer, data, update budget, batch size, seed). It records

* the minibatch loss of every update, written into a buffer on the device by the
  step itself (no host synchronisation per step);
* the training-set and test-set loss at a log-spaced schedule of update counts
  (:func:`sokit.evaluation.eval_schedule`), with the training seconds spent so far; the
  clock counts training steps only, not evaluation or checkpointing;
* divergence: a non-finite loss ends the run, marked diverged at that update.

One step is ``output = model(x)``, the optimizer's ``curvature_backward(output)`` when
it has one (see :mod:`sokit.optim`), then ``zero_grad(); loss.backward(); step()``. On
CUDA, when the optimizer allows it, that step is captured once as a CUDA graph and
replayed (:class:`sokit.graphs.CapturedStep`); only the copy of the next minibatch into
the static input buffer runs outside the graph. Checkpoints (:mod:`sokit.checkpoint`)
are written at evaluation points; a run given an existing checkpoint continues the same
curve.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # the text bar: notebooks need no ipywidgets

from sokit import checkpoint as ckpt_io
from sokit import losses
from sokit.data import Dataset, Sampler
from sokit.evaluation import eval_schedule, evaluate
from sokit.graphs import CapturedStep, capture_enabled

#: at most this many minibatch-loss points are returned (window means beyond it)
MINIBATCH_POINTS = 2000


def can_capture(optimizer: Any, device: torch.device) -> bool:
    """Whether the step may be captured as a CUDA graph: on CUDA, with plain
    ``torch.optim.SGD`` (float learning rate) or a ``torch.optim`` optimizer created with
    ``capturable=True``: torch's, or sokit's ACP, KFAC, centered GD and NNN, whose refresh
    updates then run eagerly between replays (``optimizer.refresh_due()``, see
    :class:`sokit.graphs.CapturedStep`; untested on CUDA hardware)."""
    if device.type != "cuda" or not isinstance(optimizer, torch.optim.Optimizer):
        return False
    if type(optimizer) is torch.optim.SGD:
        return all(not isinstance(g["lr"], torch.Tensor) for g in optimizer.param_groups)
    return bool(optimizer.defaults.get("capturable", False))


def _subsample(values: np.ndarray) -> tuple[list[float], int]:
    """Window means so that at most MINIBATCH_POINTS values remain; returns (values, window)."""
    window = max(1, math.ceil(len(values) / MINIBATCH_POINTS))
    n = len(values) // window * window
    means = values[:n].reshape(-1, window).mean(axis=1) if n else values[:0]
    if n < len(values):
        means = np.append(means, values[n:].mean())
    return [float(v) for v in means], window


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_inputs(model: nn.Module, optimizer: Any, data: Dataset, loss: str) -> None:
    dtype = next(model.parameters()).dtype
    if data.train_x.dtype != dtype:
        raise ValueError(f"the model's parameters are {dtype} but the inputs are {data.train_x.dtype}; "
                         f"convert one to match, e.g. model.to({data.train_x.dtype})")
    built_for = getattr(optimizer, "loss", None)
    if built_for is not None and built_for != loss:
        raise ValueError(f"{type(optimizer).__name__} was built for loss {built_for!r} but this run trains "
                         f"with {loss!r}; pass loss={loss!r} to its constructor")


class _Run:
    """The mutable state of one run: curve, update count, training seconds, minibatch losses."""

    def __init__(self, updates: int, device: torch.device, dtype: torch.dtype) -> None:
        self.curve: dict[str, Any] = {"updates": [], "seconds": [], "train_loss": [], "test_loss": [],
                                      "diverged": False, "diverged_at": None}
        self.minibatch = torch.full((updates,), float("nan"), device=device, dtype=dtype)
        self.counter = torch.zeros((), dtype=torch.long, device=device)
        self.step, self.seconds, self.checked = 0, 0.0, 0

    def first_bad(self) -> int | None:
        """The first update since the last check whose minibatch loss is not finite."""
        bad = torch.nonzero(~torch.isfinite(self.minibatch[self.checked:self.step]))
        return self.checked + int(bad[0]) + 1 if len(bad) else None

    def diverge(self, at: int) -> None:
        self.curve["diverged"], self.curve["diverged_at"] = True, at

    def record(self, on_train: dict[str, float], on_test: dict[str, float]) -> None:
        """An evaluation point: losses (and a classifier's error rates) at this update."""
        self.curve["updates"].append(self.step)
        self.curve["seconds"].append(self.seconds)
        self.curve["train_loss"].append(on_train["loss"])
        self.curve["test_loss"].append(on_test["loss"])
        if "error" in on_train:
            self.curve.setdefault("train_error", []).append(on_train["error"])
            self.curve.setdefault("test_error", []).append(on_test["error"])


class Progress:
    """A run's progress bar over its estimated cost, so that its time left counts evaluations.

    An update costs 1 unit and an evaluation (with its checkpoint) ``weight`` units. The
    weight is first guessed from the examples evaluated (a forward pass each, about a third
    of a training example's cost), then measured after every evaluation (its seconds over the
    seconds per update so far). Evaluations are log-spaced, so early on they are most of the
    time spent: counting updates alone, the first estimate of a 35-minute run read 16 hours.
    The bar shows the fraction of the estimated cost done and the time left.
    """

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"

    def __init__(self, updates: int, step: int, n_evals: int, evals_done: int, eval_examples: int,
                 batch_size: int, disable: bool = False, desc: str = "", position: int | None = None) -> None:
        self.updates, self.step, self.n_evals, self.evals_done = updates, step, n_evals, evals_done
        self.start = (step, evals_done)  # where this invocation resumed
        self.weight = eval_examples / (3 * batch_size)
        self.bar = tqdm(total=self._units(updates, n_evals), initial=self._units(step, evals_done),
                        disable=disable, desc=desc, position=position, mininterval=0.5, smoothing=0,
                        bar_format=self.FORMAT)

    def _units(self, steps: int, evals: int) -> float:
        return steps + evals * self.weight

    def update(self) -> None:
        """One update done."""
        self.step += 1
        self.bar.update(1)

    def evaluated(self, eval_seconds: float, seconds_per_update: float, **losses: float) -> None:
        """An evaluation done, which took ``eval_seconds``; reweigh the ones left."""
        self.evals_done += 1
        if seconds_per_update > 0 and eval_seconds > 0:
            self.weight = eval_seconds / seconds_per_update
            # the same work in the new units: done, total and where this invocation started
            self.bar.initial = self._units(*self.start)
            self.bar.total = self._units(self.updates, self.n_evals)
            self.bar.n = self._units(self.step, self.evals_done)
        else:
            self.bar.update(self.weight)
        if losses:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _make_step(model: nn.Module, optimizer: Any, loss: str, x: torch.Tensor, y: torch.Tensor,
               run: _Run) -> Callable[[], None]:
    """One training step on the static buffers ``x``, ``y``; its loss goes to ``run.minibatch``."""
    loss_fn = losses.get(loss)
    target = x if losses.target_kind(loss) == "input" else y
    curvature_backward = getattr(optimizer, "curvature_backward", None)

    def step() -> None:
        output = model(x)
        value = loss_fn(output, target)
        if curvature_backward is not None:
            curvature_backward(output)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        run.minibatch.index_copy_(0, run.counter.view(1), value.detach().view(1))
        run.counter.add_(1)

    return step


def train(
    model: nn.Module,
    optimizer: Any,
    data: Dataset,
    loss: str,
    updates: int,
    batch_size: int = 200,
    seed: int = 0,
    eval_every: str | int = "log",
    n_evals: int = 20,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    eval_subset: int | None = None,
    graph: bool | None = None,
    check_every: int = 1000,
    checkpoint_every_s: float = 600.0,
    desc: str | None = None,
    position: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``updates`` minibatch updates and return its curves (JSON-able).

    ``loss`` is "mse" (the autoencoder: the target is the input) or "cross_entropy"
    (the target is the label); an optimizer built for a loss (KFAC, UBP) must name the
    same one. ``seed`` fixes the minibatch order and seeds torch's global generator (for
    optimizers that sample). ``eval_subset`` evaluates on the first that many training
    and test examples. ``graph``: None captures a CUDA graph when :func:`can_capture`
    allows (and ``$SOKIT_CAPTURE`` is not "0"), False forces eager, True requires capture. Divergence is checked every
    ``check_every`` updates and at evaluation points. With ``checkpoint``, the run is
    saved at every evaluation and, between them, at the first check after
    ``checkpoint_every_s`` seconds since the last save; an existing checkpoint of the
    same run is resumed. ``progress`` shows a bar (:class:`Progress`: its time left counts
    evaluations) labelled ``desc`` (default "train <loss>") on line ``position``.

    Returns {"updates", "seconds", "train_loss", "test_loss"} at the evaluation
    schedule (for a classifier also "train_error" and "test_error", the fractions
    misclassified), "minibatch_loss" (every update, or means over windows of
    "minibatch_every" updates), "diverged", "diverged_at", "wall_clock_s" and
    "cuda_graph", and "diagnostics" when the optimizer's ``diagnostics()`` kept any
    (UBP with ``monitor=True``).
    """
    device = torch.device(device) if device is not None else data.train_x.device
    if data.train_x.device != device:
        data = data.to(device)
    model.to(device).train()
    _check_inputs(model, optimizer, data, loss)
    schedule = eval_schedule(updates, n_evals, eval_every)
    eval_data = data.subset(eval_subset, eval_subset) if eval_subset else data
    use_graph = can_capture(optimizer, device) and capture_enabled() if graph is None else graph
    if use_graph and not can_capture(optimizer, device):
        raise ValueError("graph=True needs CUDA and a capturable optimizer (see sokit.train.can_capture)")
    run_key = {"updates": updates, "batch_size": batch_size, "seed": seed, "loss": loss,
               "schedule": schedule, "eval_subset": eval_subset}

    sampler = Sampler(data.train_x, data.train_y, batch_size, seed)
    run = _Run(updates, device, next(model.parameters()).dtype)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        saved = ckpt_io.load(path, device, run_key)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        sampler.load_state_dict(saved["sampler"])
        torch.set_rng_state(saved["rng"].cpu())
        if device.type == "cuda" and saved["cuda_rng"] is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"].cpu(), device)
        run.curve, run.step, run.seconds = saved["curve"], saved["step"], saved["seconds"]
        run.checked = run.step
        run.minibatch.copy_(saved["minibatch"])
        run.counter.fill_(run.step)
    else:
        torch.manual_seed(seed)
    last_save = time.monotonic()

    def save() -> None:
        nonlocal last_save
        if path is None:
            return
        last_save = time.monotonic()
        ckpt_io.save(path, {
            "run": run_key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "sampler": sampler.state_dict(), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "curve": run.curve, "step": run.step, "seconds": run.seconds, "minibatch": run.minibatch.cpu()})

    static_x = torch.zeros(batch_size, data.train_x.shape[1], device=device, dtype=data.train_x.dtype)
    static_y = torch.zeros(batch_size, device=device, dtype=data.train_y.dtype)
    by_input = losses.target_kind(loss) == "input"
    step_fn = _make_step(model, optimizer, loss, static_x, static_y, run)
    if use_graph:  # a sokit optimizer's refresh updates run eagerly, outside the graph
        step_fn = CapturedStep(step_fn, device, prepare=optimizer.zero_grad,
                               eager=getattr(optimizer, "refresh_due", None),
                               replayed=getattr(optimizer, "count_replayed_update", None))
    pending = [u for u in schedule if u > run.step]
    bar = Progress(updates, run.step, len(schedule), len(schedule) - len(pending),
                   len(eval_data.train_x) + len(eval_data.test_x), batch_size, disable=not progress,
                   desc=desc or f"train {loss}", position=position)
    step0, seconds0 = run.step, run.seconds
    _sync(device)
    clock = time.perf_counter()
    while run.step < updates and not run.curve["diverged"]:
        idx = sampler.next_indices()
        torch.index_select(data.train_x, 0, idx, out=static_x)
        if not by_input:
            torch.index_select(data.train_y, 0, idx, out=static_y)
        step_fn()
        run.step += 1
        bar.update()
        at_eval = run.step == pending[0]
        if at_eval or run.step - run.checked >= check_every:
            _sync(device)
            run.seconds += time.perf_counter() - clock
            bad = run.first_bad()
            run.checked = run.step
            if bad is not None:
                run.diverge(bad)
            elif at_eval:
                pending.pop(0)
                eval_start = time.perf_counter()
                on_train = evaluate(model, eval_data.train_x, eval_data.train_y, loss)
                on_test = evaluate(model, eval_data.test_x, eval_data.test_y, loss)
                if not (math.isfinite(on_train["loss"]) and math.isfinite(on_test["loss"])):
                    run.diverge(run.step)
                else:
                    run.record(on_train, on_test)
                save()
                per_update = (run.seconds - seconds0) / max(run.step - step0, 1)
                bar.evaluated(time.perf_counter() - eval_start, per_update,
                              **({} if run.curve["diverged"] else {"train": on_train["loss"], "test": on_test["loss"]}))
            elif path is not None and time.monotonic() - last_save >= checkpoint_every_s:
                save()
            _sync(device)
            clock = time.perf_counter()
    bar.close()
    done = run.curve["diverged_at"] - 1 if run.curve["diverged"] else run.step
    mb, window = _subsample(run.minibatch[:done].cpu().numpy().astype(np.float64))
    if run.curve["diverged"]:
        save()
    diagnostics = getattr(optimizer, "diagnostics", dict)()  # what the optimizer kept per update
    return {**run.curve, "minibatch_loss": mb, "minibatch_every": window,
            "wall_clock_s": run.seconds, "cuda_graph": isinstance(step_fn, CapturedStep) and step_fn.captured,
            **({"diagnostics": diagnostics} if diagnostics else {})}
