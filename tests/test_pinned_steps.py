"""Pinned float64 trajectories of every optimizer (a guard for refactors).

Each case of :data:`CASES` builds a small float64 model and an optimizer, runs
:data:`STEPS` updates on fixed random minibatches with the step sequence of
:func:`sokit.train.train`, and compares the flattened final parameters with the
values stored in ``tests/data/pinned_steps.json`` (max abs difference <= 1e-12).

Regenerate the data (only when a numerical change is intended) with::

    python tests/test_pinned_steps.py --write

To adapt this file to an API change, edit only :func:`curvature_backward` (the
call the train loop makes between the forward and the backward pass) and the
factories of :data:`CASES`.

The default dtype is never changed: models are converted with ``.double()`` and the
data is created in float64.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sokit import losses
from sokit.models import mlp
from sokit.optim import (
    ACP,
    KFAC,
    NNN,
    UBP,
    ACPPreconditioner,
    CenteredGD,
    CenteredPreconditioner,
    KFACPreconditioner,
)

DATA = Path(__file__).parent / "data" / "pinned_steps.json"
TOL = 1e-12
STEPS = 5  # with amortization 2 the statistics are refreshed at updates 0, 2 and 4
BATCH = 8
AMORT = 2
DTYPE = torch.float64
DATA_SEED = 1234
CASE_SEED = 0

# Models: an autoencoder 6-5-4-6 (tanh hidden, sigmoid output, "mse") and a
# classifier 6-5-3 (tanh hidden, logits, "cross_entropy").
AE_SIZES = (6, 5, 4, 6)
CLF_SIZES = (6, 5, 4, 3)


def _float64(model: nn.Sequential, seed: int) -> nn.Sequential:
    """``model`` in float64 with weights ~ N(0, 1/n_in), biases ~ N(0, 0.01), drawn in
    float64 from a private generator (independent of the default dtype and global seed)."""
    model = model.to(DTYPE)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                n_out, n_in = layer.weight.shape
                layer.weight.copy_(torch.randn(n_out, n_in, generator=gen, dtype=DTYPE) / n_in ** 0.5)
                layer.bias.copy_(0.1 * torch.randn(n_out, generator=gen, dtype=DTYPE))
    return model


def autoencoder() -> nn.Sequential:
    return _float64(mlp(AE_SIZES, "tanh", "sigmoid"), seed=11)


def classifier() -> nn.Sequential:
    return _float64(mlp(CLF_SIZES, "tanh", "linear"), seed=12)


MODELS: dict[str, Callable[[], nn.Sequential]] = {"mse": autoencoder, "cross_entropy": classifier}


def batches(loss_name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS fixed minibatches (x, target) from a private generator."""
    gen = torch.Generator().manual_seed(DATA_SEED)
    out = []
    for _ in range(STEPS):
        if loss_name == "mse":
            x = torch.rand(BATCH, AE_SIZES[0], generator=gen, dtype=DTYPE)
            out.append((x, x))
        else:
            x = torch.randn(BATCH, CLF_SIZES[0], generator=gen, dtype=DTYPE)
            y = torch.randint(0, CLF_SIZES[-1], (BATCH,), generator=gen)
            out.append((x, y))
    return out


def curvature_backward(opt: Any, output: torch.Tensor, loss_name: str) -> None:
    """The train loop's extra call between forward and backward (ONE place to adapt)."""
    if hasattr(opt, "curvature_backward"):
        opt.curvature_backward(output)


class PreconditionerThenSGD:
    """A preconditioner followed by ``torch.optim.SGD`` with momentum, optimizer-shaped."""

    def __init__(self, pre: Any, model: nn.Module, lr: float = 0.05, momentum: float = 0.9) -> None:
        self.pre = pre
        self.sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        if hasattr(pre, "curvature_backward"):
            self.curvature_backward = pre.curvature_backward

    def zero_grad(self) -> None:
        self.sgd.zero_grad()

    def step(self) -> None:
        self.pre.precondition()
        self.sgd.step()


