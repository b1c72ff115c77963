"""Every thesis figure and table at a glance: our stored result beside the thesis's numbers.

The book's introduction renders :func:`markdown_table`; each row is computed from the
stored result that the chapter shows (:func:`sokit.experiments.pick_profile`), so the
summary cannot drift from the chapters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sokit import experiments, thesis
from sokit.experiments.searches import METHOD_LABELS


@dataclass(frozen=True)
class Item:
    """One figure or table of the thesis and the experiment that reproduces it."""

    thesis: str
    experiment: str
    chapter: str
    thesis_numbers: str
    ours: Callable[[dict[str, Any]], str]
    note: str = ""


def _num(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, spec)


def final_train(record: dict[str, Any]) -> str:
    """Final training loss per method of a comparison figure ("diverged" where it did)."""
    out = []
    for label, res in record["results"].items():
        value = "diverged" if res["diverged"] else _num(res["train_loss"][-1] if res["train_loss"] else None)
        out.append(f"{label} {value}")
    return "; ".join(out)


def single_run(record: dict[str, Any]) -> str:
    """Final training and best test loss of a one-method experiment."""
    res = record["results"]
    if res["diverged"]:
        return "diverged"
    return f"train {_num(res['train_loss'][-1])}, best test {_num(min(res['test_loss']))}"


def search_table(record: dict[str, Any]) -> str:
    """Mean +- std over searches of the best final training loss, per search method."""
    return "; ".join(f"{METHOD_LABELS[m]} {s['mean']:.2f} ± {s['std']:.2f}"
                     for m, s in record["results"]["methods"].items())


def search_scatter(record: dict[str, Any]) -> str:
    """Per search method: the number of experiments and the lowest final loss found."""
    out = []
    for method, history in record["results"]["histories"].items():
        costs = [h["cost"] for h in history if h["status"] == "ok" and math.isfinite(h["cost"])]
        out.append(f"{method}: best {_num(min(costs) if costs else None)} of {len(history)}")
    return "; ".join(out)


def _thesis_curves(name: str) -> str:
    return "; ".join(f"{label} {train:.3g}" for label, (train, _, _) in thesis.FIG6_FINAL[name].items())


def items() -> list[Item]:
    """The thesis's experimental figures and tables, in the thesis's order."""
    t41 = "; ".join(f"{m.replace('_', ' ')} {mean} ± {std}" for m, (mean, std) in thesis.TABLE4_1.items())
    return [
        Item("Figure 2.2", "fig2_2", "chapter 2", "a scatter of final losses (no number printed)",
             search_scatter),
        Item("Figure 4.1", "fig4_1", "chapter 4", "a scatter of the points each search chose",
             search_scatter),
        Item("Table 4.I", "table4_1", "chapter 4", t41, search_table),
        Item("Figure 5.1", "fig5_1", "chapter 5",
             "; ".join(f"{k} {v}" for k, v in thesis.FIG5_1_FINAL_TRAIN.items()), final_train),
        Item("Figure 6.1", "fig6_1", "chapter 6", _thesis_curves("fig6_1"), final_train),
        Item("Figure 6.2", "fig6_2", "chapter 6", _thesis_curves("fig6_2"), final_train),
        Item("Figure 6.2, SGD curve", "sgd_autoencoder", "chapter 2", "SGD 2.11", single_run),
        Item("Figure 6.3", "fig6_3", "chapter 6",
             thesis.FIG6_3_SUMMARY,
             final_train, note="CIFAR-10 is download-only and cannot be fetched where the book "
                               "is built; see the Fashion-MNIST stand-in below"),
        Item("Figure 6.3 (stand-in)", "fig6_3_fashion", "chapter 6",
             "none: not the thesis's experiment (Fashion-MNIST instead of CIFAR-10)", final_train),
    ]


def budget(config: dict[str, Any]) -> str:
    """The training budget of a configuration, in the thesis's units."""
    if "updates" in config:
        return f"{config['updates']:,} updates"
    parts = [f"{config[k]:,} {k}" for k in ("searches", "experiments", "iterations") if k in config]
    return " x ".join(parts)


def rows() -> list[dict[str, str]]:
    """One row per :func:`items` entry: what the thesis reports and what we stored."""
    out = []
    for item in items():
        profile = experiments.pick_profile(item.experiment)
        record = experiments.load(item.experiment, profile)
        if not experiments.is_current(item.experiment, profile):
            ours, where, profile = f"not stored{': ' + item.note if item.note else ''}", "-", "-"
        else:
            prov = record["provenance"]
            ours = item.ours(record)
            profile = f"{profile} ({budget(record['config'])})"
            where = f"{prov['device']} ({prov['device_type']}), commit {prov['commit'][:8]}"
        out.append({"thesis": item.thesis, "experiment": f"`{item.experiment}`", "chapter": item.chapter,
                    "profile": profile, "thesis's numbers": item.thesis_numbers, "ours": ours,
                    "hardware": where})
    return out


def markdown_table() -> str:
    """:func:`rows` as a Markdown table."""
    table = rows()
    head = list(table[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[k].replace("|", "\\|") for k in head) + " |" for r in table]
    return "\n".join(lines)
