"""One method spec for every experiment, search and the CLI.

A *method* is a JSON-able dict ``{"optimizer", "norm", "kwargs", "prescale"}``: a name in
:data:`sokit.optim.OPTIMIZERS`, the model's normalization (None, "batchnorm",
"mean_only"), the optimizer's keyword arguments (``lr`` among them) and the factor of the
initial weight variance (section 2.4.2). :func:`build` turns an experiment's
configuration and a method into (model, optimizer).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sokit import models, optim

MODELS = ("autoencoder", "cifar_mlp", "mlp")


def method(optimizer: str, norm: str | None = None, prescale: float | None = None,
           **kwargs: Any) -> dict[str, Any]:
    """A method spec; ``prescale`` may be left out where a search chooses it."""
    if optimizer not in optim.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(optim.OPTIMIZERS)} "
                         "(sokit.optim.OPTIMIZERS)")
    if norm not in models.NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {models.NORMS}")
    spec: dict[str, Any] = {"optimizer": optimizer, "norm": norm, "kwargs": kwargs}
    if prescale is not None:
        spec["prescale"] = prescale
    return spec


def build_model(config: dict[str, Any], spec: dict[str, Any]) -> nn.Module:
    """The experiment's network (``config["model"]``) with the method's norm and prescale."""
    norm, prescale = spec.get("norm"), spec["prescale"]
    name = config["model"]
    if name == "autoencoder":
        return models.autoencoder(prescale=prescale, norm=norm)
    if name == "cifar_mlp":
        return models.cifar_mlp(prescale=prescale, norm=norm)
    if name == "mlp":
        return models.mlp(config["sizes"], "relu", "linear", prescale, norm)
    raise ValueError(f"unknown model {name!r}; use one of {MODELS}")


def build(config: dict[str, Any], spec: dict[str, Any]) -> tuple[nn.Module, Any]:
    """The model and optimizer of one method (seed torch's generator first)."""
    model = build_model(config, spec)
    return model, optim.build(spec["optimizer"], model, **spec["kwargs"])
