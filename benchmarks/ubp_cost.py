"""Cost of one updated-backpropagation update relative to one SGD update.

The MNIST autoencoder (784-1000-500-250-30-250-500-1000-784), minibatch 200, fp32,
the same step as sokit.train.train (forward, loss, zero_grad, backward, step). The time
inside the curvature products of the sweep (``Curvature.at`` and ``Curvature.apply`` of
sokit.optim.ubp: the ``J^T (d2L/df2) J v`` or ``(d2L/da2) v`` of Algorithm 2, line 8) is
measured separately; the rest is the forward pass, the loop's backward and the plain sweep
(lines 4, 6, 7, 8).

Rounds are interleaved: each round runs one step of every UBP variant and
``--sgd-per-round`` SGD steps, so a change in the machine's load hits every method alike;
the table reports min and median per method. Next to each measured ratio is the ratio of
matrix multiply-adds (:func:`multiply_adds`), and measured / counted.

    nice python benchmarks/ubp_cost.py                 # CPU, writes benchmarks/ubp_cost_cpu.{json,md}
    python benchmarks/ubp_cost.py --device cuda        # GPU, writes benchmarks/ubp_cost_cuda.{json,md}

Timings synchronise the device around every timed region. Inputs are random pixels in
[0, 1]: the cost does not depend on the data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import sokit
from sokit import losses, models
from sokit.device import device_name
from sokit.optim import ubp

HERE = Path(__file__).resolve().parent
VARIANTS = ("gn", "exact")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def multiply_adds(sizes: tuple[int, ...], batch: int) -> dict[str, int]:
    """Matrix multiply-adds of one update (elementwise work not counted), from the cost
    model of sokit.optim.ubp: SGD's forward and backward; UBP's loop (the same), sweep
    and curvature products; ``jacobians``: carrying Algorithm 2's per-example ``J_i``
    (``J_i <- J_i W``, uncompressed) instead of the products, for reference."""
    c = [n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    sgd = batch * (3 * sum(c) - c[0])  # the bottom layer needs no gradient for its input
    sweep = batch * (c[0] + 4 * sum(c[1:]))  # dW; dW h + db, (W + dW)^T da, W^T curv
    products = 2 * batch * sum(sum(c[k + 1:]) for k in range(1, len(c)))
    gradients = batch * sum(c[1:])  # dL/dh of the unmodified network, for "exact"
    m = sizes[-1]
    jacobians = batch * m * (sizes[-2] + sum(c[1:-1]))  # top: a scaling; bottom: none
    return {"sgd": sgd, "ubp_gn": sgd + sweep + products, "ubp_exact": sgd + sweep + products + gradients,
            "jacobians_gn": sgd + sweep + jacobians}


class Timer:
    """Wraps methods of ``sokit.optim.ubp.Curvature`` and sums the time spent in them."""

    NAMES = ("at", "apply")

    def __init__(self, device: torch.device) -> None:
        self.total, self.device = 0.0, device
        self.saved = {name: ubp.Curvature.__dict__[name] for name in self.NAMES}
        ubp.Curvature.at = classmethod(self.wrap(self.saved["at"].__func__))
        ubp.Curvature.apply = self.wrap(self.saved["apply"])

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            sync(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            self.total += time.perf_counter() - t0
            return out

        return timed

    def restore(self) -> None:
        for name, fn in self.saved.items():
            setattr(ubp.Curvature, name, fn)


def one_step(model, opt, x, device: torch.device, timed: bool) -> tuple[float, float]:
    """Seconds of one training step (as in sokit.train) and of its curvature part."""
    timer = Timer(device) if timed else None
    sync(device)
    t0 = time.perf_counter()
    out = model(x)
    value = losses.mse_sum(out, x)
    opt.zero_grad()
    value.backward()
    opt.step()
    sync(device)
    elapsed = time.perf_counter() - t0
    if timer is None:
        return elapsed, 0.0
    timer.restore()
    return elapsed, timer.total


def time_methods(makers: dict[str, Callable], device: torch.device, batch: int, repeats: int,
                 sgd_per_round: int, warmup: int) -> dict:
    """Interleaved rounds (one step of every method per round, SGD ``sgd_per_round`` times)."""
    x = torch.rand(batch, 784, device=device)
    runs = {}
    for name, make in makers.items():
        torch.manual_seed(0)
        model = models.autoencoder(prescale=1.0).to(device)
        runs[name] = (model, make(model), [], [])
    for i in range(warmup + repeats):
        for name, (model, opt, steps, curvs) in runs.items():
            for _ in range(sgd_per_round if name == "sgd" else 1):
                elapsed, curv = one_step(model, opt, x, device, timed=name != "sgd")
                if i >= warmup:
                    steps.append(elapsed)
                    curvs.append(curv)
    rows = {}
    for name, (_, _, steps, curvs) in runs.items():
        med, curv = statistics.median(steps), statistics.median(curvs)
        rows[name] = {"step_s_median": med, "step_s_min": min(steps), "step_s_all": steps,
                      "curvature_s_median": curv, "rest_s_median": med - curv}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--batch", type=int, default=200, help="minibatch size (default 200, fig5_1's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds (default 5)")
    parser.add_argument("--sgd-per-round", type=int, default=5, help="SGD steps per round (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--note", default="", help="free text stored with the result (e.g. other jobs running)")
    parser.add_argument("--out", default=None, help="output stem (default benchmarks/ubp_cost_<device type>)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    lr = 1e-3
    makers: dict[str, Callable] = {"sgd": lambda m: torch.optim.SGD(m.parameters(), lr=lr)}
    for name in VARIANTS:
        makers[f"ubp_{name}"] = lambda m, name=name: ubp.UBP(m, lr=lr, loss="mse", hessian=name)
    load_start = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = time_methods(makers, device, args.batch, args.repeats, args.sgd_per_round, args.warmup)
    macs = multiply_adds(models.AUTOENCODER_SIZES, args.batch)
    sgd, sgd_min = rows["sgd"]["step_s_median"], rows["sgd"]["step_s_min"]
    for name, r in rows.items():
        r["ratio_to_sgd"] = r["step_s_median"] / sgd
        r["min_ratio_to_sgd"] = r["step_s_min"] / sgd_min
        r["curvature_ratio_to_sgd"] = r["curvature_s_median"] / sgd
        r["rest_ratio_to_sgd"] = r["rest_s_median"] / sgd
        r["multiply_adds"] = macs[name]
        r["multiply_add_ratio_to_sgd"] = macs[name] / macs["sgd"]
        r["measured_over_counted"] = r["ratio_to_sgd"] / r["multiply_add_ratio_to_sgd"]
    record = {
        "benchmark": "ubp_cost", "model": "autoencoder 784-1000-500-250-30-250-500-1000-784",
        "batch": args.batch, "dtype": "float32", "device": device_name(device), "device_type": device.type,
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "sokit": sokit.__version__,
        "python": platform.python_version(), "thesis_ratio": "about 10x (Titan Black, Theano)",
        "started": started, "repeats": args.repeats, "sgd_per_round": args.sgd_per_round,
        "rows": rows, "jacobians_multiply_add_ratio_to_sgd": macs["jacobians_gn"] / macs["sgd"],
        "load_average_1m": [load_start, os.getloadavg()[0]], "note": args.note,
    }
    stem = Path(args.out) if args.out else HERE / f"ubp_cost_{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        f"# Cost of one UBP update vs one SGD update ({device.type})", "",
        f"Device: {record['device']} ({record['cpu_threads']} CPU threads), torch {torch.__version__}, "
        f"fp32, autoencoder, batch {args.batch}, {record['started']}. {args.repeats} interleaved rounds "
        f"(one step of each UBP variant and {args.sgd_per_round} SGD steps per round); ratios of medians "
        "(and of minima). Thesis: about 10x (Titan Black, Theano). "
        f"1-minute load average at start / end: {record['load_average_1m'][0]:.2f} / "
        f"{record['load_average_1m'][1]:.2f}. {args.note}", "",
        "| method | step ms, median (min) | x SGD, median (min) | multiply-adds x SGD | measured / counted "
        "| curvature ms | x SGD | rest ms | x SGD |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {1e3 * r['step_s_median']:.1f} ({1e3 * r['step_s_min']:.1f}) | "
                     f"{r['ratio_to_sgd']:.2f} ({r['min_ratio_to_sgd']:.2f}) | "
                     f"{r['multiply_add_ratio_to_sgd']:.2f} | {r['measured_over_counted']:.2f} | "
                     f"{1e3 * r['curvature_s_median']:.1f} | {r['curvature_ratio_to_sgd']:.2f} | "
                     f"{1e3 * r['rest_s_median']:.1f} | {r['rest_ratio_to_sgd']:.2f} |")
    lines += ["", "Curvature part: the products J^T (d2L/df2) J v (gn) or (d2L/da2) v (exact) of "
              "Algorithm 2, line 8, by Jacobian-vector products through the layers above each layer "
              "(sokit.optim.ubp.Curvature). Carrying Algorithm 2's per-example Jacobians J_i instead "
              f"would count {record['jacobians_multiply_add_ratio_to_sgd']:.0f}x SGD's multiply-adds."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
