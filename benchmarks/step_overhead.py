"""Milliseconds per training step of each chapter-6 method against SGD.

The MNIST autoencoder (784-1000-500-250-30-250-500-1000-784), minibatch 200,
amortization N = 100 (thesis section 6.5.2). A refresh (statistics and inverses) runs
on updates 0, N, 2N, ...; to time it without running hundreds of steps, each method
runs with a short refresh period ``k`` (``--refresh-every``), and its plain steps and
refresh steps are timed separately. The per-step cost at N = 100 is then

    amortized = plain + (refresh - plain) / 100        (medians)

Modes: eager everywhere; on CUDA also the step captured as a CUDA graph (the same
capture as ``sokit.train``) for the optimizers ``sokit.train.can_capture`` accepts
(there, refresh steps are not timed separately). ASDL's K-FAC (``pip install
asdfghjkl``, imported as ``asdl``) runs as a peer in the same process when it imports;
otherwise the reason is recorded.

    nice python benchmarks/step_overhead.py            # writes step_overhead_<device>.json/.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import sokit
from sokit import losses
from sokit.device import device_name
from sokit.experiments import git_commit
from sokit.experiments.fig6 import EPS, FIG6_1, FIG6_2, HPARAMS, methods_for
from sokit.experiments.methods import build_model
from sokit.graphs import CapturedStep
from sokit.optim import build as build_optimizer
from sokit.train import can_capture

HERE = Path(__file__).resolve().parent
BATCH, AMORTIZATION, WARMUP = 200, 100, 2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sokit_step(model, optimizer, x: torch.Tensor) -> Callable[[], None]:
    """One training step exactly as ``sokit.train`` runs it (autoencoder: target = input)."""
    curvature_backward = getattr(optimizer, "curvature_backward", None)

    def step() -> None:
        output = model(x)
        value = losses.mse_sum(output, x)
        if curvature_backward is not None:
            curvature_backward(output)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()

    return step


def asdl_step(model, x: torch.Tensor, lr: float, every: int) -> Callable[[], None]:
    """ASDL's K-FAC (Fisher with one sampled target, loss_type "mse") + torch SGD."""
    import asdl

    def mse(output, target, reduction="mean"):
        per_example = (output - target).pow(2).sum(1)
        return per_example.mean() if reduction == "mean" else per_example.sum()

    config = asdl.PreconditioningConfig(data_size=BATCH, damping=EPS,
                                        preconditioner_upd_interval=every,
                                        curvature_upd_interval=every)
    maker = asdl.KfacGradientMaker(model, config, fisher_type="fisher_mc", loss_type="mse")
    sgd = torch.optim.SGD(model.parameters(), lr=lr)

    def step() -> None:
        sgd.zero_grad()
        dummy = maker.setup_model_call(model, x)
        maker.setup_loss_call(mse, dummy, x)
        maker.forward_and_backward()
        sgd.step()

    return step


def graph_step(step: Callable[[], None], optimizer, device: torch.device) -> Callable[[], None]:
    """``step`` captured once as a CUDA graph, as ``sokit.train`` does (warm-up and capture done here)."""
    captured = CapturedStep(step, device, prepare=optimizer.zero_grad)
    while not captured.captured:
        captured()
    return captured


def time_steps(step: Callable[[], None], device: torch.device, n: int,
               every: int | None) -> dict[str, float]:
    """Time ``n`` steps after the warm-up; steps ``0, every, 2 every, ...`` (counted from
    the first call) are refresh steps. ``every=None``: no refresh."""
    plain, refresh = [], []
    for i in range(WARMUP + n):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        ms = 1e3 * (time.perf_counter() - t0)
        if i >= WARMUP:
            (refresh if every and i % every == 0 else plain).append(ms)
    out = {"plain_ms": statistics.median(plain), "steps": n}
    out["refresh_ms"] = statistics.median(refresh) if refresh else None
    extra = (out["refresh_ms"] - out["plain_ms"]) / AMORTIZATION if refresh else 0.0
    out["amortized_ms"] = out["plain_ms"] + extra
    return out


def methods() -> dict[str, dict[str, Any]]:
    """The fig6_1 and fig6_2 methods (KFAC = Fisher, sampled targets) and KFAC for
    Gauss-Newton (Rademacher probes), with the learning rates of the experiments."""
    specs = methods_for("autoencoder", {**FIG6_2, **FIG6_1})
    gn = copy.deepcopy(specs["KFAC"])
    gn["kwargs"]["curvature"] = "gauss_newton"
    return {**specs, "KFAC (Gauss-Newton)": gn}


