"""The book's figures, drawn from stored records.

* Figures 5.1, 6.1-6.3 in the thesis's style: :func:`three_panel` draws training loss
  against updates, training loss against wall-clock seconds, and test loss against
  seconds; :func:`with_thesis_figure` puts the thesis's own figure above ours.
* Figures 2.2 and 4.1: the searched points over the 1-NN interpolated cost landscape
  (:func:`plot_fig2_2`, :func:`plot_fig4_1`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

import sokit
from sokit.experiments.searches import METHOD_LABELS, search_space
from sokit.search import NearestNeighbour, Space

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

def landscape(history: list[dict], space: Space, resolution: int = 200):
    """The 1-NN interpolated cost landscape of a stored history on a regular grid of the
    unit square; diverged trials take the worst cost. Returns (u1, u2, cost grid)."""
    configs = [t["config"] for t in history]
    costs = np.array([t["cost"] if t["cost"] is not None else np.nan for t in history], dtype=float)
    ok = np.isfinite(costs)
    costs[~ok] = costs[ok].max() if ok.any() else 0.0
    u = (np.arange(resolution) + 0.5) / resolution
    U1, U2 = np.meshgrid(u, u)
    grid = NearestNeighbour().predict(space.to_unit(configs), costs, np.stack([U1.ravel(), U2.ravel()], 1))
    return u, u, grid.reshape(resolution, resolution)


def _scatter_panel(ax, history: list[dict], space: Space, log_prescale: bool, vmin=None, vmax=None, log_cost=False):
    costs = np.array([t["cost"] if t["cost"] is not None else np.nan for t in history], dtype=float)
    u1, u2, grid = landscape(history, space)
    dims = space.dims
    x = np.log10(dims["lr"].from_unit(u1))
    y = dims["prescale"].from_unit(u2)
    y = np.log10(y) if log_prescale else y
    ok = np.isfinite(costs)
    c = np.where(ok, costs, np.nanmax(costs) if ok.any() else 0.0)
    if log_cost:
        grid, c = np.log10(grid), np.log10(c)
    im = ax.pcolormesh(x, y, grid, shading="auto", cmap="viridis", vmin=vmin, vmax=vmax)
    px = np.log10([t["config"]["lr"] for t in history])
    py = np.array([t["config"]["prescale"] for t in history])
    py = np.log10(py) if log_prescale else py
    ax.scatter(px, py, c=c, cmap="viridis", vmin=im.norm.vmin, vmax=im.norm.vmax, s=60, edgecolors="black")
    ax.set_xlabel("log10 learning rate")
    ax.set_ylabel("log10 prescale" if log_prescale else "prescale")
    return im


def plot_fig4_1(record: dict[str, Any]):
    """Figure 4.1's three panels (grid, random, biased random) from a stored ``fig4_1`` record."""
    space = search_space(record["config"]["space"], log_prescale=False)
    hs = record["results"]["histories"]
    all_costs = [t["cost"] for h in hs.values() for t in h if t["cost"] is not None]
    fig, axes = plt.subplots(1, len(hs), figsize=(5 * len(hs), 4.2), constrained_layout=True)
    for ax, (m, h) in zip(np.atleast_1d(axes), hs.items()):
        im = _scatter_panel(ax, h, space, False, min(all_costs), max(all_costs))
        ax.set_title(METHOD_LABELS[m])
    fig.colorbar(im, ax=axes, label="final training MSE")
    return fig


def plot_fig2_2(record: dict[str, Any]):
    """Figure 2.2 from a stored ``fig2_2`` record: log10 final training MSE (colour)."""
    space = search_space(record["config"]["space"], log_prescale=True)
    fig, ax = plt.subplots(figsize=(6.5, 5), constrained_layout=True)
    im = _scatter_panel(ax, record["results"]["histories"]["random"], space, True, log_cost=True)
    ax.set_ylabel("log10 prescale (initial weight variance x n_in)")
    fig.colorbar(im, ax=ax, label="log10 final training MSE")
    return fig