# name -> (loss name, factory(model) -> optimizer). The factory receives the float64
# model built (after seeding) for that loss.
Factory = Callable[[nn.Module], Any]
CASES: dict[str, tuple[str, Factory]] = {
    # plain and centered gradient descent
    "sgd_mse": ("mse", lambda m: torch.optim.SGD(m.parameters(), lr=0.1)),
    "sgd_ce": ("cross_entropy", lambda m: torch.optim.SGD(m.parameters(), lr=0.1)),
    "centered_mse": ("mse", lambda m: CenteredGD(m, lr=0.1)),
    "centered_ce": ("cross_entropy", lambda m: CenteredGD(m, lr=0.1)),
    # ACP
    "acp_alpha0.5_mse": ("mse", lambda m: ACP(m, lr=0.05, eps=1e-2, alpha=0.5, amortization=AMORT)),
    "acp_alpha0.5_ce": ("cross_entropy",
                        lambda m: ACP(m, lr=0.05, eps=1e-2, alpha=0.5, amortization=AMORT)),
    "acp_alpha0.5_nobiascorr_mse": ("mse", lambda m: ACP(m, lr=0.05, eps=1e-2, alpha=0.5,
                                                         amortization=AMORT,
                                                         bias_correction=False)),
    "acp_heuristic_mse": ("mse", lambda m: ACP(m, lr=0.05, eps=1e-2, alpha="heuristic",
                                               amortization=AMORT)),
    "acp_heuristic_ce": ("cross_entropy", lambda m: ACP(m, lr=0.05, eps=1e-2, alpha="heuristic",
                                                        amortization=AMORT)),
    "acp_fused_alpha0.5_mse": ("mse", lambda m: ACP(m, lr=0.05, eps=1e-2, alpha=0.5,
                                                    amortization=AMORT, fused=True)),
    "acp_fused_heuristic_ce": ("cross_entropy", lambda m: ACP(m, lr=0.05, eps=1e-2,
                                                             alpha="heuristic",
                                                             amortization=AMORT, fused=True)),
    # KFAC: curvature x loss x fused
    **{
        f"kfac_{curv}_{short}{'_fused' if fused else ''}": (
            loss_name,
            (lambda curv, loss_name, fused: lambda m: KFAC(
                m, lr=0.05, loss=loss_name, curvature=curv, damping=1e-2,
                amortization=AMORT, seed=3, fused=fused))(curv, loss_name, fused),
        )
        for curv in ("fisher", "gauss_newton")
        for loss_name, short in (("mse", "mse"), ("cross_entropy", "ce"))
        for fused in (False, True)
    },
    "kfac_gauss_newton_mse_exact_probes": ("mse", lambda m: KFAC(
        m, lr=0.05, loss="mse", curvature="gauss_newton", gn_probes="exact", damping=1e-2,
        amortization=AMORT)),
    "kfac_fisher_ce_plain_damping": ("cross_entropy", lambda m: KFAC(
        m, lr=0.05, loss="cross_entropy", curvature="fisher", damping=1e-2,
        damping_split="plain", amortization=AMORT)),
    # Natural Neural Networks (PRONG)
    "nnn_mse": ("mse", lambda m: NNN(m, lr=0.1, amortization=AMORT, eps=1e-2)),
    "nnn_ce": ("cross_entropy", lambda m: NNN(m, lr=0.1, amortization=AMORT, eps=1e-2)),
    # updated backpropagation
    "ubp_gn_mse": ("mse", lambda m: UBP(m, lr=0.1, loss="mse", hessian="gn")),
    "ubp_exact_mse": ("mse", lambda m: UBP(m, lr=0.1, loss="mse", hessian="exact")),
    "ubp_gn_ce": ("cross_entropy", lambda m: UBP(m, lr=0.1, loss="cross_entropy", hessian="gn")),
    "ubp_exact_ce": ("cross_entropy",
                     lambda m: UBP(m, lr=0.1, loss="cross_entropy", hessian="exact")),
    # preconditioners followed by torch.optim.SGD with momentum
    "pre_centered_sgdm_mse": ("mse", lambda m: PreconditionerThenSGD(CenteredPreconditioner(m), m)),
    "pre_acp_sgdm_mse": ("mse", lambda m: PreconditionerThenSGD(
        ACPPreconditioner(m, eps=1e-2, alpha=0.5, amortization=AMORT), m)),
    "pre_acp_heuristic_fused_sgdm_ce": ("cross_entropy", lambda m: PreconditionerThenSGD(
        ACPPreconditioner(m, eps=1e-2, alpha="heuristic", amortization=AMORT, fused=True), m)),
    "pre_kfac_fisher_sgdm_mse": ("mse", lambda m: PreconditionerThenSGD(
        KFACPreconditioner(m, loss="mse", curvature="fisher", damping=1e-2,
                           amortization=AMORT, seed=5), m)),
    "pre_kfac_gauss_newton_sgdm_ce": ("cross_entropy", lambda m: PreconditionerThenSGD(
        KFACPreconditioner(m, loss="cross_entropy", curvature="gauss_newton", damping=1e-2,
                           amortization=AMORT), m)),
}


