"""Model-steps per second: a population of P autoencoders trained as one batched model
vs the same P models trained one at a time (eager PyTorch SGD), same device, same run.

A model-step is one SGD update of one autoencoder (784-1000-500-250-30-250-500-1000-784,
batch 200 by default, fp32) on MNIST minibatches already on the device. The population
path is :meth:`sokit.population.Population.step` (captured as a CUDA graph on a GPU,
eager on a CPU); the one-at-a-time path is ``nn.Sequential`` + ``torch.optim.SGD``.
Both are timed after warm-up steps; the two measurements alternate ``--repeats`` times
and the fastest of each is kept (on a shared machine the load drifts; the load average
is recorded). Prints a table naming the hardware and writes
``benchmarks/population_throughput_<device>.json``.

    python benchmarks/population_throughput.py [--population P] [--steps N] [--batch B] [--threads T]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch
from common import hardware, result_file

from sokit import data, experiments, losses, models
from sokit.device import default_device, device_name
from sokit.graphs import WARMUP, CapturedStep
from sokit.population import Population, architecture


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def one_at_a_time(sampler: data.Sampler, P: int, steps: int, device: torch.device) -> float:
    """Seconds per model-step training P models one after the other, ``steps`` each."""
    total = 0.0
    for i in range(P):
        torch.manual_seed(i)
        model = models.autoencoder(prescale=15.0).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for k in range(steps + 2):  # two warm-up steps per model, not timed
            if k == 2:
                _sync(device)
                t0 = time.perf_counter()
            x, _ = next(sampler)
            opt.zero_grad()
            loss = losses.mse_sum(model(x), x)
            loss.backward()
            opt.step()
        _sync(device)
        total += time.perf_counter() - t0
    return total / (P * steps)


def population(sampler: data.Sampler, P: int, steps: int, device: torch.device, batch: int) -> tuple[float, bool]:
    """Seconds per model-step training P models as one population, and whether a CUDA graph ran."""
    sizes, acts = architecture(models.autoencoder())
    pop = Population.init(sizes, acts, lr=[0.01] * P, prescale=[15.0] * P, seeds=range(P), device=device)
    graph = device.type == "cuda"
    static_x = torch.zeros(batch, 784, device=device)
    step = CapturedStep(lambda: pop.step(static_x, static_x), device) if graph else None
    untimed = WARMUP + 1 if graph else 2  # eager warm-up and the capture are not timed
    for k in range(steps + untimed):
        if k == untimed:
            _sync(device)
            t0 = time.perf_counter()
        x, _ = next(sampler)
        if graph:
            static_x.copy_(x)
            step()
        else:
            pop.step(x, x)
    _sync(device)
    assert not pop.diverged.any()
    return (time.perf_counter() - t0) / (P * steps), graph


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 100 on CUDA, 3 on CPU)")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--repeats", type=int, default=2, help="alternating measurements; the fastest is kept")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    steps = args.steps or (100 if device.type == "cuda" else 3)
    P = args.population
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    ds = data.load("mnist", device=device)
    sampler = data.Sampler(ds.train_x, ds.train_y, args.batch, seed=0)
    load_before = os.getloadavg()
    pops, ones = [], []
    for _ in range(args.repeats):
        s, graph = population(sampler, P, steps, device, args.batch)
        pops.append(s)
        ones.append(one_at_a_time(sampler, P, steps, device))
    s_pop, s_one = min(pops), min(ones)
    load_after = os.getloadavg()
    name = device_name(device)
    rows = {"one at a time (eager)": s_one, f"population of {P} ({'CUDA graph' if graph else 'eager'})": s_pop}
    print(f"SGD on the autoencoder, batch {args.batch}, fp32; {P} models, {steps} timed steps each")
    print(f"{hardware(device)} (before: {load_before[0]:.1f}); fastest of {args.repeats}")
    print(f"{'mode':<34}{'ms/model-step':>14}{'model-steps/s':>15}{'speedup':>9}")
    for mode, s in rows.items():
        print(f"{mode:<34}{1e3 * s:>14.3f}{1 / s:>15.1f}{s_one / s:>8.2f}x")
    out = result_file("population_throughput", device)
    out.write_text(json.dumps({
        "benchmark": "population vs one-at-a-time SGD, autoencoder, fp32", "population": P, "batch": args.batch,
        "timed_steps": steps, "repeats": args.repeats,
        "all_ms_per_model_step": {"population": [1e3 * s for s in pops], "one at a time": [1e3 * s for s in ones]},
        "load_average_1min": [load_before[0], load_after[0]],
        "ms_per_model_step": {m: 1e3 * s for m, s in rows.items()},
        "model_steps_per_s": {m: 1 / s for m, s in rows.items()}, "speedup": s_one / s_pop, "cuda_graph": graph,
        "device": name, "device_type": device.type, "cpu_threads": torch.get_num_threads(),
        "torch_version": torch.__version__, "commit": experiments.git_commit(), "started": started,
    }, indent=1) + "\n")
    print(f"wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")


if __name__ == "__main__":
    main()
