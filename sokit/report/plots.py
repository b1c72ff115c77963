"""The book's figures, drawn from stored records.

* Figures 5.1 and 6.1-6.3: :func:`overlay` draws, panel by panel, our curve of every
  method (solid) and the thesis's curve of the same method (dashed, same colour) on the
  same log axes (:data:`OVERLAYS` says which panels each experiment gets); the SGD
  baseline of chapter 2 is drawn against the thesis's SGD curve of Figure 6.2.
* Figures 2.2 and 4.1: the searched points over the 1-NN interpolated cost landscape
  (:func:`plot_fig2_2`, :func:`plot_fig4_1`).
* UBP's monitored correction against its minibatch loss, update by update
  (:func:`plot_correction`, ``fig5_1_setback``).

Every figure is sized for the book's content width (about 750 px): :data:`WIDTH_IN`
inches at :data:`DPI`, with tick labels, axis labels and legends at :data:`FONT_PT`
points, i.e. about 16 px on screen, a little larger than the body text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

import sokit
from sokit import thesis as thesis_data
from sokit.experiments.searches import METHOD_LABELS, search_space
from sokit.search import NearestNeighbour, Space

#: the figures' width in inches and resolution: WIDTH_IN * DPI pixels, the book's content width
WIDTH_IN, DPI = 7.5, 100
#: font size (points) of tick labels, axis labels, legends and titles: FONT_PT * DPI / 72 px
FONT_PT = 12


@dataclass(frozen=True)
class Panel:
    """One panel of an overlay: our ``y`` (a key of a train() result) against ``x``
    ("updates" or "seconds"), and, when ``thesis`` names a panel of the thesis's figure,
    the thesis's curves of that panel on the same axes."""

    x: str
    y: str
    ylabel: str
    thesis: str | None = None
    log_y: bool = True


@dataclass(frozen=True)
class OverlaySpec:
    """What :func:`overlay` draws for one experiment.

    ``thesis``: the thesis figure (a key of :data:`sokit.thesis.SERIES`) whose curves the
    panels overlay. ``fallback``: panels that replace those whose ``y`` no run recorded
    (a stored run older than the error rates). ``reference``: a separate panel with the
    thesis's curves of ``reference_figure`` only, for an experiment on another dataset,
    titled ``reference_title`` (legend: ``reference_legend``). ``single``: the legend label
    of a record that holds one run.
    """

    thesis: str | None
    panels: tuple[Panel, ...]
    fallback: tuple[Panel, ...] = ()
    reference: Panel | None = None
    reference_figure: str = ""
    reference_title: str = ""
    reference_legend: str = ""
    single: str = ""


def _autoencoder_panels(figure: str | None) -> tuple[Panel, ...]:
    on = (lambda panel: panel) if figure else (lambda panel: None)
    return (Panel("updates", "train_loss", "train MSE", "train MSE vs updates"),
            Panel("seconds", "train_loss", "train MSE", on("train MSE vs time")),
            Panel("seconds", "test_loss", "test MSE", on("test MSE vs time")))


