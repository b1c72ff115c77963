"""Figures in the thesis's style (Figures 5.1, 6.1-6.3): log-log loss curves.

:func:`three_panel` draws the three views the thesis uses to compare optimizers:
training loss against updates, training loss against wall-clock seconds, and test
loss against seconds. :func:`with_thesis_figure` puts the thesis's own figure
above ours, so the book shows both side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

import sokit

PANELS = (
    ("updates", "train_loss", "updates", "train loss"),
    ("seconds", "train_loss", "seconds (training)", "train loss"),
    ("seconds", "test_loss", "seconds (training)", "test loss"),
)


def _curves(run: Mapping[str, Any]) -> Mapping[str, Any]:
    """A train() result, also when given a stored record of load_or_run."""
    return run["results"] if "results" in run and "updates" not in run else run


def _draw(axes, runs: Mapping[str, Mapping[str, Any]], ylabel_unit: str) -> None:
    for label, run in runs.items():
        curve = _curves(run)
        for ax, (xkey, ykey, _, _) in zip(axes, PANELS):
            line, = ax.plot(curve[xkey], curve[ykey], label=label)
            if curve.get("diverged") and curve[xkey]:
                ax.plot(curve[xkey][-1], curve[ykey][-1], "x", color=line.get_color())
    for ax, (_, _, xlabel, ylabel) in zip(axes, PANELS):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{ylabel} ({ylabel_unit})" if ylabel_unit else ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize="small")


def three_panel(runs: Mapping[str, Mapping[str, Any]], title: str = "", unit: str = "MSE") -> Figure:
    """Train loss vs updates, train loss vs seconds, test loss vs seconds (log-log).

    ``runs`` maps a legend label to a :func:`sokit.train.train` result (or a stored
    record of :func:`sokit.experiments.load_or_run`). A diverged run ends with an x.
    """
    if not runs:
        raise ValueError("three_panel needs at least one run")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    _draw(axes, runs, unit)
    if title:
        fig.suptitle(title)
    return fig


def thesis_figure_path(name: str) -> Path:
    """The path of the thesis's figure ``name`` (e.g. "2nd") in the book's ``figures/``."""
    path = Path(sokit.__file__).resolve().parent.parent / "figures" / f"{Path(name).stem}.png"
    if not path.exists():
        raise FileNotFoundError(f"no thesis figure {path}; the book's figures/ folder holds the thesis's PNGs")
    return path


def with_thesis_figure(thesis: str, runs: Mapping[str, Mapping[str, Any]], title: str = "",
                       unit: str = "MSE") -> Figure:
    """The thesis's figure ``thesis`` on top, our :func:`three_panel` below it."""
    image = plt.imread(thesis_figure_path(thesis))
    fig = plt.figure(figsize=(13, 9), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.3, 1])
    ax = top.subplots()
    ax.imshow(image)
    ax.set_axis_off()
    top.suptitle("the thesis's figure (George, 2017)")
    _draw(bottom.subplots(1, 3), runs, unit)
    bottom.suptitle(title or "ours")
    return fig
