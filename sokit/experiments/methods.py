"""One method spec for every experiment, search and the CLI.

A *method* is a JSON-able dict ``{"optimizer", "norm", "kwargs", "prescale"}``: a name in
:data:`sokit.optim.OPTIMIZERS`, the model's normalization (None, "batchnorm",
"mean_only"), the optimizer's keyword arguments (``lr`` among them) and the factor of the
initial weight variance (section 2.4.2). :func:`build` turns an experiment's
configuration and a method into (model, optimizer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sokit import models, optim
from sokit.graphs import capture_enabled

MODELS = ("autoencoder", "cifar_mlp", "mlp")
#: optimizers that take ``capturable=True``: their plain updates replay from a CUDA graph
#: and their refreshes run eagerly (:class:`sokit.graphs.CapturedStep`)
CAPTURABLE = frozenset({"acp", "centered", "kfac", "nnn"})


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


def for_device(spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The method as trained on ``device``: on CUDA, an optimizer of :data:`CAPTURABLE`
    gets ``capturable=True``, so that :func:`sokit.train.train` captures its step (plain
    SGD and batch norm are captured as they are); unchanged on the CPU, when the spec sets
    ``capturable`` itself, or when ``$SOKIT_CAPTURE`` is "0"."""
    if (device.type != "cuda" or spec["optimizer"] not in CAPTURABLE
            or "capturable" in spec["kwargs"] or not capture_enabled()):
        return spec
    return {**spec, "kwargs": {**spec["kwargs"], "capturable": True}}


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
