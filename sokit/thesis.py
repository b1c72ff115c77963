"""What the thesis reports, in one place: its printed numbers and its plotted curves.

The numbers were read off ``shared/thesis/REFERENCE.md``; the curves are every vertex of
the thesis's vector figures (``sokit/thesis_curves/``, extracted from the thesis's PDFs;
its README says how and lists the inconsistencies found). Experiments, tables and the
book compare against these; nothing here is computed by sokit.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Table 4.I: final empirical risk of the best configuration, (mean, std) over 100 searches
TABLE4_1 = {"grid": (27.23, 0.42), "random": (27.02, 0.28), "biased_random": (26.61, 0.13)}

#: Figure 5.1: final training MSE after about 3e5 updates (each UBP update took about
#: 10x an SGD update there)
FIG5_1_FINAL_TRAIN = {"SGD": 23.6, "UBP (Gauss-Newton)": 18.6}

#: Figures 6.1 and 6.2, after 3e5 updates on a Titan Black: (final train MSE, best test
#: MSE, wall-clock s), read off the figures (about +-2 %). Fig 6.2 rows follow its legend
#: (the caption swaps the colours of the two ACP curves). Fig 6.1's ACP row is Fig 6.2's
#: same run.
FIG6_FINAL = {
    "fig6_1": {
        "SGD": (2.11, 4.46, 1589),
        "mean-only batch norm + SGD": (1.52, 3.33, 2267),
        "centered GD": (2.38, 3.41, 1890),
        "ACP, fixed alpha": (1.03, 3.13, 3232),
    },
    "fig6_2": {
        "ACP, fixed alpha": (1.03, 3.13, 3232),
        "ACP, heuristic alpha": (1.19, 3.04, 3995),
        "Natural Neural Networks": (1.08, 3.14, 13941),
        "KFAC": (0.92, 3.36, 7328),
        "batch norm + SGD": (1.82, 3.71, 3154),
        "SGD": (2.11, 4.46, 1589),
    },
}

#: Figure 6.3 in words (the figure plots only time): train cross-entropy reached
FIG6_3_SUMMARY = "train cross-entropy < 0.01 for ACP (fixed alpha) and both KFACs; SGD 0.42"

#: updates behind every final number above
UPDATES = 300_000


# ------------------------------------------------------------ the thesis's curves as data
#: our legend label -> the thesis's series name, per figure (the legend, not the caption:
#: sokit/thesis_curves/README.md shows that Fig 6.2's caption swaps the two ACPs)
SERIES = {
    "fig6_1": {"SGD": "standard_sgd", "mean-only batch norm + SGD": "mean_only_bn",
               "centered GD": "centered_gradient_descent", "ACP, fixed alpha": "acp_fixedalpha"},
    "fig6_2": {"ACP, fixed alpha": "acp_fixedalpha", "ACP, heuristic alpha": "acp",
               "Natural Neural Networks": "nnn2", "KFAC": "kfac", "batch norm + SGD": "bn",
               "SGD": "standard_sgd"},
    "fig6_3": {"ACP, fixed alpha": "acp_fixedalpha", "ACP, heuristic alpha": "acp",
               "Natural Neural Networks": "nnn2", "KFAC (Gauss-Newton)": "kfac", "batch norm + SGD": "bn",
               "SGD": "standard_sgd", "KFAC (natural gradient)": "kfac_nat"},
    "fig5_1": {"SGD": "train standard_sgd", "UBP (Gauss-Newton)": "train jaco_update"},
}

CURVES = Path(__file__).resolve().parent / "thesis_curves"


@dataclass(frozen=True)
class Curve:
    """One plotted series of a thesis figure: ``x`` in updates or seconds (the figure's
    ``x - 1`` offset removed), ``y`` the plotted quantity (``y_name``)."""

    figure: str
    panel: str
    series: str
    x_name: str
    y_name: str
    x: np.ndarray
    y: np.ndarray

    def at(self, x: float) -> float:
        """The curve at ``x`` (updates or seconds), interpolated in log-log between vertices
        (the figure evaluated once per epoch); NaN outside the plotted range."""
        lx, ly = np.log(self.x + 1), np.log(self.y)
        if not lx[0] <= math.log(x + 1) <= lx[-1]:
            return math.nan
        return float(np.exp(np.interp(math.log(x + 1), lx, ly)))

    @property
    def final(self) -> float:
        return float(self.y[-1])


@functools.cache
def _rows(figure: str) -> tuple[tuple[str, ...], ...]:
    path = CURVES / f"{figure}.csv"
    if not path.exists():
        raise FileNotFoundError(f"no extracted curves for {figure!r} at {path}; known: "
                                f"{sorted(p.stem for p in CURVES.glob('fig*.csv') if '_markers' not in p.stem)}")
    with path.open(newline="") as f:
        return tuple(tuple(row) for row in csv.reader(f))[1:]


def panels(figure: str) -> list[str]:
    """The panels of a figure, in the file's order (e.g. "train MSE vs updates")."""
    return list(dict.fromkeys(row[1] for row in _rows(figure)))


def curve(figure: str, panel: str, series: str, visible_only: bool = True) -> Curve:
    """A series of a thesis figure, e.g. ``curve("fig6_2", "train MSE vs updates", "kfac")``.

    ``series`` is the thesis's legend name or one of our labels (:data:`SERIES`). With
    ``visible_only`` the vertices flagged outside the axes or clipped by the page are
    dropped (exactly what the figure shows).
    """
    series = SERIES.get(figure, {}).get(series, series)
    rows = [r for r in _rows(figure) if r[1] == panel and r[2] == series and not (visible_only and r[7])]
    if not rows:
        known = sorted({r[2] for r in _rows(figure) if r[1] == panel})
        raise KeyError(f"{figure}: no series {series!r} in panel {panel!r}; series there: {known}, "
                       f"panels: {panels(figure)}")
    x = np.array([float(r[4]) for r in rows]) - 1.0  # plotted at updates + 1 and seconds + 1
    return Curve(figure, panel, series, rows[0][3], rows[0][5], x, np.array([float(r[6]) for r in rows]))
