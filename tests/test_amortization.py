"""Fixed (Algorithm 4 line 3) and adaptive amortization schedules."""

import pytest
import torch
from torch import nn

from sokit.optim import ACP, AdaptiveAmortization, FixedAmortization
from sokit.optim.amortization import as_schedule


def stream(steps, shift_at=None, seed=0, batch=100, n_in=16):
    """Minibatches of a fixed distribution (correlated features), shifted at shift_at."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=gen) / n_in**0.5
    mean = torch.rand(n_in, generator=gen)
    for t in range(steps):
        z = torch.randn(batch, n_in, generator=gen) @ mix + mean
        if shift_at is not None and t >= shift_at:
            z = 1.5 * z + 0.5
        yield t, torch.sigmoid(z)


def run(schedule, steps, shift_at=None):
    when = []
    for t, h in stream(steps, shift_at):
        if schedule.due(t, 0, h):
            schedule.refreshed(t, 0, h)
            when.append(t)
    return when


def test_fixed_schedule_refreshes_every_n():
    assert run(FixedAmortization(10), 35) == [0, 10, 20, 30]
    with pytest.raises(ValueError, match="positive number of updates"):
        FixedAmortization(0)
    assert as_schedule(7).every == 7


def test_adaptive_refreshes_rarely_on_stationary_statistics():
    when = run(AdaptiveAmortization(tol=0.05, check_every=5), 150)
    assert when[0] == 0
    assert len(when) <= 2, when  # fixed N = 10 would refresh 15 times


def test_adaptive_still_refreshes_after_a_change():
    sched = AdaptiveAmortization(tol=0.05, check_every=5)
    when = run(sched, 150, shift_at=75)
    after = [t for t in when if t >= 75]
    assert after and after[0] <= 95, when
    assert sched.drift[0] < 0.05  # settled again on the new statistics


def test_adaptive_max_interval_forces_refresh():
    when = run(AdaptiveAmortization(tol=10.0, check_every=5, max_interval=40), 130)
    assert when == [0, 40, 80, 120]


def test_adaptive_schedule_in_acp_saves_refreshes_of_stationary_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 16))
    sched = AdaptiveAmortization(tol=0.05, check_every=5)
    opt = ACP(model, lr=0.01, eps=0.1, amortization=sched)
    for _t, h in stream(60):
        opt.zero_grad()
        ((model(h) - h) ** 2).sum(1).mean().backward()
        opt.step()
    assert sched.refreshes[0] <= 2  # the data layer's input does not move
    assert all(torch.isfinite(p).all() for p in model.parameters())
    state = opt.state_dict()
    other = AdaptiveAmortization()
    other.load_state_dict(state["preconditioner"]["schedule"])
    assert other.refreshes == sched.refreshes and other.tol == 0.05


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="tol"):
        AdaptiveAmortization(tol=0)
    with pytest.raises(TypeError, match="amortization must be"):
        as_schedule("often")
