"""sokit.report.plots: the overlays of our curves on the thesis's, and the figures' legibility."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from sokit import thesis  # noqa: E402
from sokit.report import plots  # noqa: E402

#: the body text of the book is about 16 px; a figure's text must be at least ~14 px when the
#: figure is shown at the content width (676 px: the text column of sphinx-book-theme in a
#: 1280 px window, measured in Chromium)
MIN_PX, CONTENT_PX = 14, 676


def run(labels_scale=1.0, classifier=False, diverged=False):
    out = {"updates": [1, 10, 100, 1000], "seconds": [0.1, 1.0, 10.0, 100.0],
           "train_loss": [200.0 * labels_scale, 60.0, 20.0, 10.0], "test_loss": [210.0, 70.0, 25.0, 12.0],
           "diverged": diverged}
    if classifier:
        out.update(train_error=[0.9, 0.5, 0.3, 0.2], test_error=[0.9, 0.55, 0.35, 0.3])
    return out


def record(experiment, labels, **kw):
    return {"experiment": experiment, "profile": "quick", "results": {label: run(**kw) for label in labels}}


def lines(ax, style):
    return [line for line in ax.lines if line.get_linestyle() == style and len(line.get_xdata()) > 1]


def check_legible(fig):
    scale = min(1.0, CONTENT_PX / (fig.get_figwidth() * fig.dpi))  # shown no larger than drawn
    texts = []
    for ax in fig.axes:
        if ax.axison:  # the legend's cell has no axes to read
            texts += ax.get_xticklabels(which="both") + ax.get_yticklabels(which="both")
            texts += [ax.xaxis.label, ax.yaxis.label]
        legend = ax.get_legend()
        if legend:
            texts += legend.get_texts()
    for legend in fig.legends:
        texts += legend.get_texts()
    texts = [t for t in texts if t.get_text()]
    assert texts
    small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() * fig.dpi / 72 * scale < MIN_PX]
    assert not small, f"text smaller than {MIN_PX} px at the book's width: {small}"


@pytest.mark.parametrize("figure", ["fig6_1", "fig6_2"])
def test_overlay_draws_ours_solid_and_the_thesis_dashed_per_method_on_every_panel(figure):
    labels = list(thesis.SERIES[figure])
    fig = plots.overlay(record(figure, labels))
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == 3
    for ax, name in zip(panels, ["train MSE vs updates", "train MSE vs time", "test MSE vs time"]):
        solid, dashed = lines(ax, "-"), lines(ax, "--")
        assert len(solid) == len(dashed) == len(labels)
        # same colour per method, and the thesis's curve drawn in full (to 3e5 updates)
        assert [line.get_color() for line in solid] == [line.get_color() for line in dashed]
        assert len({line.get_color() for line in solid}) == len(labels)
        for line, label in zip(dashed, labels):
            reference = thesis.curve(figure, name, label)
            assert list(line.get_xdata()) == list(reference.x + 1)
        assert ax.get_xscale() == "log"
    top_left = panels[0]
    assert max(lines(top_left, "--")[0].get_xdata()) > 2e5 > max(lines(top_left, "-")[0].get_xdata())
    assert list(lines(top_left, "-")[0].get_xdata()) == [2, 11, 101, 1001]  # updates + 1, as the thesis plots
    assert "seconds" in panels[1].get_xlabel() and "Titan Black" in panels[1].get_xlabel()
    legend = [t.get_text() for t in fig.axes[3].get_legend().get_texts()]
    assert labels == legend[: len(labels)]
    assert any("dashed: thesis" in t for t in legend) and any("solid: ours (quick, 1,000 updates)" in t for t in legend)
    check_legible(fig)
    plt.close(fig)


def test_fig5_1_overlays_the_thesis_only_where_it_has_a_panel_and_marks_divergence():
    rec = record("fig5_1", ["SGD", "UBP (Gauss-Newton)"])
    rec["results"]["UBP (exact Hessian)"] = run(diverged=True)
    fig = plots.overlay(rec)
    panels = [ax for ax in fig.axes if ax.lines]
    assert [len(lines(ax, "--")) for ax in panels] == [2, 0, 0]  # the thesis's Figure 5.1: updates only
    assert all(len(lines(ax, "-")) == 3 for ax in panels)
    assert any(line.get_marker() == "x" for line in panels[0].lines)
    check_legible(fig)
    plt.close(fig)


def test_fashion_stand_in_keeps_the_thesis_cifar_curves_in_their_own_labelled_panel():
    labels = ["SGD", "KFAC (Gauss-Newton)", "ACP, fixed alpha"]
    fig = plots.overlay(record("fig6_3_fashion", labels, classifier=True))
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == 4
    ours, reference = panels[:3], panels[3]
    assert all(len(lines(ax, "-")) == 3 and not lines(ax, "--") for ax in ours)
    assert [ax.get_ylabel() for ax in ours] == ["train cross-entropy", "train error rate", "test error rate"]
    assert len(lines(reference, "--")) == 3 and not lines(reference, "-")
    assert "CIFAR-10" in reference.get_title() and "another dataset" in reference.get_title()
    legend = [t.get_text() for t in fig.axes[3].get_legend().get_texts()] if fig.axes[3].get_legend() else \
        [t.get_text() for t in fig.legends[0].get_texts()]
    assert "dashed: thesis, CIFAR-10 (own panel)" in legend
    check_legible(fig)
    plt.close(fig)
    # a stored run older than the error rates: the test loss takes their place
    fig = plots.overlay(record("fig6_3_fashion", labels))
    assert [ax.get_ylabel() for ax in fig.axes if ax.lines][:2] == ["train cross-entropy", "test cross-entropy"]
    plt.close(fig)


def test_chapter_2_baseline_overlays_the_thesis_sgd_and_runs_can_be_given():
    rec = {"experiment": "sgd_autoencoder", "profile": "quick", "results": run()}
    fig = plots.overlay(rec)
    assert all(len(lines(ax, "--")) == 1 == len(lines(ax, "-")) for ax in fig.axes if ax.lines)
    plt.close(fig)
    fig = plots.overlay(rec, runs={"SGD": rec, "SGD (another run)": {"results": run()}})
    assert all(len(lines(ax, "-")) == 2 for ax in fig.axes if ax.lines)
    plt.close(fig)
    with pytest.raises(ValueError, match="at least one run"):
        plots.overlay(rec, runs={})


def test_scatter_figures_are_legible_at_the_book_width():
    from sokit.experiments import load

    for name, draw in (("fig4_1", plots.plot_fig4_1), ("fig2_2", plots.plot_fig2_2)):
        stored = load(name, "quick") or load(name, "smoke")
        if stored is None:
            pytest.skip(f"no stored {name}")
        fig = draw(stored)
        check_legible(fig)
        plt.close(fig)


def test_plot_correction_draws_the_loss_and_every_layers_correction_from_start():
    """Top: the minibatch loss from update ``start``; bottom: one log-scale line per layer
    and the dashed level 1 (the signal's own size)."""
    corrections = [[0.1 * (1 + t) * (k + 1) for k in range(3)] for t in range(20)]
    run_ = {"minibatch_loss": [50.0 - t for t in range(10)], "minibatch_every": 2,
            "diagnostics": {"relative_correction": corrections}}
    fig = plots.plot_correction(run_, start=6)
    top, bottom = fig.axes
    (loss,) = top.get_lines()
    assert list(loss.get_xdata()) == [6, 8, 10, 12, 14, 16, 18] and loss.get_ydata()[0] == 47.0
    lines = bottom.get_lines()
    assert bottom.get_yscale() == "log" and len(lines) == 4
    assert list(lines[0].get_xdata()) == list(range(6, 20)) and lines[2].get_ydata()[0] == pytest.approx(2.1)
    assert lines[-1].get_linestyle() == "--" and list(lines[-1].get_ydata()) == [1.0, 1.0]
    plt.close(fig)
