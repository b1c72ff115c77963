"""Milliseconds per training step of each chapter-6 method, against SGD, the matmul floor and ASDL's KFAC.

The MNIST autoencoder (784-1000-500-250-30-250-500-1000-784), minibatches of 200 real
MNIST images (a different one every step, drawn as ``sokit.train`` draws them),
amortization N = 100 (thesis section 6.5.2). Every contender runs in ONE interleaved
run: ``--rounds`` R rounds, each of which runs every contender once, in a freshly
shuffled order, as a block of ``k`` steps (``--refresh-every``). A contender that
refreshes (statistics and inverses) does so on the first step of each block, so its
refresh steps are interleaved with everyone's plain steps too; its cost at N = 100 is

    amortized = plain + (refresh - plain) / 100

from the medians (and, apart, from the minima) of its plain and refresh steps. A burst
of contention then lands on a few steps of every contender, not on one contender's block.

Contenders: sokit's ``train()`` step (``sokit.train``'s own step function: minibatch copy,
forward, curvature pass, backward, update, loss bookkeeping) for SGD and every chapter-6
method; a bare PyTorch SGD step (a plain ``nn.Sequential``, ``torch.optim.SGD``, an indexed
minibatch); ASDL's K-FAC (``pip install asdfghjkl``, imported as ``asdl``; its reason is
recorded when it does not import); and the matmul floor: the matrix products of one SGD
step (forward, weight gradient, and input gradient below the first layer: 3.09 GFLOP at
batch 200) run as bare ``torch.mm`` at those shapes, which also gives this machine's fp32
matmul rate. On CUDA, ACP, KFAC, NNN and centered GD are built with ``capturable=True`` and
each step that ``sokit.train.can_capture`` accepts (and the floor) is a replayed CUDA
graph, refresh steps eager, as ``sokit.train`` runs it; ``--eager`` turns that off.
Two ablations of heuristic-alpha ACP, timed in the same rounds, split its cost over SGD
into the fused layers' machinery, ACP's own vector work, and applying ``C^-1``
(:data:`ABLATIONS`; they are not methods and have no target).

    nice python benchmarks/step_overhead.py [--rounds R] [--note TEXT]   # the measured run
    python benchmarks/step_overhead.py --quick --out /tmp/x                # a smoke run, seconds

Writes ``step_overhead_<device>.json`` and ``.md`` (in ``benchmarks/`` or ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import machine, result_file
from torch import nn

from sokit import data, models
from sokit.experiments.fig6 import EPS, FIG6_1, FIG6_2, HPARAMS, methods_for
from sokit.experiments.methods import build_model, for_device
from sokit.experiments.provenance import now
from sokit.graphs import WARMUP as GRAPH_WARMUP
from sokit.graphs import CapturedStep
from sokit.optim import build as build_optimizer
from sokit.optim.factors import FactorInverse
from sokit.train import _make_step, _Run, can_capture

BATCH, AMORTIZATION = 200, 100
SGD, FLOOR, BARE, ASDL = "SGD", "matmul floor", "PyTorch SGD (bare)", "ASDL KFAC"

#: label -> (bound on x SGD, whether it must be >= 2x faster than ASDL's KFAC)
TARGETS: dict[str, tuple[float, bool]] = {
    "ACP, fixed alpha": (1.3, True), "ACP, heuristic alpha": (1.3, True),
    "KFAC (natural gradient)": (1.7, True), "KFAC (Gauss-Newton)": (1.7, True),
    "Natural Neural Networks": (1.5, True),
}
FLOOR_TARGET = 1.25  # sokit's SGD step within this factor of the matmul floor


@dataclass
class Contender:
    """One thing timed: ``step()`` runs one training step (or the floor's matmuls)."""

    label: str
    step: Callable[[], Any]
    refreshes: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    plain: list[float] = field(default_factory=list)
    refresh: list[float] = field(default_factory=list)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_shapes() -> list[tuple[int, int]]:
    """``(n_in, n_out)`` of each linear layer of the autoencoder."""
    return [(m.in_features, m.out_features) for m in models.autoencoder() if isinstance(m, nn.Linear)]


def floor_flops(batch: int = BATCH) -> int:
    """FLOPs of one SGD step's matrix products: per layer the forward ``h W^T`` and the weight
    gradient ``g^T h``, and the input gradient ``g W`` for every layer but the first."""
    return sum(2 * batch * n_in * n_out * (3 if i else 2) for i, (n_in, n_out) in enumerate(layer_shapes()))


def floor_step(device: torch.device) -> Callable[[], None]:
    """The matrix products counted by :func:`floor_flops`, as bare ``torch.mm`` into fixed outputs."""
    g = torch.Generator(device="cpu").manual_seed(0)
    products = []
    for i, (n_in, n_out) in enumerate(layer_shapes()):
        h, w, d = (torch.rand(*s, generator=g).to(device) for s in ((BATCH, n_in), (n_out, n_in), (BATCH, n_out)))
        products.append((h, w.t(), torch.empty(BATCH, n_out, device=device)))
        products.append((d.t(), h, torch.empty(n_out, n_in, device=device)))
        if i:
            products.append((d, w, torch.empty(BATCH, n_in, device=device)))

    def step() -> None:
        for a, b, out in products:
            torch.mm(a, b, out=out)

    return step


class Batches:
    """Real MNIST minibatches into a fixed buffer ``x``, drawn as ``sokit.train`` draws them."""

    def __init__(self, dataset: data.Dataset, seed: int) -> None:
        self.train_x = dataset.train_x
        self.sampler = data.Sampler(dataset.train_x, dataset.train_y, BATCH, seed)
        self.x = torch.zeros(BATCH, dataset.train_x.shape[1], device=dataset.train_x.device)

    def next(self) -> None:
        torch.index_select(self.train_x, 0, self.sampler.next_indices(), out=self.x)


def methods() -> dict[str, dict[str, Any]]:
    """The fig6_1 and fig6_2 methods with the experiments' learning rates; KFAC for the
    natural gradient (Fisher, sampled targets) and for Gauss-Newton (Rademacher probes)."""
    specs = methods_for("autoencoder", {**FIG6_2, **FIG6_1})
    specs["KFAC (natural gradient)"] = specs.pop("KFAC")
    gn = copy.deepcopy(specs["KFAC (natural gradient)"])
    gn["kwargs"]["curvature"] = "gauss_newton"
    return {**specs, "KFAC (Gauss-Newton)": gn}


#: Ablations of heuristic-alpha ACP (not methods: they take other steps), timed in the same run
#: so that its cost splits into the fused layers' machinery, ACP's own vector work, and the
#: inverse: each patches the preconditioner of an otherwise identical ACP contender.
ACP_PARTS = "ACP, heuristic alpha"
ABLATIONS = {
    "ablation: ACP's fused layers, plain gradient": "plain_gradient",
    "ablation: ACP with C^-1 = I": "no_inverse",
}


class _NoInverse:
    """``C^-1`` replaced by the identity, with the real inverse's cost (so the same association)."""

    def __init__(self, inverse: Any) -> None:
        self.cost_per_row = inverse.cost_per_row

    @staticmethod
    def right_centered(h: torch.Tensor, mean: torch.Tensor, scale: Any = 1.0) -> torch.Tensor:
        return FactorInverse._centered_times(h, mean, scale)  # ACP's own one-pass centering

    @staticmethod
    def right(X: torch.Tensor, scratch: bool = False, scale: Any = None) -> torch.Tensor:
        return X if scale is None else X * scale


def ablate(part: str) -> Callable[[Any], None]:
    """The patch of one ablation (see :data:`ABLATIONS`)."""
    def plain_gradient(pre: Any) -> None:
        def fused_direction(i: int, h: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pre.layers[i].g = g
            pre._fused_done.add(i)
            return g.T @ h, g.sum(0)

        pre.fused_direction = fused_direction

    def no_inverse(pre: Any) -> None:
        def keep(table: dict, i: int, new: Any) -> None:
            table[i] = _NoInverse(new)

        pre.keep = keep

    return {"plain_gradient": plain_gradient, "no_inverse": no_inverse}[part]


def sokit_contender(label: str, spec: dict[str, Any], dataset: data.Dataset, device: torch.device,
                    every: int, steps: int, graph: bool,
                    patch: Callable[[Any], None] | None = None) -> Contender:
    """sokit's training step of one method, on its own stream of real minibatches; ``patch``
    (an ablation) is applied to the optimizer's preconditioner before the first step."""
    spec = copy.deepcopy(spec)
    refreshes = "amortization" in spec["kwargs"]
    if refreshes:
        spec["kwargs"]["amortization"] = every
    if graph:
        spec = for_device(spec, device)
    torch.manual_seed(0)
    model = build_model({"model": "autoencoder"}, spec).to(device)
    optimizer = build_optimizer(spec["optimizer"], model, **spec["kwargs"])
    if patch is not None:
        patch(optimizer.preconditioner)
    batches = Batches(dataset, seed=0)
    train_step = _make_step(model, optimizer, "mse", batches.x, batches.x, _Run(steps, device, torch.float32))
    captured = graph and can_capture(optimizer, device)
    inner = CapturedStep(train_step, device, prepare=optimizer.zero_grad,
                         eager=getattr(optimizer, "refresh_due", None),
                         replayed=getattr(optimizer, "count_replayed_update", None)) if captured else train_step

    def step() -> None:
        batches.next()
        inner()

    pre = getattr(optimizer, "preconditioner", None)
    info = {"mode": "cuda_graph" if captured else "eager", "optimizer": type(optimizer).__name__,
            "fused": getattr(pre, "fused", None)}
    return Contender(label, step, refreshes, info)


def bare_contender(dataset: data.Dataset, device: torch.device, graph: bool) -> Contender:
    """A plain ``nn.Sequential`` autoencoder, ``torch.optim.SGD`` and an indexed minibatch."""
    layers: list[nn.Module] = []
    shapes = layer_shapes()
    for i, (n_in, n_out) in enumerate(shapes):
        layers.append(nn.Linear(n_in, n_out))
        if i != len(shapes) // 2 - 1:  # the 30-unit code is linear
            layers.append(nn.Sigmoid())
    torch.manual_seed(0)
    model = nn.Sequential(*layers).to(device)
    sgd = torch.optim.SGD(model.parameters(), lr=HPARAMS["autoencoder"][SGD][0])
    batches = Batches(dataset, seed=0)

    def train_step() -> None:
        loss = (model(batches.x) - batches.x).pow(2).sum(1).mean()
        sgd.zero_grad()
        loss.backward()
        sgd.step()

    captured = graph and device.type == "cuda"
    inner = CapturedStep(train_step, device, prepare=sgd.zero_grad) if captured else train_step

    def step() -> None:
        batches.next()
        inner()

    return Contender(BARE, step, info={"mode": "cuda_graph" if captured else "eager"})


def asdl_contender(dataset: data.Dataset, device: torch.device, every: int) -> Contender:
    """ASDL's K-FAC (Fisher with one sampled target, loss_type "mse") + torch SGD, with KFAC's
    learning rate and prescale; ``ImportError`` when ASDL is not installed."""
    import asdl

    lr, prescale = HPARAMS["autoencoder"]["KFAC"]
    torch.manual_seed(0)
    model = models.autoencoder(prescale=prescale).to(device)

    def mse(output, target, reduction="mean"):
        per_example = (output - target).pow(2).sum(1)
        return per_example.mean() if reduction == "mean" else per_example.sum()

    config = asdl.PreconditioningConfig(data_size=BATCH, damping=EPS, preconditioner_upd_interval=every,
                                        curvature_upd_interval=every)
    maker = asdl.KfacGradientMaker(model, config, fisher_type="fisher_mc", loss_type="mse")
    sgd = torch.optim.SGD(model.parameters(), lr=lr)
    batches = Batches(dataset, seed=0)

    def step() -> None:
        batches.next()
        sgd.zero_grad()
        dummy = maker.setup_model_call(model, batches.x)
        maker.setup_loss_call(mse, dummy, batches.x)
        maker.forward_and_backward()
        sgd.step()

    return Contender(ASDL, step, refreshes=True, info={"mode": "eager", "asdl_version": _asdl_version()})


def _asdl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asdfghjkl")
    except PackageNotFoundError:
        return "unknown"


def contenders(dataset: data.Dataset, device: torch.device, every: int, steps: int, graph: bool,
               only: list[str] | None) -> tuple[list[Contender], dict[str, str]]:
    """Everything to time, and {label: why it could not be built}."""
    def wanted(label: str) -> bool:
        return not only or label in only

    out: list[Contender] = []
    errors: dict[str, str] = {}
    if wanted(FLOOR):
        floor = floor_step(device)
        captured = graph and device.type == "cuda"
        out.append(Contender(FLOOR, CapturedStep(floor, device) if captured else floor,
                             info={"mode": "cuda_graph" if captured else "eager", "flops": floor_flops()}))
    if wanted(BARE):
        out.append(bare_contender(dataset, device, graph))
    specs = methods()
    for label, spec in specs.items():
        if wanted(label):
            out.append(sokit_contender(label, spec, dataset, device, every, steps, graph))
    for label, part in ABLATIONS.items():
        if wanted(label):
            out.append(sokit_contender(label, specs[ACP_PARTS], dataset, device, every, steps, graph,
                                       patch=ablate(part)))
    if wanted(ASDL):
        try:
            out.append(asdl_contender(dataset, device, every))
        except ImportError as e:
            errors[ASDL] = f"ImportError: {e} (pip install asdfghjkl)"
    return out, errors


def warmup_steps(device: torch.device, every: int) -> int:
    """Whole blocks before timing: one on the CPU; on CUDA enough for a CUDA graph's warm-up and
    capture among the plain steps (refresh steps run eagerly, outside the graph)."""
    if device.type != "cuda":
        return every
    return every * -(-(GRAPH_WARMUP + 1) // max(every - 1, 1))


def interleaved(items: list[Contender], device: torch.device, rounds: int, every: int, seed: int) -> list[list[str]]:
    """Warm every contender up, then ``rounds`` rounds of one ``every``-step block each, in a
    shuffled order per round; returns the orders. The first step of a block is a refresh
    step for contenders that refresh (their step counts stay multiples of ``every``)."""
    for c in items:
        for _ in range(warmup_steps(device, every)):
            c.step()
    sync(device)
    rng = random.Random(seed)
    orders = []
    for _ in range(rounds):
        order = rng.sample(items, len(items))
        orders.append([c.label for c in order])
        for c in order:
            for j in range(every):
                sync(device)
                t0 = time.perf_counter()
                c.step()
                sync(device)
                ms = 1e3 * (time.perf_counter() - t0)
                (c.refresh if c.refreshes and j == 0 else c.plain).append(ms)
    return orders


def summary(c: Contender) -> dict[str, Any]:
    """Median and minimum of plain and refresh steps, and both amortized at N = 100."""
    out: dict[str, Any] = {**c.info, "plain_steps": len(c.plain), "refresh_steps": len(c.refresh)}
    for stat, f in (("median", statistics.median), ("min", min)):
        plain = f(c.plain)
        refresh = f(c.refresh) if c.refresh else None
        out[f"plain_{stat}_ms"] = plain
        out[f"refresh_{stat}_ms"] = refresh
        out[f"{stat}_ms"] = plain + ((refresh - plain) / AMORTIZATION if refresh is not None else 0.0)
    return out


def ratios(rows: dict[str, dict[str, Any]]) -> None:
    """Add x SGD, x floor and x ASDL KFAC (medians) to every row, and the targets' verdicts."""
    base = {name: rows[label]["median_ms"] for name, label in
            (("sgd", SGD), ("floor", FLOOR), ("asdl", ASDL)) if label in rows}
    for label, row in rows.items():
        for name, ms in base.items():
            row[f"x_{name}"] = row["median_ms"] / ms
        checks = []
        if label in TARGETS:
            bound, vs_asdl = TARGETS[label]
            if "x_sgd" in row:
                checks.append((f"<= {bound}x SGD", row["x_sgd"] <= bound))
            if vs_asdl and "x_asdl" in row:
                checks.append(("<= 0.5x ASDL KFAC", row["x_asdl"] <= 0.5))
        if label == SGD and "x_floor" in row:
            checks.append((f"<= {FLOOR_TARGET}x floor", row["x_floor"] <= FLOOR_TARGET))
        if checks:
            row["target"] = "; ".join(text for text, _ in checks)
            row["met"] = all(ok for _, ok in checks)


def parts_of_acp(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Heuristic-alpha ACP's cost over SGD split by the ablations (x SGD, medians, same run)."""
    labels = [SGD, *ABLATIONS, ACP_PARTS]
    if not all(label in rows for label in labels):
        return []
    sgd, plain, no_inverse, acp = (rows[label]["median_ms"] for label in labels)
    parts = [("fused layers' machinery (hooks, autograd.Function, bookkeeping)", plain - sgd),
             ("ACP's vector work (centering, bias correction, alpha) and refreshes amortized",
              no_inverse - plain),
             ("applying C^-1 (Woodbury / dense) between refreshes", acp - no_inverse)]
    lines = ["", f"Where {ACP_PARTS}'s time over SGD goes (x SGD, from the ablation rows):", "",
             "| part | x SGD |", "|---|---|"]
    lines += [f"| {name} | {ms / sgd:+.3f} |" for name, ms in parts]
    return lines + [f"| total | {acp / sgd - 1:+.3f} |"]


def markdown(record: dict[str, Any]) -> str:
    m, rows = record["machine"], record["methods"]
    load = record["load_average"]
    floor = rows.get(FLOOR)
    rate = (f" This machine's fp32 matmul rate at those shapes: {floor['flops'] / floor['min_ms'] / 1e6:.0f} "
            f"GFLOP/s (best) and {floor['flops'] / floor['median_ms'] / 1e6:.0f} GFLOP/s (median)." if floor else "")
    lines = [
        f"# Step cost per method, {m['device']}",
        "",
        f"MNIST autoencoder, real minibatches of {BATCH}; ms per step at amortization N = {AMORTIZATION}: "
        f"plain + (refresh - plain) / {AMORTIZATION}. One interleaved run of {record['rounds']} round(s); each "
        f"round runs every contender once, in a shuffled order, as a block of {record['refresh_every']} steps "
        f"whose first step is a refresh step for methods that refresh. Ratios are of medians. The matmul "
        f"floor is one SGD step's matrix products ({floor_flops() / 1e9:.2f} GFLOP) as bare torch.mm.{rate}",
        "",
        f"{m['cpu']} ({m['cpu_logical']} logical CPUs, {m['cpu_physical']} cores), {m['cpu_threads']} torch "
        f"threads, device {m['device']} ({m['device_type']}); torch {m['torch_version']}, commit "
        f"{m['commit'][:10]}{' (dirty tree)' if m['dirty'] else ''}, started {record['started']}, "
        f"{record['wall_clock_s']:.0f} s. Load average (1, 5, 15 min) before {load['before']}, after "
        f"{load['after']}.{(' ' + record['note']) if record['note'] else ''}",
        "",
        "| method | mode | ms/step (median) | ms/step (min) | x SGD | x floor | x ASDL KFAC | target | |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.2f}" if key in row else "-"

    for label, row in rows.items():
        met = "" if "met" not in row else ("met" if row["met"] else "**not met**")
        lines.append(f"| {label} | {row['mode']} | {row['median_ms']:.2f} | {row['min_ms']:.2f} | "
                     f"{ratio(row, 'x_sgd')} | {ratio(row, 'x_floor')} | {ratio(row, 'x_asdl')} | "
                     f"{row.get('target', '')} | {met} |")
    for label, why in record["not_run"].items():
        lines.append(f"| {label} | - | not run: {why} | | | | | | |")
    lines += parts_of_acp(rows)
    lines += ["", "Plain and refresh steps (medians, ms):", "",
              "| method | plain | refresh | steps timed (plain + refresh) |", "|---|---|---|---|"]
    for label, row in rows.items():
        refresh = "-" if row["refresh_median_ms"] is None else f"{row['refresh_median_ms']:.1f}"
        lines.append(f"| {label} | {row['plain_median_ms']:.2f} | {refresh} | "
                     f"{row['plain_steps']} + {row['refresh_steps']} |")
    return "\n".join(lines) + "\n"


def run(device: torch.device, rounds: int, every: int, only: list[str] | None, graph: bool,
        note: str, seed: int = 0) -> dict[str, Any]:
    started, t0 = now(), time.perf_counter()
    load_before = os.getloadavg()
    dataset = data.load("mnist", device=device)
    steps = warmup_steps(device, every) + rounds * every
    items, errors = contenders(dataset, device, every, steps, graph, only)
    orders = interleaved(items, device, rounds, every, seed)
    rows = {c.label: summary(c) for c in items}
    ratios(rows)
    return {"benchmark": "step_overhead", "started": started, "wall_clock_s": time.perf_counter() - t0,
            "rounds": rounds, "refresh_every": every, "batch_size": BATCH, "amortization": AMORTIZATION,
            "seed": seed, "note": note,
            "load_average": {"before": [round(v, 2) for v in load_before],
                             "after": [round(v, 2) for v in os.getloadavg()]},
            "machine": machine(device), "methods": rows, "not_run": errors, "orders": orders}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument("--refresh-every", type=int, default=4,
                        help="steps per block; the first of each block refreshes (default 4)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2-step blocks")
    parser.add_argument("--eager", action="store_true", help="on CUDA, no CUDA graphs")
    parser.add_argument("--only", nargs="*", help="labels to time (default: all)")
    parser.add_argument("--note", default="", help="a remark stored with the table (e.g. what else ran)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the .json and .md (default benchmarks/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.refresh_every = 1, 2
    device = torch.device(args.device)
    record = run(device, args.rounds, args.refresh_every, args.only, not args.eager, args.note)
    path = result_file("step_overhead", device)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / path.name
    path.write_text(json.dumps(record, indent=1) + "\n")
    table = markdown(record)
    path.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {path} and {path.with_suffix('.md').name}")


if __name__ == "__main__":
    main()
