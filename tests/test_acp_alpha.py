"""sokit.acp_alpha: the heuristic alpha per layer (section 6.3.2) and the regime it implies."""

from __future__ import annotations

import torch
from torch import nn

from sokit.acp_alpha import layer_alphas
from sokit.optim import ACP


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 6), nn.Sigmoid()).double()


def test_alpha_is_the_largest_squared_gradient_of_an_examples_own_loss():
    model, x = small_net(), torch.rand(16, 6, dtype=torch.float64)
    rows = layer_alphas(model, x, x, eps=1e-3)
    # the output layer's dl_i/da_i by hand: l_i = sum_j (s(a_ij) - x_ij)^2
    with torch.no_grad():
        a = model[2](model[1](model[0](x)))
        s = torch.sigmoid(a)
        grad = 2 * (s - x) * s * (1 - s)
    assert abs(rows[1]["alpha"] - float(grad.pow(2).max())) < 1e-12
    assert abs(rows[1]["alpha (mean loss)"] - rows[1]["alpha"] / 16**2) < 1e-15


def test_where_eps_over_alpha_dominates_the_step_is_centered_gradient_descent_at_lr_over_eps():
    model, x = small_net(), torch.rand(16, 6, dtype=torch.float64)
    eps, lr = 10.0, 0.1
    rows = layer_alphas(model, x, x, eps)
    assert min(r["eps/alpha / C_max"] for r in rows) > 1e3
    # the centered gradient of the first layer's weights, (1/n) sum_i g_i (h_i - mean h)^T
    model.zero_grad()
    (model(x) - x).pow(2).sum(1).mean().backward()
    w_grad, b_grad = model[0].weight.grad.clone(), model[0].bias.grad.clone()
    centered = w_grad - torch.outer(b_grad, x.mean(0))
    before = model[0].weight.detach().clone()
    opt = ACP(model, lr=lr, eps=eps, alpha="heuristic")
    opt.zero_grad()
    (model(x) - x).pow(2).sum(1).mean().backward()
    opt.step()
    step = before - model[0].weight.detach()
    torch.testing.assert_close(step, lr / eps * centered, rtol=2e-3, atol=0)