#: the panels of every experiment's figure
OVERLAYS: dict[str, OverlaySpec] = {
    "fig6_1": OverlaySpec("fig6_1", _autoencoder_panels("fig6_1")),
    "fig6_2": OverlaySpec("fig6_2", _autoencoder_panels("fig6_2")),
    # the thesis's Figure 5.1 has only the panel against updates
    "fig5_1": OverlaySpec("fig5_1", _autoencoder_panels(None)),
    # chapter 2's SGD baseline against the thesis's SGD of Figure 6.2
    "sgd_autoencoder": OverlaySpec("fig6_2", _autoencoder_panels("fig6_2"), single="SGD"),
    "fig6_3": OverlaySpec("fig6_3", (
        Panel("updates", "train_loss", "train cross-entropy"),
        Panel("seconds", "train_loss", "train cross-entropy", "train cross-entropy vs time"),
        Panel("seconds", "train_error", "train error rate", "train error rate vs time", log_y=False),
        Panel("seconds", "test_error", "test error rate", "test error rate vs time", log_y=False))),
    # Fashion-MNIST: no thesis curve on this dataset; the thesis's CIFAR-10 cross-entropy
    # is drawn in a separate panel, titled as another dataset
    "fig6_3_fashion": OverlaySpec(
        None,
        (Panel("updates", "train_loss", "train cross-entropy"),
         Panel("updates", "train_error", "train error rate", log_y=False),
         Panel("updates", "test_error", "test error rate", log_y=False)),
        fallback=(Panel("updates", "test_loss", "test cross-entropy"),),
        reference=Panel("seconds", "train_loss", "train cross-entropy", "train cross-entropy vs time"),
        reference_figure="fig6_3", reference_title="thesis, CIFAR-10:\nanother dataset",
        reference_legend="dashed: thesis, CIFAR-10 (own panel)"),
}

#: one colour per method, the same in every figure (tab10); other labels take the rest in turn
COLOURS = {
    "SGD": "C0", "ACP, fixed alpha": "C1", "ACP, heuristic alpha": "C2", "Natural Neural Networks": "C3",
    "KFAC": "C4", "KFAC (Gauss-Newton)": "C4", "batch norm + SGD": "C5", "mean-only batch norm + SGD": "C6",
    "centered GD": "C8", "KFAC (natural gradient)": "C9", "UBP (Gauss-Newton)": "C1",
    "UBP (exact Hessian)": "C3",
}


def _curves(run: Mapping[str, Any]) -> Mapping[str, Any]:
    """A train() result, also when given a stored record of load_or_run."""
    return run["results"] if "results" in run and "updates" not in run else run


def _colours(labels) -> dict[str, str]:
    taken = {COLOURS[label] for label in labels if label in COLOURS}
    spare = iter([f"C{i}" for i in range(10) if f"C{i}" not in taken] + ["black"] * len(labels))
    return {label: COLOURS.get(label) or next(spare) for label in labels}


def _legible(ax) -> None:
    ax.tick_params(which="both", labelsize=FONT_PT)
    ax.xaxis.label.set_size(FONT_PT)
    ax.yaxis.label.set_size(FONT_PT)
    ax.title.set_size(FONT_PT)


def _xlabel(panel: Panel, with_thesis: bool) -> str:
    if panel.x == "updates":
        return "updates + 1"
    return "training seconds + 1" + ("\n(dashed: Titan Black s)" if with_thesis else "")


def _thesis_curve(figure: str, panel: str, label: str):
    if label not in thesis_data.SERIES.get(figure, {}):
        return None
    return thesis_data.curve(figure, panel, label)