def run(device: torch.device, steps: int, every: int, only: list[str] | None) -> dict[str, Any]:
    torch.manual_seed(0)
    x = torch.rand(BATCH, 784, device=device)
    config = {"model": "autoencoder"}
    rows: dict[str, Any] = {}
    for label, spec in methods().items():
        if only and label not in only:
            continue
        torch.manual_seed(0)
        model = build_model(config, spec).to(device)
        refreshes = "amortization" in spec["kwargs"]
        if refreshes:
            spec["kwargs"]["amortization"] = every
        try:
            optimizer = build_optimizer(spec["optimizer"], model, **spec["kwargs"])
        except (ImportError, AttributeError, TypeError) as e:
            rows[label] = {"error": f"{type(e).__name__}: {e}"}
            continue
        step = sokit_step(model, optimizer, x)
        rows[label] = {"eager": time_steps(step, device, steps, every if refreshes else None)}
        if can_capture(optimizer, device):
            replay = graph_step(step, optimizer, device)
            rows[label]["cuda_graph"] = time_steps(replay, device, steps, None)
        print(f"{label:28s} {rows[label]['eager']['amortized_ms']:9.2f} ms", flush=True)
    if not only or "ASDL KFAC" in only:
        torch.manual_seed(0)
        model = build_model(config, {"norm": None, "prescale": HPARAMS["autoencoder"]["KFAC"][1]}).to(device)
        try:
            step = asdl_step(model, x, lr=HPARAMS["autoencoder"]["KFAC"][0], every=every)
        except ImportError as e:
            rows["ASDL KFAC"] = {"error": f"ImportError: {e} (pip install asdfghjkl)"}
        else:
            rows["ASDL KFAC"] = {"eager": time_steps(step, device, steps, every),
                                 "asdl_version": _asdl_version()}
            print(f"{'ASDL KFAC':28s} {rows['ASDL KFAC']['eager']['amortized_ms']:9.2f} ms",
                  flush=True)
    return rows


def _asdl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asdfghjkl")
    except PackageNotFoundError:
        return "unknown"


def markdown(record: dict[str, Any]) -> str:
    rows = record["methods"]
    modes = [m for m in ("eager", "cuda_graph") if any(m in r for r in rows.values())]
    sgd = {m: rows["SGD"][m]["amortized_ms"] for m in modes if m in rows.get("SGD", {})}
    lines = [f"# Step cost per method, {record['device']}",
             "",
             f"MNIST autoencoder, batch {BATCH}; ms per step at amortization N = "
             f"{AMORTIZATION}: plain step + (refresh step - plain step) / {AMORTIZATION} "
             f"(medians of {record['steps']} timed steps, refresh every "
             f"{record['refresh_every']} steps during timing). torch "
             f"{record['torch_version']}, {record['cpu_threads']} threads, commit "
             f"{record['commit'][:10]}, {record['started']}; 1-minute load average "
             f"{record['load_average_1min'][0]} before, {record['load_average_1min'][1]} "
             f"after. {record['note']}",
             "",
             "| method | mode | ms/step, N = 100 | x SGD | plain step ms | refresh step ms |",
             "|---|---|---|---|---|---|"]
    for label, r in rows.items():
        if "error" in r:
            lines.append(f"| {label} | - | not run: {r['error']} | | | |")
            continue
        for m in modes:
            if m not in r:
                continue
            t = r[m]
            ratio = f"{t['amortized_ms'] / sgd[m]:.2f}" if m in sgd else "-"
            refresh = "-" if t["refresh_ms"] is None else f"{t['refresh_ms']:.1f}"
            lines.append(f"| {label} | {m} | {t['amortized_ms']:.1f} | {ratio} | "
                         f"{t['plain_ms']:.1f} | {refresh} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--refresh-every", type=int, default=5,
                        help="refresh period while timing (refresh steps are timed apart)")
    parser.add_argument("--note", default="", help="a remark stored with the table")
    parser.add_argument("--only", nargs="*", help="method labels to run (default: all)")
    args = parser.parse_args()
    device = torch.device(args.device)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    rows = run(device, args.steps, args.refresh_every, args.only)
    load_after = os.getloadavg()
    record = {"device": device_name(device), "device_type": device.type, "steps": args.steps,
              "refresh_every": args.refresh_every, "note": args.note,
              "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
              "batch_size": BATCH, "amortization": AMORTIZATION, "started": started,
              "commit": git_commit(), "sokit_version": sokit.__version__,
              "torch_version": torch.__version__, "python_version": platform.python_version(),
              "cpu_threads": torch.get_num_threads(), "methods": rows}
    slug = re.sub(r"[^a-z0-9]+", "_", record["device"].lower()).strip("_")[:40]
    (HERE / f"step_overhead_{slug}.json").write_text(json.dumps(record, indent=1) + "\n")
    table = markdown(record)
    (HERE / f"step_overhead_{slug}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
