"""The thesis's experiments, listed explicitly, in the thesis's order."""

from __future__ import annotations

from . import fig5, fig6, fig6_tuning, searches, sgd_baseline
from .experiment import Experiment

EXPERIMENTS: tuple[Experiment, ...] = (
    searches.FIG2_2,
    sgd_baseline.SGD_AUTOENCODER,
    searches.TABLE4_1,
    searches.FIG4_1,
    fig5.FIG5_1,
    fig5.FIG5_1_SEARCH,
    fig5.FIG5_1_PRESCALE,
    fig5.FIG5_1_SETBACK,
    fig6.fig6_1(),
    fig6.fig6_2(),
    fig6.fig6_3(),
    fig6.fig6_3_fashion(),
    fig6_tuning.fig6_hparams(),
    fig6_tuning.fig6_acp_alpha(),
    fig6_tuning.fig6_3_fashion_hparams(),
    fig6_tuning.fig6_search(),
    fig6_tuning.fig6_probe_search(),
    fig6_tuning.fig6_3_fashion_search(),
)


def registry() -> dict[str, Experiment]:
    """Every experiment of the thesis by name."""
    out: dict[str, Experiment] = {}
    for exp in EXPERIMENTS:
        if exp.name in out:
            raise ValueError(f"experiment name {exp.name!r} is listed twice in sokit.experiments.catalog")
        out[exp.name] = exp
    return out


def get(name: str) -> Experiment:
    """The experiment called ``name``; the error lists the known names."""
    exps = registry()
    if name not in exps:
        raise KeyError(f"no experiment named {name!r}; known experiments: {sorted(exps)}")
    return exps[name]
