"""The book's tables, computed from stored records beside the thesis's numbers (:mod:`sokit.thesis`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sokit import thesis
from sokit.experiments.searches import METHOD_LABELS


def summary(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per method: final train loss, best test loss, training seconds, updates done."""
    out = {}
    for label, res in results.items():
        out[label] = {"train": res["train_loss"][-1] if res["train_loss"] else math.nan,
                      "best_test": min(res["test_loss"]) if res["test_loss"] else math.nan,
                      "seconds": res["wall_clock_s"],
                      "updates": res["updates"][-1] if res["updates"] else 0,
                      "diverged": res["diverged"]}
    return out


def speedup(ours_seconds: float, ours_updates: int, thesis_seconds: float | None,
            thesis_updates: int = thesis.UPDATES) -> float | None:
    """How many times faster per update we train than the thesis's Titan Black run."""
    if thesis_seconds is None or not ours_updates or not ours_seconds > 0:
        return None
    return (thesis_seconds / thesis_updates) / (ours_seconds / ours_updates)


def comparison_table(record: dict[str, Any]) -> str:
    """A markdown table of our numbers (``record`` from load_or_run) next to the thesis's.

    The speed-up is per update (seconds per update of the thesis over ours), so that a
    run shorter than the thesis's 3e5 updates can still be compared.
    """
    reference = thesis.FIG6_FINAL.get(record["experiment"], {})
    prov = record["provenance"]
    head = (f"Ours: profile `{record['profile']}`, {record['config']['updates']:,} updates, "
            f"{prov['device']} ({prov['device_type']}, {prov['cpu_threads']} threads), "
            f"commit {prov['commit'][:10]}. Thesis: 3e5 updates, Titan Black.\n\n")

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    rows = ["| method | train (ours) | best test (ours) | seconds (ours) | "
            "train (thesis) | best test (thesis) | seconds (thesis) | speed-up per update |",
            "|---|---|---|---|---|---|---|---|"]
    for label, s in summary(record["results"]).items():
        t = reference.get(label, (None, None, None))
        mark = " (diverged)" if s["diverged"] else ""
        up = speedup(s["seconds"], s["updates"], t[2])
        rows.append(f"| {label}{mark} | {fmt(s['train'], '.3g')} | {fmt(s['best_test'], '.3g')} | "
                    f"{fmt(s['seconds'], '.0f')} | {fmt(t[0], '.3g')} | {fmt(t[1], '.3g')} | "
                    f"{fmt(t[2], ',')} | {fmt(up, '.2g')}{'x' if up is not None else ''} |")
    return head + "\n".join(rows)


def table4_1_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of Table 4.I: ours (mean, std over searches) beside the thesis's."""
    rows = []
    for m, s in record["results"]["methods"].items():
        ref = thesis.TABLE4_1.get(m)
        rows.append({"method": METHOD_LABELS[m], "mean": round(s["mean"], 3), "std": round(s["std"], 3),
                     "thesis mean": ref[0] if ref else None, "thesis std": ref[1] if ref else None})
    return rows


def _interp_loglog(xs: list[float], ys: list[float], x: float) -> float:
    """Our curve at ``x`` updates, log-log interpolated between evaluation points (NaN outside,
    and past the last evaluation a diverged run recorded)."""
    xs = xs[:len(ys)]
    if not xs or not xs[0] <= x <= xs[-1]:
        return math.nan
    return float(np.exp(np.interp(math.log(x), np.log(xs), np.log(ys))))


def checkpoints(last: int) -> list[int]:
    """The update counts a comparison reports: every decade from 10 up to ``last``, and ``last``."""
    points = [10 ** k for k in range(1, 7) if 10 ** k <= last]
    return points + ([last] if last not in points else [])


