"""LinearHooks: inputs h and preactivation gradients dl/da of every nn.Linear."""

import pytest
import torch
from torch import nn

from sokit.optim import CenteredGD, LinearHooks, UnsupportedLayerError

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def mse_sum(out, y):
    return ((out - y) ** 2).sum(dim=1).mean()


class Branchy(nn.Module):
    """Not a Sequential: functional activation and a skip connection."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.second = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.first(x))
        return self.head(h + torch.sigmoid(self.second(h)))


def test_records_inputs_and_preactivation_gradients():
    torch.manual_seed(0)
    m = Branchy()
    hooks = LinearHooks(m)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    mse_sum(m(x), y).backward()
    names = [r.name for r in hooks.layers]
    assert names == ["first", "second", "head"]
    for rec in hooks.layers:
        torch.testing.assert_close(rec.g.T @ rec.h, rec.module.weight.grad)
        torch.testing.assert_close(rec.g.sum(0), rec.module.bias.grad)
    h1 = torch.tanh(m.first(x))
    torch.testing.assert_close(hooks.layers[1].h, h1)
    torch.testing.assert_close(hooks.layers[0].h, x)


def test_per_example_gradient_is_batch_size_times_autograd_value():
    torch.manual_seed(1)
    m = Branchy()
    hooks = LinearHooks(m)
    x, y = torch.randn(4, 3), torch.randn(4, 2)
    mse_sum(m(x), y).backward()
    batch = hooks.per_example(hooks.layers[0]).clone()
    for i in range(4):
        hooks.clear()
        m.zero_grad()
        mse_sum(m(x[i : i + 1]), y[i : i + 1]).backward()
        torch.testing.assert_close(batch[i], hooks.layers[0].g[0])
    sum_hooks = LinearHooks(Branchy(), reduction="sum")
    assert sum_hooks.reduction == "sum"
    with pytest.raises(ValueError, match="reduction"):
        LinearHooks(m, reduction="max")


def test_gradient_is_wrt_preactivation_with_inplace_relu():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(3, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    hooks = LinearHooks(m)
    x, y = torch.randn(7, 3), torch.randn(7, 2)
    mse_sum(m(x), y).backward()
    a = m[0](x).detach().requires_grad_(True)
    mse_sum(m[2](torch.relu(a)), y).backward()
    torch.testing.assert_close(hooks.layers[0].g, a.grad)
    assert (hooks.layers[0].g == 0).any()  # the mask of the ReLU is in it


def test_nothing_recorded_without_gradients():
    m = Branchy()
    hooks = LinearHooks(m)
    with torch.no_grad():
        m(torch.randn(2, 3))
    assert all(r.h is None and r.calls == 0 for r in hooks.layers)


def test_unsupported_layer_is_named_or_skipped():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedLayerError, match=r"layer '0' \(Conv2d\).*skip_unsupported=True"):
        LinearHooks(m)
    with pytest.raises(UnsupportedLayerError, match="Conv2d"):
        CenteredGD(m, lr=0.1)
    hooks = LinearHooks(m, skip_unsupported=True)
    assert [n for n, _ in hooks.skipped] == ["0"]
    assert [r.name for r in hooks.layers] == ["2"]


def test_skipped_layer_gets_plain_sgd_step():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    opt = CenteredGD(m, lr=0.1, skip_unsupported=True)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    before = m[1].weight.detach().clone()
    opt.zero_grad()
    mse_sum(m(x), y).backward()
    g = m[1].weight.grad.clone()
    opt.step()
    torch.testing.assert_close(m[1].weight, before - 0.1 * g)


def test_two_forward_passes_per_step_raise():
    m = Branchy()
    opt = CenteredGD(m, lr=0.1)
    x, y = torch.randn(2, 3), torch.randn(2, 2)
    m(x)
    mse_sum(m(x), y).backward()
    with pytest.raises(RuntimeError, match="one forward pass per step"):
        opt.step()


def test_non_2d_input_raises():
    m = nn.Sequential(nn.Linear(3, 2))
    LinearHooks(m)
    with pytest.raises(ValueError, match="2-D inputs"):
        m(torch.randn(2, 5, 3))


def test_remove_detaches_hooks():
    m = Branchy()
    hooks = LinearHooks(m)
    hooks.remove()
    mse_sum(m(torch.randn(2, 3)), torch.randn(2, 2)).backward()
    assert all(r.h is None for r in hooks.layers)
