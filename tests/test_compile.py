"""ACP and KFAC under torch.compile: the same steps as eager, or a clear error, never a silent SGD step.

Dynamo does not guard on module hooks, so a model whose class was compiled and run
without sokit's hooks reuses that graph and the hooks never run (sokit.optim.compile_guard).
The backend "aot_eager" goes through Dynamo and AOTAutograd without needing a C compiler.
"""

import pytest
import torch
from torch import nn

from sokit.optim import ACP, KFAC
from sokit.optim.compile_guard import HooksNotRunError, check_recorded

BACKEND = "aot_eager"
X = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
Y = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))


def optimizer(which: str, model: nn.Module, fused: bool):
    if which == "acp":
        return ACP(model, lr=0.1, alpha="heuristic", amortization=2, fused=fused)
    return KFAC(model, lr=0.1, loss="mse", amortization=2, fused=fused)


def step(opt, call) -> None:
    output = call(X)
    if hasattr(opt, "curvature_backward"):
        opt.curvature_backward(output)
    loss = (output - Y).pow(2).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def eager_weights(which: str, fused: bool, steps: int = 3) -> list[torch.Tensor]:
    model = net()
    opt = optimizer(which, model, fused)
    for _ in range(steps):
        step(opt, model)
    return [p.detach().clone() for p in model.parameters()]


def compile_class_without_hooks() -> None:
    """Compile and run (forward and backward) another model of the same class, no hooks."""
    torch.compile(net(), backend=BACKEND)(X).sum().backward()


def assert_same(model: nn.Module, want: list[torch.Tensor]) -> None:
    for got, expected in zip(model.parameters(), want):
        torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("which", ["acp", "kfac"])
def test_compiled_step_equals_eager(which, fused):
    model = net()
    opt = optimizer(which, model, fused)
    compiled = torch.compile(model, backend=BACKEND)
    for _ in range(3):
        step(opt, compiled)
    assert_same(model, eager_weights(which, fused))


@pytest.mark.parametrize("which", ["acp", "kfac"])
def test_fused_survives_a_graph_traced_without_hooks(which):
    compile_class_without_hooks()
    model = net()
    opt = optimizer(which, model, fused=True)
    compiled = torch.compile(model, backend=BACKEND)
    for _ in range(3):
        step(opt, compiled)
    assert_same(model, eager_weights(which, fused=True))


def test_stale_graph_leaves_gradients_without_records():
    """The silent failure itself: the reused graph runs no hook, yet every layer gets a gradient."""
    compile_class_without_hooks()
    model = net()
    opt = optimizer("acp", model, fused=False)
    loss = (torch.compile(model, backend=BACKEND)(X) - Y).pow(2).sum(1).mean()
    loss.backward()
    layers = opt.preconditioner.layers
    assert all(rec.h is None and rec.module.weight.grad is not None for rec in layers)
    with pytest.raises(HooksNotRunError, match=r"torch\.compile.*fused=True"):
        check_recorded(layers)


@pytest.mark.parametrize("which", ["acp", "kfac"])
def test_step_refuses_a_graph_traced_without_hooks(which):
    compile_class_without_hooks()
    model = net()
    opt = optimizer(which, model, fused=False)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(HooksNotRunError, match="torch.compile"):
        step(opt, torch.compile(model, backend=BACKEND))
    assert_same(model, before)  # no step was taken


def test_the_named_fix_works(monkeypatch):
    """skip_nnmodule_hook_guards = False and a reset: the unfused step matches eager again."""
    compile_class_without_hooks()
    monkeypatch.setattr(torch._dynamo.config, "skip_nnmodule_hook_guards", False)
    torch._dynamo.reset()
    compile_class_without_hooks()  # a graph without hooks, now guarded on them
    model = net()
    opt = optimizer("acp", model, fused=False)
    compiled = torch.compile(model, backend=BACKEND)
    for _ in range(3):
        step(opt, compiled)
    assert_same(model, eager_weights("acp", fused=False))


def test_eager_steps_pass_the_check():
    model = net()
    opt = optimizer("acp", model, fused=False)
    model(X).sum().backward()
    check_recorded(opt.preconditioner.layers)
    opt.zero_grad()
    check_recorded(opt.preconditioner.layers)  # no gradient, no record: nothing to refuse