def equal_updates(record: dict[str, Any], figure: str | None = None,
                  panel: str = "train MSE vs updates") -> list[dict[str, Any]]:
    """Per method and checkpoint: our training loss and the thesis's at the same number of
    updates (its plotted curve, :func:`sokit.thesis.curve`), their ratio, and the thesis's
    final value. Methods the thesis's figure does not have are left out."""
    figure = figure or record["experiment"]
    rows = []
    for label, res in record["results"].items():
        if label not in thesis.SERIES.get(figure, {}) or not res["updates"]:
            continue
        reference = thesis.curve(figure, panel, label)
        for u in checkpoints(res["updates"][-1]):
            ours = _interp_loglog(res["updates"], res["train_loss"], u)
            theirs = reference.at(u)
            rows.append({"method": label, "updates": u, "ours": ours, "thesis": theirs,
                         "ratio": ours / theirs if theirs > 0 else math.nan, "thesis final": reference.final,
                         "diverged": res["diverged"],
                         # the thesis evaluated once per epoch: before its first evaluation its
                         # curve is a straight line from the initial loss, not a measurement
                         "thesis measured": u >= reference.x[1]})
    return rows


#: ours and the thesis's "agree" at equal updates within this factor either way
AGREE = 1.5
#: a value inside the band is no agreement when, since the previous checkpoint, ours fell by
#: less than FLAT (relative) while the thesis's fell by more than FALLING: the curves cross
FLAT, FALLING = 0.01, 0.10


def _crossing(row: dict[str, Any], previous: dict[str, Any] | None) -> bool:
    """Ours flat where the thesis's falls: a ratio near 1 only because the curves cross."""
    if previous is None:
        return False
    return row["ours"] > (1 - FLAT) * previous["ours"] and row["thesis"] < (1 - FALLING) * previous["thesis"]


def equal_update_verdict(record: dict[str, Any], figure: str | None = None) -> str:
    """One line per comparison: at our last checkpoint, which methods agree with the
    thesis's curve within :data:`AGREE` and which are above or below it (ours / thesis's);
    inside the band, a curve of ours that is flat where the thesis's falls (see
    :data:`FLAT`) is "ours flat, thesis's falling", not agreement."""
    rows = equal_updates(record, figure)
    if not rows:
        return "no thesis curve to compare with"
    last = max(r["updates"] for r in rows)
    groups: dict[str, list[str]] = {"agree": [], "ours flat, thesis's falling": [], "ours higher": [],
                                    "ours lower": [], "diverged": []}
    for r in (r for r in rows if r["updates"] == last):
        if r["diverged"] and not math.isfinite(r["ratio"]):
            groups["diverged"].append(r["method"])
            continue
        before = [p for p in rows if p["method"] == r["method"] and p["updates"] < last]
        key = ("agree" if 1 / AGREE <= r["ratio"] <= AGREE else "ours higher" if r["ratio"] > AGREE
               else "ours lower")
        if key == "agree" and _crossing(r, before[-1] if before else None):
            key = "ours flat, thesis's falling"
        groups[key].append(f"{r['method']} {r['ratio']:.2f}")
    measured = all(r["thesis measured"] for r in rows if r["updates"] == last)
    star = "" if measured else " (thesis before its first evaluation)"
    parts = [f"{k}: {', '.join(v)}" for k, v in groups.items() if v]
    return f"at {last:,} updates, ours / thesis's{star}: " + "; ".join(parts)


def equal_updates_table(record: dict[str, Any], figure: str | None = None) -> str:
    """:func:`equal_updates` as a Markdown table (ratio = ours / thesis's, at equal updates).

    A thesis value marked * lies before the thesis's first evaluation (one epoch, 300
    updates): it is read off the straight line the figure draws from the initial loss.
    """
    lines = ["| method | updates | ours | thesis | ours / thesis | thesis after 3e5 |", "|---|---|---|---|---|---|"]
    for r in equal_updates(record, figure):
        mark = " (diverged)" if r["diverged"] else ""
        star = "" if r["thesis measured"] else "*"
        lines.append(f"| {r['method']}{mark} | {r['updates']:,} | {r['ours']:.3g} | {r['thesis']:.3g}{star} | "
                     f"{r['ratio']:.2f}{star} | {r['thesis final']:.3g} |")
    note = ("\n\n\\* before the thesis's first evaluation (one epoch, 300 updates): read off the straight "
            "line its figure draws from the initial loss, not a measurement.")
    return "\n".join(lines) + note