def _plain_log_y(ax) -> None:
    """Plain numbers (0.5, 1, 2, 5, ...) on a log y axis, as many as its range needs."""
    lo, hi = ax.get_ylim()
    decades = np.log10(hi / lo)
    subs = (1.0,) if decades > 2.5 else (1.0, 2.0, 5.0) if decades > 0.8 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
    ax.yaxis.set_major_locator(LogLocator(subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _setup_axes(ax, panel: Panel, with_thesis: bool) -> None:
    ax.set_xscale("log")
    if panel.log_y:
        ax.set_yscale("log")
        _plain_log_y(ax)
    ax.set_xlabel(_xlabel(panel, with_thesis))
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.12)
    _legible(ax)


def overlay(record: Mapping[str, Any], figure: str | None = None,
            runs: Mapping[str, Mapping[str, Any]] | None = None) -> Figure:
    """Our curves (solid) and the thesis's (dashed, same colour per method) on the same axes.

    ``record`` is a stored record of :func:`sokit.experiments.load_or_run`; ``figure`` a
    key of :data:`OVERLAYS` (default: the record's experiment); ``runs`` (label -> train()
    result or record) replaces the record's runs. Both curves are drawn in full on log
    axes at updates + 1 and seconds + 1, as the thesis plots them: its run of 3e5 updates
    continues where ours stops. A diverged run of ours ends with an x. The panels fill a
    2 x 2 grid; with three panels the legend takes the fourth cell, else it goes below.
    """
    name = figure or record["experiment"]
    spec = OVERLAYS[name]
    if runs is None:
        results = record["results"]
        runs = {spec.single or name: results} if "updates" in results else results
    runs = {label: _curves(run) for label, run in runs.items()}
    if not runs:
        raise ValueError("overlay needs at least one run")
    panels = [p for p in spec.panels if any(run.get(p.y) for run in runs.values())]
    panels += spec.fallback[: len(spec.panels) - len(panels)]
    cells = len(panels) + (spec.reference is not None)
    fig, grid = plt.subplots(2, 2, figsize=(WIDTH_IN, 6.4 if cells == 3 else 7.2), dpi=DPI,
                             layout="constrained")
    axes = list(grid.flat)
    colours = _colours(runs)
    thesis_drawn = False
    for ax, panel in zip(axes, panels):
        for label, run in runs.items():
            reference = _thesis_curve(spec.thesis, panel.thesis, label) if spec.thesis and panel.thesis else None
            if reference is not None:
                ax.plot(reference.x + 1, reference.y, "--", color=colours[label], lw=1.5)
                thesis_drawn = True
            if run.get(panel.y):
                x = np.asarray(run[panel.x], dtype=float) + 1
                ax.plot(x, run[panel.y], "-", color=colours[label], lw=2.2)
                if run.get("diverged"):
                    ax.plot(x[-1], run[panel.y][-1], "x", color=colours[label], ms=10, mew=2.5)
        _setup_axes(ax, panel, spec.thesis is not None and panel.thesis is not None)
    if spec.reference is not None:
        ax = axes[len(panels)]
        for label in runs:
            reference = _thesis_curve(spec.reference_figure, spec.reference.thesis, label)
            if reference is not None:
                ax.plot(reference.x + 1, reference.y, "--", color=colours[label], lw=1.5)
        _setup_axes(ax, spec.reference, True)
        ax.set_xlabel("Titan Black seconds + 1")
        ax.set_title(spec.reference_title, fontsize=FONT_PT)
        thesis_drawn = True
    handles = [Line2D([], [], color=colours[label], lw=2.2, label=label) for label in runs]
    updates = max((run["updates"][-1] for run in runs.values() if run.get("updates")), default=0)
    handles.append(Line2D([], [], color="black", lw=2.2,
                          label=f"solid: ours ({record.get('profile', '?')}, {updates:,} updates)"))
    if thesis_drawn:
        handles.append(Line2D([], [], color="black", lw=1.5, ls="--",
                              label=spec.reference_legend or f"dashed: thesis ({thesis_data.UPDATES:,} updates)"))
    if cells == 3:
        axes[3].set_axis_off()
        axes[3].legend(handles=handles, loc="center", fontsize=FONT_PT, frameon=False)
    else:
        for ax in axes[cells:]:
            ax.set_axis_off()
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=FONT_PT, frameon=False)
    return fig


#: the thesis's comparison figures shipped with the package (copies of the book's ``figures/``)
THESIS_FIGURES = Path(sokit.__file__).resolve().parent / "report" / "thesis_figures"


def thesis_figure_path(name: str) -> Path:
    """The path of the thesis's figure ``name`` (e.g. "2nd"): the copy shipped in
    ``sokit/report/thesis_figures/`` (so also in an installed package), else the book's
    ``figures/`` folder of the checkout sokit runs from."""
    stem = Path(name).stem
    candidates = [THESIS_FIGURES / f"{stem}.png"]
    root = sokit.experiments.store.repository_root()
    if root is not None:
        candidates.append(root / "figures" / f"{stem}.png")
    for path in candidates:
        if path.exists():
            return path
    shipped = sorted(p.stem for p in THESIS_FIGURES.glob("*.png"))
    raise FileNotFoundError(f"no thesis figure {name!r} in {' or '.join(str(c.parent) for c in candidates)}; "
                            f"the package ships {shipped}")


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


