"""Centered gradient descent (Algorithm 3) against its per-example definition."""

import pytest
import torch
from torch import nn

from sokit.optim import CenteredGD, CenteredPreconditioner

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def mse_sum(out, y):
    return ((out - y) ** 2).sum(dim=1).mean()


def per_example_grads(m, x, y):
    """nabla_{a_i} l and h_i of the first layer, one example at a time."""
    gs, hs = [], []
    for i in range(x.shape[0]):
        a = m[0](x[i : i + 1]).detach().requires_grad_(True)
        l = mse_sum(m[2](torch.tanh(a)), y[i : i + 1])
        gs.append(torch.autograd.grad(l, a)[0][0])
        hs.append(x[i])
    return torch.stack(gs), torch.stack(hs)


def test_centered_direction_matches_algorithm_3():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(6, 3) + 2.0, torch.randn(6, 2)
    pre = CenteredPreconditioner(m)
    mse_sum(m(x), y).backward()
    pre.precondition()
    g, h = per_example_grads(m, x, y)
    expect_W = (g.T @ (h - h.mean(0))) / 6
    torch.testing.assert_close(m[0].weight.grad, expect_W)
    torch.testing.assert_close(m[0].bias.grad, g.mean(0))


def test_centered_step_and_layer_without_bias():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(5, 3) + 1.0, torch.randn(5, 2)
    opt = CenteredGD(m, lr=0.5)
    W0 = m[0].weight.detach().clone()
    opt.zero_grad()
    mse_sum(m(x), y).backward()
    gW = m[0].weight.grad.clone()
    rec = opt.preconditioner.layers[0]
    centered = gW - torch.outer(rec.g.sum(0), x.mean(0))
    opt.step()
    torch.testing.assert_close(m[0].weight, W0 - 0.5 * centered)
    # centering removes the component along the mean input: zero when h is constant
    m2 = nn.Sequential(nn.Linear(3, 2))
    pre = CenteredPreconditioner(m2)
    mse_sum(m2(torch.ones(4, 3)), torch.randn(4, 2)).backward()
    pre.precondition()
    torch.testing.assert_close(m2[0].weight.grad, torch.zeros(2, 3))
