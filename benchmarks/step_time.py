"""Milliseconds per SGD update of the thesis autoencoder (batch 200), eager vs CUDA graph.

Each timing is a real :func:`sokit.train.train` run on MNIST (minibatch copy, forward,
backward, update and loss bookkeeping; evaluation excluded), after a warm-up run.
Prints a table naming the hardware and writes ``benchmarks/step_time_<device>.json``.

    python benchmarks/step_time.py [--updates N] [--threads T]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import torch
from common import hardware, result_file

from sokit import data, experiments, models, train
from sokit.device import default_device


def ms_per_step(dataset: data.Dataset, updates: int, graph: bool, device: torch.device) -> float:
    torch.manual_seed(0)
    model = models.autoencoder(prescale=15.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = train.train(model, optimizer, dataset, "mse", updates, 200, eval_every=updates,
                         device=device, progress=False, eval_subset=200, graph=graph)
    assert result["cuda_graph"] == graph
    return 1000 * result["wall_clock_s"] / updates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--updates", type=int, default=None, help="default: 3000 on CUDA, 50 on CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    updates = args.updates or (3000 if device.type == "cuda" else 50)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    dataset = data.load("mnist", device=device)
    modes = ["eager"] + (["cuda graph"] if device.type == "cuda" else [])
    ms_per_step(dataset, 10, False, device)  # warm-up (allocator, cuBLAS handles, caches)
    timings = {mode: ms_per_step(dataset, updates, mode == "cuda graph", device) for mode in modes}
    print("SGD step of the autoencoder 784-1000-500-250-30-250-500-1000-784, batch 200, fp32")
    print(f"{hardware(device)} (other processes share this machine when it is above 0); "
          f"{updates} updates per timing")
    print(f"{'mode':<12}{'ms/step':>10}{'vs eager':>10}")
    for mode, ms in timings.items():
        print(f"{mode:<12}{ms:>10.3f}{timings['eager'] / ms:>9.2f}x")
    out = result_file("step_time", device)
    out.write_text(json.dumps({
        "benchmark": "sgd step, autoencoder, batch 200, fp32", "updates": updates,
        "ms_per_step": timings, "speedup": {m: timings["eager"] / t for m, t in timings.items()},
        "load_average_1min": os.getloadavg()[0],
        "provenance": experiments.provenance(device, started, time.perf_counter() - t0),
    }, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
