"""On a CUDA GPU: ``sokit.train`` with each second-order method captured as a CUDA graph
(plain updates replayed, refreshes eager) follows the eager run.

Needs a GPU, so it runs in ``scripts/gpu_session.sh`` (first, before the timed work); here
on the CPU it is skipped. Its CPU stand-in is ``tests/test_capturable.py``, which replays
the recorded operations of a plain update and requires the eager run's parameters.
"""

import pytest
import torch

from sokit import models, optim, train
from sokit.data import Dataset
from sokit.experiments import methods

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="CUDA graph capture needs a CUDA GPU; none here")

SPECS = {
    "acp_fixed": methods.method("acp", lr=0.05, eps=0.05, alpha=0.5, amortization=7),
    "acp_heuristic": methods.method("acp", lr=0.02, eps=0.05, alpha="heuristic", amortization=7),
    "kfac_fisher": methods.method("kfac", lr=0.05, loss="mse", damping=0.05, amortization=7),
    "kfac_gn": methods.method("kfac", lr=0.05, loss="mse", damping=0.05, amortization=7,
                              curvature="gauss_newton"),
    "centered": methods.method("centered", lr=0.1),
    "nnn": methods.method("nnn", lr=0.05, amortization=7, eps=0.05),
}


def toy_data(n: int = 512, d: int = 24) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n + 128, d, generator=g)
    return Dataset("toy", x[:n], torch.zeros(n), x[n:], torch.zeros(128)).to("cuda")


def run(spec: dict, graph: bool) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = models.mlp([24, 40, 6, 40, 24], "sigmoid", "sigmoid", 4.0)
    spec = methods.for_device(spec, torch.device("cuda"))  # capturable=True
    opt = optim.build(spec["optimizer"], model, **spec["kwargs"])
    out = train.train(model, opt, toy_data(), "mse", 60, batch_size=16, progress=False,
                      graph=graph, eval_every=10, device="cuda")
    return model, out


@pytest.mark.parametrize("name", sorted(SPECS))
def test_captured_run_follows_the_eager_run(name):
    eager_model, eager = run(SPECS[name], graph=False)
    captured_model, captured = run(SPECS[name], graph=True)
    assert captured["cuda_graph"] and not eager["cuda_graph"]
    assert not captured["diverged"] and not eager["diverged"]
    for key in ("updates", "train_loss", "test_loss", "minibatch_loss"):
        torch.testing.assert_close(torch.tensor(captured[key]), torch.tensor(eager[key]),
                                   rtol=1e-5, atol=1e-6)
    for p, q in zip(captured_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
