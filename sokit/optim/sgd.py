"""Plain (momentum) SGD built from a model, like every other entry of ``OPTIMIZERS``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def sgd(model: nn.Module, lr: float, **kwargs: Any) -> torch.optim.SGD:
    """``torch.optim.SGD`` over the model's parameters (thesis section 2.2)."""
    return torch.optim.SGD(model.parameters(), lr=lr, **kwargs)
