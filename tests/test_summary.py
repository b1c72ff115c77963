"""The book's results-at-a-glance table (sokit.report.glance)."""

from __future__ import annotations

import json

from sokit import experiments
from sokit.report import glance as summary


def test_every_thesis_experiment_has_a_row():
    names = {item.experiment for item in summary.items()}
    searches = {n for n in experiments.registry() if n.endswith(("_hparams", "_search"))} | {"fig6_acp_alpha"}
    probes = {"fig5_1_prescale", "fig5_1_setback"}  # probes of fig5_1's outcome, shown in chapter 5
    registered = set(experiments.registry()) - searches - probes  # searches: chapters 5 and 6
    assert names == registered, f"summary rows missing for {registered - names}, unknown {names - registered}"


def test_rows_come_from_the_stored_result_the_chapter_shows(tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path))
    monkeypatch.delenv("SOKIT_PROFILE", raising=False)
    assert all(r["at equal updates"].startswith("not stored") for r in summary.rows())
    config = experiments.get("fig6_2").configs["quick"]
    run = {"updates": [1000], "seconds": [1.0], "train_loss": [12.5], "test_loss": [13.0], "diverged": False}
    results = {label: dict(run) for label in config["methods"]}
    results["KFAC"] = dict(run, diverged=True, train_loss=[])
    record = {"experiment": "fig6_2", "profile": "quick", "config": config, "results": results,
              "provenance": {"device": "Test GPU", "device_type": "cuda", "commit": "0123456789ab"}}
    (tmp_path / "fig6_2").mkdir()
    (tmp_path / "fig6_2" / "quick.json").write_text(json.dumps(record))
    row = next(r for r in summary.rows() if r["experiment"] == "`fig6_2`")
    assert row["profile stored"] == "quick" and row["ours ran"] == "1,000 updates"
    assert row["the thesis ran"] == "300,000 updates"
    # the thesis's SGD curve at 1,000 updates is 33.4: 12.5 / 33.4 = 0.37, below the agreement band
    verdict = row["at equal updates"]
    assert verdict.startswith("at 1,000 updates, ours / thesis's: ")
    assert "ours lower: " in verdict and "SGD 0.37" in verdict and "diverged: KFAC" in verdict
    assert row["hardware"] == "Test GPU (cuda), commit 01234567"
    table = summary.markdown_table()
    assert table.count("\n") == len(summary.items()) + 1


def test_verdict_groups_methods_by_their_ratio_at_the_last_checkpoint():
    from sokit import thesis
    from sokit.report import tables

    def run(label: str, scale: float) -> dict:
        at = [10, 100, 1000]
        reference = thesis.curve("fig6_2", "train MSE vs updates", label)
        return {"updates": at, "train_loss": [scale * reference.at(u) for u in at], "diverged": False}

    results = {"SGD": run("SGD", 1.2), "KFAC": run("KFAC", 3.0), "batch norm + SGD": run("batch norm + SGD", 0.5),
               "Natural Neural Networks": dict(run("Natural Neural Networks", 1.0), diverged=True, train_loss=[5.0])}
    verdict = tables.equal_update_verdict({"experiment": "fig6_2", "results": results})
    assert verdict == ("at 1,000 updates, ours / thesis's: agree: SGD 1.20; ours higher: KFAC 3.00; "
                       "ours lower: batch norm + SGD 0.50; diverged: Natural Neural Networks")


def test_a_flat_curve_crossing_the_thesis_falling_one_is_not_agreement():
    """fig5_1's long profile: UBP sits on the plateau (52.8 at 1,000 and 3,000 updates) while
    the thesis's UBP falls from 82.6 to 59.9; the ratio 0.88 is inside the band."""
    from sokit.report import tables

    flat = {"updates": [10, 100, 1000, 3000], "train_loss": [60.0, 53.0, 52.8, 52.8], "diverged": False}
    falling = dict(flat, train_loss=[60.0, 53.0, 52.8, 45.0])
    verdict = tables.equal_update_verdict({"experiment": "fig5_1", "results": {"UBP (Gauss-Newton)": flat}})
    assert verdict == "at 3,000 updates, ours / thesis's: ours flat, thesis's falling: UBP (Gauss-Newton) 0.88"
    verdict = tables.equal_update_verdict({"experiment": "fig5_1", "results": {"UBP (Gauss-Newton)": falling}})
    assert verdict.endswith("agree: UBP (Gauss-Newton) 0.75")