def _scatter_panel(ax, history: list[dict], space: Space, log_prescale: bool, vmin=None, vmax=None,
                   log_cost=False, size=60):
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
    ax.scatter(px, py, c=c, cmap="viridis", vmin=im.norm.vmin, vmax=im.norm.vmax, s=size, edgecolors="black")
    ax.set_xlabel("log10 learning rate")
    ax.set_ylabel("log10 prescale" if log_prescale else "prescale")
    return im


def _legible_colorbar(cbar) -> None:
    cbar.ax.tick_params(labelsize=FONT_PT)
    cbar.ax.yaxis.label.set_size(FONT_PT)


def plot_fig4_1(record: dict[str, Any]):
    """Figure 4.1's three panels (grid, random, biased random) from a stored ``fig4_1`` record,
    side by side with a shared prescale axis and one colour scale."""
    space = search_space(record["config"]["space"], log_prescale=False)
    hs = record["results"]["histories"]
    all_costs = [t["cost"] for h in hs.values() for t in h if t["cost"] is not None]
    fig, axes = plt.subplots(1, len(hs), figsize=(WIDTH_IN, 3.6), dpi=DPI, sharey=True, layout="constrained")
    axes = np.atleast_1d(axes)
    for ax, (m, h) in zip(axes, hs.items()):
        im = _scatter_panel(ax, h, space, False, min(all_costs), max(all_costs), size=30)
        ax.set_title(METHOD_LABELS[m])
        ax.set_xlabel("log10 lr")
        if ax is not axes[0]:
            ax.set_ylabel("")
        _legible(ax)
    _legible_colorbar(fig.colorbar(im, ax=axes, label="final train MSE"))
    return fig


def plot_fig2_2(record: dict[str, Any]):
    """Figure 2.2 from a stored ``fig2_2`` record: log10 final training MSE (colour)."""
    space = search_space(record["config"]["space"], log_prescale=True)
    fig, ax = plt.subplots(figsize=(WIDTH_IN * 0.8, 4.8), dpi=DPI, layout="constrained")
    im = _scatter_panel(ax, record["results"]["histories"]["random"], space, True, log_cost=True)
    ax.set_ylabel("log10 prescale\n(initial weight variance x n_in)")
    _legible(ax)
    _legible_colorbar(fig.colorbar(im, ax=ax, label="log10 final training MSE"))
    return fig


def plot_correction(run: Mapping[str, Any], start: int = 0) -> Figure:
    """A ``UBP(monitor=True)`` run from update ``start`` on: its minibatch loss (top) and the
    relative correction ``|UBP - BP| / |BP|`` below each layer (bottom, log y, the signal's
    own size dashed), against the update."""
    corrections = np.array(run["diagnostics"]["relative_correction"])
    every = run["minibatch_every"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(WIDTH_IN, 5.6), dpi=DPI, sharex=True,
                                      layout="constrained", height_ratios=(1, 1.4))
    loss = np.array(run["minibatch_loss"])
    updates = np.arange(len(loss)) * every
    keep = updates >= start
    top.plot(updates[keep], loss[keep], color="C1", lw=1)
    top.set_ylabel("minibatch MSE")
    steps = np.arange(len(corrections))
    for k in range(corrections.shape[1]):
        bottom.plot(steps[start:], corrections[start:, k], lw=1, color=plt.cm.viridis(k / corrections.shape[1]),
                    label=f"below layer {k + 2}")
    bottom.axhline(1.0, color="black", ls="--", lw=1)
    bottom.set_yscale("log")
    bottom.set_ylabel("|UBP - BP| / |BP|")
    bottom.set_xlabel("update")
    bottom.legend(fontsize=FONT_PT - 3, ncol=4, loc="upper left")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.4)
        _legible(ax)
    return fig
