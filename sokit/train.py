"""The training loop of the thesis's experiments (chapter 4's protocol, chapter 6's figures).

A run is (model, optimizer, data, update budget, batch size, seed). It records

* the minibatch loss of every update, written into a buffer on the device by the
  step itself (no host synchronisation per step);
* the full training-set and test-set loss at a log-spaced schedule of update
  counts (:func:`eval_schedule`), with the training seconds spent so far; the
  clock counts training steps only, not evaluation or checkpointing;
* divergence: a non-finite loss ends the run, marked diverged at that update.

On CUDA, when the optimizer allows it, the training step (forward, the optimizer's
``curvature_backward``, backward, update, loss bookkeeping) is captured once as a
CUDA graph and replayed; only the copy of the next minibatch into the static input
buffer runs outside the graph. Elsewhere the same step runs eagerly.

Checkpoints (model, optimizer, sampler position, RNG states, curves) are written at
evaluation points; a run given an existing checkpoint continues the same curve.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # the text bar: notebooks need no ipywidgets

from sokit import losses
from sokit.data import Dataset, Sampler

#: eager steps run before a CUDA graph is captured (lazy state, cuBLAS workspaces)
GRAPH_WARMUP = 3
#: at most this many minibatch-loss points are returned (window means beyond it)
MINIBATCH_POINTS = 2000
#: chunk size for full-dataset evaluation
EVAL_CHUNK = 10000


def eval_schedule(updates: int, n_evals: int = 20, eval_every: str | int = "log") -> list[int]:
    """Update counts after which train and test loss are measured.

    ``"log"``: about ``n_evals`` counts spaced evenly in log scale from 1 to ``updates``
    (rounded, duplicates removed); an int ``k``: every ``k`` updates. ``updates`` is
    always included.
    """
    if updates < 1:
        raise ValueError(f"updates must be at least 1, got {updates}")
    if eval_every == "log":
        if n_evals < 1:
            raise ValueError(f"n_evals must be at least 1, got {n_evals}")
        points = np.unique(np.round(np.geomspace(1, updates, n_evals)).astype(int))
        sched = [int(p) for p in points]
    elif isinstance(eval_every, int) and eval_every >= 1:
        sched = list(range(eval_every, updates + 1, eval_every))
    else:
        raise ValueError(f"eval_every must be 'log' or a positive int, got {eval_every!r}")
    if not sched or sched[-1] != updates:
        sched.append(updates)
    return sched


def can_capture(optimizer: Any, device: torch.device) -> bool:
    """Whether the step may be captured as a CUDA graph.

    Needs CUDA, and an optimizer whose step makes no host synchronisation: plain
    ``torch.optim.SGD`` (float learning rate), a ``torch.optim`` optimizer created with
    ``capturable=True``, or a sokit optimizer with attribute ``capturable = True``.
    """
    if device.type != "cuda":
        return False
    if isinstance(optimizer, torch.optim.Optimizer):
        if type(optimizer) is torch.optim.SGD:
            return all(not isinstance(g["lr"], torch.Tensor) for g in optimizer.param_groups)
        return bool(optimizer.defaults.get("capturable", False))
    return getattr(optimizer, "capturable", False) is True


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> float:
    """The loss over the whole of (x, y), in eval mode (running statistics for batch norm)."""
    loss_fn = losses.get(loss)
    target = x if losses.target_kind(loss) == "input" else y
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, len(x), EVAL_CHUNK):
        xc, tc = x[i:i + EVAL_CHUNK], target[i:i + EVAL_CHUNK]
        total += loss_fn(model(xc), tc).double() * len(xc)
    model.train(was_training)
    return float(total / len(x))


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
) -> dict[str, Any]:
    """Train ``model`` for ``updates`` minibatch updates and return its curves (JSON-able).

    ``loss`` is "mse" (the autoencoder: the target is the input) or "cross_entropy"
    (the target is the label). ``seed`` fixes the minibatch order and seeds torch's
    global generator (for optimizers that sample). ``eval_subset`` evaluates on the
    first that many training and test examples (for smoke profiles). ``graph``: None
    captures a CUDA graph when :func:`can_capture` allows, False forces eager, True
    requires capture. Divergence is checked every ``check_every`` updates and at
    evaluation points. With ``checkpoint``, the run is saved at every evaluation and,
    between them, at the first check after ``checkpoint_every_s`` seconds since the last
    save; an existing checkpoint of the same run is resumed.

    Returns {"updates", "seconds", "train_loss", "test_loss"} at the evaluation
    schedule, "minibatch_loss" (every update, or means over windows of
    "minibatch_every" updates), "diverged", "diverged_at", "wall_clock_s" and
    "cuda_graph".

    When ``optimizer`` has ``curvature_backward(output, loss)``, it is called after the
    forward pass and before ``zero_grad(); loss.backward(); step()`` on every step.
    """
    device = torch.device(device) if device is not None else data.train_x.device
    if data.train_x.device != device:
        data = data.to(device)
    model.to(device).train()
    dtype = next(model.parameters()).dtype
    if data.train_x.dtype != dtype:
        raise ValueError(f"the model's parameters are {dtype} but the inputs are {data.train_x.dtype}; "
                         f"convert one to match, e.g. model.to({data.train_x.dtype})")
    loss_fn = losses.get(loss)
    by_input = losses.target_kind(loss) == "input"
    schedule = eval_schedule(updates, n_evals, eval_every)
    eval_data = data.subset(eval_subset, eval_subset) if eval_subset else data
    use_graph = can_capture(optimizer, device) if graph is None else graph
    if use_graph and not can_capture(optimizer, device):
        raise ValueError("graph=True needs CUDA and a capturable optimizer (see sokit.train.can_capture)")
    run_key = {"updates": updates, "batch_size": batch_size, "seed": seed, "loss": loss,
               "schedule": schedule, "eval_subset": eval_subset}

    sampler = Sampler(data.train_x, data.train_y, batch_size, seed)
    curve: dict[str, Any] = {"updates": [], "seconds": [], "train_loss": [], "test_loss": [],
                             "diverged": False, "diverged_at": None}
    minibatch = torch.full((updates,), float("nan"), device=device, dtype=dtype)
    counter = torch.zeros((), dtype=torch.long, device=device)
    step, seconds, checked = 0, 0.0, 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        if saved["run"] != run_key:
            raise ValueError(f"checkpoint {ckpt} belongs to another run ({saved['run']}); "
                             f"delete it or pass another checkpoint path")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        sampler.load_state_dict(saved["sampler"])
        torch.set_rng_state(saved["rng"])
        if device.type == "cuda" and saved["cuda_rng"] is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        curve, step, seconds = saved["curve"], saved["step"], saved["seconds"]
        checked = step
        minibatch.copy_(saved["minibatch"])
        counter.fill_(step)
    else:
        torch.manual_seed(seed)

    last_save = time.monotonic()

    def save() -> None:
        nonlocal last_save
        if ckpt is None:
            return
        last_save = time.monotonic()
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        torch.save({"run": run_key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "sampler": sampler.state_dict(), "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "curve": curve, "step": step, "seconds": seconds, "minibatch": minibatch.cpu()}, tmp)
        tmp.replace(ckpt)

    static_x = torch.zeros(batch_size, data.train_x.shape[1], device=device, dtype=data.train_x.dtype)
    static_y = torch.zeros(batch_size, device=device, dtype=data.train_y.dtype)
    curvature_backward = getattr(optimizer, "curvature_backward", None)

    def train_step() -> None:
        output = model(static_x)
        value = loss_fn(output, static_x if by_input else static_y)
        if curvature_backward is not None:
            curvature_backward(output, loss)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        minibatch.index_copy_(0, counter.view(1), value.detach().view(1))
        counter.add_(1)

    def first_bad(upto: int) -> int | None:
        bad = torch.nonzero(~torch.isfinite(minibatch[checked:upto]))
        return checked + int(bad[0]) + 1 if len(bad) else None

    cuda_graph: torch.cuda.CUDAGraph | None = None
    side = torch.cuda.Stream(device) if use_graph else None
    pending = [u for u in schedule if u > step]
    bar = tqdm(total=updates, initial=step, disable=not progress, desc=f"train {loss}", mininterval=0.5)
    start_step = step
    _sync(device)
    clock = time.perf_counter()
    while step < updates and not curve["diverged"]:
        idx = sampler.next_indices()
        torch.index_select(data.train_x, 0, idx, out=static_x)
        if not by_input:
            torch.index_select(data.train_y, 0, idx, out=static_y)
        if cuda_graph is not None:
            cuda_graph.replay()
        elif use_graph and step - start_step >= GRAPH_WARMUP:
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                optimizer.zero_grad()
                cuda_graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(cuda_graph):
                    train_step()
            torch.cuda.current_stream(device).wait_stream(side)
            cuda_graph.replay()
        elif use_graph:
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                train_step()
            torch.cuda.current_stream(device).wait_stream(side)
        else:
            train_step()
        step += 1
        bar.update(1)
        at_eval = step == pending[0]
        if at_eval or step - checked >= check_every:
            _sync(device)
            seconds += time.perf_counter() - clock
            bad = first_bad(step)
            checked = step
            if bad is not None:
                curve["diverged"], curve["diverged_at"] = True, bad
            elif at_eval:
                pending.pop(0)
                train_loss = evaluate(model, eval_data.train_x, eval_data.train_y, loss)
                test_loss = evaluate(model, eval_data.test_x, eval_data.test_y, loss)
                if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
                    curve["diverged"], curve["diverged_at"] = True, step
                else:
                    for key, value in zip(("updates", "seconds", "train_loss", "test_loss"),
                                          (step, seconds, train_loss, test_loss)):
                        curve[key].append(value)
                    bar.set_postfix(train=f"{train_loss:.4g}", test=f"{test_loss:.4g}")
                save()
            elif ckpt is not None and time.monotonic() - last_save >= checkpoint_every_s:
                save()
            _sync(device)
            clock = time.perf_counter()
    bar.close()
    done = curve["diverged_at"] - 1 if curve["diverged"] else step
    values = minibatch[:done].cpu().numpy().astype(np.float64)
    mb, window = _subsample(values)
    if curve["diverged"]:
        save()
    return {**curve, "minibatch_loss": mb, "minibatch_every": window,
            "wall_clock_s": seconds, "cuda_graph": cuda_graph is not None}
