"""Cost of one updated-backpropagation update relative to one SGD update.

The MNIST autoencoder (784-1000-500-250-30-250-500-1000-784), minibatch 200, fp32,
the same step as sokit.train.train (forward, loss, zero_grad, backward, step). For
each UBP variant the time inside the curvature part of the sweep (carrying the
per-example Jacobians for "gn": Algorithm 2 lines 5, 8 (J^T J product) and 9; the
Hessian-vector products for "exact") is measured separately; the rest is the
forward pass, the loop's backward and the plain sweep (lines 4, 6, 7, 8).

    python benchmarks/ubp_cost.py                 # CPU, writes benchmarks/ubp_cost_cpu.{json,md}
    python benchmarks/ubp_cost.py --device cuda   # GPU, writes benchmarks/ubp_cost_cuda.{json,md}

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
CURVATURE = {"gn": ("_scale_columns", "_gram_apply", "_times_weight"), "exact": ("preactivation_hvp",)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wraps module-level functions of sokit.optim.ubp and sums the time spent in them."""

    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.total, self.device, self.saved = 0.0, device, {}
        for name in names:
            self.saved[name] = getattr(ubp, name)
            setattr(ubp, name, self.wrap(self.saved[name]))

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
            setattr(ubp, name, fn)


def one_step(model, opt, x, device: torch.device, curvature: tuple[str, ...]) -> tuple[float, float]:
    """Seconds of one training step (as in sokit.train) and of its curvature part."""
    timer = Timer(curvature, device)
    sync(device)
    t0 = time.perf_counter()
    out = model(x)
    value = losses.mse_sum(out, x)
    opt.zero_grad()
    value.backward()
    opt.step()
    sync(device)
    elapsed = time.perf_counter() - t0
    timer.restore()
    return elapsed, timer.total


def time_methods(makers: dict[str, tuple[Callable, tuple[str, ...]]], device: torch.device, batch: int,
                 repeats: int, sgd_per_round: int, warmup: int) -> dict:
    """Interleaved rounds (one step of every method per round, SGD ``sgd_per_round`` times),
    so that a change in the machine's load hits every method alike; medians per method."""
    x = torch.rand(batch, 784, device=device)
    runs = {}
    for name, (make, curvature) in makers.items():
        torch.manual_seed(0)
        model = models.autoencoder(prescale=1.0).to(device)
        runs[name] = (model, make(model), curvature, [], [])
    for i in range(warmup + repeats):
        for name, (model, opt, curvature, steps, curvs) in runs.items():
            for _ in range(sgd_per_round if name == "sgd" else 1):
                elapsed, curv = one_step(model, opt, x, device, curvature)
                if i >= warmup:
                    steps.append(elapsed)
                    curvs.append(curv)
    rows = {}
    for name, (_, _, _, steps, curvs) in runs.items():
        med, curv = statistics.median(steps), statistics.median(curvs)
        rows[name] = {"step_s_median": med, "step_s_all": steps, "curvature_s_median": curv,
                      "rest_s_median": med - curv}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sgd-per-round", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", default="gn,gn_uncompressed,exact")
    parser.add_argument("--out", default=None, help="output stem (default benchmarks/ubp_cost_<device type>)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    lr = 1e-3
    variants = {
        "gn": dict(hessian="gn", compress=True),
        "gn_uncompressed": dict(hessian="gn", compress=False),
        "exact": dict(hessian="exact"),
    }
    makers = {"sgd": (lambda m: torch.optim.SGD(m.parameters(), lr=lr), ())}
    for name in args.variants.split(","):
        kw = variants[name]
        makers[f"ubp_{name}"] = (lambda m, kw=kw: ubp.UBP(m, lr=lr, loss="mse", **kw), CURVATURE[kw["hessian"]])
    load_start = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = time_methods(makers, device, args.batch, args.repeats, args.sgd_per_round, args.warmup)
    sgd = rows["sgd"]["step_s_median"]
    for r in rows.values():
        r["ratio_to_sgd"] = r["step_s_median"] / sgd
        r["curvature_ratio_to_sgd"] = r["curvature_s_median"] / sgd
        r["rest_ratio_to_sgd"] = r["rest_s_median"] / sgd
    record = {
        "benchmark": "ubp_cost", "model": "autoencoder 784-1000-500-250-30-250-500-1000-784",
        "batch": args.batch, "dtype": "float32", "device": device_name(device), "device_type": device.type,
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "sokit": sokit.__version__,
        "python": platform.python_version(), "thesis_ratio": "about 10x (Titan Black, Theano)",
        "started": started, "rows": rows,
        "load_average_1m": [load_start, os.getloadavg()[0]],
    }
    stem = Path(args.out) if args.out else HERE / f"ubp_cost_{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        f"# Cost of one UBP update vs one SGD update ({device.type})", "",
        f"Device: {record['device']} ({record['cpu_threads']} CPU threads), torch {torch.__version__}, "
        f"fp32, autoencoder, batch {args.batch}, {record['started']}. Medians over {args.repeats} "
        f"interleaved rounds (one step of each UBP variant and {args.sgd_per_round} SGD steps per round). "
        "Thesis: about 10x (Titan Black, Theano). "
        f"1-minute load average at start / end: {record['load_average_1m'][0]:.1f} / "
        f"{record['load_average_1m'][1]:.1f} (other jobs shared the machine when it exceeds the core count).", "",
        "| method | step (ms) | x SGD | curvature part (ms) | x SGD | rest (ms) | x SGD |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {1e3 * r['step_s_median']:.1f} | {r['ratio_to_sgd']:.1f} | "
                     f"{1e3 * r['curvature_s_median']:.1f} | {r['curvature_ratio_to_sgd']:.1f} | "
                     f"{1e3 * r['rest_s_median']:.1f} | {r['rest_ratio_to_sgd']:.1f} |")
    lines += ["", "Curvature part: carrying the per-example Jacobians J_i and applying J_i^T J_i "
              "(gn; Algorithm 2 lines 5, 8, 9) or the Hessian-vector products (exact). "
              "gn compresses J_i to its R factor below narrow layers; gn_uncompressed does not."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
