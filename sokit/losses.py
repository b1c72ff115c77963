"""Loss functions of the thesis (section 1.2.1, Table 3.I).

Both losses average over the examples of a minibatch. The autoencoder's loss
sums the squared error over the 784 pixels (the thesis's "MSE"), so its values
are in the units of the thesis's figures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse_sum(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||f(x) - y||^2 summed over features, averaged over examples."""
    if output.shape != target.shape:
        raise ValueError(
            f"mse_sum: output shape {tuple(output.shape)} differs from target shape "
            f"{tuple(target.shape)}; pass targets shaped like the network output"
        )
    return (output - target).pow(2).sum(dim=1).mean()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multiclass cross-entropy -log softmax(logits)[label], averaged over examples."""
    return F.cross_entropy(logits, labels)


#: loss name -> (function, what the target is: the input itself or the label)
LOSSES: dict[str, tuple[LossFn, str]] = {
    "mse": (mse_sum, "input"),
    "cross_entropy": (cross_entropy, "label"),
}


def get(name: str) -> LossFn:
    """The loss function registered under ``name`` ("mse" or "cross_entropy")."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name][0]


def target_kind(name: str) -> str:
    """"input" for the autoencoder loss (the target is x), "label" for classification."""
    get(name)
    return LOSSES[name][1]
