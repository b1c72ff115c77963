"""Adding an optimizer to a thesis figure: one new module and two one-line registrations."""

from __future__ import annotations

import importlib
import math
import textwrap

from sokit import optim
from sokit.experiments import fig6, fig6_tuning, load_or_run, methods

TOY_MODULE = '''
"""A toy optimizer: SGD on the sign of the gradient."""
import torch


class SignSGD(torch.optim.Optimizer):
    def __init__(self, model, lr):
        super().__init__(model.parameters(), {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])
'''


def test_a_toy_optimizer_joins_fig6_2_with_one_module_and_two_lines(tmp_path, monkeypatch):
    (tmp_path / "toy_optimizer.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    toy = importlib.import_module("toy_optimizer")
    # the two registrations: the optimizer's name, and the figure's legend entry
    monkeypatch.setitem(optim.OPTIMIZERS, "sign_sgd", toy.SignSGD)
    monkeypatch.setitem(fig6.FIG6_2, "sign SGD", lambda task, n: methods.method("sign_sgd", prescale=4.0, lr=1e-3))

    exp = fig6.fig6_2()
    assert list(exp.configs["smoke"]["methods"])[-1] == "sign SGD"
    assert "sign SGD" in fig6_tuning.fig6_hparams().configs["quick"]["methods"]  # the search tunes it too
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path / "results"))
    record = load_or_run(exp, "smoke")
    run = record["results"]["sign SGD"]
    assert not run["diverged"] and run["updates"][-1] == exp.configs["smoke"]["updates"]
    assert all(math.isfinite(v) for v in run["train_loss"])
    assert run["train_loss"][-1] < run["train_loss"][0]
