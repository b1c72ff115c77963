"""The numbers the thesis reports, in one place (read off ``shared/thesis/REFERENCE.md``).

Experiments, tables and the book's summary compare against these; nothing here is
computed by sokit.
"""

from __future__ import annotations

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
