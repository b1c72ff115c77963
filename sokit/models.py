"""The networks of the thesis (sections 1.4.1, 1.4.3, 4.2, 4.3).

* :func:`autoencoder`: the MNIST autoencoder 784-1000-500-250-30-250-500-1000-784
  with sigmoid units, a linear 30-unit code layer and a sigmoid output.
* :func:`cifar_mlp`: the CIFAR-10 multilayer perceptron, 3072 inputs, 8 hidden ReLU
  layers of 100 units, 10 logits.
* :func:`mlp`: the builder behind both.

Every ``nn.Linear`` weight is drawn from N(0, prescale / n_in) and every bias is zero
(section 2.4.2; "prescale" is the thesis's tuned initialisation scale). The
normalised variants put a batch norm (``norm="batchnorm"``, Ioffe & Szegedy) or a
mean-only batch norm (``norm="mean_only"``, the centering baseline of section 6.1)
after every hidden ``nn.Linear``; that Linear then has no bias, because the
normalisation subtracts it and adds its own learnable bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "linear": None,
}
NORMS = (None, "batchnorm", "mean_only")

AUTOENCODER_SIZES = (784, 1000, 500, 250, 30, 250, 500, 1000, 784)
CIFAR_SIZES = (3072,) + (100,) * 8 + (10,)


class MeanOnlyBatchNorm(nn.Module):
    """y = a - mean_batch(a) + beta: centring without variance scaling.

    In training mode the minibatch mean is subtracted and a running mean is kept
    (exponential average with ``momentum``); in eval mode the running mean is used.
    """

    def __init__(self, num_features: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean = a.mean(dim=0)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
        else:
            mean = self.running_mean
        return a - mean + self.bias

    def extra_repr(self) -> str:
        return f"{self.bias.numel()}, momentum={self.momentum}"


def init_linear(layer: nn.Linear, prescale: float) -> None:
    """Weights ~ N(0, prescale / n_in), biases 0 (section 2.4.2)."""
    if prescale <= 0:
        raise ValueError(f"prescale must be positive, got {prescale}")
    with torch.no_grad():
        layer.weight.normal_(0.0, (prescale / layer.in_features) ** 0.5)
        if layer.bias is not None:
            layer.bias.zero_()


def _norm_layer(norm: str | None, n: int) -> nn.Module | None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    if norm == "batchnorm":
        return nn.BatchNorm1d(n)
    if norm == "mean_only":
        return MeanOnlyBatchNorm(n)
    return None


def mlp(
    sizes: Sequence[int],
    activation: str | Sequence[str] = "sigmoid",
    out_activation: str = "linear",
    prescale: float = 1.0,
    norm: str | None = None,
) -> nn.Sequential:
    """A multilayer perceptron (section 1.4.1) as an ``nn.Sequential``.

    ``sizes`` lists the layer widths, input first. ``activation`` is one name for
    every hidden layer or one name per hidden layer (``len(sizes) - 2`` names);
    names are keys of :data:`ACTIVATIONS`. ``norm`` is None, "batchnorm" or
    "mean_only" and applies to the hidden layers only.
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(int(s) != s or s < 1 for s in sizes):
        raise ValueError(f"sizes must list at least two positive widths, got {sizes}")
    n_hidden = len(sizes) - 2
    acts = [activation] * n_hidden if isinstance(activation, str) else list(activation)
    if len(acts) != n_hidden:
        raise ValueError(f"got {len(acts)} activations for {n_hidden} hidden layers")
    for name in acts + [out_activation]:
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    _norm_layer(norm, 1)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        hidden = i < n_hidden
        normalised = hidden and norm is not None
        linear = nn.Linear(n_in, n_out, bias=not normalised)
        init_linear(linear, prescale)
        layers.append(linear)
        if normalised:
            layers.append(_norm_layer(norm, n_out))
        act = ACTIVATIONS[acts[i] if hidden else out_activation]
        if act is not None:
            layers.append(act())
    return nn.Sequential(*layers)


def autoencoder(prescale: float = 1.0, norm: str | None = None) -> nn.Sequential:
    """The MNIST autoencoder of section 4.2: sigmoid units, linear code, sigmoid output."""
    n_hidden = len(AUTOENCODER_SIZES) - 2
    code = n_hidden // 2
    acts = ["linear" if i == code else "sigmoid" for i in range(n_hidden)]
    return mlp(AUTOENCODER_SIZES, acts, "sigmoid", prescale, norm)


def cifar_mlp(prescale: float = 2.0, norm: str | None = None) -> nn.Sequential:
    """The CIFAR-10 MLP of section 4.3: 8 hidden ReLU layers of 100 units, 10 logits."""
    return mlp(CIFAR_SIZES, "relu", "linear", prescale, norm)
