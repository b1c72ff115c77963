"""Every thesis figure and table at a glance: what we stored, against what the thesis ran, and
how the two compare at equal numbers of updates.

The book's introduction renders :func:`markdown_table`; each row is computed from the
stored result that the chapter shows (:func:`sokit.experiments.pick_profile`), so the
summary cannot drift from the chapters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sokit import experiments, thesis
from sokit.experiments.searches import METHOD_LABELS
from sokit.report import tables


@dataclass(frozen=True)
class Item:
    """One figure or table of the thesis, the experiment that reproduces it, the thesis's
    budget and how ours compares (a function of the stored record)."""

    thesis: str
    experiment: str
    chapter: str
    thesis_budget: str
    verdict: Callable[[dict[str, Any]], str]
    note: str = ""


def curves(figure: str | None = None) -> Callable[[dict[str, Any]], str]:
    """The equal-update verdict against the thesis's curves of ``figure`` (default: the
    record's own)."""
    return lambda record: tables.equal_update_verdict(record, figure)


def sgd_curve(record: dict[str, Any]) -> str:
    """The single SGD run against the thesis's SGD curve of Fig 6.2."""
    return tables.equal_update_verdict(dict(record, results={"SGD": record["results"]}), "fig6_2")


def ranking(record: dict[str, Any]) -> str:
    """Table 4.I: the order of the search methods by mean best loss, and their spread, ours
    beside the thesis's (absolute losses are not comparable: see chapter 4)."""
    ours = record["results"]["methods"]
    order = sorted((m for m in ours if m in thesis.TABLE4_1), key=lambda m: ours[m]["mean"])
    theirs = sorted(thesis.TABLE4_1, key=lambda m: thesis.TABLE4_1[m][0])
    spread = sorted(order, key=lambda m: ours[m]["std"])
    same = "same order" if order == theirs else "a different order"
    return (f"{same}: ours {' < '.join(METHOD_LABELS[m] for m in order)}, thesis's "
            f"{' < '.join(METHOD_LABELS[m] for m in theirs)}; smallest spread: ours "
            f"{METHOD_LABELS[spread[0]]}, thesis's biased random")


def scatter(record: dict[str, Any]) -> str:
    """A scatter of searched points: the number of experiments, nothing to compare per update."""
    n = sum(len(h) for h in record["results"]["histories"].values())
    return f"a scatter ({n} experiments): compared by its shape in the chapter"


def stand_in(record: dict[str, Any]) -> str:
    return "none: not the thesis's experiment"


def items() -> list[Item]:
    """The thesis's experimental figures and tables, in the thesis's order."""
    full = f"{thesis.UPDATES:,} updates"
    return [
        Item("Figure 2.2", "fig2_2", "chapter 2", "99 experiments (points plotted)", scatter),
        Item("Figure 4.1", "fig4_1", "chapter 4", "3 x 100 experiments (points plotted)", scatter),
        Item("Table 4.I", "table4_1", "chapter 4", "100 searches x 100 experiments x 100 iterations", ranking),
        Item("Figure 5.1", "fig5_1", "chapter 5", full, curves()),
        Item("Figure 6.1", "fig6_1", "chapter 6", full, curves()),
        Item("Figure 6.2", "fig6_2", "chapter 6", full, curves()),
        Item("Figure 6.2, SGD curve", "sgd_autoencoder", "chapter 2", full, sgd_curve),
        Item("Figure 6.3", "fig6_3", "chapter 6", full, curves(),
             note="CIFAR-10 is download-only and cannot be fetched where the book "
                  "is built; see the Fashion-MNIST stand-in below"),
        Item("Figure 6.3 (stand-in)", "fig6_3_fashion", "chapter 6", "-", stand_in),
    ]


def budget(config: dict[str, Any]) -> str:
    """The training budget of a configuration, in the thesis's units."""
    if "updates" in config:
        return f"{config['updates']:,} updates"
    singular = {"searches": "search", "experiments": "experiment", "iterations": "iteration"}
    parts = [f"{config[k]:,} {k if config[k] != 1 else singular[k]}" for k in singular if k in config]
    return " x ".join(parts)


def rows() -> list[dict[str, str]]:
    """One row per :func:`items` entry: the profile stored, our budget beside the thesis's,
    and the verdict at equal updates."""
    out = []
    for item in items():
        profile = experiments.pick_profile(item.experiment)
        record = experiments.load(item.experiment, profile)
        if not experiments.is_current(item.experiment, profile):
            stored, ours, verdict, where = "-", "-", f"not stored{': ' + item.note if item.note else ''}", "-"
        else:
            prov = record["provenance"]
            stored, ours, verdict = profile, budget(record["config"]), item.verdict(record)
            where = f"{prov['device']} ({prov['device_type']}), commit {prov['commit'][:8]}"
        out.append({"thesis": item.thesis, "experiment": f"`{item.experiment}`", "chapter": item.chapter,
                    "profile stored": stored, "ours ran": ours, "the thesis ran": item.thesis_budget,
                    "at equal updates": verdict, "hardware": where})
    return out


def markdown_table() -> str:
    """:func:`rows` as a Markdown table."""
    table = rows()
    head = list(table[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[k].replace("|", "\\|") for k in head) + " |" for r in table]
    return "\n".join(lines)
