"""The matmul cost of a plain update (no refresh) on the MNIST autoencoder, batch 200.

Counted with ``torch.utils.flop_counter`` (matrix products only, ``addmm_`` included), so the numbers are
exact, unlike timings. SGD costs ``3 B sum(n_in n_out)`` multiply-adds less the input
layer's ``dl/dh``: 3.09 GFLOP. On top of it (B = 200, every refresh minibatch of 200):

* ACP, fused: ``(h - mean h) C^-1`` in every layer with ``B < n_out``, the other layers
  through the gradient; Woodbury (``2 B n_in`` per vector) for ``n_in`` 784, 1000, 500:
  0.63 GFLOP, 1.21x. Before (unfused by default, dense inverses, association by the
  unfused rule): 1.77x.
* KFAC, fused: each factor applied on its cheaper side, Woodbury for every factor of
  more than 400 rows: 1.41x (before: 2.19x).
* Centered GD: no extra product (1.00x).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sokit import losses
from sokit.models import AUTOENCODER_SIZES, mlp
from sokit.optim import ACP, KFAC, CenteredGD

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

METHODS = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.01),
    "centered": lambda m: CenteredGD(m, lr=0.01),
    "acp": lambda m: ACP(m, lr=0.01),
    "acp_unfused": lambda m: ACP(m, lr=0.01, fused=False),
    "kfac": lambda m: KFAC(m, lr=0.01, loss="mse"),
}
# (at most, at least) the plain update's FLOPs as a multiple of SGD's
RATIOS = {"centered": (1.0, 1.0), "acp": (1.21, 1.2), "acp_unfused": (1.56, 1.5),
          "kfac": (1.42, 1.4)}


def addmm_inplace_flops(self_shape, a_shape, b_shape, **kwargs) -> int:
    """``X.addmm_(A, B)``, which the counter does not count: ``2 m k n``."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def plain_update_flops(name: str) -> int:
    torch.manual_seed(0)
    model = mlp(AUTOENCODER_SIZES, "sigmoid", "sigmoid")
    opt = METHODS[name](model)
    x = torch.rand(200, 784, generator=torch.Generator().manual_seed(0))
    flops = []
    for _ in range(2):  # a refresh, then a plain update
        # counted in place too: the Woodbury product writes over its scratch input
        counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_inplace_flops})
        with counter:
            out = model(x)
            value = losses.mse_sum(out, x)
            if hasattr(opt, "curvature_backward"):
                opt.curvature_backward(out)
            opt.zero_grad()
            value.backward()
            opt.step()
        flops.append(counter.get_total_flops())
    return flops[1]


@pytest.fixture(scope="module")
def sgd_flops() -> int:
    return plain_update_flops("sgd")


def test_sgd_costs_three_products_per_layer_but_one(sgd_flops):
    pairs = list(zip(AUTOENCODER_SIZES[:-1], AUTOENCODER_SIZES[1:]))
    macs = 200 * (3 * sum(a * b for a, b in pairs) - pairs[0][0] * pairs[0][1])
    assert sgd_flops == 2 * macs  # 3.09 GFLOP


@pytest.mark.parametrize("name", sorted(RATIOS))
def test_plain_update_cost_over_sgd(name, sgd_flops):
    at_most, at_least = RATIOS[name]
    ratio = plain_update_flops(name) / sgd_flops
    assert at_least <= ratio <= at_most, f"{name}: {ratio:.3f}x SGD's matmul FLOPs"