def run_case(name: str) -> list[float]:
    """Run one case from a fixed seed; return the flattened final parameters."""
    loss_name, factory = CASES[name]
    loss_fn = losses.get(loss_name)
    data = batches(loss_name)
    torch.manual_seed(CASE_SEED)  # model init, and anything an optimizer draws globally
    model = MODELS[loss_name]()
    opt = factory(model)
    model.train()
    for x, target in data:
        out = model(x)
        value = loss_fn(out, target)
        curvature_backward(opt, out, loss_name)
        opt.zero_grad()
        value.backward()
        opt.step()
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert flat.dtype == DTYPE
    return flat.tolist()


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True,
                          text=True, check=True).stdout.strip()


def write() -> None:
    cases = {name: run_case(name) for name in CASES}
    payload = {
        "torch": torch.__version__,
        "commit": _git("rev-parse", "HEAD"),
        "sokit_dirty": bool(_git("status", "--porcelain", "--", str(Path(__file__).parent.parent / "sokit"))),
        "steps": STEPS,
        "batch": BATCH,
        "amortization": AMORT,
        "cases": cases,
    }
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {DATA}")


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    if not DATA.exists():
        pytest.fail(f"{DATA} is missing; create it with `python tests/test_pinned_steps.py --write`")
    return json.loads(DATA.read_text())


def test_every_case_is_stored(stored):
    assert sorted(stored["cases"]) == sorted(CASES), (
        f"cases in {DATA.name} ({sorted(set(stored['cases']) ^ set(CASES))} differ) do not "
        f"match CASES; regenerate with --write only if that is intended")


@pytest.mark.parametrize("name", list(CASES))
def test_pinned_steps(name, stored):
    if name not in stored["cases"]:
        pytest.fail(f"case {name!r} has no stored values in {DATA.name}")
    want = torch.tensor(stored["cases"][name], dtype=DTYPE)
    got = torch.tensor(run_case(name), dtype=DTYPE)
    assert got.shape == want.shape, (
        f"case {name!r}: {got.numel()} parameters, stored {want.numel()}")
    assert torch.isfinite(got).all(), f"case {name!r}: non-finite parameters"
    diff = (got - want).abs().max().item()
    assert diff <= TOL, (
        f"case {name!r}: final parameters differ from the pinned ones by {diff:.3e} "
        f"(> {TOL:g}; pinned at commit {stored['commit'][:12]} with torch {stored['torch']})")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python {Path(__file__).name} --write   (regenerates {DATA})")
    write()
